"""Properties that must hold for every layer shape (hypothesis), on the built-in specs."""
from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from energy import Layer, LoopDims, OpKind, estimate_layer
from hwspecs import load_spec
from hwspecs.spec import Operand, OperandSparsity, SparseFormat, SparsityAction

SPECS = ["eyeriss", "eyeriss-65nm", "generic-45nm", "edge-tpu-int8", "mobile-cpu", "cortex-m"]


@st.composite
def conv_layers(draw) -> Layer:
    """Unpadded convs, grouped or not, any stride and dilation."""
    depthwise = draw(st.booleans())
    r, s = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dil = draw(st.integers(1, 2))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    p, q = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    c = draw(st.sampled_from([1, 3, 4, 6, 8, 16]))
    groups, m, cin = (c, 1, 1) if depthwise else (1, draw(st.sampled_from([1, 2, 5, 8, 16, 24])), c)
    dims = LoopDims(N=draw(st.integers(1, 2)), G=groups, M=m, C=cin, P=p, Q=q, R=r, S=s,
                    stride_h=sh, stride_w=sw, dilation_h=dil, dilation_w=dil)
    return Layer("conv", OpKind.CONV, "Conv", dims=dims)


def touched_inputs(d: LoopDims) -> int:
    """Inputs some output needs: a stride or dilation larger than the kernel skips rows/cols."""
    rows = {p * d.stride_h + r * d.dilation_h for p in range(d.P) for r in range(d.R)}
    cols = {q * d.stride_w + s * d.dilation_w for q in range(d.Q) for s in range(d.S)}
    return d.N * d.G * d.C * len(rows) * len(cols)


def backing_floor_pj(layer: Layer, spec) -> float:
    """Read every weight and needed input once from the level backing it, write every output once."""
    d = layer.dims
    total = 0.0
    for op, n, write in ((Operand.WEIGHTS, d.weight_elements, False), (Operand.INPUTS, touched_inputs(d), False),
                         (Operand.OUTPUTS, d.output_elements, True)):
        lv = [lv for lv in spec.levels if lv.holds(op)][-1]
        words = n * spec.word_bits / lv.width_bits
        total += words * (lv.write_pj if write else lv.read_pj)
    return total


SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("name", SPECS)
@SETTINGS
@given(layer=conv_layers())
def test_energy_at_least_the_backing_store_floor(name, layer):
    spec = load_spec(name)
    energy = estimate_layer(layer, spec).energy_pj
    assert energy >= backing_floor_pj(layer, spec) * (1 - 1e-9)
    assert energy >= layer.macs * spec.mac_energy_pj(spec.word_bits) * (1 - 1e-9)


def _scale_outermost(spec, factor: float):
    levels = list(spec.levels)
    top = levels[-1]
    levels[-1] = dataclasses.replace(top, read_pj=top.read_pj * factor, write_pj=top.write_pj * factor)
    return dataclasses.replace(spec, levels=tuple(levels))


@pytest.mark.parametrize("name", ["eyeriss", "generic-45nm", "edge-tpu-int8", "mobile-cpu"])
@SETTINGS
@given(layer=conv_layers(), factor=st.sampled_from([1.5, 2.0, 10.0]))
def test_energy_grows_with_dram_cost(name, layer, factor):
    spec = load_spec(name)
    assert spec.levels[-1].capacity_bytes is None  # these specs' outermost level is DRAM
    base = estimate_layer(layer, spec).energy_pj
    dearer = estimate_layer(layer, _scale_outermost(spec, factor)).energy_pj
    assert dearer > base


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("fmt", [SparseFormat.NONE, SparseFormat.CSR, SparseFormat.BITMASK])
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layer=conv_layers(), density=st.floats(0.02, 1.0))
def test_halving_weight_density_with_skipping_never_raises_energy(name, fmt, layer, density):
    spec = load_spec(name)
    skipping = OperandSparsity(SparsityAction.SKIP, fmt, 4 if fmt is SparseFormat.CSR else 0)
    others = tuple((op, sp) for op, sp in spec.sparsity if op is not Operand.WEIGHTS)
    spec = dataclasses.replace(spec, sparsity=others + ((Operand.WEIGHTS, skipping),))
    dense = estimate_layer(layer.replace(weight_density=density), spec)
    halved = estimate_layer(layer.replace(weight_density=density / 2), spec)
    assert halved.energy_pj <= dense.energy_pj * (1 + 1e-12)
    assert halved.effective_macs == pytest.approx(dense.effective_macs / 2)
