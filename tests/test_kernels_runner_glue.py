"""The runner's glue fast paths (kernels.glue): max pooling into kept buffers, a Flatten that is a
view of a batch-major conv output, and the CSR Gemm on few rows (csr_rows), against NumPy and
onnxruntime, with the counts unchanged."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from kernels.formats import CSRMatrix
from kernels.glue import csr_rows, max_pool
from kernels.runner import CSR_ROWS_MAX, GraphRunner
from models import digits_cnn_model


def _pool_ref(x, kernel, stride):
    (kh, kw), (sh, sw) = kernel, stride
    p, q = (x.shape[2] - kh) // sh + 1, (x.shape[3] - kw) // sw + 1
    return np.maximum.reduce([x[:, :, r:r + sh * (p - 1) + 1:sh, s:s + sw * (q - 1) + 1:sw]
                              for r in range(kh) for s in range(kw)])


def _in_layout(layout: str, shape: tuple[int, int, int, int], seed: int) -> np.ndarray:
    """Random float32 [N, C, H, W] laid out NCHW, channel-major ([C, N, H, W] memory) or as a
    strided slice (every other column of a twice-as-wide array)."""
    n, c, h, w = shape
    rng = np.random.default_rng(seed)
    if layout == "nchw":
        return rng.standard_normal(shape).astype(np.float32)
    if layout == "channel-major":
        return rng.standard_normal((c, n, h, w)).astype(np.float32).transpose(1, 0, 2, 3)
    return rng.standard_normal((n, c, h, 2 * w)).astype(np.float32)[:, :, :, ::2]


@pytest.mark.parametrize("kernel,stride", [((2, 2), (2, 2)), ((3, 3), (2, 2)), ((2, 3), (1, 2)), ((3, 3), (1, 1))])
@pytest.mark.parametrize("layout", ["nchw", "channel-major", "sliced"])
def test_max_pool_matches_numpy(kernel, stride, layout):
    x = _in_layout(layout, (3, 5, 9, 8), seed=0)
    ref = _pool_ref(x, kernel, stride)
    out = np.full((ref.shape[1], ref.shape[0]) + ref.shape[2:], np.nan, np.float32).transpose(1, 0, 2, 3)
    assert max_pool(x, kernel, stride, out) is out
    np.testing.assert_array_equal(out, ref)


def test_max_pool_checks():
    x = np.zeros((1, 2, 4, 4), np.float32)
    with pytest.raises(ValueError, match="out must have shape"):
        max_pool(x, (2, 2), (2, 2), np.zeros((1, 2, 3, 3), np.float32))
    with pytest.raises(TypeError):
        max_pool(x.astype(np.float64), (2, 2), (2, 2), np.zeros((1, 2, 2, 2), np.float32))
    with pytest.raises(ValueError, match="overlap"):
        max_pool(x, (1, 1), (1, 1), x)


@pytest.mark.parametrize("rows", [1, 3, 4, 9, 32])
def test_csr_rows_matches_dense(rows):
    rng = np.random.default_rng(rows)
    w = rng.standard_normal((10, 70)).astype(np.float32) * (rng.random((10, 70)) < 0.1)
    w[3] = 0  # an empty row: bias only
    csr = CSRMatrix.from_dense(w)
    bias = rng.standard_normal(10).astype(np.float32)
    x = rng.standard_normal((rows, 140)).astype(np.float32)[:, ::2].copy()
    for b, relu in ((None, False), (bias, False), (bias, True)):
        out = np.full((10, rows), np.nan, np.float32).T  # any element strides
        csr_rows(csr, x, b, relu, out)
        ref = x.astype(np.float64) @ w.T.astype(np.float64) + (0 if b is None else b)
        ref = np.maximum(ref, 0) if relu else ref
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unit stride"):
        csr_rows(csr, np.zeros((rows, 140), np.float32)[:, ::2], None, False, np.zeros((rows, 10), np.float32))


def _cnn(rng, density=0.1):
    """conv 3x3 (1->4) -> Relu -> conv 3x3 (4->8) -> Relu -> MaxPool 2x2/2 -> conv 3x3 (8->8)
    -> Relu -> Flatten -> Gemm (128 -> 5) -> Relu: the digits CNN's shape, smaller."""
    def sparse(shape):
        w = rng.standard_normal(shape).astype(np.float32)
        return w * (rng.random(shape) < density)
    w = {"w1": sparse((4, 1, 3, 3)), "b1": rng.standard_normal(4).astype(np.float32),
         "w2": sparse((8, 4, 3, 3)), "b2": rng.standard_normal(8).astype(np.float32),
         "w3": sparse((8, 8, 3, 3)), "b3": rng.standard_normal(8).astype(np.float32),
         "fc": sparse((5, 128)), "fcb": rng.standard_normal(5).astype(np.float32)}
    return digits_cnn_model(w, fc_relu=True), w


