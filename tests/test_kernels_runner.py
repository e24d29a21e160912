"""The kernel graph runner against onnxruntime, its format choice and its work counts."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from kernels.runner import GraphRunner, choose_format

ROOT = Path(__file__).resolve().parents[1]
MODELS = [ROOT / "examples" / "models" / "tiny_resnet.onnx", ROOT / "examples" / "models" / "tiny_mlp.onnx"]


def prune(model: onnx.ModelProto, how: str, seed: int = 0) -> onnx.ModelProto:
    """Zero 90% of every weight by magnitude, 4x4 blocks, or half of every conv's filters."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    rng = np.random.default_rng(seed)
    for t in model.graph.initializer:
        w = numpy_helper.to_array(t).copy()
        if w.ndim < 2 or w.shape[0] < 4:
            continue
        if how == "magnitude":
            w[np.abs(w) < np.quantile(np.abs(w), 0.9)] = 0
        elif how == "blocks" and w.shape[0] % 4 == 0 and w.reshape(w.shape[0], -1).shape[1] % 4 == 0:
            w2 = w.reshape(w.shape[0] // 4, 4, -1, 4)
            keep = rng.random((w2.shape[0], 1, w2.shape[2], 1)) < 0.1
            w = (w2 * keep).reshape(w.shape)
        elif how == "channels" and w.ndim == 4:
            w[w.shape[0] // 2:] = 0
        t.CopyFrom(numpy_helper.from_array(w.astype(np.float32), t.name))
    return model


def feeds_for(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    inp = model.graph.input[0]
    shape = [d.dim_value or 2 for d in inp.type.tensor_type.shape.dim]
    return {inp.name: np.random.default_rng(1).standard_normal(shape).astype(np.float32)}


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.stem)
@pytest.mark.parametrize("how", ["none", "magnitude", "blocks", "channels"])
def test_outputs_match_onnxruntime(path, how):
    model = onnx.load(path) if how == "none" else prune(onnx.load(path), how)
    feeds = feeds_for(model)
    reference = ort.InferenceSession(model.SerializeToString()).run(None, feeds)[0]
    for mode in ("auto", "dense"):
        runner = GraphRunner(model, mode=mode)
        got = runner.run(feeds)[0]
        assert np.abs(got - reference).max() <= 1e-4 * np.abs(reference).max()


def test_formats_and_work_counts_of_a_magnitude_pruned_model():
    model = prune(onnx.load(MODELS[0]), "magnitude")
    runner = GraphRunner(model)
    runner.run(feeds_for(model))
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    convs = {n.name: n for n in model.graph.node if n.op_type == "Conv"}
    for run in runner.last_run:
        if run.name not in convs:
            continue
        assert run.format in ("csr", "direct")  # direct: the same CSRMatrix, run without im2col
        w = weights[convs[run.name].input[1]]
        # CSR executes nnz multiply-adds per output pixel: dense MACs x density, exactly
        assert run.macs_executed * w.size == run.dense_macs * np.count_nonzero(w)
        assert run.weight_bytes == np.count_nonzero(w) * 8 + (w.shape[0] + 1) * 4


def test_choose_format():
    rng = np.random.default_rng(0)
    dense = rng.standard_normal((16, 32)).astype(np.float32)
    assert choose_format(dense) == "dense"
    channels = dense.copy()
    channels[8:] = 0
    assert choose_format(channels) == "compact"
    assert choose_format(channels, allow_compact=False) == "dense"
    scattered = dense * (rng.random(dense.shape) < 0.05)
    assert choose_format(scattered) == "csr"
    # 4x4 blocks (i, j) with j % 4 == i: every row and column keeps a block, density 8*16/512
    keep = (np.arange(8)[None, :] % 4 == np.arange(4)[:, None])[:, None, :, None]
    blocks = (dense.reshape(4, 4, 8, 4) * keep).reshape(16, 32)
    assert choose_format(blocks) == "bsr4x4"
    # 4x1 blocks (i, j) with (i + j) % 4 == 0: full 4x1 columns, 4x4 blocks only 1/4 full
    keep = ((np.arange(4)[:, None] + np.arange(32)[None, :]) % 4 == 0)[:, None, :]
    assert choose_format((dense.reshape(4, 4, 32) * keep).reshape(16, 32)) == "bsr4x1"


def test_unsupported_op_names_the_node():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    node = helper.make_node("Erf", ["x"], ["y"], name="erf_here")
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]))
    with pytest.raises(ValueError, match="node 'erf_here': op Erf is not supported"):
        GraphRunner(model)


def test_layer_names_follow_the_importer():
    from energy.importer import layer_names as importer_names
    from kernels.runner import layer_names

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="Relu_1"), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Relu", ["b"], ["c"], name="Relu_1"), helper.make_node("Relu", ["c"], ["d"], name="")]
    graph = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("d", TensorProto.FLOAT, [1, 4])])
    assert layer_names(graph) == importer_names(graph) == ["Relu_1", "Relu_1_1", "Relu_2", "Relu_3"]
