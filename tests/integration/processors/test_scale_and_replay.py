"""Two instances share the partitions; a rebalance keeps state (thread ids survive); a replay
reproduces the output; all compared with one uninterrupted reference run."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

from inboxstream.core.settings import Settings
from inboxstream.processors.processor import ProcessorConfig, StreamProcessor, run_processor
from inboxstream.processors.replay import replay
from tests.helpers.pipeline import (
    INBOXSTREAM,
    T0,
    assignments,
    conversations,
    events_for,
    outputs,
    publish,
    publish_inbox,
    reply_raw,
    write_config,
)


async def wait_assigned(settings: Settings, expected: set[str], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not expected <= set(await assignments(settings)):
        assert time.monotonic() < deadline, "processors did not catch up"
        await asyncio.sleep(0.5)


async def test_two_instances_rebalance_and_replay(
    settings: Settings, unique: str, tmp_path: Path
) -> None:
    t = settings.topics
    inboxes = [f"box{n}-{unique}@inboxstream.test" for n in range(6)]
    first: dict[str, list[str]] = {}

    group = f"pair-{unique}"
    a = StreamProcessor(settings, ProcessorConfig(group_id=group, instance_id="a", max_records=40))
    b = StreamProcessor(settings, ProcessorConfig(group_id=group, instance_id="b", max_records=40))
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    await a.start()
    task_a = asyncio.create_task(a.run(stop_a))
    await b.start()
    task_b = asyncio.create_task(b.run(stop_b))
    try:
        deadline = time.monotonic() + 60
        while not (a.states and b.states):  # both joined the group
            assert time.monotonic() < deadline, "the two instances never shared the group"
            await asyncio.sleep(0.2)
        for inbox in inboxes:
            pairs, crm = conversations(inbox, threads=4, per_thread=4, crm_every=2)
            await publish(settings, [(t.crm_outbound.name, c.message_id, c) for c in crm])
            await publish_inbox(settings, pairs)
            first[inbox] = [m.event_id for m, _ in pairs]
        await wait_assigned(settings, {e for ids in first.values() for e in ids})
        # the work is shared: each instance owns some partitions, none owned twice
        owned_a, owned_b = set(a.states), set(b.states)
        assert owned_a and owned_b and not owned_a & owned_b
        assert owned_a | owned_b == set(range(t.partitions))
        before = await assignments(settings)

        # stop one instance: the other takes every partition and restores their state
        stop_a.set()
        await task_a
        await a.stop()
        late: list[tuple[str, int, str]] = []
        for inbox in inboxes:
            # a late reply in every conversation (references its root and first reply)
            raws = [
                reply_raw(
                    f"late{k}.{inbox}",
                    f"t{k}-1.{inbox}",
                    f"<t{k}-0.{inbox}> <t{k}-1.{inbox}>",
                    f"Re: Topic {k}",
                    "late",
                )
                for k in range(4)
            ]
            pairs = events_for(inbox, raws, start_uid=500, observed=T0 + timedelta(hours=1))
            await publish_inbox(settings, pairs)
            late += [(inbox, k, m.event_id) for k, (m, _) in enumerate(pairs)]
        await wait_assigned(settings, {eid for _, _, eid in late})
        # The late replies may all live on partitions b restored first: the rest of the
        # rebalance (its restore) can still be running on a loaded box. It must finish.
        deadline = time.monotonic() + 60
        while set(b.states) != set(range(t.partitions)):
            assert time.monotonic() < deadline, f"b holds partitions {sorted(b.states)} only"
            await asyncio.sleep(0.2)
    finally:
        for stop, task, proc in ((stop_a, task_a, a), (stop_b, task_b, b)):
            if not task.done():
                stop.set()
                await task
                await proc.stop()

    after = await assignments(settings)
    # no message moved, and every late reply joined its conversation's existing thread
    assert {eid: after[eid] for eid in before} == before
    for inbox, k, eid in late:
        root_event = first[inbox][k * 4]  # the conversation's first message
        assert after[eid] == before[root_event]

    # the same input through one uninterrupted instance gives the same events, once each
    reference = ProcessorConfig(group_id=f"ref-{unique}", version="ref")
    await run_processor(settings, reference, until_end=True)
    main_out = await outputs(settings, "")
    assert main_out == await outputs(settings, "ref")
    assert all(max(c.values()) == 1 for c in main_out)

    # replay from a timestamp (offsets_for_times) into version v2: the same output
    await replay(
        settings,
        version="v2",
        base_group_id=group,
        start=T0 - timedelta(days=1),
        idle_exit_s=None,
        until_end=True,
    )
    assert await outputs(settings, "v2") == main_out

    # and the CLI from the earliest offset into v3
    config = write_config(settings, tmp_path / "config.toml")
    done = subprocess.run(
        [
            INBOXSTREAM,
            "--config",
            str(config),
            "replay",
            "--version",
            "v3",
            "--group-id",
            group,
            "--until-idle",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert await outputs(settings, "v3") == main_out
    assert sum(Counter(main_out[1]).values()) > 0  # engagements were part of the comparison
