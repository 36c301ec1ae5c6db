"""How long the processor keeps what, in event time (milliseconds).

Time always comes from the events (``observed_at`` of inbox events, when our producer saw the
mail), never from the wall clock, so a replay makes the same decisions. Each partition keeps a
watermark: the largest event time it has processed.
"""

from __future__ import annotations

from inboxstream.core.contracts import (
    BODY_RETENTION_DAYS,
    DELETED_ENGAGEMENT_PURGE_DAYS,
    METADATA_RETENTION_DAYS,
    REPLY_HOLD_DAYS,
    days_ms,
)

#: A reply can be processed before the crm.outbound record of the mail it answers (the topics
#: are independent). We hold its metadata and body this long, then drop the body (and the
#: candidate). 24 h covers a CRM that logs its sends in batches or lags by hours, and is far
#: inside the 7-day body limit.
REPLY_HOLD_MS = days_ms(REPLY_HOLD_DAYS)
#: No body lives longer than this anywhere (inbox.bodies retention, processor state, sinks
#: after the ``body.expired`` event).
BODY_TTL_MS = days_ms(BODY_RETENTION_DAYS)
#: Message metadata (the thread index) is kept this long.
METADATA_TTL_MS = days_ms(METADATA_RETENTION_DAYS)
#: A deleted engagement is purged by the sinks within this; the processor forgets it then too.
DELETED_PURGE_MS = days_ms(DELETED_ENGAGEMENT_PURGE_DAYS)


def expired(since_ms: int, watermark_ms: int, ttl_ms: int) -> bool:
    """True once ``ttl_ms`` of event time has passed since ``since_ms``."""
    return watermark_ms - since_ms >= ttl_ms
