"""The compiled runner's fast paths against onnxruntime and hand counts: fused Conv/Gemm
epilogues (folded BatchNorm, residual Add, Relu, Clip), channel-major views between layers,
buffer reuse, and the conv geometry each format takes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from kernels.runner import GraphRunner, choose_format

ROOT = Path(__file__).resolve().parents[1]
TINY_RESNET = ROOT / "examples" / "models" / "tiny_resnet.onnx"


def make_model(nodes, inputs: dict, outputs: list[str], inits: dict, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in inputs.items()],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def onnxruntime_outputs(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def assert_matches(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert np.abs(g - w).max() <= 1e-4 * max(np.abs(w).max(), 1e-30)


def sparse(rng, shape, density=0.1) -> np.ndarray:
    w = rng.standard_normal(shape).astype(np.float32)
    return w * (rng.random(shape) < density)


def counts(runner: GraphRunner) -> list[tuple]:
    return [(r.name, r.op, r.macs_executed, r.dense_macs, r.weight_bytes, r.activation_bytes) for r in runner.last_run]


def prune_tiny_resnet(how: str) -> onnx.ModelProto:
    model = onnx.load(TINY_RESNET)
    rng = np.random.default_rng(0)
    for t in model.graph.initializer:
        w = numpy_helper.to_array(t).copy()
        if w.ndim < 2 or how == "none":
            continue
        if how == "magnitude":
            w[np.abs(w) < np.quantile(np.abs(w), 0.9)] = 0
        elif how == "channels" and w.ndim == 4:
            w[: w.shape[0] // 2] = 0
        elif how == "blocks" and w.shape[0] % 4 == 0 and w.reshape(w.shape[0], -1).shape[1] % 4 == 0:
            w2 = w.reshape(w.shape[0] // 4, 4, -1, 4)
            w = (w2 * (rng.random((w2.shape[0], 1, w2.shape[2], 1)) < 0.1)).reshape(w.shape)
        t.CopyFrom(numpy_helper.from_array(w.astype(np.float32), t.name))
    return model


@pytest.mark.parametrize("how", ["none", "magnitude", "blocks", "channels"])
@pytest.mark.parametrize("batch", [1, 3])
def test_fusion_keeps_outputs_and_counts(how, batch):
    model = prune_tiny_resnet(how)
    feeds = {"x": np.random.default_rng(1).standard_normal((batch, 3, 32, 32)).astype(np.float32)}
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = batch
    want = onnxruntime_outputs(model, feeds)
    for mode in ("auto", "dense"):
        fused, plain = GraphRunner(model, mode=mode), GraphRunner(model, mode=mode, fuse=False)
        got_fused, got_plain = fused.run(feeds), plain.run(feeds)
        assert_matches(got_fused, want)
        assert_matches(got_plain, want)
        assert got_fused[0].flags.c_contiguous
        assert counts(fused) == counts(plain)
        formats = {r.name: r.format for r in fused.last_run}
        assert formats["block1/bn2"] == formats["block1/add"] == formats["block1/relu2"] == "fused"
        assert {r.name: r.format for r in plain.last_run}["block1/bn2"] == "numpy"
        # 23 nodes: 6 conv chains absorb 13 BN/Add/Relu nodes
        assert len(plain.steps) == 23 and len(fused.steps) == 10
        assert ("block1/conv2", "block1/bn2", "block1/add", "block1/relu2") in fused.steps


def residual_model(rng, bn_scale: np.ndarray) -> tuple[onnx.ModelProto, dict]:
    """Conv 3x3 (3->4, pads 1, bias) -> BN -> Add(1x1 conv of x) -> Relu -> Flatten -> Gemm -> Relu."""
    inits = {"w": sparse(rng, (4, 3, 3, 3), 0.3), "b": rng.standard_normal(4).astype(np.float32),
             "scale": bn_scale, "shift": rng.standard_normal(4).astype(np.float32),
             "mean": rng.standard_normal(4).astype(np.float32), "var": rng.random(4).astype(np.float32) + 0.5,
             "wp": np.eye(4, 3, dtype=np.float32)[:, :, None, None] * np.float32(1.5),  # 4 of 12 nonzero: CSR
             "fc": sparse(rng, (5, 4 * 6 * 6), 0.1),
             "fcb": rng.standard_normal(5).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("BatchNormalization", ["c", "scale", "shift", "mean", "var"], ["n"], name="bn"),
             helper.make_node("Conv", ["x", "wp"], ["p"], name="proj"),
             helper.make_node("Add", ["p", "n"], ["s"], name="add"),
             helper.make_node("Relu", ["s"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc", "fcb"], ["g"], transB=1, name="fc"),
             helper.make_node("Relu", ["g"], ["y"], name="fc_relu")]
    return make_model(nodes, {"x": [2, 3, 6, 6]}, ["y"], inits), inits


def test_fused_counts_by_hand():
    rng = np.random.default_rng(2)
    model, w = residual_model(rng, rng.standard_normal(4).astype(np.float32) + 2)
    feeds = {"x": rng.standard_normal((2, 3, 6, 6)).astype(np.float32)}
    runner = GraphRunner(model)
    assert_matches(runner.run(feeds), onnxruntime_outputs(model, feeds))
    # the conv (first in graph order) claims BN, Add and Relu; it runs where the Relu stood
    assert runner.steps == [("proj",), ("conv", "bn", "add", "relu"), ("flatten",), ("fc", "fc_relu")]
    runs = {r.name: r for r in runner.last_run}
    assert [r.name for r in runner.last_run] == ["conv", "bn", "proj", "add", "relu", "flatten", "fc", "fc_relu"]
    x_bytes, act = 2 * 3 * 6 * 6 * 4, 2 * 4 * 6 * 6 * 4  # input and every [2, 4, 6, 6] activation
    pixels = 2 * 6 * 6
    nnz = {k: int(np.count_nonzero(w[k])) for k in ("w", "wp", "fc")}
    assert runs["conv"].format in ("csr", "direct")  # direct: the same CSRMatrix, run without im2col
    assert (runs["conv"].macs_executed, runs["conv"].dense_macs) == (nnz["w"] * pixels, 4 * 27 * pixels)
    assert runs["proj"].macs_executed == nnz["wp"] * pixels and runs["proj"].dense_macs == 4 * 3 * pixels
    assert runs["fc"].macs_executed == nnz["fc"] * 2 and runs["fc"].dense_macs == 5 * 144 * 2
    assert runs["conv"].weight_bytes == nnz["w"] * 8 + 5 * 4  # CSR: value + index per nonzero, indptr
    assert runs["conv"].activation_bytes == x_bytes + act
    assert runs["bn"].activation_bytes == 2 * act
    assert runs["add"].activation_bytes == 3 * act
    assert runs["relu"].activation_bytes == runs["flatten"].activation_bytes == 2 * act
    assert runs["fc"].activation_bytes == act + 2 * 5 * 4
    assert runs["fc_relu"].activation_bytes == 2 * 2 * 5 * 4
    assert all(runs[k].format == "fused" and runs[k].seconds == 0 for k in ("bn", "add", "relu", "fc_relu"))
    assert counts(runner) == counts(_ran(model, feeds))


def _ran(model, feeds) -> GraphRunner:
    runner = GraphRunner(model, fuse=False)
    runner.run(feeds)
    return runner


def test_batchnorm_with_a_zero_scale_is_not_folded():
    rng = np.random.default_rng(3)
    scale = rng.standard_normal(4).astype(np.float32) + 2
    scale[1] = 0.0  # folding would zero a whole filter and change the executed MACs
    model, w = residual_model(rng, scale)
    feeds = {"x": rng.standard_normal((2, 3, 6, 6)).astype(np.float32)}
    runner = GraphRunner(model)
    assert_matches(runner.run(feeds), onnxruntime_outputs(model, feeds))
    assert runner.steps[0] == ("conv",) and ("bn",) in runner.steps
    runs = {r.name: r for r in runner.last_run}
    assert runs["bn"].format == "numpy"
    assert runs["conv"].macs_executed == int(np.count_nonzero(w["w"])) * 2 * 6 * 6


def test_an_intermediate_that_is_a_graph_output_is_not_fused():
    rng = np.random.default_rng(4)
    inits = {"w": sparse(rng, (4, 3, 3, 3), 0.2), "lo": np.float32(-0.5), "hi": np.float32(0.7)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Clip", ["c", "lo", "hi"], ["y"], name="clip")]
    feeds = {"x": rng.standard_normal((2, 3, 5, 5)).astype(np.float32)}
    both = make_model(nodes, {"x": [2, 3, 5, 5]}, ["c", "y"], inits)
    runner = GraphRunner(both)
    assert runner.steps == [("conv",), ("clip",)]
    assert_matches(runner.run(feeds), onnxruntime_outputs(both, feeds))
    only_y = make_model(nodes, {"x": [2, 3, 5, 5]}, ["y"], inits)
    runner = GraphRunner(only_y)
    assert runner.steps == [("conv", "clip")]
    assert_matches(runner.run(feeds), onnxruntime_outputs(only_y, feeds))


def test_outputs_survive_the_next_call_and_a_new_batch_size():
    model = prune_tiny_resnet("magnitude")
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    rng = np.random.default_rng(5)
    runner = GraphRunner(model)
    first = {"x": rng.standard_normal((2, 3, 32, 32)).astype(np.float32)}
    out1 = runner.run(first)[0]
    kept = out1.copy()
    for batch in (4, 1, 2):
        feeds = {"x": rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)}
        assert_matches(runner.run(feeds), onnxruntime_outputs(model, feeds))
    assert np.array_equal(out1, kept)  # the buffers reused by later calls are not what run() returned
    assert_matches([out1], onnxruntime_outputs(model, first))


CONV_CASES = {  # name: (Conv attributes, weight shape, input shape)
    "3x3 pad1": ({"pads": [1, 1, 1, 1]}, (16, 4, 3, 3), (2, 4, 7, 7)),
    "3x3 stride2": ({"pads": [1, 1, 1, 1], "strides": [2, 2]}, (8, 4, 3, 3), (2, 4, 8, 8)),
    "3x3 dilation2": ({"pads": [2, 2, 2, 2], "dilations": [2, 2]}, (8, 4, 3, 3), (1, 4, 9, 9)),
    "asymmetric pads": ({"pads": [0, 1, 2, 1]}, (8, 4, 3, 3), (2, 4, 6, 6)),
    "same upper": ({"auto_pad": "SAME_UPPER", "strides": [2, 2]}, (8, 4, 2, 2), (2, 4, 7, 7)),
    "1x1": ({}, (8, 4, 1, 1), (3, 4, 5, 5)),
    "1x1 stride2": ({"strides": [2, 2]}, (8, 4, 1, 1), (2, 4, 6, 6)),
    "grouped": ({"pads": [1, 1, 1, 1], "group": 2}, (8, 2, 3, 3), (2, 4, 6, 6)),
}


def conv_weight(fmt: str, shape, rng) -> np.ndarray:
    w = rng.standard_normal(shape).astype(np.float32)
    if fmt == "csr":
        return w * (rng.random(shape) < 0.15)
    if fmt == "bsr4x4":  # full 4x4 blocks of the [M, K] weight, each block column in one block row
        m, k = shape[0], int(np.prod(shape[1:]))
        tiles = rng.standard_normal((m // 4, 4, -(-k // 4), 4)).astype(np.float32)
        keep = np.zeros((m // 4, 1, tiles.shape[2], 1), bool)
        keep[np.arange(tiles.shape[2]) % (m // 4), 0, np.arange(tiles.shape[2]), 0] = True
        return (tiles * keep).reshape(m, -1)[:, :k].reshape(shape)
    if fmt == "compact":
        w[: shape[0] // 2] = 0
        w[:, : max(1, shape[1] // 4)] = 0
    if fmt == "zero":
        w[:] = 0
    return w


@pytest.mark.parametrize("case", list(CONV_CASES))
@pytest.mark.parametrize("fmt", ["dense", "csr", "bsr4x4", "compact", "zero"])
def test_conv_geometry_in_every_format(case, fmt):
    attrs, wshape, xshape = CONV_CASES[case]
    rng = np.random.default_rng(6)
    w = conv_weight(fmt, wshape, rng)
    inits = {"w": w, "b": rng.standard_normal(wshape[0]).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", **attrs),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    model = make_model(nodes, {"x": list(xshape)}, ["y"], inits)
    feeds = {"x": rng.standard_normal(xshape).astype(np.float32)}
    runner = GraphRunner(model)
    assert_matches(runner.run(feeds), onnxruntime_outputs(model, feeds))
    run = runner.last_run[0]
    groups = attrs.get("group", 1)
    expect = choose_format(w.reshape(w.shape[0], -1), allow_compact=groups == 1)
    # a CSR or block weight may run as a direct convolution (on its CSRMatrix): runner.use_direct
    packed_as = expect if run.format == "direct" and expect in ("csr", "bsr4x4", "bsr4x1") else run.format
    assert packed_as == (expect if groups == 1 or not expect.startswith("bsr") or wshape[0] // groups % 4 == 0 else "csr")
    if case == "3x3 pad1":  # each weight above gets the format it was built for
        assert packed_as == {"zero": "compact"}.get(fmt, fmt)
    nnz = int(np.count_nonzero(w))
    if run.format in ("csr", "direct"):
        assert run.macs_executed * w.size == run.dense_macs * nnz
    if run.format == "dense":
        assert run.macs_executed == run.dense_macs


def test_pooling_matches_onnxruntime():
    rng = np.random.default_rng(7)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("MaxPool", ["c"], ["m"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("AveragePool", ["c"], ["a"], kernel_shape=[2, 2], strides=[1, 1], pads=[0, 0, 1, 1]),
             helper.make_node("AveragePool", ["c"], ["i"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1),
             helper.make_node("MaxPool", ["c"], ["d"], kernel_shape=[2, 2], dilations=[2, 2])]
    model = make_model(nodes, {"x": [3, 4, 7, 7]}, ["m", "a", "i", "d"], {"w": sparse(rng, (6, 4, 3, 3), 0.2)})
    feeds = {"x": rng.standard_normal((3, 4, 7, 7)).astype(np.float32)}  # batch 3: channel-major conv output
    assert_matches(GraphRunner(model).run(feeds), onnxruntime_outputs(model, feeds))


def test_matmul_of_a_3d_input_with_a_residual_epilogue():
    rng = np.random.default_rng(8)
    inits = {"w": sparse(rng, (6, 6), 0.2), "wd": rng.standard_normal((6, 6)).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
             helper.make_node("Add", ["m", "x"], ["s"], name="add"),
             helper.make_node("MatMul", ["s", "wd"], ["d"], name="mm_dense"),
             helper.make_node("Relu", ["d"], ["y"], name="relu")]
    model = make_model(nodes, {"x": [2, 3, 6]}, ["y"], inits)
    feeds = {"x": rng.standard_normal((2, 3, 6)).astype(np.float32)}
    runner = GraphRunner(model)
    assert_matches(runner.run(feeds), onnxruntime_outputs(model, feeds))
    assert runner.steps == [("mm", "add"), ("mm_dense", "relu")]
    assert [r.format for r in runner.last_run] == ["csr", "fused", "dense", "fused"]
    assert runner.last_run[2].macs_executed == 2 * 3 * 36


def test_bad_input_shapes_name_the_node():
    rng = np.random.default_rng(9)
    model, _ = residual_model(rng, np.ones(4, np.float32))
    with pytest.raises(ValueError, match=r"node 'proj': Conv input must be \[N, 3, H, W\], got \(2, 5, 6, 6\)"):
        GraphRunner(model).run({"x": np.zeros((2, 5, 6, 6), np.float32)})
    with pytest.raises(ValueError, match="node 'fc': input must be"):
        GraphRunner(model).run({"x": np.zeros((2, 3, 5, 5), np.float32)})


def test_an_unknown_input_names_the_node():
    nodes = [helper.make_node("Gemm", ["x", "nowhere"], ["y"], name="fc")]
    with pytest.raises(ValueError, match="node 'fc': input\\(s\\) nowhere are neither graph inputs"):
        GraphRunner(make_model(nodes, {"x": [1, 4]}, ["y"], {}))
