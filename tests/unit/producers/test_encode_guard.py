"""A message whose parse raises costs its fields, never the batch (the folder would stop on it).

parse_records never raises by design; this is the net under it, for a bug or for an annotation
the compiled module enforces and a hostile message breaks. The failure is injected into the
sources (INBOXSTREAM_PURE_PYTHON=1 in a second interpreter): the compiled modules call each
other natively, where a patched module attribute is never looked up.
"""

from __future__ import annotations

import json

from tests.helpers.compiled_parity import run_from_source

SCRIPT = """
import json
from inboxstream.producers import encode
from inboxstream.producers.parse import FetchedMessage
from inboxstream.schemas.models import MessageEvent
from inboxstream.schemas.serde import serde_for

real = encode.parse_records
def flaky(fetched, **kw):
    if fetched.uid == 2:
        raise TypeError("str object expected; got email.header.Header")
    return real(fetched, **kw)
encode.parse_records = flaky

raw = b"Message-ID: <m@x.test>\\r\\nSubject: hi\\r\\n\\r\\nbody\\r\\n"
chunk = [FetchedMessage("me@x.test", "INBOX", "inbox", 7, uid, raw) for uid in (1, 2, 3)]
out = encode.encode_chunk(chunk, True, "p1")
serde = serde_for(MessageEvent)
second = serde.decode(out[1].records[0].value, serde.headers())
print(json.dumps({
    "counts": [len(m.records) for m in out],
    "uids": [m.uid for m in out],
    "uid": second.uid,
    "message_id_synthetic": second.message_id_synthetic,
    "parse_error": second.parse_error,
    "producer": second.producer,
}))
"""


def test_a_parse_that_raises_costs_one_message_its_fields() -> None:
    out = run_from_source("-c", SCRIPT, text=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["counts"] == [2, 1, 2]  # the others keep both events
    assert got["uids"] == [1, 2, 3]
    assert got["uid"] == 2 and got["message_id_synthetic"] is True
    assert got["producer"] == "p1"
    assert "fields dropped" in got["parse_error"] and "Header" in got["parse_error"]
    assert "parse failed" in out.stderr  # logged with its stack trace
