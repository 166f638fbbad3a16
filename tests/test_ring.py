"""Ring placement is pure arithmetic: checked exactly, no IO."""

from __future__ import annotations

import pytest

from jobgrid import ring

R = ring.RING_SIZE


def place(n: int) -> list[int]:
    ps: list[int] = []
    for _ in range(n):
        ps.append(ring.largest_gap_midpoint(ps))
    return ps


def test_first_node_sits_at_zero():
    assert ring.largest_gap_midpoint([]) == 0


def test_newcomers_take_the_middle_of_the_largest_gap():
    assert place(5) == [0, 1 << 62, 1 << 61, 3 << 61, 1 << 60]


def test_placement_keeps_positions_distinct_and_on_the_ring():
    ps = place(64)
    assert len(set(ps)) == 64
    assert all(0 <= p < R for p in ps)


def test_largest_gap_wins_over_order_of_arrival():
    # gap 0..100 is small, 100..0 (wrapping) is huge: the newcomer goes into the wrap-around gap
    mid = ring.largest_gap_midpoint([0, 100])
    assert mid == 100 + (R - 100) // 2


def test_gap_after_wraps_and_a_lone_position_owns_the_whole_ring():
    assert ring.gap_after(10, 20) == 10
    assert ring.gap_after(R - 10, 5) == 15
    assert ring.gap_after(7, 7) == R


def test_successors_run_clockwise_and_wrap_around():
    ps = [0, 1 << 61, 1 << 62, 3 << 61]
    assert ring.successors(ps, 1 << 62, 2) == [3 << 61, 0]
    assert ring.successors(ps, 3 << 61, 3) == [0, 1 << 61, 1 << 62]
    assert ring.successors(ps, 0, 10) == [1 << 61, 1 << 62, 3 << 61]  # never itself, never repeats
    assert ring.successors(ps, 0, 0) == []
    assert ring.successors([5], 5, 2) == []


def test_clockwise_excludes_the_start_and_starts_after_it():
    assert ring.clockwise([30, 10, 20], 20) == [30, 10]
    assert ring.clockwise([30, 10, 20], 15) == [20, 30, 10]


def test_covering_is_the_first_position_at_or_after_the_point():
    ps = [0, 1 << 61, 1 << 62]
    assert ring.covering(ps, 1 << 61) == 1 << 61
    assert ring.covering(ps, (1 << 61) + 1) == 1 << 62
    assert ring.covering(ps, (1 << 62) + 1) == 0  # wraps to the start
    with pytest.raises(ValueError):
        ring.covering([], 5)
