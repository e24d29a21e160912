"""The compiled search objective (energy/_objective.pyx) returns the very doubles that
energy.dataflow.evaluate computes, for every built-in spec, dataflow and objective, dense and
sparse; the mapping search therefore finds what the NumPy model would."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

import energy.mapper as mapper
from energy import load_model
from energy.dataflow import hardware_context, layer_context, objective_plan
from hwspecs import load_spec

REPO = Path(__file__).resolve().parent.parent
SPECS = sorted(p.stem for p in (REPO / "hwspecs" / "builtin").glob("*.yaml"))
MODELS = ["tiny_resnet.onnx", "tiny_mlp.onnx"]


def test_the_compiled_objective_is_built():
    # the package build must compile it; without it the search falls back to NumPy (10x slower)
    assert mapper._compiled_objective is not None and mapper._compiled_factors is not None


def _mac_layers():
    for name in MODELS:
        for layer in load_model(REPO / "examples" / "models" / name, batch=2).graph:
            if layer.is_mac:
                yield layer


@pytest.mark.parametrize("spec_name", SPECS)
def test_compiled_objective_equals_numpy_bit_for_bit(spec_name):
    spec = load_spec(spec_name)
    layers = list(_mac_layers())
    assert len(layers) >= 4
    cases = 0
    for dataflow in spec.dataflows:
        hw = hardware_context(spec, dataflow)
        for i, layer in enumerate(layers):
            # dense, and sparse weights / inputs (gating, skipping and compressed formats)
            for w_density, in_density in ((1.0, 1.0), (0.3, 0.55)):
                sparse = dataclasses.replace(layer, weight_density=w_density, input_density=in_density)
                ctx = layer_context(sparse, hw)
                space = mapper._space(ctx, hw)
                assign, orders = mapper._sample(space, hw, np.random.default_rng(i), 150)
                batch = mapper._to_batch(assign, orders, space)
                for objective in ("energy", "edp"):
                    expected = mapper.numpy_objective(batch, ctx, hw, objective)
                    got = mapper._compiled_objective(batch.temporal, batch.spatial_rows, batch.spatial_cols,
                                                     batch.order, objective_plan(ctx, hw, objective))
                    np.testing.assert_array_equal(got, expected, err_msg=f"{spec_name} {dataflow} {layer.name} {objective}")
                    cases += 1
    assert cases >= 4 * len(layers)


def test_compiled_factors_equal_the_numpy_product():
    rng = np.random.default_rng(3)
    dims = np.array([0, 2, 2, 3, 7, 4], dtype=np.int64)
    primes = np.array([2, 3, 3, 5, 2, 7], dtype=np.int64)
    assign = rng.integers(0, 5, size=(40, len(dims)))
    expected = np.ones((40, 5, 8), dtype=np.int64)
    for k in range(40):
        for i in range(len(dims)):
            expected[k, assign[k, i], dims[i]] *= primes[i]
    np.testing.assert_array_equal(mapper._compiled_factors(assign, dims, primes, 5), expected)
    # a layer with every bound 1 has no primes: all factors 1
    np.testing.assert_array_equal(mapper._compiled_factors(np.zeros((3, 0), np.int64), dims[:0], primes[:0], 4),
                                  np.ones((3, 4, 8), np.int64))


def test_compiled_kernels_reject_inconsistent_arrays():
    spec = load_spec("eyeriss")
    hw = hardware_context(spec, spec.dataflows[0])
    layer = next(_mac_layers())
    ctx = layer_context(layer, hw)
    space = mapper._space(ctx, hw)
    batch = mapper._to_batch(*mapper._sample(space, hw, np.random.default_rng(0), 10), space)
    plan = objective_plan(ctx, hw, "energy")
    with pytest.raises(ValueError, match="levels"):
        mapper._compiled_objective(batch.temporal[:, :-1], batch.spatial_rows, batch.spatial_cols, batch.order, plan)
    with pytest.raises(ValueError, match="levels"):
        mapper._compiled_objective(batch.temporal, batch.spatial_rows[:-1], batch.spatial_cols, batch.order, plan)
    with pytest.raises(ValueError, match="slot"):
        mapper._compiled_factors(np.array([[9]], np.int64), np.array([0], np.int64), np.array([2], np.int64), 4)
    with pytest.raises(ValueError, match="objective"):
        objective_plan(ctx, hw, "latency")


def _has_mac(spec, bits: int) -> bool:
    try:
        spec.mac_energy_pj(bits)
    except ValueError:
        return False
    return True


def test_compiled_objective_equals_numpy_on_random_layer_shapes():
    """Shapes the example models lack: dilation, groups, batches, act x act MatMul, 8/4-bit
    operands, odd sizes; each on a random built-in spec and dataflow."""
    from energy.ir import Layer, LoopDims, OpKind

    rng = np.random.default_rng(11)
    finite = 0
    for case in range(40):
        kind = [OpKind.CONV, OpKind.GEMM, OpKind.MATMUL][case % 3]
        r = int(rng.choice([1, 3, 5]))
        dims = LoopDims(N=int(rng.integers(1, 5)), G=int(rng.choice([1, 1, 2, 4])), M=int(rng.integers(1, 40)),
                        C=int(rng.integers(1, 40)), P=int(rng.integers(1, 15)), Q=int(rng.integers(1, 15)),
                        R=r if kind is OpKind.CONV else 1, S=r if kind is OpKind.CONV else 1,
                        stride_h=int(rng.integers(1, 3)), stride_w=int(rng.integers(1, 3)),
                        dilation_h=int(rng.integers(1, 3)), dilation_w=int(rng.integers(1, 3)))
        spec = load_spec(SPECS[case % len(SPECS)])
        bits = [b for b in (4, 8, 16) if _has_mac(spec, b)]
        layer = Layer(name=f"l{case}", op=kind, onnx_op=kind.name.title(), dims=dims,
                      weight_density=float(rng.choice([1.0, 0.4, 0.05])), input_density=float(rng.choice([1.0, 0.6])),
                      weight_bits=int(rng.choice(bits)), input_bits=int(rng.choice(bits)))
        hw = hardware_context(spec, spec.dataflows[case % len(spec.dataflows)])
        ctx = layer_context(layer, hw)
        space = mapper._space(ctx, hw)
        batch = mapper._to_batch(*mapper._sample(space, hw, rng, 120), space)
        for objective in ("energy", "edp"):
            expected = mapper.numpy_objective(batch, ctx, hw, objective)
            np.testing.assert_array_equal(
                mapper._compiled_objective(batch.temporal, batch.spatial_rows, batch.spatial_cols, batch.order,
                                           objective_plan(ctx, hw, objective)),
                expected, err_msg=f"case {case}: {dims} on {spec.name}")
            finite += int(np.isfinite(expected).sum())
    assert finite > 2000  # most of the sampled mappings fit: the comparison is of real energies
