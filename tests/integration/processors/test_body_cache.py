"""Engagements decided after their body went by take it from memory (``processors.body_cache``),
not from inbox.bodies, and give the same outputs as reading every one back from Kafka, with
a budget that keeps them all, one that keeps a few, and none."""

from __future__ import annotations

from inboxstream.core.settings import Settings
from inboxstream.processors.body_cache import BODY_CACHE_BYTES, ENTRY_OVERHEAD
from inboxstream.processors.processor import ProcessorConfig, run_processor
from tests.helpers.pipeline import load_inputs, outputs


async def test_bodies_from_memory_give_what_bodies_from_kafka_give(
    settings: Settings, unique: str
) -> None:
    # half the CRM records after the mail: those replies are held, then matched, and their
    # bodies are long gone by then; the other half is re-keyed a transaction after the mail
    await load_inputs(settings, unique, inboxes=2)
    runs = {
        "memory": (BODY_CACHE_BYTES, 1),  # the default budget, in an engine process
        "kafka": (0, 0),
        "tight": (20 * (ENTRY_OVERHEAD + 130), 0),  # about 20 of its bodies at a time
    }
    counts = {}
    for version, (budget, processes) in runs.items():
        config = ProcessorConfig(
            group_id=f"{version}-{unique}",
            version=version,
            max_records=40,
            engine_processes=processes,
            body_cache_bytes=budget,
        )
        stats = await run_processor(settings, config, until_end=True)
        counts[version] = (stats.counts["bodies_read_memory"], stats.counts["bodies_read_kafka"])
    engaged = 2 * 4 * 4  # two inboxes, four CRM conversations each, four replies each
    memory, kafka, tight = counts["memory"], counts["kafka"], counts["tight"]
    assert memory == (engaged, 0)
    assert kafka == (0, engaged)
    assert tight[0] > 0 and tight[1] > 0 and sum(tight) == engaged  # some from each
    threads, engagements = await outputs(settings, "memory")
    assert sum(engagements.values()) == engaged
    assert (threads, engagements) == await outputs(settings, "kafka")
    assert (threads, engagements) == await outputs(settings, "tight")
