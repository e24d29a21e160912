"""The dataflow cost model: access counts and energy of a MAC layer under a batch of mappings.

A mapping tiles the loop nest over N,G,M,C,P,Q,R,S across the spec's storage levels
(innermost first) and unrolls some dimensions over the PE array. It is held as arrays so that
thousands of candidate mappings are costed in one NumPy pass (see ``energy.mapper``):

- ``temporal[k, l, d]``: loop factor of dimension d at level l (loops at level l step through
  tiles of level l-1; at level 0 they step the MAC through level 0's tile);
- ``spatial_rows[k, d]``, ``spatial_cols[k, d]``: factors unrolled over the array's rows / cols;
  the array's fan-out sits right above the per-PE levels;
- ``order[k, l]``: index into ``ORDERS``, the loop order at level l (innermost first).

For each dimension the product of its factors over all levels and the array is its bound.

Counting rules (every count is in accesses of the level's ``width_bits``):

- the tile a level keeps of an operand is refilled from the next level holding that operand each
  time a loop above it that is relevant to the operand steps; irrelevant loops that sit innermost
  above it (before the first relevant loop with factor > 1) reuse the tile;
- a read-only operand (weights, inputs) read by several PEs is read once from the shared level
  above the fan-out and multicast; each PE's copy is a write into its per-PE level and one word
  over the array network (``noc_pj``);
- outputs are partial sums: a tile refilled f times with d distinct tiles is written up f times and
  read back f - d times (the Eyeriss paper's 2a-1 accesses); the first update of a fresh partial
  sum reads nothing; spatially unrolled reduction dims are summed in the array;
- each MAC reads its weight and input from the innermost level holding them and updates one
  partial sum there; with a spatial fan-out below that level, one read per array step serves all
  PEs that need the same value;
- sparsity: the spec's per-operand ``action`` (gate or skip) scales MAC energy and MAC-level
  accesses by the densities of the gated/skipped operands (the gating operand itself is still
  read), ``skip`` also scales compute cycles; a compressed ``format`` changes the bits moved per
  value at every level above the per-PE levels to density x (bits + index bits);
- tiles are sized for the dense worst case (a buffer must hold a tile whatever its sparsity), so
  feasibility never depends on density and energy never rises as density falls.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np

from hwspecs.spec import Dataflow, HardwareSpec, Operand, SparsityAction
from energy.ir import Layer, LoopDims, OpKind

DIMS = ("N", "G", "M", "C", "P", "Q", "R", "S")
DIM_INDEX = {d: i for i, d in enumerate(DIMS)}
N, G, M, C, P, Q, R, S = range(8)
OPERANDS = (Operand.WEIGHTS, Operand.INPUTS, Operand.OUTPUTS)

# Which loop dimensions index each operand (inputs: P with R, Q with S through the window).
RELEVANT = {
    Operand.WEIGHTS: np.array([d in "GMCRS" for d in DIMS]),
    Operand.INPUTS: np.array([d in "NGCPQRS" for d in DIMS]),
    Operand.OUTPUTS: np.array([d in "NGMPQ" for d in DIMS]),
}

# Loop orders, innermost first. Only the run of irrelevant loops innermost above a tile buys
# reuse, and the dims irrelevant to weights (N,P,Q), outputs (C,R,S) and inputs (M) are
# disjoint, so the six orders of these three groups (G outermost) cover every distinct reuse.
_GROUPS = {"W": (N, P, Q), "O": (C, R, S), "I": (M,)}
ORDER_NAMES = tuple("".join(p) for p in itertools.permutations("WOI"))
ORDERS = np.array(
    [[d for g in name for d in _GROUPS[g]] + [G] for name in ORDER_NAMES], dtype=np.int64
)  # (6, 8)

# Dataflow = which dims may go spatial on the array's rows and cols, and which operand the
# loops right above the per-PE levels must keep stationary ("W": weights, "O": outputs).
_SPATIAL = {
    Dataflow.WEIGHT_STATIONARY: ("CRS", "MG"),
    Dataflow.OUTPUT_STATIONARY: ("PQN", "MG"),
    Dataflow.ROW_STATIONARY: ("RC", "PNMG"),
    Dataflow.NO_LOCAL_REUSE: ("CRS", "MG"),
}
_STATIONARY = {Dataflow.WEIGHT_STATIONARY: "W", Dataflow.OUTPUT_STATIONARY: "O"}


@dataclass(frozen=True, eq=False)
class HardwareContext:
    """The spec's levels as arrays, for one dataflow."""

    spec: HardwareSpec
    dataflow: Dataflow
    n_levels: int
    n_per_pe: int  # levels below the array fan-out
    rows: int
    cols: int
    row_dims: frozenset[int]
    col_dims: frozenset[int]
    per_pe_only_dims: frozenset[int]  # dims that must be iterated inside a PE (row-stationary: S)
    orders_at: tuple[tuple[int, ...], ...]  # allowed ORDERS indices per level
    capacity_bytes: np.ndarray  # (L,), inf = unbounded
    width_bits: np.ndarray
    read_pj: np.ndarray
    write_pj: np.ndarray
    bandwidth_bytes_per_cycle: np.ndarray  # inf = unlimited
    holds: tuple[tuple[Operand, tuple[int, ...]], ...]

    def levels_holding(self, operand: Operand) -> tuple[int, ...]:
        return dict(self.holds)[operand]

    # Everything else derives from (spec, dataflow); the arrays are not hashable.
    def __hash__(self) -> int:
        return hash((self.spec, self.dataflow))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HardwareContext) and (self.spec, self.dataflow) == (other.spec, other.dataflow)


