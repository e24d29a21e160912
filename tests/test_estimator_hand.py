"""Access counts and energy worked out by hand on tiny layers (the arithmetic is in the comments)."""
from __future__ import annotations

import dataclasses

import pytest

from energy import Layer, LoopDims, Mapping, OpKind, estimate, estimate_mapping
from energy.dataflow import DIMS, ORDER_NAMES
from energy.ir import Graph
from hwspecs.spec import Dataflow, HardwareSpec, MemoryLevel, Operand, PEArray

ALL = frozenset(Operand)


def level(name, capacity, read_pj, write_pj, operands=ALL, per_pe=False, width=16):
    return MemoryLevel(name, capacity, width, read_pj, write_pj, frozenset(operands), per_pe)


def two_level_spec(buffer_bytes: int) -> HardwareSpec:
    """A 1-PE machine with no per-PE storage: buffer (read 1, write 2 pJ) over DRAM (100 / 150)."""
    return HardwareSpec(
        name="two-level", description="", source="test", technology_nm=45, clock_hz=1e9, word_bits=16,
        mac_pj=((16, 1.0),),
        levels=(level("buf", buffer_bytes, 1.0, 2.0), level("DRAM", None, 100.0, 150.0)),
        pe_array=PEArray(1, 1, 0.0), dataflows=(Dataflow.NO_LOCAL_REUSE,),
    )


def factors(**kw) -> tuple[int, ...]:
    return tuple(kw.get(d, 1) for d in DIMS)


def mapping(dataflow, names, temporal, rows=None, cols=None, orders=None) -> Mapping:
    orders = orders or ["WOI"] * len(names)
    return Mapping(dataflow, tuple(names), tuple(temporal), rows or factors(), cols or factors(),
                   tuple(ORDER_NAMES.index(o) for o in orders))


CONV1D = Layer("conv1d", OpKind.CONV, "Conv", dims=LoopDims(P=4, R=3))  # 4 outputs, 3 taps, 6 inputs


def accesses(le, lv, op):
    a = le.levels[lv][op]
    return a.reads, a.writes


def test_conv1d_all_in_buffer():
    # Whole layer in the buffer: tiles W 3, I 6, O 4 values, each loaded once.
    le = estimate_mapping(CONV1D, two_level_spec(1024),
                          mapping(Dataflow.NO_LOCAL_REUSE, ["buf", "DRAM"], [factors(P=4, R=3), factors()]))
    assert accesses(le, "DRAM", "weights") == (3, 0)
    assert accesses(le, "DRAM", "inputs") == (6, 0)
    assert accesses(le, "DRAM", "outputs") == (0, 4)
    # Each of the 12 MACs reads a weight and an input from the buffer; psums: 12 updates,
    # 4 of them start from zero (no read), plus 4 reads to send the finished outputs up.
    assert accesses(le, "buf", "weights") == (12, 3)
    assert accesses(le, "buf", "inputs") == (12, 6)
    assert accesses(le, "buf", "outputs") == (8 + 4, 12)
    # 12 MAC + buf reads 36*1 + buf writes 21*2 + DRAM reads 9*100 + DRAM writes 4*150
    assert le.energy_pj == pytest.approx(12 + 36 + 42 + 900 + 600)
    assert le.compute_pj == 12


def test_conv1d_output_rows_streamed_from_dram():
    # P iterated at the DRAM level: the 3 weights stay (P is irrelevant to them), each output
    # needs its own 3-input window: I 4 fills x 3 = 12 DRAM reads, O 4 fills x 1.
    le = estimate_mapping(CONV1D, two_level_spec(1024),
                          mapping(Dataflow.NO_LOCAL_REUSE, ["buf", "DRAM"], [factors(R=3), factors(P=4)]))
    assert accesses(le, "DRAM", "weights") == (3, 0)
    assert accesses(le, "DRAM", "inputs") == (12, 0)
    assert accesses(le, "DRAM", "outputs") == (0, 4)
    assert accesses(le, "buf", "inputs") == (12, 12)
    assert accesses(le, "buf", "outputs") == (8 + 4, 12)
    # 12 + buf reads (12+12+12)*1 + buf writes (3+12+12)*2 + DRAM reads 15*100 + writes 4*150
    assert le.energy_pj == pytest.approx(12 + 36 + 54 + 1500 + 600)


