"""kernels.direct_conv (the small-channel direct sparse convolution) against the float64 NumPy
reference, its argument checks, and the runner's choice of it."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from kernels.direct_conv import direct_conv
from kernels.formats import BSRMatrix, CSRMatrix
from kernels.reference import conv2d_reference
from kernels.runner import GraphRunner, choose_format, use_direct
from models import digits_cnn_model


def sparse_weight(rng, shape, density=0.2) -> np.ndarray:
    w = rng.standard_normal(shape).astype(np.float32)
    return w * (rng.random(shape) < density)


def check(x, w, bias=None, stride=1, pad=0, dilation=1, relu=False, threads=1, out=None):
    """Run the kernel on w's CSR and compare with conv2d_reference (float64)."""
    m, r, s = w.shape[0], w.shape[2], w.shape[3]
    csr = CSRMatrix.from_dense(w.reshape(m, -1))
    pair = lambda v: (v, v) if isinstance(v, int) else v  # noqa: E731
    y = direct_conv(csr, x, (r, s), pair(stride), pair(pad), pair(dilation), bias=bias, relu=relu,
                    out=out, threads=threads)
    ref = conv2d_reference(x, w, bias, stride, pad, dilation)
    if relu:
        ref = np.maximum(ref, 0)
    assert y.shape == ref.shape and y.dtype == np.float32
    assert np.abs(y - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())
    return y


# (N, C, M, H, W, kernel, stride, pad, dilation): odd sizes put Q off the vector width; P*Q
# above 64 lanes spans several register chunks
GEOMETRIES = {
    "3x3 pad1": (1, 16, 32, 8, 8, 3, 1, 1, 1),
    "3x3 pad1 batch3": (3, 5, 7, 9, 13, 3, 1, 1, 1),
    "1x1": (3, 6, 5, 7, 5, 1, 1, 0, 1),
    "5x5 pad2": (1, 3, 4, 11, 17, 5, 1, 2, 1),
    "3x3 pad0": (3, 4, 6, 10, 9, 3, 1, 0, 1),
    "stride2": (3, 4, 6, 11, 10, 3, 2, 1, 1),
    "stride2 pad0 1x1": (1, 4, 6, 9, 9, 1, 2, 0, 1),
    "dilation2": (1, 4, 6, 11, 10, 3, 1, 2, 2),
    "stride2 dilation2": (3, 3, 5, 13, 12, 3, 2, 2, 2),
    "stride (2, 1) pad (1, 2)": (1, 3, 4, 9, 10, 3, (2, 1), (1, 2), 1),
    "wide rows": (1, 2, 3, 5, 70, 3, 1, 1, 1),
    "1x1 output": (3, 4, 5, 3, 3, 3, 1, 0, 1),
}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", list(GEOMETRIES))
def test_matches_the_reference(case, threads):
    n, c, m, h, w_, k, stride, pad, dil = GEOMETRIES[case]
    rng = np.random.default_rng(len(case))
    x = rng.standard_normal((n, c, h, w_)).astype(np.float32)
    w = sparse_weight(rng, (m, c, k, k))
    bias = rng.standard_normal(m).astype(np.float32)
    check(x, w, stride=stride, pad=pad, dilation=dil, threads=threads)
    check(x, w, bias, stride=stride, pad=pad, dilation=dil, relu=True, threads=threads)


@pytest.mark.parametrize("threads", [1, 2])
def test_adversarial_weights(threads):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, 7, 9)).astype(np.float32)
    bias = rng.standard_normal(5).astype(np.float32)
    w = sparse_weight(rng, (5, 4, 3, 3))
    w[[0, 3]] = 0  # empty rows: the output is the bias
    y = check(x, w, bias, pad=1, threads=threads)
    assert np.array_equal(y[:, 0], np.broadcast_to(bias[0], y[:, 0].shape))
    zero = np.zeros((5, 4, 3, 3), np.float32)
    assert not check(x, zero, pad=1, threads=threads).any()
    one = zero.copy()
    one[2, 3, 2, 0] = 1.5  # one nonzero, in the last channel and a corner tap
    check(x, one, bias, pad=2, threads=threads)
    check(x, one, pad=0, stride=2, threads=threads)


def test_strided_inputs_and_output_layouts():
    rng = np.random.default_rng(2)
    base = rng.standard_normal((4, 3, 16, 20)).astype(np.float32)
    w = sparse_weight(rng, (6, 3, 3, 3), 0.4)
    for x in (base[::2, :, 1::2, ::3], base.transpose(1, 0, 2, 3)[:, :2].transpose(1, 0, 2, 3),
              np.asfortranarray(base[:1])):
        check(x, w, pad=1)
    x = base[:2]
    channel_major = np.empty((6, 2, 16, 20), np.float32).transpose(1, 0, 2, 3)
    y = check(x, w, pad=1, out=channel_major)
    assert y is channel_major
    assert check(x, w, pad=1, out=np.empty((2, 6, 16, 20), np.float32)).flags.c_contiguous