@lru_cache(maxsize=64)
def hardware_context(spec: HardwareSpec, dataflow: Dataflow) -> HardwareContext:
    rows, cols = _SPATIAL[dataflow]
    n_per_pe = spec.num_per_pe_levels
    orders_at = []
    for level in range(len(spec.levels)):
        stationary = _STATIONARY.get(dataflow)
        if stationary and level == n_per_pe and n_per_pe > 0:
            orders_at.append(tuple(i for i, name in enumerate(ORDER_NAMES) if name[0] == stationary))
        else:
            orders_at.append(tuple(range(len(ORDER_NAMES))))
    inf = float("inf")
    return HardwareContext(
        spec=spec,
        dataflow=dataflow,
        n_levels=len(spec.levels),
        n_per_pe=n_per_pe,
        rows=spec.pe_array.rows,
        cols=spec.pe_array.cols,
        row_dims=frozenset(DIM_INDEX[d] for d in rows),
        col_dims=frozenset(DIM_INDEX[d] for d in cols),
        per_pe_only_dims=frozenset({S}) if dataflow is Dataflow.ROW_STATIONARY and n_per_pe else frozenset(),
        orders_at=tuple(orders_at),
        capacity_bytes=np.array([lv.capacity_bytes if lv.capacity_bytes is not None else inf for lv in spec.levels], float),
        width_bits=np.array([lv.width_bits for lv in spec.levels], float),
        read_pj=np.array([lv.read_pj for lv in spec.levels], float),
        write_pj=np.array([lv.write_pj for lv in spec.levels], float),
        bandwidth_bytes_per_cycle=np.array(
            [lv.bandwidth_bytes_per_cycle or inf for lv in spec.levels], float
        ),
        holds=tuple((op, tuple(i for i, lv in enumerate(spec.levels) if lv.holds(op))) for op in OPERANDS),
    )


@dataclass(frozen=True)
class LayerContext:
    """What the cost model needs of one MAC layer: bounds, bits, densities, storage levels."""

    dims: LoopDims
    bounds: tuple[int, ...]  # in DIMS order
    bits: tuple[tuple[Operand, int], ...]
    density: tuple[tuple[Operand, float], ...]
    holds: tuple[tuple[Operand, tuple[int, ...]], ...]  # levels holding each operand, innermost first

    # Looked up in the hot loop of evaluate(): built once per context, not per call.
    @cached_property
    def _bits(self) -> dict[Operand, int]:
        return dict(self.bits)

    @cached_property
    def _density(self) -> dict[Operand, float]:
        return dict(self.density)

    @cached_property
    def _holds(self) -> dict[Operand, tuple[int, ...]]:
        return dict(self.holds)

    def bits_of(self, op: Operand) -> int:
        return self._bits[op]

    def density_of(self, op: Operand) -> float:
        return self._density[op]

    def levels_holding(self, op: Operand) -> tuple[int, ...]:
        return self._holds[op]


