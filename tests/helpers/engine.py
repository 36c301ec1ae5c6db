"""An in-memory driver for the pure processor engine (processors/engine.py): what
processors/processor.py does around it, without Kafka."""

from __future__ import annotations

from dataclasses import dataclass, field

from inboxstream.processors.engine import BodyRead, Emit, Engine, Step
from inboxstream.processors.inputs import BodyHead, MessageIn
from inboxstream.processors.records import Body
from inboxstream.processors.state import PartitionState
from inboxstream.schemas.models import BodyEvent, EngagementEvent, MessageEvent, OutboundEvent


@dataclass
class Harness:
    """The driver's part, in memory."""

    engine: Engine = field(default_factory=Engine)
    state: PartitionState = field(default_factory=lambda: PartitionState(0))
    bodies: dict[int, Body] = field(default_factory=dict)
    offsets: dict[str, int] = field(default_factory=dict)
    out: list[Emit] = field(default_factory=list)
    reads: int = 0
    # every changelog write so far, the last per key (what compaction keeps)
    changelog: dict[tuple[str, str], bytes | None] = field(default_factory=dict)

    def _offset(self, topic: str) -> int:
        n = self.offsets.get(topic, 0)
        self.offsets[topic] = n + 1
        return n

    def feed(self, event: object) -> list[Emit]:
        steps: list[Step]
        at_hand = None  # the body fed now: the driver finishes its engagement from the batch
        if isinstance(event, MessageEvent):
            offset = self._offset("messages")
            steps = self.engine.on_message(self.state, offset, MessageIn.of(event))
        elif isinstance(event, BodyEvent):
            at_hand = offset = self._offset("bodies")
            self.bodies[offset] = Body.of(event)
            steps = self.engine.on_body(self.state, offset, BodyHead.of(event))
        elif isinstance(event, OutboundEvent):
            steps = self.engine.on_crm(self.state, event)
        elif isinstance(event, EngagementEvent):
            steps = self.engine.on_delete(self.state, event)
        else:
            raise TypeError(event)
        return self._take(steps + self.engine.sweep(self.state), at_hand)

    def _take(self, steps: list[Step], at_hand: int | None = None) -> list[Emit]:
        emitted = []
        for step in steps:
            if isinstance(step, BodyRead):
                self.reads += step.offset != at_hand  # read back from the topic
                step = self.engine.finish(self.state, step, self.bodies.get(step.offset))
            emitted.append(step)
        self.out += emitted
        self.changelog.update(self.state.take_changes())
        return emitted

    def types(self, output: str = "engagements") -> list[str]:
        return [e.event.event_type for e in self.out if e.output == output]
