"""GCRA with an injected clock: a published table replayed step by step, then properties."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apiforge.ratelimit.gcra import NEVER, gcra

TABLE: dict[str, Any] = json.loads(
    (Path(__file__).parent / "vectors" / "gcra_table.json").read_text()
)
S = 1_000_000


def test_table_replays_in_order() -> None:
    """The rows share one bucket: each row starts from the state the previous rows left."""
    emission: int = TABLE["emission_us"]
    tolerance = TABLE["burst"] * emission
    tat: int | None = None
    for row in TABLE["rows"]:
        out = gcra(tat, row["at_ms"] * 1000, emission, tolerance, row["cost"])
        expected_retry = NEVER if row["retry_after_ms"] is None else row["retry_after_ms"] * 1000
        got = (out.allowed, out.remaining, out.reset_after, out.retry_after)
        want = (row["allowed"], row["remaining"], row["reset_after_ms"] * 1000, expected_retry)
        assert got == want, f"case {row['case']}"
        if out.allowed:
            tat = out.tat


@pytest.mark.parametrize("burst", [1, 2, 5, 100])
def test_burst_is_what_passes_at_once_from_idle(burst: int) -> None:
    """Burst B: B requests at t=0 pass, the B+1-th is refused, then one per period/rate."""
    emission = S  # rate 1 per second
    tat: int | None = None
    for _ in range(burst):
        out = gcra(tat, 0, emission, burst * emission, 1)
        assert out.allowed
        tat = out.tat
    refused = gcra(tat, 0, emission, burst * emission, 1)
    assert not refused.allowed
    assert refused.retry_after == emission
    assert not gcra(tat, emission - 1, emission, burst * emission, 1).allowed
    again = gcra(tat, emission, emission, burst * emission, 1)
    assert again.allowed
    assert not gcra(again.tat, emission, emission, burst * emission, 1).allowed


def test_steady_rate_is_admitted_forever() -> None:
    emission, tolerance = S // 10, 3 * (S // 10)
    tat: int | None = None
    for step in range(1000):
        out = gcra(tat, step * emission, emission, tolerance, 1)
        assert out.allowed
        tat = out.tat


def test_exact_with_non_integral_interval() -> None:
    """rate 3 per second: a float interval summed three times would refuse the third."""
    emission = -(-S // 3)
    tat: int | None = None
    for _ in range(3):
        out = gcra(tat, 0, emission, 3 * emission, 1)
        assert out.allowed
        tat = out.tat
    assert not gcra(tat, 0, emission, 3 * emission, 1).allowed


def test_refusal_charges_nothing() -> None:
    emission, tolerance = S, 2 * S
    first = gcra(None, 0, emission, tolerance, 2)
    refused = gcra(first.tat, 0, emission, tolerance, 1)
    assert not refused.allowed
    assert refused.tat == first.tat
    # Hammering while refused does not push recovery further away.
    for _ in range(100):
        assert gcra(first.tat, 0, emission, tolerance, 1).tat == first.tat
    assert gcra(first.tat, S, emission, tolerance, 1).allowed


def test_weighted_cost_and_recovery() -> None:
    emission, tolerance = S, 10 * S
    out = gcra(None, 0, emission, tolerance, 7)
    assert out.allowed and out.remaining == 3
    heavy = gcra(out.tat, 0, emission, tolerance, 4)
    assert not heavy.allowed and heavy.retry_after == S
    assert gcra(out.tat, S, emission, tolerance, 4).allowed
    idle = gcra(out.tat, 7 * S, emission, tolerance, 0)
    assert idle.remaining == 10 and idle.reset_after == 0


def test_cost_above_burst_never_passes() -> None:
    out = gcra(None, 0, S, 3 * S, 4)
    assert not out.allowed and out.retry_after == NEVER


@settings(max_examples=200, deadline=None)
@given(
    rate=st.integers(1, 50),
    burst=st.integers(1, 20),
    gaps=st.lists(st.integers(0, 2 * S), min_size=1, max_size=200),
)
def test_never_more_than_burst_plus_rate_in_any_period(
    rate: int, burst: int, gaps: list[int]
) -> None:
    """Over any span of length d, at most B + d/T requests pass."""
    emission = -(-S // rate)
    tat: int | None = None
    now = 0
    admitted: list[int] = []
    for gap in gaps:
        now += gap
        out = gcra(tat, now, emission, burst * emission, 1)
        if out.allowed:
            admitted.append(now)
            tat = out.tat
    for i, start in enumerate(admitted):
        inside = [t for t in admitted[i:] if t - start <= S]
        assert len(inside) <= burst + (S // emission)
