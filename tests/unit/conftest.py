"""Unit tests run without services: each gets a schema-id table of its own, empty, so values
are bare Avro datums whatever integration tests in the same run registered (schemas/serde.py
``WIRE`` is process-wide)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from inboxstream.schemas import serde


@pytest.fixture(autouse=True)
def no_schema_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[serde.WireIds]:
    wire = serde.WireIds()
    monkeypatch.setattr(serde, "WIRE", wire)
    yield wire
