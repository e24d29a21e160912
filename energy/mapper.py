"""Mapping search: find the least-energy (or least energy-delay) mapping of a MAC layer.

Every loop bound is split into prime factors and each factor is placed in a slot: a temporal
level of the spec, or the array's rows or cols (where the dataflow lets that dimension go
spatial). Together with a loop order per level (``dataflow.ORDERS``) that is one mapping.

Small spaces are enumerated whole. Larger ones are sampled (seeded from the layer's shape, so
results are reproducible) and then improved by local search: move one prime factor to another
slot or change one level's loop order, take the best move, repeat until none helps.

Candidates are costed by ``energy._objective`` (the same doubles ``dataflow.evaluate`` gives,
computed in C); ``evaluate`` itself costs only the chosen mapping, for the report.

The search runs on the dense version of the layer and keeps a pool of the best mappings it
saw; a layer with other densities is costed over that pool. Because tiles are sized for the
dense worst case, the pool does not depend on density, so re-estimating a pruned layer is one
vectorised evaluation and energy can only fall as density falls.
"""
from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np

from hwspecs.spec import Dataflow
from energy.dataflow import (
    DIMS,
    ORDER_NAMES,
    ORDERS,
    HardwareContext,
    LayerContext,
    BatchCost,
    MappingBatch,
    evaluate,
    feasible,
    objective_plan,
    objective_values,
)

try:  # the compiled objective (energy/_objective.pyx): the same doubles, ~10x faster
    from energy._objective import factors as _compiled_factors, objective as _compiled_objective
except ImportError:  # not built (a source checkout without build_ext): NumPy does it all
    _compiled_factors = _compiled_objective = None

EXHAUSTIVE_LIMIT = 6000  # enumerate the whole space when it is at most this big
SAMPLES = 600
LOCAL_SEARCH_STARTS = 3
LOCAL_SEARCH_MAX_STEPS = 40
POOL_SIZE = 256


@dataclass(frozen=True)
class Mapping:
    """One mapping, as factors per level (innermost first) and per array axis."""

    dataflow: Dataflow
    level_names: tuple[str, ...]
    temporal: tuple[tuple[int, ...], ...]  # per level, factors in DIMS order
    spatial_rows: tuple[int, ...]
    spatial_cols: tuple[int, ...]
    order: tuple[int, ...]  # per level, index into ORDERS

    @staticmethod
    def from_batch(batch: MappingBatch, index: int, dataflow: Dataflow, level_names: tuple[str, ...]) -> "Mapping":
        return Mapping(
            dataflow=dataflow,
            level_names=level_names,
            temporal=tuple(tuple(int(x) for x in row) for row in batch.temporal[index]),
            spatial_rows=tuple(int(x) for x in batch.spatial_rows[index]),
            spatial_cols=tuple(int(x) for x in batch.spatial_cols[index]),
            order=tuple(int(x) for x in batch.order[index]),
        )

    def as_batch(self) -> MappingBatch:
        return MappingBatch(
            temporal=np.array([self.temporal], dtype=np.int64),
            spatial_rows=np.array([self.spatial_rows], dtype=np.int64),
            spatial_cols=np.array([self.spatial_cols], dtype=np.int64),
            order=np.array([self.order], dtype=np.int64),
        )

    def loops(self, level: int) -> list[tuple[str, int]]:
        """The level's loops with factor > 1, innermost first."""
        return [(DIMS[d], self.temporal[level][d]) for d in ORDERS[self.order[level]] if self.temporal[level][d] > 1]

    @staticmethod
    def _factors(factors: tuple[int, ...]) -> str:
        return " ".join(f"{DIMS[d]}{f}" for d, f in enumerate(factors) if f > 1) or "-"

    def describe(self) -> str:
        """E.g. ``DRAM[M4 C2] GLB[Q7 P7] array(rows R3 C4 | cols P14) RF[S3]`` (outermost first)."""
        parts = []
        for level in range(len(self.level_names) - 1, -1, -1):
            loops = " ".join(f"{d}{f}" for d, f in reversed(self.loops(level))) or "-"
            parts.append(f"{self.level_names[level]}[{loops}]")
        text = " ".join(parts)
        return f"{self.dataflow.value}: {text} array(rows {self._factors(self.spatial_rows)} | cols {self._factors(self.spatial_cols)})"

    def to_dict(self) -> dict:
        return {
            "dataflow": self.dataflow.value,
            "levels": {
                name: {"loops": [[d, f] for d, f in self.loops(i)], "order": ORDER_NAMES[self.order[i]]}
                for i, name in enumerate(self.level_names)
            },
            "spatial_rows": {DIMS[d]: f for d, f in enumerate(self.spatial_rows) if f > 1},
            "spatial_cols": {DIMS[d]: f for d, f in enumerate(self.spatial_cols) if f > 1},
        }


