"""MAC ops (Conv, ConvTranspose, Gemm, MatMul and their quantized forms): exact LoopDims, bit
widths and weight densities on hand-built ONNX nodes. Expected values are computed by hand in
the comments."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from energy.errors import ModelError
from energy.importer import load_model
from energy.ir import LoopDims, OpKind
from models import onnx_model

MAC_OPS_TESTED: set[str] = set()  # read by test_importer_ops.test_every_op_has_a_case


def covers(*ops: str):
    def mark(fn):
        MAC_OPS_TESTED.update(ops)
        return fn

    return mark


def weights(shape, seed=0, dtype=np.float32):
    return (np.random.RandomState(seed).standard_normal(shape) + 3.0).astype(dtype)  # no zeros


def conv(x_shape, w_shape, op="Conv", **attrs):
    node = helper.make_node(op, ["x", "W"], ["y"], name="c", **attrs)
    return load_model(onnx_model([node], {"x": x_shape}, {"y": None}, {"W": weights(w_shape)}), strict=True).graph["c"]


@covers("Conv")
def test_grouped_conv():
    # 8 in channels, 4 groups of 2; 12 out channels = 4 groups of 3; 10x10 -> 8x8 (no padding)
    layer = conv((1, 8, 10, 10), (12, 2, 3, 3), group=4)
    assert layer.op is OpKind.CONV and layer.weight == "W" and layer.inputs == ("x",) and layer.outputs == ("y",)
    assert layer.dims == LoopDims(N=1, G=4, M=3, C=2, P=8, Q=8, R=3, S=3, H=10, W=10)
    assert layer.macs == 4 * 3 * 2 * 8 * 8 * 3 * 3 == 13824


def test_depthwise_conv():
    # groups = channels = 16, pad 1 keeps 7x7; padded input 9x9
    layer = conv((2, 16, 7, 7), (16, 1, 3, 3), group=16, pads=[1, 1, 1, 1])
    assert layer.dims == LoopDims(N=2, G=16, M=1, C=1, P=7, Q=7, R=3, S=3, H=9, W=9)
    assert layer.input_elements == 2 * 16 * 49 and layer.output_elements == 2 * 16 * 49


def test_dilated_conv():
    # dilation 2 makes the 3x3 kernel span 5: 12 - 5 + 1 = 8
    layer = conv((1, 3, 12, 12), (4, 3, 3, 3), dilations=[2, 2])
    assert layer.dims == LoopDims(N=1, M=4, C=3, P=8, Q=8, R=3, S=3, dilation_h=2, dilation_w=2, H=12, W=12)


def test_strided_asymmetric_padded_non_square_conv():
    # pads [top, left, bottom, right] = [1, 0, 2, 1]: H = 11+1+2 = 14, W = 9+0+1 = 10
    # P = (14-3)//2 + 1 = 6, Q = (10-2)//3 + 1 = 3
    layer = conv((1, 3, 11, 9), (5, 3, 3, 2), strides=[2, 3], pads=[1, 0, 2, 1])
    assert layer.dims == LoopDims(N=1, M=5, C=3, P=6, Q=3, R=3, S=2, stride_h=2, stride_w=3, H=14, W=10)
    assert layer.macs == 5 * 3 * 6 * 3 * 3 * 2 == 1620


@pytest.mark.parametrize("auto_pad, H, P", [
    ("SAME_UPPER", 11, 5),  # out = ceil(10/2) = 5; total pad = (5-1)*2 + 3 - 10 = 1 -> H = 11
    ("SAME_LOWER", 11, 5),
    ("VALID", 10, 4),  # (10-3)//2 + 1 = 4, no padding
])
def test_auto_pad(auto_pad, H, P):
    layer = conv((1, 3, 10, 10), (4, 3, 3, 3), strides=[2, 2], auto_pad=auto_pad)
    assert (layer.dims.H, layer.dims.W, layer.dims.P, layer.dims.Q) == (H, H, P, P)


def test_conv_1d():
    # length 20 padded 2+2 = 24, kernel 5 stride 2: (24-5)//2 + 1 = 10; second spatial dim is 1
    layer = conv((1, 4, 20), (6, 4, 5), strides=[2], pads=[2, 2])
    assert layer.dims == LoopDims(N=1, M=6, C=4, P=10, Q=1, R=5, S=1, stride_h=2, H=24, W=1)
    assert layer.macs == 6 * 4 * 10 * 5 == 1200


def test_conv3d_with_depth_one_kernel_is_a_stack_of_2d_convs():
    # depth 3 kept (kernel depth 1): N = 1*3 = 3; 6x6 -> 4x4; MACs 3*4*2*16*9 = 3456
    layer = conv((1, 2, 3, 6, 6), (4, 2, 1, 3, 3))
    assert layer.dims == LoopDims(N=3, M=4, C=2, P=4, Q=4, R=3, S=3, H=6, W=6)
    assert layer.macs == 3456


def test_conv3d_is_unsupported():
    with pytest.raises(ModelError, match="3-D Conv is not supported") as info:
        conv((1, 2, 5, 6, 6), (4, 2, 3, 3, 3))
    assert info.value.node == "c"


@covers("ConvTranspose")
def test_conv_transpose_scatter_form():
    # 8 -> 4 channels, 3x3, stride 2: out (5-1)*2 + 3 = 11 -> 1x4x11x11 = 484 elements
    # MACs = N*Cin*Hin*Win*(Cout/g)*kh*kw = 8*25*4*9 = 7200
    layer = conv((1, 8, 5, 5), (8, 4, 3, 3), op="ConvTranspose", strides=[2, 2])
    assert layer.op is OpKind.CONV_TRANSPOSE
    assert (layer.dims.N, layer.dims.G, layer.dims.C, layer.dims.M, layer.dims.P, layer.dims.Q, layer.dims.R, layer.dims.S) == (1, 1, 8, 4, 5, 5, 3, 3)
    assert (layer.dims.stride_h, layer.dims.stride_w) == (1, 1)
    assert layer.macs == 7200 and layer.output_elements == 484 and layer.input_elements == 200


def test_grouped_conv_transpose():
    # group 2: C = 8/2 = 4, weight [8, 3, 3, 3] gives M = 3 per group (6 out channels)
    # MACs = 8*25*3*9 = 5400; output 6 x 11 x 11 = 726
    layer = conv((1, 8, 5, 5), (8, 3, 3, 3), op="ConvTranspose", strides=[2, 2], group=2)
    assert (layer.dims.G, layer.dims.C, layer.dims.M) == (2, 4, 3)
    assert layer.macs == 5400 and layer.output_elements == 726


@covers("Gemm")
def test_gemm_trans_b_with_bias():
    # x[4,10] @ B^T where B is [6,10]: N=4, C=10, M=6 -> 240 MACs; the bias is not the weight
    node = helper.make_node("Gemm", ["x", "B", "bias"], ["y"], name="fc", transB=1, alpha=0.5, beta=2.0)
    b = weights((6, 10))
    b[:3] = 0  # half the weight is zero
    model = onnx_model([node], {"x": (4, 10)}, {"y": None}, {"B": b, "bias": np.zeros(6, np.float32)})
    layer = load_model(model).graph["fc"]
    assert layer.op is OpKind.GEMM and layer.weight == "B" and layer.inputs == ("x",)
    assert layer.dims == LoopDims(N=4, C=10, M=6)
    assert layer.macs == 240 and layer.weight_density == 0.5


def test_gemm_trans_a():
    # A stored [10, 4], transA -> [4, 10]; B [10, 6]: N=4, C=10, M=6
    node = helper.make_node("Gemm", ["x", "B"], ["y"], name="fc", transA=1)
    layer = load_model(onnx_model([node], {"x": (10, 4)}, {"y": None}, {"B": weights((10, 6))})).graph["fc"]
    assert layer.dims == LoopDims(N=4, C=10, M=6)


@covers("MatMul")
def test_matmul_3d_by_constant_2d_is_a_gemm():
    # [2, 7, 16] @ [16, 8]: N = 2*7 = 14 rows, C = 16, M = 8 -> 1792 MACs
    node = helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")
    layer = load_model(onnx_model([node], {"x": (2, 7, 16)}, {"y": None}, {"W": weights((16, 8))})).graph["mm"]
    assert layer.op is OpKind.GEMM and layer.weight == "W"
    assert layer.dims == LoopDims(N=14, C=16, M=8) and layer.macs == 1792


def test_batched_activation_matmul():
    # [2, 3, 7, 16] @ [2, 3, 16, 5]: G = 2*3 = 6, N = 7, C = 16, M = 5 -> 3360 MACs
    node = helper.make_node("MatMul", ["a", "b"], ["y"], name="mm")
    layer = load_model(onnx_model([node], {"a": (2, 3, 7, 16), "b": (2, 3, 16, 5)}, {"y": None})).graph["mm"]
    assert layer.op is OpKind.MATMUL and layer.weight is None and layer.inputs == ("a", "b")
    assert layer.dims == LoopDims(G=6, N=7, C=16, M=5) and layer.macs == 3360
    assert layer.input_elements == 2 * 3 * 7 * 16 + 2 * 3 * 16 * 5 and layer.output_elements == 6 * 7 * 5


def test_broadcast_activation_matmul():
    # [2, 1, 7, 16] @ [3, 16, 5] broadcasts to [2, 3, 7, 5]: G = 6
    node = helper.make_node("MatMul", ["a", "b"], ["y"], name="mm")
    layer = load_model(onnx_model([node], {"a": (2, 1, 7, 16), "b": (3, 16, 5)}, {"y": None})).graph["mm"]
    assert layer.dims == LoopDims(G=6, N=7, C=16, M=5)


@covers("QLinearConv")
def test_qlinear_conv_bits_and_density_against_zero_point():
    # x uint8, w int8, y uint8 -> 8 bits each; half of w equals its zero point 3 -> density 0.5
    w = np.full((4, 3, 3, 3), 3, np.int8)
    w[:2] = 7
    inits = {"xs": np.float32(0.1), "xz": np.uint8(128), "W": w, "ws": np.float32(0.2), "wz": np.int8(3),
             "ys": np.float32(0.3), "yz": np.uint8(128)}
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "W", "ws", "wz", "ys", "yz"], ["y"], name="qc", pads=[1, 1, 1, 1])
    model = onnx_model([node], {"x": (1, 3, 8, 8)}, {"y": None}, inits, input_types={"x": TensorProto.UINT8})
    layer = load_model(model, strict=True).graph["qc"]
    assert layer.op is OpKind.CONV and layer.inputs == ("x",) and layer.weight == "W"
    assert (layer.input_bits, layer.weight_bits, layer.output_bits) == (8, 8, 8)
    assert layer.weight_density == 0.5
    assert layer.dims == LoopDims(N=1, M=4, C=3, P=8, Q=8, R=3, S=3, H=10, W=10)


@covers("QLinearMatMul")
def test_qlinear_matmul():
    # a uint8 [4, 10] @ b int8 [10, 6]: GEMM N=4, C=10, M=6; all 8-bit
    inits = {"as": np.float32(0.1), "az": np.uint8(0), "B": weights((10, 6), dtype=np.int8), "bs": np.float32(0.1),
             "bz": np.int8(0), "ys": np.float32(0.1), "yz": np.uint8(0)}
    node = helper.make_node("QLinearMatMul", ["a", "as", "az", "B", "bs", "bz", "ys", "yz"], ["y"], name="qm")
    model = onnx_model([node], {"a": (4, 10)}, {"y": None}, inits, input_types={"a": TensorProto.UINT8})
    layer = load_model(model).graph["qm"]
    assert layer.op is OpKind.GEMM and layer.dims == LoopDims(N=4, C=10, M=6)
    assert (layer.input_bits, layer.weight_bits, layer.output_bits) == (8, 8, 8)


@covers("ConvInteger")
def test_conv_integer():
    # uint8 x uint8 -> int32 accumulators
    node = helper.make_node("ConvInteger", ["x", "W"], ["y"], name="ci")
    model = onnx_model([node], {"x": (1, 2, 5, 5)}, {"y": None}, {"W": np.ones((3, 2, 3, 3), np.uint8)},
                       input_types={"x": TensorProto.UINT8})
    layer = load_model(model).graph["ci"]
    assert layer.macs == 3 * 2 * 3 * 3 * 3 * 3 == 486
    assert (layer.input_bits, layer.weight_bits, layer.output_bits) == (8, 8, 32)


@covers("MatMulInteger")
def test_matmul_integer_per_column_zero_point():
    # b [4, 5] uint8 with per-column zero points [1,1,1,1,1]; column 0 all equal to 1 -> 16/20 = 0.8
    b = np.full((4, 5), 9, np.uint8)
    b[:, 0] = 1
    node = helper.make_node("MatMulInteger", ["a", "B", "az", "bz"], ["y"], name="mi")
    model = onnx_model([node], {"a": (3, 4)}, {"y": None}, {"B": b, "az": np.uint8(0), "bz": np.ones(5, np.uint8)},
                       input_types={"a": TensorProto.UINT8})
    layer = load_model(model).graph["mi"]
    assert layer.op is OpKind.GEMM and layer.dims == LoopDims(N=3, C=4, M=5)
    assert layer.weight_density == 0.8 and layer.output_bits == 32


def test_qdq_conv_bits_and_per_channel_density():
    # x -Q(uint8)-> -DQ-> Conv(W = DQ(int8 Wq, per-channel zp [0, 1])) -> Q(uint8)
    # Wq channel 0 = [0, 5] (1 of 2 differs from zp 0), channel 1 = [1, 1] (0 of 2 differ from 1): 1/4
    wq = np.array([0, 5, 1, 1], np.int8).reshape(2, 1, 1, 2)
    inits = {"s": np.float32(0.1), "z": np.uint8(128), "Wq": wq, "ws": np.array([0.1, 0.2], np.float32),
             "wz": np.array([0, 1], np.int8)}
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q_in"),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq_in"),
        helper.make_node("DequantizeLinear", ["Wq", "ws", "wz"], ["Wd"], name="dq_w", axis=0),
        helper.make_node("Conv", ["xd", "Wd"], ["c"], name="conv"),
        helper.make_node("QuantizeLinear", ["c", "s", "z"], ["y"], name="q_out"),
    ]
    result = load_model(onnx_model(nodes, {"x": (1, 1, 4, 4)}, {"y": None}, inits), strict=True)
    layer = result.graph["conv"]
    assert layer.weight == "Wq" and layer.inputs == ("xd",)
    assert (layer.input_bits, layer.weight_bits, layer.output_bits) == (8, 8, 8)
    assert layer.weight_density == 0.25
    assert result.graph["dq_w"].op is OpKind.SHAPE  # weights dequantized once, before the model runs
    q_in = result.graph["q_in"]
    assert (q_in.op, q_in.ops_per_element, q_in.output_elements) == (OpKind.ELEMENTWISE, 1.0, 16)


def test_float16_conv_is_16_bit_and_float32_is_word_width():
    node = helper.make_node("Conv", ["x", "W"], ["y"], name="c")
    model = onnx_model([node], {"x": (1, 2, 4, 4)}, {"y": None}, {"W": weights((3, 2, 3, 3), dtype=np.float16)},
                       dtype=TensorProto.FLOAT16)
    layer = load_model(model).graph["c"]
    assert (layer.input_bits, layer.weight_bits, layer.output_bits) == (16, 16, 16)
    assert conv((1, 2, 4, 4), (3, 2, 3, 3)).weight_bits is None


def test_half_zeroed_weight_has_density_half_and_bias_does_not_count():
    w = weights((4, 2, 3, 3))
    w.reshape(-1)[::2] = 0  # 36 of 72 values
    node = helper.make_node("Conv", ["x", "W", "b"], ["y"], name="c")
    model = onnx_model([node], {"x": (1, 2, 5, 5)}, {"y": None}, {"W": w, "b": np.zeros(4, np.float32)})
    assert load_model(model).graph["c"].weight_density == 0.5


def test_weight_through_transpose_keeps_initializer_name_and_density():
    # torch-style: MatMul(x, Transpose(W)) with W 3/4 zero
    w = np.zeros((8, 4), np.float32)
    w[:2] = 1.0  # 8 of 32 nonzero -> 0.25
    nodes = [helper.make_node("Transpose", ["W"], ["Wt"], name="t", perm=[1, 0]),
             helper.make_node("MatMul", ["x", "Wt"], ["y"], name="mm")]
    layer = load_model(onnx_model(nodes, {"x": (3, 4)}, {"y": None}, {"W": w})).graph["mm"]
    assert layer.op is OpKind.GEMM and layer.weight == "W" and layer.weight_density == 0.25


def _out(size: int, pad: int, k: int, stride: int, dil: int) -> int:
    return (size + pad - dil * (k - 1) - 1) // stride + 1


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 3), g=st.integers(1, 3), cg=st.integers(1, 4), mg=st.integers(1, 4),
    h=st.integers(1, 12), w=st.integers(1, 12), kh=st.integers(1, 4), kw=st.integers(1, 4),
    sh=st.integers(1, 3), sw=st.integers(1, 3), dh=st.integers(1, 2), dw=st.integers(1, 2),
    pads=st.tuples(*[st.integers(0, 2)] * 4),
)
def test_conv_macs_match_the_formula(n, g, cg, mg, h, w, kh, kw, sh, sw, dh, dw, pads):
    hout = _out(h, pads[0] + pads[2], kh, sh, dh)
    wout = _out(w, pads[1] + pads[3], kw, sw, dw)
    if hout < 1 or wout < 1:
        return  # no valid output: not a model anyone can build
    layer = conv((n, g * cg, h, w), (g * mg, cg, kh, kw), group=g, strides=[sh, sw], dilations=[dh, dw], pads=list(pads))
    # MACs = N * Cout * Hout * Wout * (Cin/g) * kh * kw
    assert layer.macs == n * (g * mg) * hout * wout * cg * kh * kw
    assert (layer.dims.H, layer.dims.W) == (h + pads[0] + pads[2], w + pads[1] + pads[3])
