"""Mail that no person wrote: out-of-office answers, other auto-replies, bounces and bulk mail.

An out-of-office answer to CRM mail carries In-Reply-To like a real reply, and counting it as
one inflates the reply rate. These are the marks senders put on such mail:

* ``Auto-Submitted`` (RFC 3834 section 5): anything but ``no`` is automatic; ``auto-replied``
  is an answer to a message, ``auto-generated`` / ``auto-notified`` mail made by a program.
* ``X-Autoreply`` / ``X-Autorespond`` (and ``X-Autoresponse``): set by autoresponders that
  predate RFC 3834 (vacation programs, many hosted mail services).
* ``Precedence: auto_reply`` (an answer), ``bulk`` / ``junk`` (mass mail; RFC 3834 section 2
  asks responders not to answer these either). ``list`` is not among them: a person's answer
  through a mailing list is still a reply.
* A delivery report: ``multipart/report`` (RFC 6522; RFC 3464 delivery status notifications,
  RFC 8098 read receipts) or a bare ``message/delivery-status``.

``automatic_kind`` names the first that applies: ``bounce``, ``auto_reply``, ``auto_generated``
or ``bulk``; ``None`` for mail a person wrote. Pure, so it is unit- and property-tested.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

AutomaticKind = Literal["bounce", "auto_reply", "auto_generated", "bulk"]

_AUTO_REPLY_HEADERS = ("X-Autoreply", "X-Autorespond", "X-Autoresponse")
_BULK_PRECEDENCE = {"bulk", "junk"}
_REPORT_TYPES = {"multipart/report", "message/delivery-status"}


def _token(value: str | None) -> str:
    """The value up to its first ``;`` or comment, lower-cased and stripped."""
    if not value:
        return ""
    return value.split(";", 1)[0].split("(", 1)[0].strip().strip('"').lower()


def automatic_kind(header: Callable[[str], str | None]) -> AutomaticKind | None:
    """Why this message is automatic, from its top-level headers (``header(name)`` gives a
    header's value or None), or None."""
    if _token(header("Content-Type")) in _REPORT_TYPES:
        return "bounce"
    submitted = _token(header("Auto-Submitted"))
    if submitted and submitted != "no":
        return "auto_reply" if submitted == "auto-replied" else "auto_generated"
    for name in _AUTO_REPLY_HEADERS:
        value = _token(header(name))
        if value and value not in ("no", "false", "0"):
            return "auto_reply"
    precedence = _token(header("Precedence"))
    if precedence == "auto_reply":
        return "auto_reply"
    if precedence in _BULK_PRECEDENCE:
        return "bulk"
    return None