def _prime_factors(n: int) -> list[int]:
    out, p = [], 2
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    if n > 1:
        out.append(n)
    return out


@dataclass(frozen=True)
class _Space:
    """Prime factor instances and the slots each may go to (slots 0..L-1 temporal, L rows, L+1 cols)."""

    dims: np.ndarray  # (n,) dim index of each prime
    primes: np.ndarray  # (n,) prime value
    allowed: tuple[tuple[int, ...], ...]  # per prime
    orders: tuple[tuple[int, ...], ...]  # per level
    groups: tuple[tuple[int, ...], ...]  # indices of identical (dim, prime) instances
    n_levels: int

    @cached_property
    def moves(self) -> tuple[np.ndarray, np.ndarray]:
        """(prime index, slot) of every single-factor move."""
        pairs = [(i, s) for i, slots in enumerate(self.allowed) for s in slots]
        return np.array([p for p, _ in pairs], dtype=np.int64), np.array([s for _, s in pairs], dtype=np.int64)

    @cached_property
    def order_moves(self) -> tuple[np.ndarray, np.ndarray]:
        """(level, order index) of every loop-order change."""
        pairs = [(l, o) for l, allowed in enumerate(self.orders) for o in allowed]
        return np.array([l for l, _ in pairs], dtype=np.int64), np.array([o for _, o in pairs], dtype=np.int64)


def _space(ctx: LayerContext, hw: HardwareContext) -> _Space:
    L = hw.n_levels
    dims, primes, allowed = [], [], []
    for d, bound in enumerate(ctx.bounds):
        for p in _prime_factors(bound):
            slots = [l for l in range(L) if d not in hw.per_pe_only_dims or l < hw.n_per_pe]
            if d in hw.row_dims and p <= hw.rows:
                slots.append(L)
            if d in hw.col_dims and p <= hw.cols:
                slots.append(L + 1)
            dims.append(d)
            primes.append(p)
            allowed.append(tuple(slots))
    groups: dict[tuple[int, int], list[int]] = {}
    for i, key in enumerate(zip(dims, primes)):
        groups.setdefault(key, []).append(i)
    return _Space(
        dims=np.array(dims, dtype=np.int64),
        primes=np.array(primes, dtype=np.int64),
        allowed=tuple(allowed),
        orders=hw.orders_at,
        groups=tuple(tuple(g) for g in groups.values() if len(g) > 1),
        n_levels=L,
    )


def _canonical(assign: np.ndarray, space: _Space) -> np.ndarray:
    """Identical prime instances are interchangeable: sort their slots so duplicates collapse."""
    for group in space.groups:
        assign[:, group] = np.sort(assign[:, group], axis=1)
    return assign


def _to_batch(assign: np.ndarray, orders: np.ndarray, space: _Space) -> MappingBatch:
    K, L = assign.shape[0], space.n_levels
    if _compiled_factors is not None:
        factors = _compiled_factors(assign, space.dims, space.primes, L + 2)
    else:
        factors = np.ones((K, L + 2, len(DIMS)), dtype=np.int64)
        rows = np.arange(K)
        for i in range(len(space.primes)):
            factors[rows, assign[:, i], space.dims[i]] *= space.primes[i]
    return MappingBatch(factors[:, :L], factors[:, L], factors[:, L + 1], orders)


_KEY_WEIGHTS = np.random.default_rng(12345).integers(1, 2**63, size=256, dtype=np.uint64)


