"""The record path's dataclasses write their ``__init__`` out (mypyc compiles a written one;
the one dataclasses generates runs interpreted, ~15x slower). Each must take exactly its
fields, in order, with the same defaults, and keep frozen classes frozen."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import MISSING, FrozenInstanceError

import pytest

from inboxstream.processors import assign, engine, incremental, inputs, matcher, records, state
from tests.helpers.compiled_parity import run_from_source

CLASSES = [
    inputs.MessageIn,
    inputs.BodyHead,
    records.CrmRecord,
    records.Reply,
    records.Held,
    records.EngagementRecord,
    records.AttachmentInfo,
    records.Body,
    engine.Emit,
    engine.BodyRead,
    assign.MessageEntry,
    assign.Group,
    incremental._Node,
    incremental._Group,
    matcher.Match,
    state._Watermark,
]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_the_written_init_takes_the_fields_in_order(cls: type) -> None:
    """Names, order and defaults, as the build in use reports them (a compiled class's
    signature is its written ``__init__``'s)."""
    params = list(inspect.signature(cls).parameters.values())
    fields = dataclasses.fields(cls)
    assert [p.name for p in params] == [f.name for f in fields]
    for p, f in zip(params, fields, strict=True):
        if f.default_factory is not MISSING:
            assert p.default is None, f.name  # None stands for a fresh one
        else:
            assert p.default == (inspect.Parameter.empty if f.default is MISSING else f.default)


def check_assignments() -> None:
    """Every parameter lands in its own field and nowhere else; frozen stays frozen. Run from
    source: compiled, an ``__init__`` checks its argument types, and these are sentinels."""
    for cls in CLASSES:
        fields = dataclasses.fields(cls)
        values = [object() for _ in fields]
        for made in (cls(*values), cls(**{f.name: v for f, v in zip(fields, values, strict=True)})):
            assert [getattr(made, f.name) for f in fields] == values, cls.__name__
        fresh = [f for f in fields if f.default_factory is not MISSING]
        required = [f for f in fields if f.default is MISSING and f.default_factory is MISSING]
        bare = cls(*values[: len(required)])
        for f in fresh:
            assert getattr(bare, f.name) == f.default_factory(), cls.__name__  # type: ignore[misc]
        if cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
            try:
                setattr(bare, fields[0].name, None)
            except FrozenInstanceError:
                continue
            raise AssertionError(f"{cls.__name__} is not frozen")


def test_every_parameter_lands_in_its_field() -> None:
    script = "from tests.unit.processors.test_records_init import check_assignments as c; c()"
    run_from_source("-c", script)


def test_every_dataclass_of_the_record_path_is_listed() -> None:
    modules = (assign, engine, incremental, inputs, matcher, records, state)
    found = {
        obj
        for module in modules
        for obj in vars(module).values()
        if isinstance(obj, type)
        and dataclasses.is_dataclass(obj)
        and obj.__module__ == module.__name__
    }
    assert found - {state.PartitionState} == set(CLASSES)
