"""A fleet of producer processes sharing inboxes through the registry topic, on the real Dovecot
and Kafka, each process an ``inboxstream producer run`` as deployed.

    .venv/bin/python -m bench.fleet [INBOXES]

1. INBOXES Dovecot users (default 300) with a few messages each, registered in a fresh
   registry topic (60 partitions, inboxes placed evenly).
2. Two producer processes: once every inbox idles, the split (inboxes per process, from the
   producer named on each inbox's latest ``idle`` status) and its largest deviation from even.
3. A third process joins: the split again, once every inbox idles on its new owner.
4. Live mail: one message to every inbox, round after round; during it, kill -9 of one
   process. ``takeover_s`` is the time from the kill until every inbox it held idles on
   another process; afterwards every delivered message is looked up in Kafka: ``lost`` (never
   published: must be 0) and ``duplicated`` (published more than once; a re-sent event keeps
   its ``event_id``, so consumers drop it).

The last line is one JSON object: ``{"processes", "inboxes", "split_max_dev_pct",
"takeover_s", "lost", "duplicated"}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from email.message import EmailMessage
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.pipeline import stage_env, start, stop
from inboxstream.app.demo import demo_inbox
from inboxstream.core.kafka import client_options, ensure_topics
from inboxstream.core.settings import (
    KafkaSettings,
    MetricsSettings,
    ProducerSettings,
    Settings,
    TopicSettings,
)
from inboxstream.core.vault import SecretBox
from inboxstream.infra import dovecot, kafka, schema_registry
from inboxstream.producers.registry_topic import TopicRegistry
from inboxstream.schemas.models import MessageEvent, StatusEvent
from inboxstream.schemas.serde import serde_for


def _mail(user: str, tag: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Fleet <fleet@example.com>"
    msg["To"] = user
    msg["Subject"] = tag
    msg["Message-ID"] = f"<{tag}-{user}>"
    msg.set_content(f"{tag} for {user}\n" + "lorem ipsum " * 30)
    return bytes(msg)


class Topics:
    """Reads inbox.status and inbox.messages as they grow."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.status_serde = serde_for(StatusEvent)
        self.message_serde = serde_for(MessageEvent)
        self.owner: dict[str, str] = {}  # inbox -> producer of its latest INBOX idle
        self.owner_since: dict[str, float] = {}
        self.published: Counter[str] = Counter()  # Message-ID -> message.new events
        self.consumer = AIOKafkaConsumer(
            **client_options(settings.kafka), group_id=None, auto_offset_reset="earliest"
        )

    async def start(self) -> None:
        await self.consumer.start()
        t = self.settings.topics
        tps = [
            TopicPartition(topic, p)
            for topic in (t.status.name, t.messages.name)
            for p in range(t.partitions)
        ]
        self.consumer.assign(tps)
        await self.consumer.seek_to_beginning(*tps)

    async def run(self) -> None:
        status_topic = self.settings.topics.status.name
        while True:
            batches = await self.consumer.getmany(timeout_ms=200)
            now = time.monotonic()
            for tp, records in batches.items():
                for record in records:
                    if tp.topic == status_topic:
                        st = self.status_serde.decode(record.value, record.headers)
                        if st.state == "idle" and st.folder == "INBOX":
                            self.owner[st.inbox_id] = st.producer
                            self.owner_since[st.inbox_id] = now
                    else:
                        ev = self.message_serde.decode(record.value, record.headers)
                        if ev.event_type == "message.new" and ev.folder == "INBOX":
                            self.published[ev.message_id] += 1

    def split(self) -> Counter[str]:
        return Counter(self.owner.values())


