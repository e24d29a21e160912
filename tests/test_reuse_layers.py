"""joulecut.ReuseConv end to end: converted from a Conv, run by the kernel runner, costed."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from energy import OpKind, estimate, load_model
from energy.errors import ModelError
from energy.ir import Graph
from kernels.runner import GraphRunner
from pruning.reuse import to_reuse

TINY = Path(__file__).resolve().parents[1] / "examples" / "models" / "tiny_resnet.onnx"


@pytest.fixture(scope="module")
def converted():
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    return x, to_reuse(TINY, ["block1/conv2"], x, sub_len=8, n_hashes=6, seed=0)


def test_runner_matches_the_measured_layer_and_stays_close(converted):
    x, result = converted
    layer = result.layers["block1/conv2"]
    assert 0 < layer.cluster_ratio < 1 and layer.mac_ratio > 1
    runner = GraphRunner(result.model)
    got = runner.run({"x": x})[0]
    exact = ort.InferenceSession(TINY.read_bytes()).run(None, {"x": x})[0]
    # reuse approximates one conv; the model's output moves by about that layer's error
    assert np.abs(got - exact).max() <= 2 * max(layer.relative_error, 1e-3) * np.abs(exact).max() + 1e-4
    run = next(r for r in runner.last_run if r.name == "block1/conv2")
    assert run.format == "reuse" and run.macs_executed < run.dense_macs


def test_estimator_costs_reuse_as_fewer_products(converted):
    _, result = converted
    graph = load_model(result.model).graph
    layer = graph["block1/conv2"]
    assert layer.op is OpKind.REUSE and layer.reuse_hashes == 6
    assert layer.cluster_ratio == pytest.approx(result.layers["block1/conv2"].cluster_ratio)
    reuse = estimate(graph, "eyeriss").layer("block1/conv2")
    plain = estimate(Graph("g", [layer.replace(op=OpKind.CONV)]), "eyeriss").layers[0]
    hash_macs = layer.dims.input_elements * 6
    assert reuse.effective_macs == pytest.approx(hash_macs + plain.effective_macs * layer.cluster_ratio)
    # only compute changes: 1 pJ per MAC on eyeriss
    assert reuse.energy_pj == pytest.approx(plain.energy_pj - plain.compute_pj + reuse.effective_macs * 1.0)


def test_only_plain_convs_convert():
    x = np.zeros((1, 3, 32, 32), np.float32)
    with pytest.raises(ModelError, match="fc"):
        to_reuse(TINY, ["fc"], x)
    with pytest.raises(ValueError, match="no layer named nope"):
        to_reuse(TINY, ["nope"], x)
