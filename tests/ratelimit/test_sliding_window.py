"""The sliding-window counter with an injected clock."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from apiforge.ratelimit.gcra import NEVER
from apiforge.ratelimit.sliding_window import WindowState, sliding_window

P = 1_000_000


def run(state: WindowState | None, now: int, limit: int, cost: int = 1) -> WindowState | None:
    out = sliding_window(state, now, P, limit, cost)
    return out.state if out.allowed else state


def test_limit_per_fresh_window_then_refused() -> None:
    state: WindowState | None = None
    for i in range(5):
        out = sliding_window(state, 10 * P, P, 5, 1)
        assert out.allowed and out.remaining == 4 - i
        state = out.state
    refused = sliding_window(state, 10 * P, P, 5, 1)
    assert not refused.allowed and refused.state == state
    # At the next window's start all 5 still weigh fully: one fifth must slide out first.
    assert refused.retry_after == P + P // 5


def test_previous_window_weighs_by_overlap() -> None:
    state = (9, 10, 0)  # 10 requests in window 9
    # Half-way through window 10, the estimate is 10 * 0.5 = 5: five more pass.
    out = sliding_window(state, 10 * P + P // 2, P, 10, 5)
    assert out.allowed and out.remaining == 0
    refused = sliding_window(out.state, 10 * P + P // 2, P, 10, 1)
    assert not refused.allowed
    # 10*(P-e)/P + 5 + 1 <= 10  <=>  e >= 0.6 P
    assert refused.retry_after == P // 10
    assert sliding_window(out.state, 10 * P + 6 * P // 10, P, 10, 1).allowed
    assert not sliding_window(out.state, 10 * P + 6 * P // 10 - 1, P, 10, 1).allowed


def test_refusal_charges_nothing_and_old_state_is_forgotten() -> None:
    state = run(None, 0, 2)
    state = run(state, 0, 2)
    assert sliding_window(state, 0, P, 2, 1).state == state
    assert sliding_window(state, 2 * P, P, 2, 2).allowed  # two windows later: nothing weighs


def test_cost_above_limit_never_passes() -> None:
    assert sliding_window(None, 0, P, 3, 4).retry_after == NEVER


def test_reset_after_is_when_the_estimate_reaches_zero() -> None:
    out = sliding_window(None, P // 4, P, 3, 1)
    assert out.reset_after == 2 * P - P // 4
    peek = sliding_window(out.state, P + P // 2, P, 3, 0)
    assert peek.reset_after == P // 2


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(1, 20),
    gaps=st.lists(st.integers(0, P // 3), min_size=1, max_size=200),
    costs=st.lists(st.integers(1, 3), min_size=200, max_size=200),
)
def test_no_fixed_window_exceeds_the_limit_and_retry_after_is_exact(
    limit: int, gaps: list[int], costs: list[int]
) -> None:
    state: WindowState | None = None
    now = 0
    per_window: dict[int, int] = {}
    for gap, cost in zip(gaps, costs, strict=False):
        now += gap
        out = sliding_window(state, now, P, limit, cost)
        if out.allowed:
            state = out.state
            per_window[now // P] = per_window.get(now // P, 0) + cost
        elif out.retry_after != NEVER:
            later = now + out.retry_after
            assert sliding_window(state, later, P, limit, cost).allowed
            assert not sliding_window(state, later - 1, P, limit, cost).allowed
    assert all(count <= limit for count in per_window.values())
