"""What an IMAP server offers, and the server-identity checks. Pure logic, unit-tested.

We use IDLE, CONDSTORE/QRESYNC, SPECIAL-USE, UIDPLUS and ENABLE when the server offers them and
fall back when it does not: no IDLE means polling, no CONDSTORE means no MODSEQ (flag changes
are found by refetching flags), no SPECIAL-USE means the sent folder is found by name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

POP3_PORTS = frozenset({110, 995})

_ID_PAIR_RE = re.compile(rb'"((?:\\.|[^"\\])*)"\s+(?:"((?:\\.|[^"\\])*)"|NIL)', re.IGNORECASE)

POP3_REFUSAL = (
    "this is a POP3 server; only IMAP is supported because the mail must stay on the "
    "server for replies to be logged. Use the server's IMAP port (usually 993)"
)
COURIER_REFUSAL = (
    "Courier-IMAP is not supported: replies sent to an inbox on Courier-IMAP cannot be "
    "reliably logged. Use a different IMAP server software"
)


@dataclass(frozen=True)
class ServerFeatures:
    """The extensions we use, as offered after login, and which ones we ENABLEd."""

    imap4rev1: bool
    idle: bool
    condstore: bool
    qresync: bool
    special_use: bool
    uidplus: bool
    enable: bool
    id: bool
    qresync_enabled: bool = False

    @classmethod
    def from_capabilities(
        cls, capabilities: Iterable[str], enabled: Iterable[str] = ()
    ) -> ServerFeatures:
        caps = {c.upper() for c in capabilities}
        on = {c.upper() for c in enabled}
        return cls(
            imap4rev1="IMAP4REV1" in caps,
            idle="IDLE" in caps,
            # QRESYNC implies CONDSTORE (RFC 7162 3.2.3), even if a server forgets to say so.
            condstore="CONDSTORE" in caps or "QRESYNC" in caps,
            qresync="QRESYNC" in caps,
            special_use="SPECIAL-USE" in caps,
            uidplus="UIDPLUS" in caps,
            enable="ENABLE" in caps,
            id="ID" in caps,
            qresync_enabled="QRESYNC" in on,
        )

    def missing(self) -> list[str]:
        """Optional extensions the server lacks (for a log line and the status event)."""
        names = ("idle", "condstore", "qresync", "special_use", "uidplus", "enable")
        return [n.upper().replace("_", "-") for n in names if not getattr(self, n)]


def check_port(port: int) -> str | None:
    """Refuse the POP3 ports before connecting at all."""
    return f"port {port} is a POP3 port; {POP3_REFUSAL}" if port in POP3_PORTS else None


def check_greeting(greeting: bytes, port: int) -> str | None:
    """Why this server is refused, or None."""
    text = greeting.decode("utf-8", "replace").strip()
    if text.startswith("+OK") or port in POP3_PORTS:
        return POP3_REFUSAL
    if "courier" in text.lower():
        return COURIER_REFUSAL
    if not text.startswith(("OK", "PREAUTH", "* OK", "* PREAUTH", "BYE", "* BYE")):
        return f"unexpected greeting, this is not an IMAP server: {text[:120]!r}"
    return None


def parse_id_response(lines: Iterable[bytes | bytearray]) -> dict[str, str]:
    """``ID ("name" "Dovecot" "version" "2.3")`` → {"name": "Dovecot", ...}; NIL → {}."""
    out: dict[str, str] = {}
    for line in lines:
        raw = bytes(line).lstrip(b"* ")
        # aioimaplib hands over the untagged ID response without its "ID " keyword.
        if raw[:3].upper() == b"ID ":
            raw = raw[3:].lstrip()
        if not raw.startswith(b"("):
            continue
        for match in _ID_PAIR_RE.finditer(raw):
            key, value = match.group(1), match.group(2)
            if value is not None:  # NIL: the server chose not to say
                out[_unescape(key).lower()] = _unescape(value)
    return out


def _unescape(value: bytes) -> str:
    return re.sub(rb"\\(.)", rb"\1", value).decode("utf-8", "replace")


def check_id(fields: dict[str, str]) -> str | None:
    """Refuse Courier-IMAP identified by its ID response (name, vendor or any value)."""
    if any("courier" in v.lower() for v in fields.values()):
        return COURIER_REFUSAL
    return None
