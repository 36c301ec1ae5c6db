"""Folder discovery: parse LIST responses and decide each folder's role. Pure logic.

The sent folder is the one with the ``\\Sent`` special-use attribute (RFC 6154); a server
without special-use gets the first folder whose name contains "sent", case-insensitively, in
the server's LIST order (the source documents' rule). Folders that cannot be selected
(``\\Noselect``, ``\\NonExistent``) are skipped, and so are virtual folders that show messages
stored in other folders again: ``\\All`` (Gmail's All Mail, Dovecot's virtual All), ``\\Flagged``
(Gmail's Starred, RFC 6154) and ``\\Important`` (RFC 8457). Syncing them would publish every
copy as another message, and make archiving (the message leaves INBOX, stays in All Mail) look
like a message that moved instead of one that is still there.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

from inboxstream.schemas.models import FolderRole

_LIST_RE = re.compile(
    rb'^(?:(?:LIST|XLIST) )?\((?P<flags>[^)]*)\) (?P<delim>"(?:\\.|[^"])*"|NIL) (?P<name>.+)$',
    re.IGNORECASE,
)
_UNSELECTABLE = {"\\NOSELECT", "\\NONEXISTENT"}
#: Special-use attributes of folders that only show messages stored elsewhere.
VIRTUAL = {"\\ALL", "\\FLAGGED", "\\IMPORTANT"}


@dataclass(frozen=True)
class Folder:
    """``wire_name`` is what the server understands (modified UTF-7); ``name`` is for people."""

    wire_name: str
    name: str
    flags: frozenset[str]
    delimiter: str | None

    @property
    def selectable(self) -> bool:
        return not ({f.upper() for f in self.flags} & _UNSELECTABLE)

    @property
    def virtual(self) -> bool:
        """A view of messages stored in other folders (module docstring)."""
        return bool({f.upper() for f in self.flags} & VIRTUAL)


def decode_mutf7(value: str) -> str:
    """IMAP modified UTF-7 (RFC 3501 5.1.3) to text; invalid input is returned unchanged."""
    out = []
    i = 0
    try:
        while i < len(value):
            ch = value[i]
            if ch != "&":
                out.append(ch)
                i += 1
                continue
            end = value.index("-", i)
            chunk = value[i + 1 : end]
            if not chunk:
                out.append("&")
            else:
                b64 = chunk.replace(",", "/")
                b64 += "=" * (-len(b64) % 4)
                out.append(base64.b64decode(b64).decode("utf-16-be"))
            i = end + 1
    except (ValueError, UnicodeDecodeError):
        return value
    return "".join(out)


def _unquote(token: bytes) -> str:
    text = token.decode("utf-8", "replace")
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    return text


def parse_list_lines(lines: list[bytes | bytearray]) -> list[Folder]:
    """LIST responses, with or without the ``LIST`` keyword (aioimaplib strips it), literals
    included: ``(\\HasNoChildren) "/" name``."""
    folders = []
    items = [bytes(x) for x in lines]
    for i, line in enumerate(items):
        match = _LIST_RE.match(line)
        if not match:
            continue
        name_token = match["name"]
        literal = re.fullmatch(rb"\{(\d+)\}", name_token)
        if literal and i + 1 < len(items):
            wire = items[i + 1].decode("utf-8", "replace")
        else:
            wire = _unquote(name_token)
        delim_token = match["delim"]
        delim = None if delim_token.upper() == b"NIL" else _unquote(delim_token)
        flags = frozenset(f.decode() for f in match["flags"].split())
        folders.append(Folder(wire, decode_mutf7(wire), flags, delim))
    return folders


def assign_roles(folders: list[Folder]) -> dict[str, FolderRole]:
    """Map wire name → role: INBOX, the one sent folder, every other folder that holds
    messages of its own (virtual ones are left out)."""
    roles: dict[str, FolderRole] = {}
    selectable = [
        f for f in folders if f.selectable and (f.wire_name.upper() == "INBOX" or not f.virtual)
    ]
    sent = next((f for f in selectable if "\\SENT" in {x.upper() for x in f.flags}), None)
    if sent is None:
        sent = next(
            (f for f in selectable if "sent" in f.name.lower() and f.name.upper() != "INBOX"),
            None,
        )
    for folder in selectable:
        if folder.wire_name.upper() == "INBOX":
            roles[folder.wire_name] = "inbox"
        elif sent is not None and folder.wire_name == sent.wire_name:
            roles[folder.wire_name] = "sent"
        else:
            roles[folder.wire_name] = "other"
    return roles
