"""The record path in a process of its own (``processors.engine_process``): the same outputs
and dead letters as in the driver's process, and a child that dies stops the instance without
losing or doubling anything."""

from __future__ import annotations

import os
import signal

import pytest

from inboxstream.core.kafka import DLQ_PREFIX, make_producer
from inboxstream.core.settings import Settings
from inboxstream.processors.engine_process import EngineProcess
from inboxstream.processors.exceptions import EngineProcessDiedError
from inboxstream.processors.processor import ProcessorConfig, StreamProcessor, run_processor
from tests.helpers.pipeline import load_inputs, outputs, read_records


async def test_the_engine_process_gives_what_the_driver_process_gives(
    settings: Settings, unique: str
) -> None:
    await load_inputs(settings, unique, inboxes=2)
    # a record that is not Avro at all, among the messages: the engine process lists it as
    # failed, and the driver dead-letters it with the child's exception
    producer = make_producer(settings.kafka)
    await producer.start()
    inbox = f"box0-{unique}@inboxstream.test"
    await producer.send_and_wait(settings.topics.messages.name, b"\x00garbage", key=inbox.encode())
    await producer.stop()
    for version, processes in (("local", 0), ("child", 1), ("pool", 2)):
        config = ProcessorConfig(
            group_id=f"{version}-{unique}",
            version=version,
            max_records=40,
            engine_processes=processes,
        )
        stats = await run_processor(settings, config, until_end=True)
        assert stats.dead_lettered == 1
        assert stats.counts["out:thread.assigned"] > 0  # the child's counts reach the driver
    threads, engagements = await outputs(settings, "child")
    assert sum(threads.values()) >= 2 * 60 and sum(engagements.values()) == 2 * 4 * 4
    assert (threads, engagements) == await outputs(settings, "local")
    assert (threads, engagements) == await outputs(settings, "pool")

    dead = await read_records(settings, settings.topics.dead_letter.name)
    assert len(dead) == 3
    reasons = []
    for record in dead:
        headers = dict(record.headers)
        assert record.value == b"\x00garbage"
        assert headers[DLQ_PREFIX + "topic"] == settings.topics.messages.name.encode()
        assert b"Traceback" in headers[DLQ_PREFIX + "exception.stacktrace"]
        reasons.append(
            (
                headers[DLQ_PREFIX + "stage"],
                headers[DLQ_PREFIX + "exception.class.name"],
                headers[DLQ_PREFIX + "exception.message"],
            )
        )
    assert reasons[0] == reasons[1] == reasons[2] and reasons[0][:2] == (b"decode", b"DecodeError")


async def test_a_dead_engine_process_stops_the_instance_and_a_restart_finishes_it(
    settings: Settings, unique: str
) -> None:
    await load_inputs(settings, unique, inboxes=2)
    reference = ProcessorConfig(
        group_id=f"ref-{unique}", version="ref", max_records=40, engine_processes=0
    )
    await run_processor(settings, reference, until_end=True)
    ref_threads, ref_engagements = await outputs(settings, "ref")

    config = ProcessorConfig(
        group_id=f"eos-{unique}", max_records=40, pause_in_transaction_s=0.01, engine_processes=1
    )
    processor = StreamProcessor(settings, config)
    assert isinstance(processor.work, EngineProcess)
    killed = False

    def kill_the_engine(partition: int, threads_here: int) -> None:
        # in the first transaction with thread output of its own: that one still commits
        # (its share was computed), the shares after it have no engine to go to
        nonlocal killed
        if threads_here and not killed:
            killed = True
            child = processor.work._proc  # type: ignore[union-attr]
            assert child is not None
            os.kill(child.pid, signal.SIGKILL)

    processor.on_in_transaction = kill_the_engine
    await processor.start()
    try:
        with pytest.raises(EngineProcessDiedError, match="exited"):
            await processor.run(until_end=True)
    finally:
        await processor.stop()
    partial, _ = await outputs(settings, "")
    assert 0 < sum(partial.values()) < sum(ref_threads.values())

    # a new instance restores what was committed and does the rest, each output once
    await run_processor(settings, ProcessorConfig(group_id=f"eos-{unique}"), until_end=True)
    assert await outputs(settings, "") == (ref_threads, ref_engagements)