def test_executed_macs_are_nnz_times_output_pixels():
    # what the runner reports for a direct conv: the CSR's macs over N*P*Q columns
    rng = np.random.default_rng(3)
    w = sparse_weight(rng, (8, 4, 3, 3))
    csr = CSRMatrix.from_dense(w.reshape(8, -1))
    y = direct_conv(csr, rng.standard_normal((2, 4, 6, 5)).astype(np.float32), (3, 3), (1, 1), (1, 1), (1, 1))
    assert csr.macs(y.shape[0] * y.shape[2] * y.shape[3]) == np.count_nonzero(w) * 2 * 6 * 5


def _csr(rng, m=4, c=2, k=3):
    return CSRMatrix.from_dense(sparse_weight(rng, (m, c, k, k)).reshape(m, -1))


def test_bad_arguments_raise():
    rng = np.random.default_rng(4)
    csr = _csr(rng)
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    geo = ((3, 3), (1, 1), (1, 1), (1, 1))
    with pytest.raises(TypeError, match="x must have dtype float32"):
        direct_conv(csr, x.astype(np.float64), *geo)
    with pytest.raises(ValueError, match="x must be 4-D"):
        direct_conv(csr, x[0], *geo)
    with pytest.raises(TypeError, match="CSRMatrix"):
        direct_conv(BSRMatrix.from_dense(np.ones((4, 18), np.float32), block=(4, 1)), x, *geo)
    with pytest.raises(TypeError, match="CSRMatrix or BSRMatrix"):
        direct_conv(np.ones((4, 18), np.float32), x, *geo)
    with pytest.raises(TypeError, match="float32 W"):
        direct_conv(CSRMatrix.from_dense(np.ones((4, 18), np.int8)), x, *geo)
    with pytest.raises(ValueError, match="C\\*R\\*S = 27"):
        direct_conv(csr, rng.standard_normal((1, 3, 5, 5)).astype(np.float32), *geo)
    with pytest.raises(ValueError, match="does not fit"):
        direct_conv(csr, x, (3, 3), (1, 1), (0, 0), (3, 3))
    with pytest.raises(ValueError, match="must be >= 1"):
        direct_conv(csr, x, (3, 3), (0, 1), (1, 1), (1, 1))
    with pytest.raises(ValueError, match="pair of integers"):
        direct_conv(csr, x, 3, (1, 1), (1, 1), (1, 1))
    with pytest.raises(ValueError, match="threads"):
        direct_conv(csr, x, *geo, threads=0)
    with pytest.raises(ValueError, match="bias must have 4 entries"):
        direct_conv(csr, x, *geo, bias=np.ones(3, np.float32))
    with pytest.raises(TypeError, match="bias must have dtype float32"):
        direct_conv(csr, x, *geo, bias=np.ones(4))
    with pytest.raises(ValueError, match="out must have shape"):
        direct_conv(csr, x, *geo, out=np.empty((1, 4, 5, 4), np.float32))
    with pytest.raises(ValueError, match="planes must be C-contiguous"):
        direct_conv(csr, x, *geo, out=np.empty((1, 4, 5, 10), np.float32)[..., ::2])
    with pytest.raises(ValueError, match="C-contiguous"):
        direct_conv(csr, np.repeat(x, 2, 0), *geo, out=np.empty((2, 8, 5, 5), np.float32)[:, ::2])
    readonly = np.empty((1, 4, 5, 5), np.float32)
    readonly.setflags(write=False)
    with pytest.raises(ValueError, match="writeable"):
        direct_conv(csr, x, *geo, out=readonly)
    shared = np.zeros((1, 4, 5, 5), np.float32)
    with pytest.raises(ValueError, match="overlap"):
        direct_conv(csr, shared[:, :2], *geo, out=shared)


def test_malformed_csr_raises_before_reading():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    geo = ((3, 3), (1, 1), (1, 1), (1, 1))
    csr = _csr(rng)
    for field, edit in (("indices", lambda a: a.__setitem__(0, 10 ** 6)),   # out of range
                        ("indices", lambda a: a.__setitem__(-1, -1)),
                        ("indptr", lambda a: a.__setitem__(1, a[-1] + 5))):  # not monotonic
        bad = _csr(rng)
        arr = getattr(bad, field)
        arr.setflags(write=True)
        edit(arr)
        with pytest.raises(ValueError, match="no longer valid"):
            direct_conv(bad, x, *geo)
    swapped = _csr(rng)
    swapped.indptr = np.zeros(3, np.int32)  # an array of the wrong length, swapped in
    with pytest.raises(ValueError, match="inconsistent"):
        direct_conv(swapped, x, *geo)
    assert direct_conv(csr, x, *geo).shape == (1, 4, 5, 5)