def test_mapping_changes_when_the_buffer_shrinks():
    graph = Graph("g", [CONV1D])
    roomy = estimate(graph, two_level_spec(1024)).layers[0]
    # 26 B = (3 + 6 + 4) values x 2 B holds the whole layer: the first hand-computed mapping.
    assert roomy.energy_pj == pytest.approx(1590)
    assert roomy.mapping.temporal[1] == factors()
    tight = estimate(graph, two_level_spec(14)).layers[0]
    # 14 B = (3 + 3 + 1) x 2 B: only a one-output tile fits, the second mapping above.
    assert tight.energy_pj == pytest.approx(2202)
    assert tight.mapping.temporal[1] == factors(P=4)


def test_gemm_all_in_buffer():
    # x[2,2] @ W[2,2]: N=2, C=2, M=2, 8 MACs; tiles W 4, I 4, O 4.
    gemm = Layer("fc", OpKind.GEMM, "Gemm", dims=LoopDims(N=2, C=2, M=2))
    le = estimate_mapping(gemm, two_level_spec(1024),
                          mapping(Dataflow.NO_LOCAL_REUSE, ["buf", "DRAM"], [factors(N=2, C=2, M=2), factors()]))
    assert accesses(le, "buf", "outputs") == (4 + 4, 8)  # 8 updates, 4 fresh, 4 sent up
    # 8 MAC + buf reads (8+8+8)*1 + buf writes (4+4+8)*2 + DRAM reads 8*100 + writes 4*150
    assert le.energy_pj == pytest.approx(8 + 24 + 32 + 800 + 600)


def ws_spec() -> HardwareSpec:
    """1x2 array, each PE with a weight register (per-PE RF, weights only), a shared buffer, DRAM."""
    return HardwareSpec(
        name="ws", description="", source="test", technology_nm=45, clock_hz=1e9, word_bits=16,
        mac_pj=((16, 1.0),),
        levels=(level("RF", 2, 0.5, 0.5, {Operand.WEIGHTS}, per_pe=True), level("buf", 1024, 2.0, 3.0),
                level("DRAM", None, 100.0, 150.0)),
        pe_array=PEArray(1, 2, 0.25), dataflows=(Dataflow.WEIGHT_STATIONARY,),
    )


def test_weight_stationary_gemm():
    # M=2 across the 2 PEs, N and C looped at the buffer with N innermost (order W-first), so
    # each PE's weight stays while N steps: RF weight fills per PE = (N2*C2) / N2 = 2.
    gemm = Layer("fc", OpKind.GEMM, "Gemm", dims=LoopDims(N=2, C=2, M=2))
    m = mapping(Dataflow.WEIGHT_STATIONARY, ["RF", "buf", "DRAM"],
                [factors(), factors(N=2, C=2), factors()], cols=factors(M=2), orders=["WOI", "WOI", "WOI"])
    le = estimate_mapping(gemm, ws_spec(), m)
    assert accesses(le, "RF", "weights") == (8, 4)  # every MAC reads its register; 2 fills x 2 PEs
    assert accesses(le, "buf", "weights") == (4, 4)  # 2 fills x 2 distinct weights; loaded once
    # Inputs are multicast to both PEs: 4 array steps x 1 distinct input.
    assert accesses(le, "buf", "inputs") == (4, 4)
    # Psums: 4 steps x 2 outputs = 8 updates, 4 fresh; 4 more reads send them to DRAM.
    assert accesses(le, "buf", "outputs") == (4 + 4, 8)
    assert accesses(le, "DRAM", "weights") == (4, 0)
    assert accesses(le, "DRAM", "inputs") == (4, 0)
    assert accesses(le, "DRAM", "outputs") == (0, 4)
    # Array network: weights 2 fills x 2 PEs = 4 words, inputs 8 and psums 8 (one per MAC).
    assert le.levels["array"]["weights"].reads == 4
    assert le.levels["array"]["inputs"].reads == 8
    assert le.levels["array"]["outputs"].reads == 8
    # 8 MAC + RF 12*0.5 + buf reads 16*2 + buf writes 16*3 + DRAM 8*100 + 4*150 + array 20*0.25
    assert le.energy_pj == pytest.approx(8 + 6 + 32 + 48 + 1400 + 5)


def test_mapping_factors_must_match_the_layer():
    gemm = Layer("fc", OpKind.GEMM, "Gemm", dims=LoopDims(N=2, C=2, M=2))
    bad = mapping(Dataflow.NO_LOCAL_REUSE, ["buf", "DRAM"], [factors(N=2, C=2), factors()])
    with pytest.raises(ValueError, match="M multiply to 1"):
        estimate_mapping(gemm, two_level_spec(1024), bad)


