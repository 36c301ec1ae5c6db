"""Benchmark: sending through a connected inbox against the local Postfix + Dovecot + Kafka.

Prints, over N sends: the whole ``MailSender.send`` (IMAP open + sent-folder lookup + SMTP +
APPEND + crm.outbound), the SMTP part alone, SMTP accept -> Sent copy done (APPEND), and the
time until the recipient's INBOX has it. Baseline, measured in the same run: the bare SMTP
transaction with stdlib smtplib (connect, TLS, AUTH, MAIL, RCPT, DATA) and nothing else, so
the ratio is what the Sent copy, the duplicate check and the event cost on top of sending.

Run: ``.venv/bin/python -m bench.send [N]`` (starts the services if needed). The machine is
shared, so the figures are noisy; compare ratios, not absolute numbers.
"""

from __future__ import annotations

import asyncio
import secrets
import smtplib
import ssl
import statistics
import sys
import time
import uuid

from inboxstream.app.demo import demo_inbox, message_count
from inboxstream.core.kafka import ensure_topics, make_producer
from inboxstream.core.settings import KafkaSettings, TopicSettings
from inboxstream.infra import dovecot, kafka, postfix, schema_registry
from inboxstream.send.sender import Draft, MailSender


def _fmt(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))]
    return f"median {statistics.median(ms):7.1f} ms  p95 {p95:7.1f} ms"


async def main(n: int) -> None:
    for mod in (kafka, schema_registry, dovecot, postfix):
        mod.install()
        mod.start()
    tag = uuid.uuid4().hex[:8]
    alice = (f"benchsend-a{tag}@inboxstream.test", secrets.token_urlsafe(12))
    bob = (f"benchsend-b{tag}@inboxstream.test", secrets.token_urlsafe(12))
    for name, pw in (alice, bob):
        dovecot.add_user(name, pw)
    ep = postfix.endpoints()
    inbox = demo_inbox(alice[1], alice[0]).model_copy(
        update={"smtp_host": ep.tls_hostname, "smtp_port": ep.smtps_port, "smtp_security": "tls"}
    )
    topics = TopicSettings().with_prefix(f"bench{tag}.")
    settings = KafkaSettings(bootstrap_servers=kafka.bootstrap_servers())
    await ensure_topics(settings, topics, [topics.crm_outbound])
    producer = make_producer(settings)
    await producer.start()
    try:
        # Warm-up: the first RCPT to a new address waits for Postfix's address verification.
        sender = MailSender(producer, topics)
        await sender.send(inbox, Draft(to=[bob[0]], subject="warm-up", text="x"))
        ctx = ssl.create_default_context(cafile=str(ep.ca_cert))
        raw = f"From: {alice[0]}\r\nTo: {bob[0]}\r\nSubject: base\r\n\r\nbody\r\n".encode()
        baseline: list[float] = []
        for _ in range(n):
            t0 = time.perf_counter()
            with smtplib.SMTP_SSL(ep.tls_hostname, ep.smtps_port, context=ctx) as smtp:
                smtp.login(*alice)
                smtp.sendmail(alice[0], [bob[0]], raw)
            baseline.append(time.perf_counter() - t0)
        total, smtp_part, append, delivered = [], [], [], []
        for i in range(n):
            before = message_count(bob[0], bob[1])
            result = await sender.send(
                inbox, Draft(to=[bob[0]], subject=f"bench {i}", text="body\n" * 50)
            )
            t_done = time.perf_counter()
            while message_count(bob[0], bob[1]) <= before:
                await asyncio.sleep(0.01)
            delivered.append(time.perf_counter() - t_done + result.smtp_seconds)
            total.append(result.total_seconds)
            smtp_part.append(result.smtp_seconds)
            append.append(result.append_seconds)
        again = []
        for _ in range(n):
            t0 = time.perf_counter()
            await sender.send(
                inbox, Draft(to=[bob[0]], subject="dup", text="x"), idempotency_key="bench-dup"
            )
            again.append(time.perf_counter() - t0)
    finally:
        await producer.stop()
        for name, _ in (alice, bob):
            dovecot.remove_user(name)
    base = statistics.median(baseline)
    print(f"sends: {n} (noisy: shared 2-core machine)")
    print(f"baseline bare smtplib SMTP transaction  {_fmt(baseline)}")
    print(
        f"MailSender.send total                   {_fmt(total)}  "
        f"ratio {statistics.median(total) / base:.2f}x baseline"
    )
    print(
        f"  of which SMTP (aiosmtplib)            {_fmt(smtp_part)}  "
        f"ratio {statistics.median(smtp_part) / base:.2f}x baseline"
    )
    print(f"  SMTP accept -> Sent copy (APPEND)     {_fmt(append)}")
    print(f"SMTP start -> in recipient INBOX        {_fmt(delivered)}")
    print(f"retry of an already-sent key (no send)  {_fmt(again)}")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20))
