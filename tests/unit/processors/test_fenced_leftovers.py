"""A fenced producer's unawaited copies of its error are not logged; everything else is."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiokafka.errors import KafkaError, ProducerFenced

from inboxstream.processors.processor import _FencedLeftovers

NEVER_RETRIEVED = "Future exception was never retrieved"


def test_only_unretrieved_fencing_is_taken_and_the_rest_reaches_the_earlier_handler() -> None:
    loop = asyncio.new_event_loop()
    try:
        seen: list[dict[str, object]] = []
        loop.set_exception_handler(lambda _loop, context: seen.append(context))
        _FencedLeftovers.install(loop)
        _FencedLeftovers.install(loop)  # once per loop: not wrapped twice
        handler = loop.get_exception_handler()
        assert isinstance(handler, _FencedLeftovers)
        assert not isinstance(handler.previous, _FencedLeftovers)

        loop.call_exception_handler({"message": NEVER_RETRIEVED, "exception": ProducerFenced()})
        assert seen == [] and handler.taken == 1
        passed_on = [
            {"message": NEVER_RETRIEVED, "exception": KafkaError()},  # another error
            {"message": "Task exception was never retrieved", "exception": ValueError()},
            {"message": "Exception in callback", "exception": ProducerFenced()},  # not a leftover
        ]
        for context in passed_on:
            loop.call_exception_handler(context)
        assert seen == passed_on and handler.taken == 1
    finally:
        loop.close()


def test_without_an_earlier_handler_the_rest_is_logged_as_asyncio_logs_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.new_event_loop()
    try:
        _FencedLeftovers.install(loop)
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            loop.call_exception_handler({"message": NEVER_RETRIEVED, "exception": ProducerFenced()})
            assert caplog.records == []
            loop.call_exception_handler({"message": NEVER_RETRIEVED, "exception": KafkaError()})
        assert [r.getMessage() for r in caplog.records] == [NEVER_RETRIEVED]
    finally:
        loop.close()
