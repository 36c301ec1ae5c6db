"""Which TLS check failed, in words a mailbox owner can act on. Pure, so it is unit-tested.

OpenSSL reports a failed certificate check as a numeric X.509 verify code and a failed
negotiation as a reason string; people need to know whether the host name, the issuer, the
validity dates or the protocol version was the problem, because each has a different fix.
"""

from __future__ import annotations

import ssl

from inboxstream.imap.exceptions import TlsCheck, TlsError

# X.509 verify codes (openssl/x509_vfy.h) we tell apart.
_HOSTNAME_MISMATCH = {62, 64}  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
_SELF_SIGNED = {18, 19}  # DEPTH_ZERO_SELF_SIGNED_CERT, SELF_SIGNED_CERT_IN_CHAIN
_UNTRUSTED = {2, 20, 21}  # UNABLE_TO_GET_ISSUER_CERT(_LOCALLY), UNABLE_TO_VERIFY_LEAF_SIGNATURE
_EXPIRED = {9, 10}  # CERT_NOT_YET_VALID, CERT_HAS_EXPIRED
_VERSION_REASONS = (
    "UNSUPPORTED_PROTOCOL",
    "PROTOCOL_VERSION",
    "VERSION_TOO_LOW",
    "NO_PROTOCOLS_AVAILABLE",
    "WRONG_SSL_VERSION",
)

_UNVERIFIED_HINT = (
    "If you trust this server anyway, allow an unverified certificate for this inbox "
    "(allow_unverified_certificate)"
)


def tls_error(exc: ssl.SSLError, where: str, host: str) -> TlsError:
    """Map an ``ssl`` failure to a TlsError naming the failed check."""
    check: TlsCheck
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        detail = exc.verify_message or str(exc)
        if code in _HOSTNAME_MISMATCH:
            check = "hostname"
            text = (
                f"host name check failed: the server's certificate is not valid for {host!r} "
                f"({detail}). Connect with a host name the certificate names (CN/SAN), or ask "
                "the mail administrator for a certificate that includes this name"
            )
        elif code in _SELF_SIGNED:
            check = "self_signed"
            text = f"the certificate is self-signed ({detail}). {_UNVERIFIED_HINT}"
        elif code in _EXPIRED:
            check = "expired"
            text = f"the certificate is expired or not yet valid ({detail})"
        elif code in _UNTRUSTED:
            check = "untrusted_issuer"
            text = (
                f"the certificate's issuer is not trusted ({detail}): it is not signed by a "
                f"known certificate authority. {_UNVERIFIED_HINT}"
            )
        else:
            check = "handshake"
            text = f"certificate check failed ({detail})"
        return TlsError(f"{where}: {text}", check=check)
    reason = (exc.reason or "").upper()
    if any(r in reason for r in _VERSION_REASONS):
        return TlsError(
            f"{where}: TLS protocol version check failed ({exc.reason}): the server offers "
            "no TLS version we accept (TLS 1.2 or newer by default). Upgrade the server, or "
            "opt this inbox in to TLS 1.0/1.1 (allow_legacy_tls)",
            check="protocol_version",
        )
    if "WRONG_VERSION_NUMBER" in reason or "HTTP_REQUEST" in reason:
        return TlsError(
            f"{where}: TLS handshake failed ({exc.reason}): the port does not speak TLS. "
            "Use STARTTLS for this port, or the implicit-TLS port (usually 993)",
            check="handshake",
        )
    return TlsError(f"{where}: TLS handshake failed ({exc.reason or exc})", check="handshake")