def test_use_direct_rule():
    assert use_direct((3, 3), 512 * 9, (1, 1)) and use_direct((1, 1), 256, (1, 1))  # every stride-1 conv
    assert use_direct((3, 3), 64 * 9, (2, 2)) and use_direct((7, 7), 3 * 49, (2, 2))
    assert not use_direct((3, 3), 128 * 9, (2, 2)) and not use_direct((1, 1), 16, (2, 2))


# -- the runner ---------------------------------------------------------------------------------

def digits_like_model(rng) -> onnx.ModelProto:
    """The digits CNN's shape (examples/digits DigitsCNN): conv 1->16, 16->32 at 8x8, pool,
    32->32 at 4x4, fc 512->10, each weight 90% pruned by magnitude."""
    def pruned(shape):
        w = rng.standard_normal(shape).astype(np.float32)
        w[np.abs(w) < np.quantile(np.abs(w), 0.9)] = 0
        return w

    inits = {"w1": pruned((16, 1, 3, 3)), "b1": rng.standard_normal(16).astype(np.float32),
             "w2": pruned((32, 16, 3, 3)), "b2": rng.standard_normal(32).astype(np.float32),
             "w3": pruned((32, 32, 3, 3)), "b3": rng.standard_normal(32).astype(np.float32),
             "fc": pruned((10, 512)), "fcb": rng.standard_normal(10).astype(np.float32)}
    return digits_cnn_model(inits)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("threads", [1, 2])
def test_runner_picks_direct_for_the_digits_cnn(batch, threads):
    rng = np.random.default_rng(6)
    model = digits_like_model(rng)
    feeds = {"x": rng.standard_normal((batch, 1, 8, 8)).astype(np.float32)}
    runner = GraphRunner(model, threads=threads)
    got = runner.run(feeds)[0]
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    runs = {r.name: r for r in runner.last_run}
    for name, w, hw in (("conv1", "w1", 8), ("conv2", "w2", 8), ("conv3", "w3", 4)):
        run = runs[name]
        assert run.format == "direct"
        # the executed MACs are the CSR's: nnz x output pixels, exactly
        assert run.macs_executed == np.count_nonzero(weights[w]) * batch * hw * hw
        assert run.weight_bytes == np.count_nonzero(weights[w]) * 8 + (weights[w].shape[0] + 1) * 4
    # the ReLU after each conv ran inside the kernel; its node is still reported, as fused
    assert runner.steps[:2] == [("conv1", "relu1"), ("conv2", "relu2")]
    assert runs["relu1"].format == "fused"
    unfused = GraphRunner(model, threads=threads, fuse=False)
    assert np.abs(unfused.run(feeds)[0] - got).max() <= 1e-5 * np.abs(ref).max()
    assert unfused.last_run[0].format == "direct"
    im2col = GraphRunner(model, threads=threads, direct=False)  # the choice switched off
    assert np.abs(im2col.run(feeds)[0] - got).max() <= 1e-5 * np.abs(ref).max()
    assert [r.format for r in im2col.last_run if r.op == "Conv"] == ["csr"] * 3


def test_runner_rule_per_layer():
    """A 4x4-block weight runs direct on its CSR (only its nonzeros executed); a 1x1 stride-2
    shortcut keeps the im2col CSR kernel (runner.use_direct)."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    keep = (np.arange(36)[None, :] % 4 == np.arange(4)[:, None])[:, None, :, None]  # 4x4 blocks (i, j), j % 4 == i
    w = (w.reshape(4, 4, 36, 4) * keep).reshape(16, 16, 3, 3)
    wp = sparse_weight(rng, (16, 16, 1, 1), 0.1)
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="blocks", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "wp"], ["b"], name="shortcut", strides=[2, 2])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16, 6, 6])],
                              [helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in "ab"],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(wp, "wp")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = {"x": rng.standard_normal((2, 16, 6, 6)).astype(np.float32)}
    assert [choose_format(v.reshape(16, -1)) for v in (w, wp)] == ["bsr4x4", "csr"]
    runner = GraphRunner(model)
    got = runner.run(feeds)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    for g, r in zip(got, ref):
        assert np.abs(g - r).max() <= 1e-4 * np.abs(r).max()
    runs = {r.name: r for r in runner.last_run}
    assert (runs["blocks"].format, runs["shortcut"].format) == ("direct", "csr")
    assert runs["blocks"].macs_executed == np.count_nonzero(w) * 2 * 6 * 6
    assert runner.packed["blocks"][0] == "direct" and isinstance(runner.packed["blocks"][1], CSRMatrix)
