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


# --- the NetAdapt selection rule (methods.budget) on a hand-made model ---------------------------
class _CountUnits:
    """Channel units with fixed sizes; the model energy is linear in the kept counts."""

    kind = "channel"

    def __init__(self, sizes: dict, pj_per_channel: dict, fixed_pj: float):
        self.sizes, self.pj, self.fixed = sizes, pj_per_channel, fixed_pj

    def units(self):
        return list(self.sizes)

    def name(self, unit):
        return unit

    def level(self, state, unit):
        return len(state.kept[unit]) / self.sizes[unit]

    def min_level(self, unit):
        return 1 / self.sizes[unit]

    def snap(self, unit, level):
        return max(1, round(level * self.sizes[unit])) / self.sizes[unit]

    def count(self, unit, level):
        return max(1, round(level * self.sizes[unit]))

    def level_energy(self, state):
        return {u: self.pj[u] * len(k) for u, k in state.kept.items()}


class _CountState:
    def __init__(self, counts: dict):
        self.kept = {u: list(range(c)) for u, c in counts.items()}
        self.module = self  # what the fake evaluate receives
        self.tuned = False

    def counts(self):
        return {u: len(k) for u, k in self.kept.items()}


class _BudgetCtx:
    """What the methods use of a Context; accuracy is a table of kept counts, one for fine-tuned
    states and one (``untuned``, default: the same) for states fresh from pruning."""

    finetune_epochs, short_epochs, allowed_drop = 1.0, 0.1, 0.01

    def __init__(self, units, accuracy_of: dict, default: float = 0.5, untuned: dict | None = None):
        self.units, self.accuracy_of, self.default = units, accuracy_of, default
        self.untuned = accuracy_of if untuned is None else untuned
        self.history, self.tunes = [], 0

    def energy(self, state, override=None):
        counts = state.counts()
        for u, level in (override or {}).items():
            counts[u] = self.units.count(u, level)
        return self.units.fixed + sum(self.units.pj[u] * c for u, c in counts.items())

    def pruned(self, state, unit, level):
        counts = state.counts()
        counts[unit] = self.units.count(unit, level)
        return _CountState(counts)

    def tune(self, state, epochs):
        self.tunes += 1
        state.tuned = True

    def evaluate(self, module):
        table = self.accuracy_of if module.tuned else self.untuned
        return table.get(tuple(sorted(module.counts().items())), self.default)

    def log(self, state, event, unit=None, level=None, accuracy=None, note=""):
        self.history.append({"event": event, "unit": unit, "counts": state.counts(), "accuracy": accuracy,
                             "energy_pj": self.energy(state)})


def _one_step(accuracy_of, target=154.0, initial_step=0.12):
    """Energy 100 + 10 a + 7 b pJ from (a, b) = (4, 5), i.e. 175 pJ; a step of 12 % (21 pJ) to 154 pJ:
    a alone gets there only at 1 channel (145 pJ, saves 30), b at 2 channels (154 pJ, saves 21)."""
    from pruning.methods import budget

    units = _CountUnits({"a": 4, "b": 5}, {"a": 10.0, "b": 7.0}, 100.0)
    ctx = _BudgetCtx(units, accuracy_of)
    final = budget(ctx, _CountState({"a": 4, "b": 5}), target, initial_step=initial_step)
    return ctx, final


def test_budget_keeps_the_most_accurate_proposal_not_the_least_loss_per_pj():
    # From 0.9: cutting a to one channel loses 0.10 over 30 pJ (0.0033 per pJ), cutting b to two
    # loses 0.08 over 21 pJ (0.0038 per pJ). Per pJ would collapse a; NetAdapt keeps b.
    ctx, final = _one_step({(("a", 4), ("b", 5)): 0.90, (("a", 1), ("b", 5)): 0.80, (("a", 4), ("b", 2)): 0.82})
    steps = [h for h in ctx.history if h["event"].startswith("step")]
    assert [h["counts"] for h in steps] == [{"a": 4, "b": 2}]
    assert steps[0]["accuracy"] == pytest.approx(0.82)
    assert final.counts() == {"a": 4, "b": 2} and ctx.energy(final) <= 154.0
    assert ctx.tunes == 2 + 1  # a short fine-tune per proposal, then the final one


def test_budget_ties_go_to_the_larger_saving_and_misses_rank_last():
    ctx, final = _one_step({(("a", 4), ("b", 5)): 0.90, (("a", 1), ("b", 5)): 0.82, (("a", 4), ("b", 2)): 0.82})
    assert final.counts() == {"a": 1, "b": 5}  # same accuracy: the proposal saving 30 pJ, not 21
    # One step straight to 146 pJ: only a gets there (1 channel, 145 pJ); b's minimum (147 pJ)
    # misses, so a is kept although b's proposal is more accurate.
    ctx, final = _one_step({(("a", 1), ("b", 5)): 0.60, (("a", 4), ("b", 1)): 0.95}, target=146.0, initial_step=0.5)
    assert [h["counts"] for h in ctx.history if h["event"].startswith("step")] == [{"a": 1, "b": 5}]
    assert ctx.energy(final) == pytest.approx(145.0)


def test_energy_aware_relaxed_steps_rank_candidates_after_a_short_fine_tune():
    """Every step loses more than allowed, so the accuracy-limited pass prunes nothing and the
    relaxed steps reach 168 pJ in one step: a 4 -> 3 (165 pJ) or b 5 -> 4 (168 pJ). Straight
    after pruning a looks better (0.85 vs 0.60); after the short fine-tune b does (0.88 vs 0.70),
    and b is kept."""
    from pruning.methods import energy_aware

    units = _CountUnits({"a": 4, "b": 5}, {"a": 10.0, "b": 7.0}, 100.0)
    dense, cut_a, cut_b = (("a", 4), ("b", 5)), (("a", 3), ("b", 5)), (("a", 4), ("b", 4))
    ctx = _BudgetCtx(units, {dense: 0.9, cut_a: 0.70, cut_b: 0.88}, untuned={dense: 0.9, cut_a: 0.85, cut_b: 0.60})
    final = energy_aware(ctx, _CountState({"a": 4, "b": 5}), 168.0)
    relaxed = [h for h in ctx.history if h["event"] == "relaxed prune"]
    assert [h["counts"] for h in relaxed] == [{"a": 4, "b": 4}]
    assert relaxed[0]["accuracy"] == pytest.approx(0.88)
    assert final.counts() == {"a": 4, "b": 4} and ctx.energy(final) <= 168.0
    assert ctx.tunes == 1 + 2 + 1  # the pass's fine-tune, one per candidate, the final one