def layer_context(layer: Layer, hw: HardwareContext) -> LayerContext:
    """Bits default to the spec's word width; the second operand of an activation x activation
    MatMul lives where activations live (it is not in weight storage such as flash)."""
    assert layer.dims is not None
    d = layer.dims
    word = hw.spec.word_bits
    w_bits = layer.weight_bits or (layer.input_bits if layer.op is OpKind.MATMUL else None) or word
    bits = {
        Operand.WEIGHTS: w_bits,
        Operand.INPUTS: layer.input_bits or word,
        Operand.OUTPUTS: layer.output_bits or word,
    }
    holds = dict(hw.holds)
    if layer.op is OpKind.MATMUL:
        backing_inputs = holds[Operand.INPUTS][-1]
        holds[Operand.WEIGHTS] = tuple(l for l in holds[Operand.WEIGHTS] if l < backing_inputs) + (backing_inputs,)
    w_density = layer.input_density if layer.op is OpKind.MATMUL else layer.weight_density
    return LayerContext(
        dims=d,
        bounds=(d.N, d.G, d.M, d.C, d.P, d.Q, d.R, d.S),
        bits=tuple(bits.items()),
        density=((Operand.WEIGHTS, w_density), (Operand.INPUTS, layer.input_density), (Operand.OUTPUTS, 1.0)),
        holds=tuple(holds.items()),
    )


@dataclass
class MappingBatch:
    temporal: np.ndarray  # (K, L, 8) int64
    spatial_rows: np.ndarray  # (K, 8) int64
    spatial_cols: np.ndarray  # (K, 8) int64
    order: np.ndarray  # (K, L) int64 into ORDERS

    def __len__(self) -> int:
        return self.temporal.shape[0]

    def take(self, idx: np.ndarray | list[int]) -> "MappingBatch":
        return MappingBatch(self.temporal[idx], self.spatial_rows[idx], self.spatial_cols[idx], self.order[idx])

    @staticmethod
    def concat(batches: list["MappingBatch"]) -> "MappingBatch":
        return MappingBatch(*(np.concatenate([getattr(b, f) for b in batches]) for f in ("temporal", "spatial_rows", "spatial_cols", "order")))


@dataclass
class BatchCost:
    """Costs of K mappings. ``reads``/``writes`` map (level index, operand) -> (K,) accesses;
    level index ``n_levels`` stands for the array network (words delivered to or from PEs)."""

    feasible: np.ndarray
    energy_pj: np.ndarray
    compute_pj: float
    effective_macs: float
    cycles: np.ndarray
    reads: dict[tuple[int, Operand], np.ndarray]
    writes: dict[tuple[int, Operand], np.ndarray]
    static_pj: np.ndarray


def _footprint(op: Operand, f: np.ndarray, ctx: LayerContext) -> np.ndarray:
    """Values of ``op`` touched by a tile with per-dim factors f (..., 8), as float64."""
    if op is Operand.WEIGHTS:
        return f[..., G] * f[..., M] * f[..., C] * f[..., R] * f[..., S]
    if op is Operand.OUTPUTS:
        return f[..., N] * f[..., G] * f[..., M] * f[..., P] * f[..., Q]
    d = ctx.dims
    h = np.minimum((f[..., P] - 1) * d.stride_h + (f[..., R] - 1) * d.dilation_h + 1, d.H)
    w = np.minimum((f[..., Q] - 1) * d.stride_w + (f[..., S] - 1) * d.dilation_w + 1, d.W)
    return f[..., N] * f[..., G] * f[..., C] * h * w


def _full_size(op: Operand, ctx: LayerContext) -> float:
    d = ctx.dims
    return float({Operand.WEIGHTS: d.weight_elements, Operand.INPUTS: d.input_elements, Operand.OUTPUTS: d.output_elements}[op])


