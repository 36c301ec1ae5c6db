"""Automatic mail (mail/automatic.py): out-of-office answers, auto-replies, bounces, bulk."""

from __future__ import annotations

from email.message import EmailMessage

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inboxstream.mail.automatic import automatic_kind


def _kind(**headers: str) -> str | None:
    named = {k.replace("_", "-").lower(): v for k, v in headers.items()}
    return automatic_kind(lambda name: named.get(name.lower()))


@pytest.mark.parametrize(
    ("headers", "kind"),
    [
        ({"Auto-Submitted": "auto-replied"}, "auto_reply"),
        ({"Auto-Submitted": "Auto-Replied (vacation)"}, "auto_reply"),
        ({"Auto-Submitted": "auto-generated"}, "auto_generated"),
        ({"Auto-Submitted": "auto-notified; owner-email=x@y"}, "auto_generated"),
        ({"Auto-Submitted": "no"}, None),
        ({"X-Autoreply": "yes"}, "auto_reply"),
        ({"X-Autorespond": "Out of office"}, "auto_reply"),
        ({"X-Autoreply": "no"}, None),
        ({"Precedence": "auto_reply"}, "auto_reply"),
        ({"Precedence": "bulk"}, "bulk"),
        ({"Precedence": "junk"}, "bulk"),
        ({"Precedence": "list"}, None),  # a person answering through a list still replies
        ({"Content-Type": "multipart/report; report-type=delivery-status; boundary=x"}, "bounce"),
        ({"Content-Type": 'Multipart/Report; report-type="disposition-notification"'}, "bounce"),
        ({"Content-Type": "message/delivery-status"}, "bounce"),
        ({"Content-Type": "multipart/mixed; boundary=x"}, None),
        ({}, None),
    ],
)
def test_the_marks_senders_put_on_automatic_mail(headers: dict[str, str], kind: str | None) -> None:
    named = {k.lower(): v for k, v in headers.items()}
    assert automatic_kind(lambda name: named.get(name.lower())) == kind


def test_a_bounce_wins_over_its_other_marks() -> None:
    assert _kind(Content_Type="multipart/report", Auto_Submitted="auto-replied") == "bounce"


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "Auto-Submitted",
                "X-Autoreply",
                "X-Autorespond",
                "Precedence",
                "Content-Type",
                "Subject",
            ]
        ),
        st.text(max_size=40),
    )
)
def test_any_header_values_give_a_kind_or_none_never_an_error(headers: dict[str, str]) -> None:
    named = {k.lower(): v for k, v in headers.items()}
    assert automatic_kind(lambda n: named.get(n.lower())) in {
        None,
        "bounce",
        "auto_reply",
        "auto_generated",
        "bulk",
    }


def test_the_producer_marks_the_event_on_both_parse_paths() -> None:
    from inboxstream.producers.parse import FetchedMessage, parse_records

    msg = EmailMessage()
    msg["From"] = "away@example.test"
    msg["To"] = "owner@example.test"
    msg["Subject"] = "Out of office"
    msg["Message-ID"] = "<away-1@example.test>"
    msg["In-Reply-To"] = "<crm-1@example.test>"
    msg["Auto-Submitted"] = "auto-replied"
    msg.set_content("Back on Monday.")
    raw = bytes(msg).replace(b"\n", b"\r\n")
    fetched = FetchedMessage("owner@example.test", "INBOX", "inbox", 1, 1, raw)
    fast, _ = parse_records(fetched, fast=True)
    slow, _ = parse_records(fetched, fast=False)
    assert fast["automated"] == slow["automated"] == "auto_reply"
    plain = FetchedMessage(
        "owner@example.test",
        "INBOX",
        "inbox",
        1,
        2,
        raw.replace(b"Auto-Submitted: auto-replied\r\n", b""),
    )
    assert parse_records(plain)[0]["automated"] is None
