"""A transactional produce refused NOT_ENOUGH_REPLICAS (what Kafka's transaction verification
answers older clients) is sent again after ``aiokafka_shim.QUICK_RETRY_S`` the first few times,
and after aiokafka's usual backoff otherwise.

aiokafka's real produce handler runs here on a response built by hand: which error a broker
answers, and when, is not something a test can make a live broker do on cue.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.producer.sender import SendProduceReqHandler
from aiokafka.structs import TopicPartition

from inboxstream.core import aiokafka_shim

DEFAULT_S = 0.1  # aiokafka's retry_backoff_ms
NOT_ENOUGH_REPLICAS = 19
NOT_ENOUGH_REPLICAS_AFTER_APPEND = 20  # retriable too, but a write the broker did take


class Batch:
    """The parts of aiokafka's MessageBatch the handler reads."""

    def __init__(self, tp: TopicPartition, sends: int) -> None:
        self.tp = tp
        self.retry_count = sends  # aiokafka counts every send, the first one included
        self.acked = False

    def done(self, *args: Any) -> None:
        self.acked = True

    def expired(self) -> bool:
        return False


def _backoff(
    errors: dict[TopicPartition, int], *, sends: int = 1, transactional: bool = True
) -> float:
    sender = SimpleNamespace(
        _retry_backoff=DEFAULT_S,
        client=SimpleNamespace(force_metadata_update=lambda: None),
        # an idempotent producer has a transaction manager too, without a transactional id
        _txn_manager=SimpleNamespace(transactional_id="processor-p0" if transactional else None),
    )
    batches = {tp: Batch(tp, sends) for tp in errors}
    handler = SendProduceReqHandler(sender, batches)
    topics: dict[str, list[tuple[int, int, int, int, int]]] = {}
    for tp, code in errors.items():
        # produce response v5-v7: partition, error code, offset, timestamp, log start offset
        topics.setdefault(tp.topic, []).append((tp.partition, code, 10, -1, 0))
    handler.handle_response(SimpleNamespace(API_VERSION=7, topics=list(topics.items())))
    assert all(not b.acked for tp, b in batches.items() if errors[tp]), "refused, not acked"
    return float(handler._default_backoff)


A = TopicPartition("inbox.threads", 0)
B = TopicPartition("processor.threads-changelog", 0)


def test_the_shim_is_in_place_once_core_kafka_is_imported() -> None:
    import inboxstream.core.kafka  # noqa: F401

    assert getattr(SendProduceReqHandler, "_inboxstream_quick_retry", False)
    aiokafka_shim.use_quick_verification_retry()  # idempotent: not wrapped twice
    assert _backoff({A: NOT_ENOUGH_REPLICAS}) == aiokafka_shim.QUICK_RETRY_S


@pytest.mark.parametrize("sends", range(1, aiokafka_shim.QUICK_RETRIES + 1))
def test_the_first_refusals_of_a_transactional_batch_retry_quickly(sends: int) -> None:
    assert _backoff({A: NOT_ENOUGH_REPLICAS, B: NOT_ENOUGH_REPLICAS}, sends=sends) == (
        aiokafka_shim.QUICK_RETRY_S
    )


def test_a_refusal_that_lasts_goes_back_to_the_usual_backoff() -> None:
    assert _backoff({A: NOT_ENOUGH_REPLICAS}, sends=aiokafka_shim.QUICK_RETRIES + 1) == DEFAULT_S


def test_an_idempotent_producer_without_a_transaction_keeps_the_usual_backoff() -> None:
    assert _backoff({A: NOT_ENOUGH_REPLICAS}, transactional=False) == DEFAULT_S


def test_any_other_error_among_the_refused_keeps_the_usual_backoff() -> None:
    errors = {A: NOT_ENOUGH_REPLICAS, B: NOT_ENOUGH_REPLICAS_AFTER_APPEND}
    assert _backoff(errors) == DEFAULT_S


def test_an_acked_partition_beside_a_refused_one_does_not_count() -> None:
    assert _backoff({A: NOT_ENOUGH_REPLICAS, B: 0}) == aiokafka_shim.QUICK_RETRY_S
