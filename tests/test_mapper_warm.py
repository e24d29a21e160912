"""Warm-started mapping search (energy.mapper, ``like=``): how another layer's mappings are
carried over to new loop bounds, and that a warm-started estimate is a real, feasible mapping."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from energy import Layer, LoopDims, OpKind, estimate_layer, estimate_mapping
from energy import mapper
from energy.dataflow import DIM_INDEX, MappingBatch, hardware_context, layer_context
from hwspecs import load_spec

M = DIM_INDEX["M"]


def _space_for_m(primes: list[int], allowed: tuple[int, ...], n_levels: int) -> mapper._Space:
    """A space with only output-channel primes (one per entry of ``primes``)."""
    return mapper._Space(dims=np.full(len(primes), M, dtype=np.int64), primes=np.array(primes, dtype=np.int64),
                         allowed=tuple(allowed for _ in primes), orders=((0,),) * n_levels, groups=(), n_levels=n_levels)


def _pool_with_m(per_slot: list[int], n_levels: int) -> MappingBatch:
    """One mapping: M split as per_slot over the levels (innermost first), then rows, then cols."""
    temporal = np.ones((1, n_levels, 8), dtype=np.int64)
    temporal[0, :, M] = per_slot[:n_levels]
    rows = np.ones((1, 8), dtype=np.int64)
    cols = np.ones((1, 8), dtype=np.int64)
    rows[0, M], cols[0, M] = per_slot[n_levels], per_slot[n_levels + 1]
    return MappingBatch(temporal, rows, cols, np.zeros((1, n_levels), dtype=np.int64))


def test_carry_over_puts_each_prime_where_the_old_mapping_had_room():
    # Old: M = 48 as RF 4, GLB 3, DRAM 1, rows 4, cols 1 (levels RF, GLB, DRAM; slots 3 = rows, 4 = cols).
    pool = _pool_with_m([4, 3, 1, 4, 1], n_levels=3)
    # New M = 24 = 3 x 2 x 2 x 2, largest first: 3 -> RF or rows (room 4 each; RF is innermost);
    # 2 -> rows (room 4, RF has 4/3 left); 2 -> GLB (room 3 vs rows 2: the most room);
    # 2 -> rows (room 2); nothing goes to DRAM.
    space = _space_for_m([2, 2, 2, 3], allowed=(0, 1, 2, 3, 4), n_levels=3)
    assign, orders = mapper._carry_over(pool, space)
    factors = mapper._to_batch(assign, orders, space)
    assert factors.temporal[0, :, M].tolist() == [3, 2, 1]
    assert factors.spatial_rows[0, M] == 4 and factors.spatial_cols[0, M] == 1


def test_carry_over_sends_a_prime_without_room_to_the_outermost_level():
    pool = _pool_with_m([2, 2, 1, 1, 1], n_levels=3)  # M = 4
    space = _space_for_m([5], allowed=(0, 1, 2, 3), n_levels=3)  # M = 5: no slot had room for 5
    assign, _ = mapper._carry_over(pool, space)
    assert assign.tolist() == [[2]]


def _conv(m: int, c: int) -> Layer:
    dims = LoopDims(N=1, G=1, M=m, C=c, P=14, Q=14, R=3, S=3, H=16, W=16)
    return Layer("conv", OpKind.CONV, "Conv", dims=dims)


@pytest.mark.parametrize("spec_name", ["eyeriss", "edge-tpu-int8", "mobile-cpu"])
@pytest.mark.parametrize("m,c", [(40, 64), (64, 22), (17, 31)])
def test_warm_started_estimate_is_a_feasible_mapping_of_the_new_layer(spec_name, m, c):
    spec = load_spec(spec_name)
    base, pruned = _conv(64, 64), _conv(m, c)
    warm = estimate_layer(pruned, spec, like=base)
    # The reported mapping, costed on its own, gives the reported energy: it is a real mapping
    # of the pruned layer's bounds (estimate_mapping rejects one that does not fit).
    again = estimate_mapping(pruned, spec, warm.mapping)
    assert again.energy_pj == pytest.approx(warm.energy_pj, rel=1e-9)
    assert warm.effective_macs == pytest.approx(pruned.macs)
    # Deterministic: a second warm-started search of the same pair gives the same mapping.
    mapper._search_pool_cached.cache_clear()
    assert estimate_layer(pruned, spec, like=base).mapping == warm.mapping


def test_warm_start_is_never_worse_than_its_carried_over_seeds():
    spec = load_spec("eyeriss")
    hw = hardware_context(spec, spec.dataflows[0])
    base, pruned = layer_context(_conv(64, 64), hw), layer_context(_conv(40, 48), hw)
    space = mapper._space(pruned, hw)
    seeds = mapper._carry_over(mapper.search_pool(base, hw, "energy").take(np.arange(mapper.WARM_SEEDS)), space)
    best_seed = mapper._objective(*seeds, space, pruned, hw, "energy").min()
    warm = mapper.search_pool(pruned, hw, "energy", like=base)
    assert mapper.best_in(warm, pruned, hw, "energy")[1].energy_pj.min() <= best_seed * (1 + 1e-12)


def test_like_with_equal_bounds_is_the_cold_search():
    spec = load_spec("eyeriss")
    layer = _conv(32, 16)
    same = dataclasses.replace(layer, name="other")
    assert estimate_layer(layer, spec, like=same).energy_pj == estimate_layer(layer, spec).energy_pj
