"""The NetAdapt proposal search (methods._largest_meeting): the highest level of one unit whose
model energy meets a goal, found with few energy probes."""
from __future__ import annotations

import math

import pytest

from pruning.methods import _largest_meeting


class _Units:
    """One channel unit of 64 channels; the state is the kept count."""

    kind = "channel"
    sizes = {"u": 64}

    def level(self, state, unit):
        return state.kept[unit].__len__() / 64

    def min_level(self, unit):
        return 1 / 64

    def snap(self, unit, level):
        return max(1, round(level * 64)) / 64


class _State:
    def __init__(self, kept: int):
        self.kept = {"u": list(range(kept))}


class _Ctx:
    def __init__(self, energy_of_count):
        self.units = _Units()
        self.energy_of_count = energy_of_count
        self.probes = 0

    def energy(self, state, override=None):
        count = round(override["u"] * 64) if override else len(state.kept["u"])
        if override:
            self.probes += 1
        return self.energy_of_count(count)


def _expected(energy_of_count, kept, goal):
    meeting = [c for c in range(kept - 1, 0, -1) if energy_of_count(c) <= goal]
    return max(meeting) / 64 if meeting else None


@pytest.mark.parametrize("energy_of_count", [
    lambda c: 100.0 + 10.0 * c,              # linear: what channel pruning looks like
    lambda c: 100.0 + 0.3 * c * c,           # convex
    lambda c: 100.0 + 40.0 * math.sqrt(c),   # concave
    lambda c: 100.0 + 10.0 * c + 25.0 * (c % 8 != 0),  # steps, as with vector-width effects
])
@pytest.mark.parametrize("goal_fraction", [0.95, 0.7, 0.4, 0.05])
def test_finds_the_highest_level_meeting_the_goal(energy_of_count, goal_fraction):
    kept = 60
    low, high = energy_of_count(1), energy_of_count(kept)
    goal = low + goal_fraction * (high - low)
    ctx = _Ctx(energy_of_count)
    assert _largest_meeting(ctx, _State(kept), "u", goal) == _expected(energy_of_count, kept, goal)
    assert ctx.probes <= 1 + 2 * math.ceil(math.log2(kept))  # never much worse than bisection


def test_linear_energy_needs_few_probes_and_unreachable_goal_is_none():
    ctx = _Ctx(lambda c: 100.0 + 10.0 * c)
    assert _largest_meeting(ctx, _State(60), "u", 100.0 + 10.0 * 37.5) == 37 / 64
    assert ctx.probes <= 4  # bisection over 59 levels would need 1 + 6
    ctx = _Ctx(lambda c: 100.0 + 10.0 * c)
    assert _largest_meeting(ctx, _State(60), "u", 105.0) is None
    assert _largest_meeting(ctx, _State(1), "u", 1e9) is None  # nothing below one channel
