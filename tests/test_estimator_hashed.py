"""joulecut.HashedLinear: imported from ONNX and costed by hand."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from energy import OpKind, estimate, load_model
from energy.ir import Graph, Layer, LoopDims
from hwspecs import load_spec


def hashed_model(batch=2, cin=8, cout=64, k=3, l=2, active=0.25, mode="batched") -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((cout, cin)).astype(np.float32), "W"),
             numpy_helper.from_array(np.zeros(cout, np.float32), "B"),
             numpy_helper.from_array(rng.standard_normal((l * k, cin)).astype(np.float32), "P")]
    nodes = [helper.make_node("HashedLinear", ["x", "W", "B", "P"], ["h"], name="wide", domain="joulecut",
                              K=k, L=l, family="simhash", seed=0, active_fraction=active, mode=mode),
             helper.make_node("Relu", ["h"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "hashed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, cin])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, cout])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("joulecut", 1)])


def test_import_declares_the_output_shape_and_reads_the_attributes():
    result = load_model(hashed_model())
    assert result.warnings == ()
    layer = result.graph["wide"]
    assert layer.op is OpKind.HASHED and layer.onnx_op == "joulecut.HashedLinear"
    assert (layer.dims.N, layer.dims.C, layer.dims.M) == (2, 8, 64)
    assert (layer.hash_bits, layer.hash_tables, layer.active_fraction, layer.batched) == (3, 2, 0.25, True)
    assert result.graph["relu"].output_elements == 2 * 64  # shape propagated past the custom node


def test_hashed_cost_by_hand():
    # N=2, C=8, M=64, K=3, L=2, a=0.25 on eyeriss: the Gemm of the 16 active outputs, plus
    # hashing and the rows, projections and table entries that Gemm does not load, from DRAM.
    spec = load_spec("eyeriss")
    graph = load_model(hashed_model()).graph
    le = estimate(graph, spec).layer("wide")
    layer = graph["wide"]
    gemm = estimate(Graph("g", [layer.replace(op=OpKind.GEMM, dims=LoopDims(N=2, C=8, M=16))]), spec).layers[0]
    hash_macs = 2 * 2 * 3 * 8  # N L K C = 96, at 1 pJ each
    # union of two active sets: 1 - 0.75^2 = 0.4375 of 64 rows = 28; the Gemm loads 16: 12 more rows
    # x 8 weights x 17 bits (bitmask) / 16 = 102 words; projections 2*3*8 = 48 words;
    # bucket heads 2*2 = 4 + ids 2 * max(0.25*64, 2*64/2^3) = 32, x 32 bits / 16 = 72 words
    extra = 102 + 48 + 72
    assert le.levels["DRAM"]["weights"].reads == gemm.levels["DRAM"]["weights"].reads + extra
    assert le.effective_macs == gemm.effective_macs + hash_macs == 256 + 96
    assert le.energy_pj == pytest.approx(gemm.energy_pj + hash_macs * 1.0 + extra * 200.0)


def test_hashing_is_cheaper_than_the_dense_layer_when_few_neurons_fire():
    spec = load_spec("mobile-cpu")
    dims = LoopDims(N=1, C=128, M=100_000)
    dense = Layer("fc", OpKind.GEMM, "Gemm", dims=dims)
    hashed = Layer("fc", OpKind.HASHED, "joulecut.HashedLinear", dims=dims, hash_bits=9, hash_tables=50, active_fraction=0.05)
    e_dense = estimate(Graph("d", [dense]), spec).total_energy_pj
    e_hashed = estimate(Graph("h", [hashed]), spec).total_energy_pj
    assert e_hashed < 0.2 * e_dense
    # and dearer than the dense layer when everything fires (hashing is pure overhead then)
    everything = hashed.replace(active_fraction=1.0)
    assert estimate(Graph("h", [everything]), spec).total_energy_pj > e_dense