def _words(values: np.ndarray | float, bits: float, width: float) -> np.ndarray:
    """Accesses of ``width`` bits that move ``values`` values of ``bits`` bits (whole words)."""
    return np.ceil(np.asarray(values, dtype=np.float64) * bits / width - 1e-9)


def _tiles(batch: MappingBatch, hw: HardwareContext) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(spatial factors (K, 8), per-PE tile factors, tile factors with the array's fan-out,
    each level's tile factors) — the last three (K, L, 8)."""
    spatial = (batch.spatial_rows * batch.spatial_cols).astype(np.float64)
    per_pe_tile = np.cumprod(batch.temporal, axis=1, dtype=np.float64)  # each level's tile inside one PE
    with_spatial = per_pe_tile * spatial[:, None, :]
    above_fanout = (np.arange(batch.temporal.shape[1]) >= hw.n_per_pe)[None, :, None]
    return spatial, per_pe_tile, with_spatial, np.where(above_fanout, with_spatial, per_pe_tile)


def _fits(batch: MappingBatch, ctx: LayerContext, hw: HardwareContext, footprints: dict[Operand, np.ndarray]) -> np.ndarray:
    """(K,) whether each mapping fits the array and every level's capacity; ``footprints[op]``
    is (K, L): the values of op in each level's tile (dense: a buffer must hold a tile whatever
    its sparsity). A level backing an operand holds all of it."""
    used_bytes = np.zeros(footprints[Operand.WEIGHTS].shape)
    for op in OPERANDS:
        levels = ctx.levels_holding(op)
        bytes_per_value = ctx.bits_of(op) / 8
        for level in levels[:-1]:
            used_bytes[:, level] += footprints[op][:, level] * bytes_per_value
        used_bytes[:, levels[-1]] += _full_size(op, ctx) * bytes_per_value
    return (
        (batch.spatial_rows.prod(axis=1) <= hw.rows)
        & (batch.spatial_cols.prod(axis=1) <= hw.cols)
        & np.all(used_bytes <= hw.capacity_bytes[None, :] * (1 + 1e-12), axis=1)
    )


def feasible(batch: MappingBatch, ctx: LayerContext, hw: HardwareContext) -> np.ndarray:
    """(K,) whether each mapping fits the array and every level's capacity."""
    tile = _tiles(batch, hw)[3]
    return _fits(batch, ctx, hw, {op: _footprint(op, tile, ctx) for op in OPERANDS})


def _above(per_level: np.ndarray) -> np.ndarray:
    """(K, L): product of ``per_level`` over the levels above each level (1 at the top)."""
    out = np.ones_like(per_level)
    out[:, :-1] = np.cumprod(per_level[:, :0:-1], axis=1)[:, ::-1]
    return out


def _sparsity_scales(ctx: LayerContext, spec: HardwareSpec) -> tuple[float, float, dict[Operand, float]]:
    """Which densities scale MAC work (``eff_all``), compute cycles (``eff_skip``) and each
    operand's MAC-level reads (``read_scale``): a gating operand is itself still read."""
    eff_all, eff_skip = 1.0, 1.0
    read_scale = {}
    for op in (Operand.WEIGHTS, Operand.INPUTS):
        sp = spec.operand_sparsity(op)
        if sp.action is not SparsityAction.NONE:
            eff_all *= ctx.density_of(op)
        if sp.action is SparsityAction.SKIP:
            eff_skip *= ctx.density_of(op)
    for op in OPERANDS:
        sp = spec.operand_sparsity(op)
        gate_self = op is not Operand.OUTPUTS and sp.action is SparsityAction.GATE
        read_scale[op] = eff_all / ctx.density_of(op) if gate_self and ctx.density_of(op) > 0 else eff_all
    return eff_all, eff_skip, read_scale


def evaluate(batch: MappingBatch, ctx: LayerContext, hw: HardwareContext, *, fits: np.ndarray | None = None) -> BatchCost:
    """Access counts, energy and cycles of every mapping in ``batch`` (see module docstring).
    ``fits``: the caller's ``feasible(batch, ...)``, if it has it already."""
    spec = hw.spec
    K, L = batch.temporal.shape[:2]
    T = batch.temporal
    spatial, _, with_spatial, tile = _tiles(batch, hw)
    n_pes = spatial.prod(axis=1).astype(np.float64)
    macs = float(np.prod(ctx.bounds, dtype=np.float64))

    # Loops above each level: total product and the reuse bought by irrelevant innermost loops.
    above = _above(T.prod(axis=2).astype(np.float64))  # (K, L)
    order_dims = ORDERS[batch.order]  # (K, L, 8)
    t_ordered = np.take_along_axis(T, order_dims, axis=2).reshape(K, L * 8).astype(np.float64)
    prefix = np.concatenate([np.ones((K, 1)), np.cumprod(t_ordered, axis=1)], axis=1)
    positions = np.arange(L * 8)
    starts = np.arange(1, L) * 8  # where the loops above level l begin, l = 0 .. L-2

    def fills(op: Operand) -> np.ndarray:
        """(K, L): times each level's tile of ``op`` is (re)loaded."""
        hit = RELEVANT[op][order_dims].reshape(K, L * 8) & (t_ordered > 1)
        first = np.where(hit, positions, L * 8)
        next_hit = np.minimum.accumulate(first[:, ::-1], axis=1)[:, ::-1][:, starts]
        out = np.ones((K, L))
        out[:, :-1] = above[:, :-1] * prefix[:, starts] / np.take_along_axis(prefix, next_hit, axis=1)
        return out

    distinct_o = _above(np.where(RELEVANT[Operand.OUTPUTS][None, None, :], T, 1).prod(axis=2).astype(np.float64))
    footprints = {op: _footprint(op, tile, ctx) for op in OPERANDS}  # (K, L) each
    unions = {op: _footprint(op, with_spatial, ctx) for op in OPERANDS}  # the whole array's tile

    eff_all, eff_skip, read_scale = _sparsity_scales(ctx, spec)

    reads: dict[tuple[int, Operand], np.ndarray] = {}
    writes: dict[tuple[int, Operand], np.ndarray] = {}
    zeros = np.zeros(K)

    def add(store: dict, key: tuple[int, Operand], value: np.ndarray) -> None:
        store[key] = store.get(key, zeros) + value

    noc = L  # pseudo-level index of the array network
    word = float(spec.word_bits)
    for op in OPERANDS:
        levels = ctx.levels_holding(op)
        dense_bits = float(ctx.bits_of(op))
        stored_bits = spec.operand_sparsity(op).stored_bits_per_value(ctx.bits_of(op), ctx.density_of(op))

        def bits_at(level: int) -> float:
            return dense_bits if level < hw.n_per_pe else stored_bits

        f = fills(op)
        for child, parent in zip(levels[:-1], levels[1:]):
            crossing = child < hw.n_per_pe <= parent
            per_copy = footprints[op][:, child]
            copies = n_pes if child < hw.n_per_pe else np.ones(K)
            union = unions[op][:, child] if crossing else per_copy
            union_copies = np.ones(K) if crossing else copies
            child_words = copies * _words(per_copy, bits_at(child), hw.width_bits[child])
            parent_words = union_copies * _words(union, bits_at(parent), hw.width_bits[parent])
            if op is Operand.OUTPUTS:
                up, down = f[:, child], f[:, child] - distinct_o[:, child]
                add(reads, (child, op), up * child_words)
                add(writes, (child, op), down * child_words)
                add(writes, (parent, op), up * parent_words)
                add(reads, (parent, op), down * parent_words)
                moved = up + down
            else:
                add(writes, (child, op), f[:, child] * child_words)
                add(reads, (parent, op), f[:, child] * parent_words)
                moved = f[:, child]
            if crossing:
                add(reads, (noc, op), moved * copies * _words(per_copy, dense_bits, word))

        # The MACs' own accesses to the innermost level holding the operand.
        inner = levels[0]
        width = hw.width_bits[inner]
        scale = read_scale[op]
        if inner < hw.n_per_pe:
            per_mac = macs * scale * _words(1.0, dense_bits, width)
        else:  # the array sits below this level: one access per array step serves all PEs
            steps = macs / n_pes
            per_mac = steps * scale * _words(_footprint(op, spatial, ctx), dense_bits, width)
            add(reads, (noc, op), macs * scale * _words(1.0, dense_bits, word))
        if op is Operand.OUTPUTS:
            copies = n_pes if inner < hw.n_per_pe else np.ones(K)
            fresh = distinct_o[:, inner] * copies * _words(footprints[op][:, inner], dense_bits, width)
            add(writes, (inner, op), per_mac)
            add(reads, (inner, op), np.maximum(per_mac - fresh, 0.0))
        else:
            add(reads, (inner, op), per_mac)

    if fits is None:
        fits = _fits(batch, ctx, hw, footprints)
    mac_bits = max(ctx.bits_of(Operand.WEIGHTS), ctx.bits_of(Operand.INPUTS))
    effective_macs = macs * eff_all
    compute_pj = effective_macs * spec.mac_energy_pj(mac_bits)
    energy = np.full(K, compute_pj)
    level_bytes = np.zeros((K, L))
    for (level, _), count in reads.items():
        if level == noc:
            energy += count * spec.pe_array.noc_pj
            continue
        energy += count * hw.read_pj[level]
        level_bytes[:, level] += count * hw.width_bits[level] / 8
    for (level, _), count in writes.items():
        energy += count * hw.write_pj[level]
        level_bytes[:, level] += count * hw.width_bits[level] / 8
    compute_cycles = (macs / n_pes) * eff_skip
    cycles = np.maximum(compute_cycles, (level_bytes / hw.bandwidth_bytes_per_cycle[None, :]).max(axis=1))
    static = spec.leakage_mw * 1e9 * cycles / spec.clock_hz  # mW * s -> pJ
    energy = energy + static
    return BatchCost(
        feasible=fits,
        energy_pj=energy,
        compute_pj=compute_pj,
        effective_macs=effective_macs,
        cycles=cycles,
        reads=reads,
        writes=writes,
        static_pj=static,
    )


def objective_values(cost: BatchCost, objective: str) -> np.ndarray:
    """What the search minimises; infeasible mappings are +inf."""
    if objective == "energy":
        value = cost.energy_pj
    elif objective == "edp":
        value = cost.energy_pj * cost.cycles
    else:
        raise ValueError(f"objective must be 'energy' or 'edp', got {objective!r}")
    return np.where(cost.feasible, value, np.inf)


@dataclass(frozen=True, eq=False)
class ObjectivePlan:
    """Everything ``energy._objective.objective`` needs of a layer on a hardware context, as
    scalars and small arrays (operands in ``OPERANDS`` order; level ``n_levels`` is the array
    network). ``read_keys`` / ``write_keys``: the (level, operand) order in which ``evaluate``
    first touches its access dicts, which is the order it sums their energy in."""

    n_levels: int
    n_per_pe: int
    rows: int
    cols: int
    geometry: np.ndarray  # stride_h, dilation_h, H, stride_w, dilation_w, W
    orders: np.ndarray
    relevant: np.ndarray  # (3, 8) uint8
    holds: np.ndarray  # (3, L) levels holding each operand, innermost first, padded with -1
    n_holds: np.ndarray
    dense_bits: np.ndarray
    stored_bits: np.ndarray
    read_scale: np.ndarray
    backing_bytes: np.ndarray  # an operand's whole size in bytes (its backing level holds it all)
    bytes_per_value: np.ndarray
    width_bits: np.ndarray
    read_pj: np.ndarray
    write_pj: np.ndarray
    capacity_bytes: np.ndarray
    bandwidth_bytes_per_cycle: np.ndarray
    read_keys: np.ndarray  # (n, 2) int64
    write_keys: np.ndarray
    noc_pj: float
    word_bits: float
    macs: float
    compute_pj: float
    eff_skip: float
    leakage_mw: float
    clock_hz: float
    edp: bool


def _access_key_orders(ctx: LayerContext, hw: HardwareContext) -> tuple[list, list]:
    """The (level, operand index) keys of ``evaluate``'s reads and writes, in first-touch order."""
    reads, writes = {}, {}
    noc = hw.n_levels
    for i, op in enumerate(OPERANDS):
        levels = ctx.levels_holding(op)
        for child, parent in zip(levels[:-1], levels[1:]):
            if op is Operand.OUTPUTS:
                touched = [(reads, child), (writes, child), (writes, parent), (reads, parent)]
            else:
                touched = [(writes, child), (reads, parent)]
            if child < hw.n_per_pe <= parent:
                touched.append((reads, noc))
            for store, level in touched:
                store.setdefault((level, i), None)
        inner = levels[0]
        if inner >= hw.n_per_pe:
            reads.setdefault((noc, i), None)
        if op is Operand.OUTPUTS:
            writes.setdefault((inner, i), None)
        reads.setdefault((inner, i), None)
    return list(reads), list(writes)


def objective_plan(ctx: LayerContext, hw: HardwareContext, objective: str) -> ObjectivePlan:
    """The compiled objective's view of ``ctx`` on ``hw`` (every scalar ``evaluate`` derives
    from them, computed by the same expressions)."""
    if objective not in ("energy", "edp"):
        raise ValueError(f"objective must be 'energy' or 'edp', got {objective!r}")
    spec = hw.spec
    L = hw.n_levels
    eff_all, eff_skip, read_scale = _sparsity_scales(ctx, spec)
    holds = np.full((len(OPERANDS), L), -1, dtype=np.int64)
    for i, op in enumerate(OPERANDS):
        levels = ctx.levels_holding(op)
        if not levels or not all(0 <= level < L for level in levels):
            raise ValueError(f"{op.value} must be held by levels in 0..{L - 1}, got {levels}")
        holds[i, : len(levels)] = levels
    read_keys, write_keys = _access_key_orders(ctx, hw)
    mac_bits = max(ctx.bits_of(Operand.WEIGHTS), ctx.bits_of(Operand.INPUTS))
    macs = float(np.prod(ctx.bounds, dtype=np.float64))
    d = ctx.dims
    return ObjectivePlan(
        n_levels=L,
        n_per_pe=hw.n_per_pe,
        rows=hw.rows,
        cols=hw.cols,
        geometry=np.array([d.stride_h, d.dilation_h, d.H, d.stride_w, d.dilation_w, d.W], dtype=np.float64),
        orders=np.ascontiguousarray(ORDERS),
        relevant=np.array([RELEVANT[op] for op in OPERANDS], dtype=np.uint8),
        holds=holds,
        n_holds=(holds >= 0).sum(axis=1).astype(np.int64),
        dense_bits=np.array([float(ctx.bits_of(op)) for op in OPERANDS]),
        stored_bits=np.array([float(spec.operand_sparsity(op).stored_bits_per_value(ctx.bits_of(op), ctx.density_of(op)))
                              for op in OPERANDS]),
        read_scale=np.array([float(read_scale[op]) for op in OPERANDS]),
        backing_bytes=np.array([_full_size(op, ctx) * (ctx.bits_of(op) / 8) for op in OPERANDS]),
        bytes_per_value=np.array([ctx.bits_of(op) / 8 for op in OPERANDS]),
        width_bits=np.ascontiguousarray(hw.width_bits, dtype=np.float64),
        read_pj=np.ascontiguousarray(hw.read_pj, dtype=np.float64),
        write_pj=np.ascontiguousarray(hw.write_pj, dtype=np.float64),
        capacity_bytes=np.ascontiguousarray(hw.capacity_bytes, dtype=np.float64),
        bandwidth_bytes_per_cycle=np.ascontiguousarray(hw.bandwidth_bytes_per_cycle, dtype=np.float64),
        read_keys=np.array(read_keys, dtype=np.int64).reshape(-1, 2),
        write_keys=np.array(write_keys, dtype=np.int64).reshape(-1, 2),
        noc_pj=float(spec.pe_array.noc_pj),
        word_bits=float(spec.word_bits),
        macs=macs,
        compute_pj=macs * eff_all * spec.mac_energy_pj(mac_bits),
        eff_skip=float(eff_skip),
        leakage_mw=float(spec.leakage_mw),
        clock_hz=float(spec.clock_hz),
        edp=objective == "edp",
    )
