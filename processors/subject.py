"""RFC 5256 section 2.1 base subject: what is left of a Subject after reply/forward decoration.

Used to merge thread roots that share a subject (the ``rfc5256`` algorithm) and nothing else:
CRM matching never looks at subjects.
"""

from __future__ import annotations

import functools
import re

from inboxstream.mail.headers import decode_text

# subj-trailer = "(fwd)" / WSP
_TRAILER_RE = re.compile(r"(?:\s|\(fwd\))+$", re.IGNORECASE)
# subj-blob = "[" *BLOBCHAR "]" *WSP  (BLOBCHAR: any CHAR except "[" and "]")
_BLOB = r"\[[^\[\]]*\]\s*"
# subj-refwd = ("re" / ("fw" ["d"])) *WSP [subj-blob] ":"
_REFWD = r"(?:re|fwd?)\s*(?:" + _BLOB + r")?:"
# subj-leader = (*subj-blob subj-refwd) / WSP
_LEADER_RE = re.compile(r"^(?:(?:" + _BLOB + r")*" + _REFWD + r"|\s)", re.IGNORECASE)
_BLOB_RE = re.compile(r"^" + _BLOB)
# subj-fwd = subj-fwd-hdr subject subj-fwd-trl, with subj-fwd-hdr = "[fwd:" and trl = "]"
_FWD_RE = re.compile(r"^\[fwd:(.*)\]$", re.IGNORECASE | re.DOTALL)
_WSP_RE = re.compile(r"\s+")


@functools.lru_cache(maxsize=8192)
def base_subject(subject: str | None) -> str:
    """The RFC 5256 base subject, case-folded for comparison; "" for no subject.

    Cached: a message's subject is asked for at every re-threading of its conversation
    (bench/processor.py: ten calls a message), and a thread's subjects repeat.

    Encoded words are decoded first (a subject may reach us raw from an mbox), runs of
    whitespace become one space, then the RFC's steps 2-6 repeat until nothing changes.
    """
    if not subject:
        return ""
    text = decode_text(subject) if "=?" in subject else subject
    text = _WSP_RE.sub(" ", text or "").strip()
    while True:
        # (2) remove trailers
        text = _TRAILER_RE.sub("", text)
        # (3)+(4): leaders, then a leading blob when something is left after it
        while True:
            before = text
            while (m := _LEADER_RE.match(text)) and m.end() > 0:
                text = text[m.end() :]
            blob = _BLOB_RE.match(text)
            if blob and text[blob.end() :].strip():
                text = text[blob.end() :]
            if text == before:
                break
        # (6) [fwd: subject] wrapper: unwrap and start over at step 2
        fwd = _FWD_RE.match(text)
        if not fwd:
            break
        text = fwd.group(1)
    return text.strip().casefold()


def is_reply_or_forward(subject: str | None) -> bool:
    """RFC 5256: the base-subject extraction removed a Re:/Fwd: leader or a (fwd) trailer."""
    if not subject:
        return False
    plain = _WSP_RE.sub(" ", subject).strip().casefold()
    return bool(
        re.search(r"\(fwd\)\s*$", plain)
        or re.match(r"^(?:" + _BLOB + r")*" + _REFWD, plain, re.IGNORECASE)
        or plain.startswith("[fwd:")
    )