def test_eight_bit_operands_pack_two_to_a_word():
    # The first conv1d mapping with 8-bit operands on 16-bit levels: DRAM moves ceil(3*8/16) = 2
    # weight words, ceil(6*8/16) = 3 input words and ceil(4*8/16) = 2 output words; the spec has
    # only a 16-bit MAC, so each of the 12 MACs costs 1 pJ.
    layer = CONV1D.replace(weight_bits=8, input_bits=8, output_bits=8)
    le = estimate_mapping(layer, two_level_spec(1024),
                          mapping(Dataflow.NO_LOCAL_REUSE, ["buf", "DRAM"], [factors(P=4, R=3), factors()]))
    assert accesses(le, "DRAM", "weights") == (2, 0)
    assert accesses(le, "DRAM", "inputs") == (3, 0)
    assert accesses(le, "DRAM", "outputs") == (0, 2)
    assert le.compute_pj == 12


def os_spec() -> HardwareSpec:
    """1x2 array, each PE with one psum accumulator (per-PE RF, outputs only), buffer, DRAM."""
    return HardwareSpec(
        name="os", description="", source="test", technology_nm=45, clock_hz=1e9, word_bits=16,
        mac_pj=((16, 1.0),),
        levels=(level("RF", 2, 0.5, 0.5, {Operand.OUTPUTS}, per_pe=True), level("buf", 1024, 2.0, 3.0),
                level("DRAM", None, 100.0, 150.0)),
        pe_array=PEArray(1, 2, 0.25), dataflows=(Dataflow.OUTPUT_STATIONARY,),
    )


def test_output_stationary_gemm():
    # M=2 across the PEs; each PE accumulates its output over C=2 in its register, N=2 at the buffer.
    gemm = Layer("fc", OpKind.GEMM, "Gemm", dims=LoopDims(N=2, C=2, M=2))
    m = mapping(Dataflow.OUTPUT_STATIONARY, ["RF", "buf", "DRAM"], [factors(C=2), factors(N=2), factors()],
                cols=factors(M=2), orders=["WOI", "OWI", "WOI"])
    le = estimate_mapping(gemm, os_spec(), m)
    # 8 MAC updates, 2 outputs x 2 PEs start fresh; each finished psum (2 per PE) goes up once
    assert accesses(le, "RF", "outputs") == (4 + 4, 8)
    assert accesses(le, "buf", "outputs") == (4, 4)  # 4 written by the PEs, 4 read to go to DRAM
    # weights and inputs stream from the buffer: 4 array steps, 2 distinct weights / 1 input each
    assert accesses(le, "buf", "weights") == (8, 4)
    assert accesses(le, "buf", "inputs") == (4, 4)
    assert (le.levels["array"]["weights"].reads, le.levels["array"]["inputs"].reads,
            le.levels["array"]["outputs"].reads) == (8, 8, 4)
    # 8 MAC + RF 16*0.5 + buf reads 16*2 + writes 12*3 + DRAM 8*100 + 4*150 + array 20*0.25
    assert le.energy_pj == pytest.approx(8 + 8 + 32 + 36 + 1400 + 5)


def test_each_objective_finds_its_own_optimum():
    # A space small enough to enumerate whole, on a 1x4 array: the energy objective's mapping
    # has the least energy, the EDP objective's the least energy x cycles, of every mapping.
    gemm = Layer("fc", OpKind.GEMM, "Gemm", dims=LoopDims(N=4, C=4, M=4))
    spec = dataclasses.replace(ws_spec(), pe_array=PEArray(1, 4, 0.25))
    by_energy = estimate(Graph("g", [gemm]), spec, objective="energy").layers[0]
    by_edp = estimate(Graph("g", [gemm]), spec, objective="edp").layers[0]
    assert by_edp.energy_pj >= by_energy.energy_pj
    assert by_edp.energy_pj * by_edp.cycles <= by_energy.energy_pj * by_energy.cycles
    # the array is used in full: 64 MACs on 4 PEs take 16 cycles
    assert by_edp.cycles == 16 and by_edp.utilization == 1.0
    serial = mapping(Dataflow.WEIGHT_STATIONARY, ["RF", "buf", "DRAM"], [factors(), factors(N=4, C=4, M=4), factors()])
    one_pe = estimate_mapping(gemm, spec, serial)
    assert one_pe.cycles == 64 and one_pe.energy_pj * one_pe.cycles > by_edp.energy_pj * by_edp.cycles