@pytest.mark.parametrize("batch", [1, 3, CSR_ROWS_MAX, CSR_ROWS_MAX + 1])
def test_small_cnn_glue_matches_onnxruntime_and_counts(batch):
    rng = np.random.default_rng(batch)
    model, w = _cnn(rng)
    x = rng.standard_normal((batch, 1, 8, 8)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    fused, plain = GraphRunner(model), GraphRunner(model, fuse=False)
    for runner in (fused, plain):
        for _ in range(2):  # the kept buffers are rewritten, not accumulated into
            got = runner.run({"x": x})[0]
            assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
        runs = {r.name: r for r in runner.last_run}
        assert runs["fc"].format == "csr"
        assert runs["fc"].macs_executed == np.count_nonzero(w["fc"]) * batch
        assert runs["fc"].dense_macs == 5 * 128 * batch
        assert runs["flatten"].activation_bytes == 2 * batch * 128 * 4
        assert runs["pool"].activation_bytes == batch * 8 * (64 + 16) * 4
    # the fused runner's Flatten hands on a view of conv3's buffer (written batch-major)
    step = next(s for s in fused._steps if fused.names[s.index] == "conv3")
    assert step.batch_major and np.shares_memory(fused._vals[fused._g.slot["f"]], step.view)
    assert GraphRunner(model).steps == [("conv1", "relu1"), ("conv2", "relu2"), ("pool",), ("conv3", "relu3"),
                                        ("flatten",), ("fc", "fc_relu")]


def test_pool_output_buffer_follows_a_new_batch():
    rng = np.random.default_rng(5)
    model, _ = _cnn(rng)
    runner, sess = GraphRunner(model), ort.InferenceSession(model.SerializeToString())
    for batch in (2, 1, 4, 2):
        x = rng.standard_normal((batch, 1, 8, 8)).astype(np.float32)
        want = sess.run(None, {"x": x})[0]
        got = runner.run({"x": x})[0]
        assert got.shape == want.shape and np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


@pytest.mark.parametrize("layout", ["nchw", "channel-major", "sliced"])
def test_global_pool_matches_numpy(layout):
    from kernels.glue import global_pool

    x = _in_layout(layout, (3, 5, 7, 6), seed=2)
    out = np.full((3, 5, 1, 1), np.nan, np.float32)
    np.testing.assert_allclose(global_pool(x, True, out), x.astype(np.float64).mean(axis=(2, 3), keepdims=True),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(global_pool(x, False, out), x.max(axis=(2, 3), keepdims=True))
    with pytest.raises(ValueError, match="out must have shape"):
        global_pool(x, True, np.zeros((3, 5, 1), np.float32)[..., None][:, :4])


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
def test_runner_global_pool_then_flatten_is_a_view(op):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((6, 2, 3, 3)).astype(np.float32) * (rng.random((6, 2, 3, 3)) < 0.3)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node(op, ["c"], ["g"], name="gpool"),
             helper.make_node("Flatten", ["g"], ["y"], axis=1, name="flatten")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    runner, sess = GraphRunner(model), ort.InferenceSession(model.SerializeToString())
    for batch in (1, 4, 2):
        x = rng.standard_normal((batch, 2, 5, 5)).astype(np.float32)
        want = sess.run(None, {"x": x})[0]
        got = runner.run({"x": x})[0]
        assert got.shape == want.shape and np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
        vals, slot = runner._vals, runner._g.slot
        assert np.shares_memory(vals[slot["y"]], vals[slot["g"]])
        assert {r.name: r for r in runner.last_run}["gpool"].activation_bytes == batch * 6 * (25 + 1) * 4


@pytest.mark.parametrize("batch", [1, 5])
def test_glue_off_gives_the_same_outputs_and_counts(batch):
    rng = np.random.default_rng(7)
    model, _ = _cnn(rng)
    x = rng.standard_normal((batch, 1, 8, 8)).astype(np.float32)
    on, off = GraphRunner(model), GraphRunner(model, glue=False)
    a, b = on.run({"x": x})[0], off.run({"x": x})[0]
    assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()
    strip = lambda runs: [(r.name, r.format, r.macs_executed, r.dense_macs, r.weight_bytes, r.activation_bytes)
                          for r in runs]
    assert strip(on.last_run) == strip(off.last_run)
    step = next(s for s in off._steps if off.names[s.index] == "conv3")
    assert not step.batch_major


def test_csr_rows_rule():
    from kernels.runner import CSR_ROWS_FEATURES

    rng = np.random.default_rng(11)
    for features, rows, on_rows in ((64, 1, True), (64, 2, False), (CSR_ROWS_FEATURES, CSR_ROWS_MAX, True),
                                    (CSR_ROWS_FEATURES, CSR_ROWS_MAX + 1, False)):
        w = rng.standard_normal((features, 40)).astype(np.float32) * (rng.random((features, 40)) < 0.1)
        graph = helper.make_graph([helper.make_node("Gemm", ["x", "w"], ["y"], transB=1, name="fc")], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, 40])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                                  [numpy_helper.from_array(w, "w")])
        runner = GraphRunner(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
        x = rng.standard_normal((rows, 40)).astype(np.float32)
        np.testing.assert_allclose(runner.run({"x": x})[0], x @ w.T, rtol=1e-5, atol=1e-5)
        assert runner._steps[0].on_rows == on_rows
        assert runner.last_run[0].format == "csr" and runner.last_run[0].macs_executed == np.count_nonzero(w) * rows
