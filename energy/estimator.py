"""estimate(): the energy of every layer of a model on a hardware spec.

MAC layers (Conv, ConvTranspose, Gemm, MatMul) get the dataflow model of ``energy.dataflow``
with the best mapping ``energy.mapper`` finds; hashed and deep-reuse layers build on it
(``energy.hashed``, ``energy.reuse``). Other layers are costed by the data they move and
the ALU operations they do:

- shape ops (Reshape, Flatten, ...) cost nothing;
- an elementwise op whose only input has no other consumer is fused into its producer's
  write-back (ReLU after Conv or Add): ALU energy only;
- every other op reads its inputs from and writes its outputs to the level that backs
  activations (the outermost level holding inputs / outputs), plus its ALU operations.
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np

from hwspecs.spec import Dataflow, HardwareSpec, Operand
from energy.dataflow import OPERANDS, BatchCost, HardwareContext, evaluate, hardware_context, layer_context
from energy.errors import ModelError, OptionError
from energy.hashed import hashed_layer_energy
from energy.reuse import reuse_layer_energy
from energy.ir import Graph, Layer, OpKind
from energy.mapper import Mapping, best_in, search_pool
from energy.report import EnergyReport, LayerEnergy, OperandAccess

ARRAY_LEVEL = "array"  # the PE array network in a report's ``levels``

ASSUMPTIONS = (
    "layers run one after another; each reads its inputs from and writes its outputs to the level backing activations",
    "tiles are sized for the dense worst case; compressed operands move density x (bits + index bits) per value",
    "gated/skipped zero operands save MAC energy and the other operands' MAC-level reads; skip also saves cycles, with ideal load balance",
    "input tiles cover their whole sliding window; no reuse of window overlap between temporal tiles",
    "an elementwise op on a tensor nothing else reads is fused into its producer's write-back (ALU energy only)",
    "ConvTranspose is costed in its scatter form (one MAC per input pixel x kernel tap x output channel)",
    "hashed (SLIDE) layers: hashing, bucket lookups, active-set MACs and gathered weight rows, all at backing levels",
    "deep-reuse convs: hashing plus cluster-ratio x MACs of compute; data movement as the plain conv (an upper bound)",
)

ProgressFn = Callable[[int, int, str], None]


def _resolve_spec(spec: HardwareSpec | str | os.PathLike) -> HardwareSpec:
    if isinstance(spec, HardwareSpec):
        return spec
    from hwspecs import load_spec

    return load_spec(spec)


def _resolve_graph(model, batch, input_shapes, strict) -> tuple[Graph, tuple[str, ...]]:
    if isinstance(model, Graph):
        return model, ()
    graph = getattr(model, "graph", None)
    if isinstance(graph, Graph):  # an ImportResult
        return graph, tuple(getattr(model, "warnings", ()))
    from energy.importer import load_model

    result = load_model(model, batch=batch, input_shapes=input_shapes, strict=strict)
    return result.graph, tuple(result.warnings)


def _dataflows(spec: HardwareSpec, dataflow: Dataflow | str | None) -> tuple[Dataflow, ...]:
    if dataflow is None:
        return spec.dataflows
    try:
        wanted = dataflow if isinstance(dataflow, Dataflow) else Dataflow(str(dataflow).lower())
    except ValueError:
        names = ", ".join(d.value for d in Dataflow)
        raise OptionError(f"dataflow must be one of {names}, got {dataflow!r}") from None
    if wanted not in spec.dataflows:
        have = ", ".join(d.value for d in spec.dataflows)
        raise OptionError(f"hardware '{spec.name}' does not support dataflow '{wanted.value}' (it supports {have})")
    return (wanted,)


def _mac_layer(layer: Layer, spec: HardwareSpec, dataflows: tuple[Dataflow, ...], objective: str) -> LayerEnergy:
    best = None  # (objective value, dataflow, hardware context, layer context, pool, index)
    for df in dataflows:
        hw = hardware_context(spec, df)
        ctx = layer_context(layer, hw)
        try:
            spec.mac_energy_pj(max(ctx.bits_of(Operand.WEIGHTS), ctx.bits_of(Operand.INPUTS)))
        except ValueError as e:
            raise ModelError(str(e), node=layer.name) from None
        pool = search_pool(ctx, hw, objective)
        if len(pool) == 0:
            continue
        index, value = best_in(pool, ctx, hw, objective)
        if best is None or value < best[0]:
            best = (value, df, hw, ctx, pool, index)
    if best is None:
        raise ModelError(_no_fit_message(layer, spec), node=layer.name)
    _, df, hw, ctx, pool, index = best
    # Only the winner gets the full NumPy accounting (every access count, for the report).
    cost = evaluate(pool.take([index]), ctx, hw)
    mapping = Mapping.from_batch(pool, index, df, tuple(lv.name for lv in spec.levels))
    return _layer_energy(layer, hw, cost, 0, mapping)


def _layer_energy(layer: Layer, hw: HardwareContext, cost: BatchCost, i: int, mapping: Mapping) -> LayerEnergy:
    """The report entry of mapping ``i`` of ``cost``."""
    spec = hw.spec
    levels: dict[str, dict[str, OperandAccess]] = {}
    names = [lv.name for lv in spec.levels] + [ARRAY_LEVEL]
    for level, name in enumerate(names):
        for op in OPERANDS:
            r = float(cost.reads[(level, op)][i]) if (level, op) in cost.reads else 0.0
            w = float(cost.writes[(level, op)][i]) if (level, op) in cost.writes else 0.0
            if r == 0 and w == 0:
                continue
            if level == hw.n_levels:
                pj = r * spec.pe_array.noc_pj
            else:
                pj = r * hw.read_pj[level] + w * hw.write_pj[level]
            levels.setdefault(name, {})[op.value] = OperandAccess(int(round(r)), int(round(w)), pj)
    ctx = layer_context(layer, hw)
    n_pes = float(np.prod(mapping.spatial_rows) * np.prod(mapping.spatial_cols))
    return LayerEnergy(
        name=layer.name,
        op=layer.onnx_op,
        kind=layer.op.value,
        macs=layer.macs,
        effective_macs=cost.effective_macs,
        compute_pj=cost.compute_pj,
        levels=levels,
        static_pj=float(cost.static_pj[i]),
        energy_pj=float(cost.energy_pj[i]),
        cycles=float(cost.cycles[i]),
        utilization=n_pes / spec.pe_array.num_pes,
        mapping=mapping,
        weight_density=layer.weight_density,
        input_density=layer.input_density,
        bits={op.value: ctx.bits_of(op) for op in OPERANDS},
        note="" if cost.feasible[i] else "mapping does not fit the spec (array size or level capacity)",
    )


def estimate_mapping(layer: Layer, spec: HardwareSpec, mapping: Mapping) -> LayerEnergy:
    """Cost one MAC layer under a mapping you give (to explain or check a number by hand).
    A mapping that does not fit is still costed; its ``note`` says so."""
    if not layer.is_mac:
        raise ValueError(f"layer {layer.name} is not a MAC layer")
    assert layer.dims is not None
    d = layer.dims
    for i, (dim, bound) in enumerate(zip("NGMCPQRS", (d.N, d.G, d.M, d.C, d.P, d.Q, d.R, d.S))):
        product = mapping.spatial_rows[i] * mapping.spatial_cols[i]
        for level in mapping.temporal:
            product *= level[i]
        if product != bound:
            raise ValueError(f"mapping factors of {dim} multiply to {product}, layer {layer.name} has {dim}={bound}")
    hw = hardware_context(spec, mapping.dataflow)
    cost = evaluate(mapping.as_batch(), layer_context(layer, hw), hw)
    return _layer_energy(layer, hw, cost, 0, mapping)


def _no_fit_message(layer: Layer, spec: HardwareSpec) -> str:
    d = layer.dims
    assert d is not None
    word = spec.word_bits
    need = {
        "weights": d.weight_elements * (layer.weight_bits or word) / 8,
        "inputs": d.input_elements * (layer.input_bits or word) / 8,
        "outputs": d.output_elements * (layer.output_bits or word) / 8,
    }
    parts = []
    for op in OPERANDS:
        backing = [lv for lv in spec.levels if lv.holds(op)][-1]
        if backing.capacity_bytes is not None:
            parts.append(f"{op.value} {need[op.value]:.0f} B in {backing.name} ({backing.capacity_bytes} B)")
    detail = "; ".join(parts) if parts else "no tiling fits the levels' capacities"
    return f"no mapping fits hardware '{spec.name}': {detail}"


def fused_into_producer(layer: Layer, graph: Graph) -> bool:
    """An elementwise op on a single tensor that only it consumes is applied on the fly as its
    producer writes that tensor back (ReLU after Conv, after Add, ...)."""
    if layer.op is not OpKind.ELEMENTWISE or len(layer.inputs) != 1:
        return False
    preds = list(graph.dag.predecessors(layer.name))
    if len(preds) != 1 or graph.dag.out_degree(preds[0]) != 1:
        return False
    return graph[preds[0]].op is not OpKind.SHAPE


def _vector_layer(layer: Layer, spec: HardwareSpec, fused: bool) -> LayerEnergy:
    bits = layer.input_bits or spec.word_bits
    out_bits = layer.output_bits or bits
    ops = layer.ops_per_element * layer.output_elements
    compute_pj = ops * spec.alu_energy_pj(bits)
    levels: dict[str, dict[str, OperandAccess]] = {}
    if layer.op is OpKind.SHAPE:
        compute_pj, note = 0.0, "shape op: no data moves"
    elif fused:
        note = "fused into its producer's write-back"
    else:
        note = ""
        for op, elements, b in ((Operand.INPUTS, layer.input_elements, bits), (Operand.OUTPUTS, layer.output_elements, out_bits)):
            level = [lv for lv in spec.levels if lv.holds(op)][-1]
            words = int(np.ceil(elements * b / level.width_bits - 1e-9))
            reads, writes = (words, 0) if op is Operand.INPUTS else (0, words)
            pj = reads * level.read_pj + writes * level.write_pj
            levels.setdefault(level.name, {})[op.value] = OperandAccess(reads, writes, pj)
    moved_bytes: dict[str, float] = {}
    for name, accesses in levels.items():
        width = spec.level(name).width_bits
        moved_bytes[name] = sum(a.reads + a.writes for a in accesses.values()) * width / 8
    cycles = ops / spec.pe_array.num_pes
    for name, b in moved_bytes.items():
        bw = spec.level(name).bandwidth_bytes_per_cycle
        if bw:
            cycles = max(cycles, b / bw)
    static = spec.leakage_mw * 1e9 * cycles / spec.clock_hz
    energy = compute_pj + sum(a.energy_pj for ops_ in levels.values() for a in ops_.values()) + static
    return LayerEnergy(
        name=layer.name,
        op=layer.onnx_op,
        kind=layer.op.value,
        macs=0,
        effective_macs=0.0,
        compute_pj=compute_pj,
        levels=levels,
        static_pj=static,
        energy_pj=energy,
        cycles=cycles,
        utilization=1.0 if ops else 0.0,
        input_density=layer.input_density,
        bits={"inputs": bits, "outputs": out_bits},
        note=note,
    )


def estimate_layer(layer: Layer, spec: HardwareSpec, *, dataflow: Dataflow | str | None = None,
                   objective: str = "energy", fused: bool = False) -> LayerEnergy:
    """The energy of one layer (MAC layers: best mapping over the allowed dataflows)."""
    if objective not in ("energy", "edp"):
        raise OptionError(f"objective must be 'energy' or 'edp', got {objective!r}")
    if not layer.is_mac:
        return _vector_layer(layer, spec, fused)
    dataflows = _dataflows(spec, dataflow)

    def dataflow_model(plain: Layer) -> LayerEnergy:
        return _mac_layer(plain, spec, dataflows, objective)

    if layer.op is OpKind.REUSE:
        return reuse_layer_energy(layer, spec, dataflow_model)
    if layer.op is OpKind.HASHED:
        return hashed_layer_energy(layer, spec, dataflow_model)
    return dataflow_model(layer)


def estimate(model, spec: HardwareSpec | str | os.PathLike, *, dataflow: Dataflow | str | None = None,
             objective: str = "energy", batch: int | None = None, input_shapes: dict | None = None,
             strict: bool = False, progress: ProgressFn | None = None) -> EnergyReport:
    """Estimate the energy of ``model`` on ``spec``.

    ``model``: an ``energy.Graph``, an ``ImportResult``, a path to an ONNX file or a ModelProto.
    ``spec``: a HardwareSpec, a built-in spec name or a YAML path. ``dataflow``: restrict MAC
    layers to one of the spec's dataflows (default: the best of all it supports, per layer).
    ``objective``: ``energy`` or ``edp`` (energy-delay product) for the mapping search.
    ``progress(i, n, layer_name)`` is called before each layer.
    """
    hw_spec = _resolve_spec(spec)
    graph, warnings = _resolve_graph(model, batch, input_shapes, strict)
    _dataflows(hw_spec, dataflow)  # an unsupported dataflow fails before any work
    if objective not in ("energy", "edp"):
        raise OptionError(f"objective must be 'energy' or 'edp', got {objective!r}")
    layers = []
    ordered = graph.layers
    for i, layer in enumerate(ordered):
        if progress is not None:
            progress(i, len(ordered), layer.name)
        fused = not layer.is_mac and fused_into_producer(layer, graph)
        layers.append(estimate_layer(layer, hw_spec, dataflow=dataflow, objective=objective, fused=fused))
    return EnergyReport(
        model=graph.name,
        hardware=hw_spec.name,
        layers=tuple(layers),
        objective=objective,
        assumptions=ASSUMPTIONS,
        warnings=warnings,
    )