def _objective(assign: np.ndarray, orders: np.ndarray, space: _Space, ctx: LayerContext,
               hw: HardwareContext, objective: str) -> np.ndarray:
    """(K,) objective of each mapping, +inf where it does not fit."""
    batch = _to_batch(assign, orders, space)
    if _compiled_objective is not None:
        return _compiled_objective(batch.temporal, batch.spatial_rows, batch.spatial_cols, batch.order,
                                   _plan(ctx, hw, objective))
    return numpy_objective(batch, ctx, hw, objective)


def numpy_objective(batch: MappingBatch, ctx: LayerContext, hw: HardwareContext, objective: str) -> np.ndarray:
    """``_objective`` by ``evaluate`` itself (only fitting mappings are costed)."""
    values = np.full(len(batch), np.inf)
    fits = np.flatnonzero(feasible(batch, ctx, hw))
    if len(fits):
        values[fits] = objective_values(evaluate(batch.take(fits), ctx, hw, fits=np.ones(len(fits), bool)), objective)
    return values


@lru_cache(maxsize=4096)
def _plan(ctx: LayerContext, hw: HardwareContext, objective: str):
    return objective_plan(ctx, hw, objective)


def _dedupe_index(assign: np.ndarray, orders: np.ndarray, space: _Space) -> np.ndarray:
    """Indices of the first occurrence of each distinct mapping (rows hashed to one 64-bit key,
    which is far faster than np.unique over rows; a collision only drops one candidate)."""
    rows = np.concatenate([_canonical(assign, space), orders], axis=1).astype(np.uint64)
    keys = (rows * _KEY_WEIGHTS[: rows.shape[1]]).sum(axis=1)
    return np.sort(np.unique(keys, return_index=True)[1])


def _unique(assign: np.ndarray, orders: np.ndarray, space: _Space) -> tuple[np.ndarray, np.ndarray]:
    index = _dedupe_index(assign, orders, space)
    return assign[index], orders[index]


def _enumerate(space: _Space) -> tuple[np.ndarray, np.ndarray]:
    choices = list(space.allowed) + list(space.orders)
    grid = np.array(np.meshgrid(*[np.array(c) for c in choices], indexing="ij")).reshape(len(choices), -1).T
    n = len(space.allowed)
    return _unique(grid[:, :n].copy(), grid[:, n:].copy(), space)


def _sample(space: _Space, hw: HardwareContext, rng: np.random.Generator, k: int) -> tuple[np.ndarray, np.ndarray]:
    n, L = len(space.allowed), space.n_levels
    assign = np.empty((k, n), dtype=np.int64)
    for i, slots in enumerate(space.allowed):
        assign[:, i] = rng.choice(np.array(slots), size=k)
    # Repair array overflow: move spatial factors back to a temporal slot until they fit.
    for slot, limit in ((L, hw.rows), (L + 1, hw.cols)):
        product = np.where(assign == slot, space.primes[None, :], 1).prod(axis=1)
        for i in rng.permutation(n):
            bad = (product > limit) & (assign[:, i] == slot)
            if bad.any():
                temporal = np.array([s for s in space.allowed[i] if s < L])
                assign[bad, i] = rng.choice(temporal, size=int(bad.sum()))
                product[bad] //= space.primes[i]
    orders = np.stack([rng.choice(np.array(space.orders[l]), size=k) for l in range(L)], axis=1)
    # Always include the trivial mapping (everything at the outermost level), which is feasible
    # whenever any mapping is, so that "no feasible mapping" is a real verdict.
    trivial = np.array([[max(s for s in slots if s < L) for slots in space.allowed]], dtype=np.int64)
    trivial_orders = np.array([[space.orders[l][0] for l in range(L)]], dtype=np.int64)
    return _unique(np.concatenate([assign, trivial]), np.concatenate([orders, trivial_orders]), space)


