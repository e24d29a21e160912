"""The cost of a hashed (SLIDE) fully connected layer: hashing, table lookups, the active-set
MACs and the weight rows it gathers.

For N samples, C inputs, M outputs, K hash bits, L tables and active fraction a:

- the products: the dataflow model's cost of the Gemm with a x M outputs (N x a x M x C MACs
  with all the on-chip traffic they cause), plus the weight rows that layer does not load:
  batched mode loads each active row once for all samples that chose it, u x M rows with
  u = 1 - (1 - a)^N (the expected union of N active sets), so (u - a) x M x C more values;
  per-sample mode loads every sample's own rows, (N - 1) x a x M x C more;
- hashing: N x L x K x C multiply-adds (SimHash projections; DWTA costs about the same in
  compares), and the L x K x C projections read once;
- table lookups: N x L bucket heads plus the active ids, N x max(a x M, L x M / 2^K) of them
  (the expected size of L buckets under uniform hashing, never fewer than the ids used),
  32 bits each;
- the extra weights, projections and tables move at the weights' backing level: a hashed layer
  exists to avoid loading most of a weight matrix too large to keep on chip.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

from hwspecs.spec import HardwareSpec, Operand
from energy.ir import Layer, OpKind
from energy.report import LayerEnergy, OperandAccess

ID_BITS = 32


def hashed_layer_energy(layer: Layer, spec: HardwareSpec, gemm_energy: Callable[[Layer], LayerEnergy]) -> LayerEnergy:
    """``gemm_energy`` costs an ordinary Gemm layer (the estimator's dataflow model)."""
    d = layer.dims
    assert d is not None
    n, c, m = d.N, d.C, d.M
    a, k, l = layer.active_fraction, layer.hash_bits, layer.hash_tables
    active_rows = max(1, round(a * m))
    products = gemm_energy(layer.replace(op=OpKind.GEMM, dims=dataclasses.replace(d, M=active_rows)))

    w_bits = layer.weight_bits or spec.word_bits
    stored_bits = spec.operand_sparsity(Operand.WEIGHTS).stored_bits_per_value(w_bits, layer.weight_density)
    union = 1.0 - (1.0 - a) ** n
    extra_rows = (union - a) * m if layer.batched else (n - 1) * a * m
    ids = n * max(a * m, l * m / 2 ** k if k else a * m)
    level = [lv for lv in spec.levels if lv.holds(Operand.WEIGHTS)][-1]

    def words(values: float, bits: float) -> int:
        return int(math.ceil(values * bits / level.width_bits - 1e-9))

    extra_reads = words(max(extra_rows, 0.0) * c, stored_bits) + words(l * k * c, w_bits) + words(n * l + ids, ID_BITS)
    hash_macs = n * l * k * c
    hash_pj = hash_macs * spec.mac_energy_pj(max(w_bits, layer.input_bits or spec.word_bits))

    levels = {name: dict(ops) for name, ops in products.levels.items()}
    previous = levels.setdefault(level.name, {}).get("weights", OperandAccess(0, 0, 0.0))
    levels[level.name]["weights"] = OperandAccess(previous.reads + extra_reads, previous.writes,
                                                  previous.energy_pj + extra_reads * level.read_pj)
    extra_cycles = hash_macs / spec.pe_array.num_pes
    if level.bandwidth_bytes_per_cycle:
        extra_cycles = max(extra_cycles, extra_reads * level.width_bits / 8 / level.bandwidth_bytes_per_cycle)
    static = spec.leakage_mw * 1e9 * extra_cycles / spec.clock_hz
    energy = products.energy_pj + hash_pj + extra_reads * level.read_pj + static
    active_macs = products.effective_macs
    return dataclasses.replace(
        products, name=layer.name, op=layer.onnx_op, kind=layer.op.value, macs=layer.macs,
        effective_macs=active_macs + hash_macs, compute_pj=products.compute_pj + hash_pj, levels=levels,
        static_pj=products.static_pj + static, energy_pj=energy, cycles=products.cycles + extra_cycles,
        note=(f"hashed: K={k} L={l}, {100 * a:.1f}% active: {hash_macs} hash MACs + {active_macs:.0f} active MACs; "
              f"{union * m if layer.batched else n * a * m:.0f} weight rows gathered "
              f"({'batched' if layer.batched else 'per sample'})"),
    )
