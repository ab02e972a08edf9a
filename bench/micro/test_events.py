"""What the event loop spends per audited request before its record is queued: the
``InferenceEvent`` that recorders and observers get (built once for each), against the same
frozen dataclass with the ``__init__`` that ``dataclass`` writes; and the audit plugin's record
of it."""

from __future__ import annotations

import dataclasses

import pytest

from lockgate.plugins import InferenceEvent
from lockgate.plugins.audit._plugin import inference_entry

N = 1000  # events per benchmark call
ARGS = (
    "0190c0de" * 4,
    "mlp",
    1,
    "alice",
    200,
    0.00123,
    1,
    None,
    None,
    "ab" * 32,
    b"x" * 700,
    b"y" * 200,
    None,
    1.7e9,
    "infer",
    None,
    5,
)

# The same fields, defaults and order, frozen and slotted, with dataclass's own __init__.
Generated = dataclasses.make_dataclass(
    "Generated",
    [
        (f.name, f.type, f) if f.default is not dataclasses.MISSING else (f.name, f.type)
        for f in dataclasses.fields(InferenceEvent)
    ],
    frozen=True,
    slots=True,
)


def _build(cls):
    for _ in range(N):
        cls(*ARGS)


@pytest.mark.benchmark(group=f"events: {N} InferenceEvents built")
def test_event_dataclass_init(benchmark):
    assert dataclasses.astuple(Generated(*ARGS)) == dataclasses.astuple(InferenceEvent(*ARGS))
    benchmark(_build, Generated)


@pytest.mark.benchmark(group=f"events: {N} InferenceEvents built")
def test_event_slot_init(benchmark):
    benchmark(_build, InferenceEvent)


@pytest.mark.benchmark(group=f"events: {N} audit records made")
def test_audit_entry(benchmark):
    event = InferenceEvent(*ARGS)
    entry = inference_entry(event)
    assert entry["detail"]["output_bytes"] == b"y" * 200 and "client_id" not in entry

    def run():
        for _ in range(N):
            inference_entry(event)

    benchmark(run)
