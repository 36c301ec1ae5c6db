"""Pure connection rules: TLS failure naming, capability fallbacks, server identity checks."""

from __future__ import annotations

import os
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inboxstream.core.settings import InboxSettings
from inboxstream.imap.capabilities import (
    ServerFeatures,
    check_greeting,
    check_id,
    check_port,
    parse_id_response,
)
from inboxstream.imap.connection import ImapEndpoint, endpoint_for_inbox, make_ssl_context
from inboxstream.imap.exceptions import ImapError, TlsError
from inboxstream.imap.tls import tls_error


def _self_signed_pem() -> bytes:
    """A throwaway CA certificate to load as a CA file."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test ca")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def _verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] {message}")
    exc.verify_code = code
    exc.verify_message = message
    return exc


def _ssl_error(reason: str) -> ssl.SSLError:
    exc = ssl.SSLError(1, f"[SSL: {reason}] {reason.lower()}")
    exc.reason = reason
    return exc


@pytest.mark.parametrize(
    ("exc", "check", "words"),
    [
        (_verify_error(62, "Hostname mismatch"), "hostname", "host name check failed"),
        (_verify_error(64, "IP address mismatch"), "hostname", "host name check failed"),
        (_verify_error(18, "self-signed certificate"), "self_signed", "self-signed"),
        (_verify_error(19, "self-signed certificate in chain"), "self_signed", "self-signed"),
        (_verify_error(20, "unable to get local issuer"), "untrusted_issuer", "issuer"),
        (_verify_error(10, "certificate has expired"), "expired", "expired"),
        (_ssl_error("TLSV1_ALERT_PROTOCOL_VERSION"), "protocol_version", "protocol version"),
        (_ssl_error("UNSUPPORTED_PROTOCOL"), "protocol_version", "allow_legacy_tls"),
        (_ssl_error("WRONG_VERSION_NUMBER"), "handshake", "does not speak TLS"),
        (_ssl_error("SOMETHING_ELSE"), "handshake", "TLS handshake failed"),
    ],
)
def test_tls_failures_name_the_check(exc: ssl.SSLError, check: str, words: str) -> None:
    err = tls_error(exc, "imap.example:993", "imap.example")
    assert isinstance(err, TlsError) and isinstance(err, ImapError)
    assert err.check == check
    assert words in str(err)
    assert err.retriable is False
    assert str(err).startswith("imap.example:993")


def test_legacy_tls_only_with_opt_in() -> None:
    base = dict(id="a", imap_host="h", username="u", password="pw")
    strict = endpoint_for_inbox(InboxSettings(**base))
    legacy = endpoint_for_inbox(InboxSettings(**base, allow_legacy_tls=True))
    assert make_ssl_context(strict).minimum_version == ssl.TLSVersion.TLSv1_2
    assert make_ssl_context(legacy).minimum_version == ssl.TLSVersion.TLSv1
    ctx = make_ssl_context(strict)
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    loose = make_ssl_context(ImapEndpoint("h", 993, allow_unverified_certificate=True))
    assert not loose.check_hostname and loose.verify_mode == ssl.CERT_NONE


def test_one_tls_context_per_setting_shared_by_connections(tmp_path: Path) -> None:
    """A context loads the CA store (0.8 MB, 20 ms): connections with the same TLS settings
    share one; other settings, or a CA file changed on disk, get their own."""
    a, b = ImapEndpoint("h1", 993), ImapEndpoint("h2", 143, security="starttls")
    assert make_ssl_context(a) is make_ssl_context(b)
    loose = ImapEndpoint("h1", 993, allow_unverified_certificate=True)
    assert make_ssl_context(loose) is not make_ssl_context(a)
    ca = tmp_path / "ca.pem"
    ca.write_bytes(_self_signed_pem())
    with_ca = ImapEndpoint("h1", 993, ca_file=ca)
    first = make_ssl_context(with_ca)
    assert make_ssl_context(with_ca) is first
    os.utime(ca, ns=(1, 1))  # the file changed (its mtime did)
    assert make_ssl_context(with_ca) is not first


def test_features_and_fallbacks() -> None:
    full = ServerFeatures.from_capabilities(
        "IMAP4rev1 IDLE CONDSTORE QRESYNC SPECIAL-USE UIDPLUS ENABLE ID".split(), ["qresync"]
    )
    assert full.imap4rev1 and full.idle and full.qresync and full.qresync_enabled
    assert full.missing() == []
    limited = ServerFeatures.from_capabilities(
        "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID LITERAL+ NAMESPACE UNSELECT CHILDREN".split()
    )
    assert not (limited.idle or limited.condstore or limited.qresync or limited.special_use)
    assert limited.missing() == ["IDLE", "CONDSTORE", "QRESYNC", "SPECIAL-USE", "UIDPLUS", "ENABLE"]
    # QRESYNC implies CONDSTORE (RFC 7162) even when a server forgets to list it.
    assert ServerFeatures.from_capabilities(["IMAP4rev1", "QRESYNC"]).condstore


def test_pop3_and_courier_are_refused() -> None:
    assert "POP3" in (check_port(110) or "") and "POP3" in (check_port(995) or "")
    assert check_port(993) is None and check_port(143) is None
    assert check_greeting(b"* OK [CAPABILITY IMAP4rev1] Dovecot ready.", 143) is None
    assert check_greeting(b"* BYE too many connections", 143) is None  # retriable, not refused
    assert "POP3" in (check_greeting(b"+OK POP3 ready <1.2@x>", 143) or "")
    assert "Courier" in (check_greeting(b"* OK Courier-IMAP ready. Copyright", 143) or "")
    assert "not an IMAP server" in (check_greeting(b"SSH-2.0-OpenSSH_9.2", 143) or "")


def test_id_response() -> None:
    lines = [b'ID ("name" "Dovecot" "version" NIL "support-url" "http://x/\\"q\\"")', b"done"]
    fields = parse_id_response(lines)
    assert fields["name"] == "Dovecot" and "version" not in fields
    assert fields["support-url"] == 'http://x/"q"'
    assert check_id(fields) is None
    assert parse_id_response([b"ID NIL"]) == {}
    assert parse_id_response([b'("name" "Dovecot")']) == {"name": "Dovecot"}  # as aioimaplib
    courier = parse_id_response([b'* ID ("NAME" "Courier-IMAP" "vendor" "Double Precision")'])
    assert courier["name"] == "Courier-IMAP"
    assert "Courier-IMAP is not supported" in (check_id(courier) or "")


@given(st.text(max_size=200))
def test_greeting_check_never_raises(text: str) -> None:
    result = check_greeting(text.encode("utf-8", "surrogatepass"), 143)
    assert result is None or isinstance(result, str)