def _neighbours(assign: np.ndarray, orders: np.ndarray, space: _Space) -> tuple[np.ndarray, np.ndarray]:
    """Every mapping one move away: one prime factor to another allowed slot, or one level to
    another allowed loop order."""
    primes, slots = space.moves
    keep = assign[primes] != slots
    primes, slots = primes[keep], slots[keep]
    moved = np.repeat(assign[None, :], len(primes), axis=0)
    moved[np.arange(len(primes)), primes] = slots
    levels, choices = space.order_moves
    keep = orders[levels] != choices
    levels, choices = levels[keep], choices[keep]
    reordered = np.repeat(orders[None, :], len(levels), axis=0)
    reordered[np.arange(len(levels)), levels] = choices
    return (np.concatenate([moved, np.repeat(assign[None, :], len(levels), axis=0)]),
            np.concatenate([np.repeat(orders[None, :], len(primes), axis=0), reordered]))


def _seed(ctx: LayerContext, hw: HardwareContext) -> int:
    key = repr((ctx.bounds, ctx.dims, ctx.bits, ctx.holds, hw.spec.name, hw.dataflow.value))
    return zlib.crc32(key.encode())


def _best(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k smallest finite values, in ascending order (ties by index)."""
    if len(values) > k:
        candidates = np.argpartition(values, k - 1)[:k]
    else:
        candidates = np.arange(len(values))
    candidates = candidates[np.lexsort((candidates, values[candidates]))]
    return candidates[np.isfinite(values[candidates])]


def _local_search(assign, orders, values, space: _Space, ctx: LayerContext, hw: HardwareContext, objective: str):
    """Steepest descent from the best few samples at once (one evaluation per step for all of
    them); returns every mapping it costed, without duplicates, so the pool sees them all."""
    seen_a, seen_o, seen_v = [assign], [orders], [values]
    current = [(assign[i], orders[i], values[i]) for i in _best(values, LOCAL_SEARCH_STARTS)]
    for _ in range(LOCAL_SEARCH_MAX_STEPS):
        if not current:
            break
        moves = [_neighbours(a, o, space) for a, o, _ in current]
        na = np.concatenate([m[0] for m in moves])
        no = np.concatenate([m[1] for m in moves])
        nv = _objective(na, no, space, ctx, hw, objective)
        seen_a.append(na)
        seen_o.append(no)
        seen_v.append(nv)
        improved, start = [], 0
        for (a, o, v), (ma, _) in zip(current, moves):
            part = nv[start:start + len(ma)]
            best = int(np.argmin(part))
            if part[best] < v * (1 - 1e-12):
                improved.append((na[start + best], no[start + best], part[best]))
            start += len(ma)
        current = improved
    assign, orders, values = np.concatenate(seen_a), np.concatenate(seen_o), np.concatenate(seen_v)
    index = _dedupe_index(assign, orders, space)
    return assign[index], orders[index], values[index]


def search_pool(ctx: LayerContext, hw: HardwareContext, objective: str) -> MappingBatch:
    """The pool of good mappings for the dense version of this layer (cached)."""
    dense = dataclasses.replace(ctx, density=tuple((op, 1.0) for op, _ in ctx.density))
    return _search_pool_cached(dense, hw, objective)


@lru_cache(maxsize=4096)
def _search_pool_cached(ctx: LayerContext, hw: HardwareContext, objective: str) -> MappingBatch:
    space = _space(ctx, hw)
    total = 1
    for choices in list(space.allowed) + list(space.orders):
        total *= len(choices)
    if total <= EXHAUSTIVE_LIMIT:
        assign, orders = _enumerate(space)
        values = _objective(assign, orders, space, ctx, hw, objective)
    else:
        rng = np.random.default_rng(_seed(ctx, hw))
        assign, orders = _sample(space, hw, rng, SAMPLES)
        values = _objective(assign, orders, space, ctx, hw, objective)
        assign, orders, values = _local_search(assign, orders, values, space, ctx, hw, objective)
    keep = _best(values, POOL_SIZE)
    return _to_batch(assign[keep], orders[keep], space)


def best_in(pool: MappingBatch, ctx: LayerContext, hw: HardwareContext, objective: str) -> tuple[int, float]:
    """Cost the pool for the layer as it is (its real densities): (index of the best mapping,
    its objective value)."""
    if _compiled_objective is not None:
        values = _compiled_objective(pool.temporal, pool.spatial_rows, pool.spatial_cols, pool.order,
                                     _plan(ctx, hw, objective))
    else:
        values = numpy_objective(pool, ctx, hw, objective)
    index = int(np.argmin(values))
    return index, float(values[index])