def start_member(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    return start(["producer", "run", "--no-progress"], stage_env(settings), log)


def name_of(proc: subprocess.Popen[bytes]) -> str:
    return f"{socket.gethostname()}:{proc.pid}"


async def until(what: str, cond: object, timeout: float) -> float:
    """Seconds until ``cond()`` holds."""
    t0 = time.monotonic()
    while not cond():  # type: ignore[operator]
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{what}: not after {timeout}s")
        await asyncio.sleep(0.2)
    return time.monotonic() - t0


def deviation(split: Counter[str], members: list[str], inboxes: int) -> float:
    even = inboxes / len(members)
    return max(abs(split.get(m, 0) - even) / even * 100 for m in members)


async def main(n_inboxes: int) -> None:
    for mod in (kafka, schema_registry, dovecot):
        mod.install()
        mod.start()
    tag = uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix="fleet-"))
    settings = Settings(
        kafka=KafkaSettings(bootstrap_servers=kafka.bootstrap_servers()),
        topics=TopicSettings().with_prefix(f"fleet-{tag}."),
        producer=ProducerSettings(
            registry="topic",
            fleet_group=f"fleet-{tag}",
            secret_key_file=tmp / "fleet.key",
            registry_dir=tmp / "unused",
            parse_workers=0,  # a few messages per inbox: no pool per process needed
            other_folders_interval_s=30.0,
        ),
        metrics=MetricsSettings(producer_port=0),  # several members on one host
    )
    password = "fleet-" + tag
    users = [f"fleet{tag}-{i:04d}@inboxstream.test" for i in range(n_inboxes)]
    t = time.monotonic()
    for user in users:
        dovecot.add_user(user, password)
        dovecot.fill_maildir(user, (_mail(user, f"old{j}") for j in range(3)))
    print(f"{n_inboxes} inboxes created in {time.monotonic() - t:.0f}s", file=sys.stderr)
    await ensure_topics(settings.kafka, settings.topics)
    registry = TopicRegistry(settings, SecretBox.default(settings.producer.secret_key_file))
    await registry.add_many([demo_inbox(password, u) for u in users])
    topics = Topics(settings)
    await topics.start()
    reading = asyncio.create_task(topics.run())
    log = tmp / "fleet.log"
    members: list[subprocess.Popen[bytes]] = []
    results: dict[str, object] = {"inboxes": n_inboxes}
    try:
        for count in (2, 3):
            joined = time.monotonic()
            while len(members) < count:
                members.append(start_member(settings, log))
            names = [name_of(m) for m in members]

            def settled(names: list[str] = names, since: float = joined) -> bool:
                # every inbox idling again since the newest member started, on one of them
                return (
                    len(topics.owner) == n_inboxes
                    and set(topics.owner.values()) <= set(names)
                    and all(t > since for t in topics.owner_since.values())
                )

            took = await until(f"{count} members, every inbox idle", settled, 600)
            await asyncio.sleep(3)  # anything still moving moves now
            await until(f"{count} members settled", settled, 600)
            split = topics.split()
            dev = deviation(split, names, n_inboxes)
            print(
                f"{count} processes: every inbox idle {took:.1f}s after the last one started; "
                f"split {sorted(split.values())} (largest deviation from even {dev:.1f}%)"
            )
            results[f"split_{count}"] = sorted(split.values())
            results["split_max_dev_pct"] = round(
                max(dev, float(results.get("split_max_dev_pct", 0.0))),  # type: ignore[arg-type]
                1,
            )

        # Live mail in rounds; kill -9 one member during the second round.
        ep = dovecot.endpoints()
        delivered: list[str] = []
        rounds = 4

        def deliver() -> None:
            with smtplib.LMTP(ep.host, ep.lmtp_port, timeout=120) as lmtp:
                for r in range(rounds):
                    for user in users:
                        lmtp.sendmail("fleet@example.com", [user], _mail(user, f"live{r}"))
                        delivered.append(f"live{r}-{user}")
                    time.sleep(1.0)

        sender = threading.Thread(target=deliver)
        sender.start()
        await until("the first live round", lambda: len(delivered) >= n_inboxes, 300)
        split = topics.split()
        victim = max(members, key=lambda m: split.get(name_of(m), 0))  # the busiest member
        victim_name = name_of(victim)
        held = {i for i, p in topics.owner.items() if p == victim_name}
        killed_at = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(30)
        survivors = {name_of(m) for m in members if m is not victim}

        def taken_over() -> bool:
            return all(
                topics.owner.get(i) in survivors and topics.owner_since[i] > killed_at for i in held
            )

        takeover = await until("takeover of the killed member's inboxes", taken_over, 300)
        print(
            f"kill -9 of one of {len(members)} processes (it held {len(held)} inboxes): "
            f"every one idling on a survivor after {takeover:.1f}s (session timeout "
            f"{settings.producer.fleet_session_timeout_ms / 1000:.0f}s)"
        )
        await asyncio.to_thread(sender.join)

        def all_seen() -> bool:
            return all(topics.published[mid] > 0 for mid in delivered)

        try:
            await until("every live message in Kafka", all_seen, 120)
        except TimeoutError:
            pass
        lost = sum(1 for mid in delivered if topics.published[mid] == 0)
        duplicated = sum(n - 1 for mid, n in topics.published.items() if n > 1)
        print(
            f"live mail: {len(delivered)} messages delivered in {rounds} rounds, "
            f"{lost} lost, {duplicated} published more than once (same event_id)"
        )
        results |= {
            "processes": len(members),
            "takeover_s": round(takeover, 1),
            "lost": lost,
            "duplicated": duplicated,
        }
    finally:
        stop(members)
        reading.cancel()
        await topics.consumer.stop()
        for user in users:
            dovecot.remove_user(user)
    keys = ["processes", "inboxes", "split_max_dev_pct", "takeover_s", "lost", "duplicated"]
    splits = {"splits": [results["split_2"], results["split_3"]]}
    print(json.dumps({k: results[k] for k in keys} | splits))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 300))
