"""SMTP replies become typed errors whose ``retriable`` follows the reply class."""

from __future__ import annotations

import aiosmtplib
from hypothesis import given
from hypothesis import strategies as st

from inboxstream.send.smtp import (
    MessageTooLargeError,
    SmtpAuthError,
    SmtpConnectionError,
    SmtpRejectedError,
    _translate,
)


@given(st.integers(min_value=400, max_value=599), st.sampled_from(["mail", "rcpt", "data"]))
def test_reply_class_decides_retriable(code: int, stage: str) -> None:
    err = _translate(aiosmtplib.SMTPResponseException(code, "no"), stage, "h:1", "u")  # type: ignore[arg-type]
    if code == 552:
        assert isinstance(err, MessageTooLargeError)
    else:
        assert isinstance(err, SmtpRejectedError)
        assert err.retriable == (code < 500)
        assert err.stage == stage
        assert err.code == code


def test_auth_and_connection_errors_never_carry_the_password() -> None:
    auth = _translate(aiosmtplib.SMTPAuthenticationError(535, "bad"), "auth", "h:1", "alice")
    assert isinstance(auth, SmtpAuthError) and not auth.retriable
    assert "alice" in str(auth)
    lost = _translate(aiosmtplib.SMTPServerDisconnected("gone"), "data", "h:1", "alice")
    assert isinstance(lost, SmtpConnectionError) and lost.retriable
