"""The ONNX op table: op_type -> handler that turns one node into one ``Layer``.

Each handler receives a ``NodeView`` (the node plus what shape inference and the initializers
say about its tensors) and returns a ``Layer``. The table ``OP_TABLE`` is read-only; the
importer (``energy.importer``) decides which nodes reach it.

Cost conventions for non-MAC layers:

- ``input_elements``: elements of the node's activation inputs (constants excluded), summed;
- ``output_elements``: elements of its outputs, summed;
- ``ops_per_element``: arithmetic operations per *output* element.

Ops per element (a model of a simple vector unit, not a measurement):

- 1 for arithmetic, comparisons, clamps, selects and casts (Relu, Add, Clip, Where, Cast, ...),
  QuantizeLinear / DequantizeLinear (one multiply-add with rounding);
- ``DIVIDE_OPS`` = 4 for Div, Reciprocal, Sqrt: a seed plus a few Newton-Raphson steps;
- ``TRANSCENDENTAL_OPS`` = 8 for Exp, Log, Tanh, Sigmoid, Erf, Softplus, Pow, trig: range
  reduction plus a degree ~6 polynomial, about 8 multiply-adds;
- composites add their extra arithmetic: Gelu = 8 + 3 (0.5 * x * (1 + erf(x / sqrt 2))),
  Elu/Celu = 8 + 1, Selu = 8 + 2, Mish = 2 * 8 + 1, Softsign = 4 + 2, HardSigmoid = 2
  (multiply-add, clamp), HardSwish = 3 (HardSigmoid, multiply);
- BatchNormalization / InstanceNormalization = 2 (one scale, one shift per element);
- NORM: Softmax / LogSoftmax = 12 per element (max, subtract, exp 8, accumulate, scale);
  LayerNormalization / GroupNormalization / MeanVarianceNormalization = 6 (accumulate mean,
  subtract, square-accumulate, multiply by 1/std, scale, shift); LpNormalization = 3;
  reductions (ReduceSum, ReduceMean, ArgMax, ...) = reduced elements per output element times
  1 (2 for squaring reductions, 9 for ReduceLogSumExp);
- POOL: the window size per output element (reads per output);
- DATA_MOVEMENT and SHAPE: 0.
"""
from __future__ import annotations

import math
from types import MappingProxyType
from typing import Callable, Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper

from energy.errors import ModelError
from energy.ir import Layer, LoopDims, OpKind

DIVIDE_OPS = 4.0
TRANSCENDENTAL_OPS = 8.0

# Bits per value of a tensor element type; types absent here (float32, float64, int64, bool)
# map to None: "the hardware's word width".
_BITS: dict[int, int] = {
    TensorProto.INT8: 8,
    TensorProto.UINT8: 8,
    TensorProto.INT16: 16,
    TensorProto.UINT16: 16,
    TensorProto.FLOAT16: 16,
    TensorProto.BFLOAT16: 16,
    TensorProto.INT32: 32,
    TensorProto.UINT32: 32,
}
for _name, _bits in (("INT4", 4), ("UINT4", 4), ("FLOAT8E4M3FN", 8), ("FLOAT8E4M3FNUZ", 8), ("FLOAT8E5M2", 8), ("FLOAT8E5M2FNUZ", 8)):
    if hasattr(TensorProto, _name):
        _BITS[getattr(TensorProto, _name)] = _bits

# Ops a weight may pass through on its way from an initializer to a MAC op without changing
# which of its values are zero (so the density measured at the root is the weight's density).
_WEIGHT_PASS_THROUGH = frozenset({"DequantizeLinear", "Identity", "Cast", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze"})


class TensorFacts:
    """What the importer knows about every tensor of the model (after shape inference)."""

    def __init__(
        self,
        file: str,
        shapes: Mapping[str, tuple[int, ...] | None],
        elem_types: Mapping[str, int],
        constants: Mapping[str, np.ndarray | None],
        producers: Mapping[str, onnx.NodeProto],
        consumers: Mapping[str, list[onnx.NodeProto]],
    ):
        self.file = file
        self.shapes = shapes  # None: rank or some dim unknown after inference
        self.elem_types = elem_types
        self.constants = constants  # constant tensor -> its value when known, else None
        self.producers = producers
        self.consumers = consumers
        self.warnings: list[str] = []  # handlers' notes for ImportResult.warnings


class NodeView:
    """One node as a handler sees it: attributes, static shapes, constants and bit widths."""

    def __init__(self, node: onnx.NodeProto, name: str, facts: TensorFacts):
        self.node = node
        self.name = name
        self.op = node.op_type
        self.facts = facts
        self._attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}

    # --- errors and attributes ------------------------------------------------------------
    def error(self, message: str) -> ModelError:
        return ModelError(message, file=self.facts.file, node=self.name)

    def attr(self, name: str, default: object = None) -> object:
        value = self._attrs.get(name, default)
        return value.decode() if isinstance(value, bytes) else value

    def ints(self, name: str, default: list[int]) -> list[int]:
        return [int(v) for v in self._attrs.get(name, default)]

    # --- tensors ----------------------------------------------------------------------------
    def input(self, index: int) -> str:
        """Name of input ``index`` ('' when absent or omitted)."""
        return self.node.input[index] if index < len(self.node.input) else ""

    def output(self, index: int = 0) -> str:
        return self.node.output[index] if index < len(self.node.output) else ""

    def is_constant(self, tensor: str) -> bool:
        return tensor in self.facts.constants

    def shape(self, tensor: str) -> tuple[int, ...]:
        """The static shape of ``tensor``; ModelError naming this node when it has none."""
        shape = self.facts.shapes.get(tensor)
        if shape is None:
            producer = self.facts.producers.get(tensor)
            origin = f" (produced by node '{producer.name or producer.op_type}')" if producer is not None else ""
            raise self.error(f"tensor '{tensor}'{origin} has no static shape after shape inference; "
                             "every tensor a costed op touches needs one")
        return shape

    def elements(self, tensor: str) -> int:
        return math.prod(self.shape(tensor))

    def activation_inputs(self) -> tuple[str, ...]:
        """Non-empty, non-constant inputs, in order, without repeats."""
        seen: list[str] = []
        for t in self.node.input:
            if t and not self.is_constant(t) and t not in seen:
                seen.append(t)
        return tuple(seen)

    def outputs(self) -> tuple[str, ...]:
        return tuple(t for t in self.node.output if t)

    def bits(self, tensor: str) -> int | None:
        return _BITS.get(self.facts.elem_types.get(tensor, TensorProto.UNDEFINED))

    def activation_bits(self, tensor: str) -> int | None:
        """Bits of an activation operand: through a DequantizeLinear (QDQ) it is the quantized type."""
        producer = self.facts.producers.get(tensor)
        if producer is not None and producer.op_type == "DequantizeLinear":
            return self.bits(producer.input[0])
        return self.bits(tensor)

    def result_bits(self, tensor: str) -> int | None:
        """Bits of a result: when every consumer quantizes it (QDQ), the quantized type."""
        consumers = self.facts.consumers.get(tensor, [])
        if consumers and all(c.op_type == "QuantizeLinear" for c in consumers):
            bits = {self.bits(c.output[0]) for c in consumers}
            if len(bits) == 1:
                return bits.pop()
        return self.bits(tensor)

    def constant_value(self, tensor: str) -> np.ndarray | None:
        return self.facts.constants.get(tensor)

    def weight(self, tensor: str, zero_point: str = "", axis: int = 0) -> tuple[str, float, int | None]:
        """(name, density, bits) of a weight operand.

        The name is the initializer that holds the values, found by following the weight back
        through ops that keep its zeros where they are (DequantizeLinear, Identity, Cast,
        Transpose, Reshape, ...). Density is the fraction of values that are not zero — not
        equal to the zero point for quantized weights (``zero_point`` names it for QLinear ops;
        a DequantizeLinear on the way supplies its own). Bits come from the root's type.
        A weight that is not constant (a graph input) keeps its name with density 1.0.
        """
        root, zp_name, zp_axis = tensor, zero_point, axis
        while True:
            producer = self.facts.producers.get(root)
            if producer is None or producer.op_type not in _WEIGHT_PASS_THROUGH or not self.is_constant(producer.input[0]):
                break
            if producer.op_type == "DequantizeLinear":
                zp_name = producer.input[2] if len(producer.input) > 2 else ""
                zp_axis = int(next((helper.get_attribute_value(a) for a in producer.attribute if a.name == "axis"), 1))
            root = producer.input[0]
        bits = self.bits(root)
        values = self.constant_value(root)
        if values is None:
            why = "its values are not stored in an initializer" if self.is_constant(root) else "it is not a constant"
            self.facts.warnings.append(f"weight '{root}' of node '{self.name}': {why}, density assumed 1.0")
            return root, 1.0, bits
        zp = self.constant_value(zp_name) if zp_name else None
        return root, _nonzero_fraction(values, zp, zp_axis, self), bits


def _nonzero_fraction(values: np.ndarray, zero_point: np.ndarray | None, axis: int, view: NodeView) -> float:
    """Fraction of ``values`` different from zero (or from the zero point, per tensor or per axis)."""
    if values.size == 0:
        return 1.0
    if zero_point is None or zero_point.size == 1:
        zero = 0 if zero_point is None else zero_point.reshape(()).astype(values.dtype)
        return float(np.count_nonzero(values != zero)) / values.size
    if zero_point.ndim == 1 and values.ndim > 0:
        axis = axis % values.ndim
        if zero_point.shape[0] == values.shape[axis]:
            shape = [1] * values.ndim
            shape[axis] = -1
            return float(np.count_nonzero(values != zero_point.reshape(shape))) / values.size
    if zero_point.shape == values.shape:
        return float(np.count_nonzero(values != zero_point)) / values.size
    raise view.error(f"weight zero point of shape {list(zero_point.shape)} does not fit a weight of shape {list(values.shape)}")


Handler = Callable[[NodeView], Layer]


# --- MAC ops --------------------------------------------------------------------------------
def _spatial(view: NodeView, x_shape: tuple[int, ...], w_shape: tuple[int, ...], y_shape: tuple[int, ...], transpose: bool = False):
    """Normalise a 1-D, 2-D (or depth-1-kernel 3-D) conv to 2-D: returns
    (depth, in_hw, kernel_hw, out_hw, strides, dilations, pads_begin, pads_end)."""
    rank = len(x_shape) - 2
    if rank not in (1, 2, 3) or len(w_shape) != rank + 2 or len(y_shape) != rank + 2:
        raise view.error(f"{view.op} needs a 1-D or 2-D input of rank 3 or 4, got shape {list(x_shape)}")
    strides = view.ints("strides", [1] * rank)
    dilations = view.ints("dilations", [1] * rank)
    pads = view.ints("pads", [0] * (2 * rank))
    auto_pad = view.attr("auto_pad", "NOTSET")
    depth = 1
    if rank == 3:  # Conv3d: fine only when the kernel has depth 1 (a stack of 2-D convs).
        if transpose or w_shape[2] != 1 or pads[0] != 0 or pads[3] != 0:
            raise view.error(f"3-D {view.op} is not supported (kernel {list(w_shape[2:])}); only a kernel of depth 1 is")
        depth = y_shape[2]
        x_shape, w_shape, y_shape = x_shape[:2] + x_shape[3:], w_shape[:2] + w_shape[3:], y_shape[:2] + y_shape[3:]
        strides, dilations, pads = strides[1:], dilations[1:], pads[1:3] + pads[4:6]
        rank = 2
    in_hw, k_hw, out_hw = list(x_shape[2:]), list(w_shape[2:]), list(y_shape[2:])
    begin, end = pads[:rank], pads[rank:]
    if not transpose and auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        for i in range(rank):
            total = max(0, (out_hw[i] - 1) * strides[i] + (k_hw[i] - 1) * dilations[i] + 1 - in_hw[i])
            small, large = total // 2, total - total // 2
            begin[i], end[i] = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
    elif auto_pad == "VALID":
        begin, end = [0] * rank, [0] * rank
    if rank == 1:  # 1-D: the second spatial dim is 1
        in_hw, k_hw, out_hw = in_hw + [1], k_hw + [1], out_hw + [1]
        strides, dilations, begin, end = strides + [1], dilations + [1], begin + [0], end + [0]
    return depth, in_hw, k_hw, out_hw, strides, dilations, begin, end


def _conv_layer(view: NodeView, x: str, w: str, y: str, w_zero_point: str = "", kind: OpKind = OpKind.CONV) -> Layer:
    x_shape, w_shape, y_shape = view.shape(x), view.shape(w), view.shape(y)
    groups = int(view.attr("group", 1))
    depth, in_hw, k_hw, out_hw, strides, dilations, begin, end = _spatial(view, x_shape, w_shape, y_shape)
    cin, cout = x_shape[1], w_shape[0]
    if cin % groups or cout % groups or w_shape[1] * groups != cin:
        raise view.error(f"Conv with group={groups} needs input channels {cin} = weight dim 1 ({w_shape[1]}) x group "
                         f"and output channels {cout} divisible by group")
    dims = LoopDims(
        N=x_shape[0] * depth, G=groups, M=cout // groups, C=cin // groups,
        P=out_hw[0], Q=out_hw[1], R=k_hw[0], S=k_hw[1],
        stride_h=strides[0], stride_w=strides[1], dilation_h=dilations[0], dilation_w=dilations[1],
        H=in_hw[0] + begin[0] + end[0], W=in_hw[1] + begin[1] + end[1],
    )
    name, density, bits = view.weight(w, w_zero_point, axis=0)
    return Layer(
        name=view.name, op=kind, onnx_op=view.op,
        inputs=(x,) + tuple(t for t in view.activation_inputs() if t != x), outputs=view.outputs(),
        dims=dims, weight=name, weight_density=density, weight_bits=bits,
        input_bits=view.activation_bits(x), output_bits=view.result_bits(y),
        input_elements=view.elements(x), output_elements=view.elements(y),
    )


def conv(view: NodeView) -> Layer:
    return _conv_layer(view, view.input(0), view.input(1), view.output())


def conv_integer(view: NodeView) -> Layer:
    # inputs: x, w, x_zero_point, w_zero_point
    return _conv_layer(view, view.input(0), view.input(1), view.output(), w_zero_point=view.input(3))


def qlinear_conv(view: NodeView) -> Layer:
    # inputs: x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, B
    return _conv_layer(view, view.input(0), view.input(3), view.output(), w_zero_point=view.input(5))


def conv_transpose(view: NodeView) -> Layer:
    """Costed in scatter form: each input pixel is multiplied by the whole kernel."""
    x, w, y = view.input(0), view.input(1), view.output()
    x_shape, w_shape, y_shape = view.shape(x), view.shape(w), view.shape(y)
    groups = int(view.attr("group", 1))
    _, in_hw, k_hw, _, _, _, _, _ = _spatial(view, x_shape, w_shape, y_shape, transpose=True)
    cin = x_shape[1]
    if w_shape[0] != cin or cin % groups:
        raise view.error(f"ConvTranspose with group={groups} needs weight dim 0 ({w_shape[0]}) = input channels {cin}, divisible by group")
    dims = LoopDims(N=x_shape[0], G=groups, M=w_shape[1], C=cin // groups, P=in_hw[0], Q=in_hw[1], R=k_hw[0], S=k_hw[1])
    name, density, bits = view.weight(w, axis=0)
    return Layer(
        name=view.name, op=OpKind.CONV_TRANSPOSE, onnx_op=view.op, inputs=view.activation_inputs(), outputs=view.outputs(),
        dims=dims, weight=name, weight_density=density, weight_bits=bits,
        input_bits=view.activation_bits(x), output_bits=view.result_bits(y),
        input_elements=view.elements(x), output_elements=view.elements(y),
    )


def _matmul_layer(view: NodeView, a: str, b: str, y: str, b_zero_point: str = "", trans_a: bool = False, trans_b: bool = False) -> Layer:
    """A @ B: GEMM when B is a constant matrix (a weight), MATMUL when both are activations."""
    a_shape, b_shape, y_shape = list(view.shape(a)), list(view.shape(b)), view.shape(y)
    if len(a_shape) == 1:
        a_shape = [1] + a_shape
    if len(b_shape) == 1:
        b_shape = b_shape + [1]
    if trans_a:
        a_shape[-2:] = a_shape[-1:-3:-1]
    if trans_b:
        b_shape[-2:] = b_shape[-1:-3:-1]
    rows, k, cols = a_shape[-2], a_shape[-1], b_shape[-1]
    if b_shape[-2] != k:
        raise view.error(f"{view.op} operand shapes {list(view.shape(a))} and {list(view.shape(b))} do not multiply")
    common = dict(name=view.name, onnx_op=view.op, outputs=view.outputs(), output_bits=view.result_bits(y),
                  input_bits=view.activation_bits(a), output_elements=view.elements(y))
    if view.is_constant(b) and len(b_shape) == 2:
        name, density, bits = view.weight(b, b_zero_point, axis=1)
        return Layer(op=OpKind.GEMM, inputs=view.activation_inputs(), dims=LoopDims(N=math.prod(a_shape[:-1]), C=k, M=cols),
                     weight=name, weight_density=density, weight_bits=bits, input_elements=view.elements(a), **common)
    batch = math.prod(y_shape[:-2]) if len(y_shape) > 2 else 1
    acts = view.activation_inputs()
    inputs = (a,) + tuple(t for t in acts if t != a) if a in acts else acts
    return Layer(op=OpKind.MATMUL, inputs=inputs, dims=LoopDims(G=batch, N=rows, C=k, M=cols), weight=None,
                 weight_bits=view.activation_bits(b), input_elements=sum(view.elements(t) for t in acts), **common)


def matmul(view: NodeView) -> Layer:
    return _matmul_layer(view, view.input(0), view.input(1), view.output())


def matmul_integer(view: NodeView) -> Layer:
    return _matmul_layer(view, view.input(0), view.input(1), view.output(), b_zero_point=view.input(3))


def qlinear_matmul(view: NodeView) -> Layer:
    # inputs: a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point
    return _matmul_layer(view, view.input(0), view.input(3), view.output(), b_zero_point=view.input(5))


def gemm(view: NodeView) -> Layer:
    """Y = alpha * A' @ B' + beta * C; the bias C is not the weight."""
    a_shape = view.shape(view.input(0))
    if len(a_shape) != 2 or len(view.shape(view.input(1))) != 2:
        raise view.error(f"Gemm needs 2-D operands, got {list(a_shape)} and {list(view.shape(view.input(1)))}")
    return _matmul_layer(view, view.input(0), view.input(1), view.output(),
                         trans_a=bool(view.attr("transA", 0)), trans_b=bool(view.attr("transB", 0)))


# --- element-counted ops --------------------------------------------------------------------
def _counted(view: NodeView, kind: OpKind, ops_per_element: float) -> Layer:
    acts = view.activation_inputs()
    outs = view.outputs()
    first_in = acts[0] if acts else ""
    return Layer(
        name=view.name, op=kind, onnx_op=view.op, inputs=acts, outputs=outs,
        input_elements=sum(view.elements(t) for t in acts), output_elements=sum(view.elements(t) for t in outs),
        ops_per_element=ops_per_element,
        input_bits=view.bits(first_in) if first_in else None, output_bits=view.bits(outs[0]) if outs else None,
    )


def elementwise(ops_per_element: float) -> Handler:
    def handler(view: NodeView) -> Layer:
        return _counted(view, OpKind.ELEMENTWISE, ops_per_element)

    handler.__name__ = f"elementwise_{ops_per_element:g}"
    return handler


def norm(ops_per_element: float) -> Handler:
    def handler(view: NodeView) -> Layer:
        return _counted(view, OpKind.NORM, ops_per_element)

    handler.__name__ = f"norm_{ops_per_element:g}"
    return handler


def reduce(ops_per_reduced_element: float) -> Handler:
    """Reductions: each output element reads (input / output) elements."""

    def handler(view: NodeView) -> Layer:
        x, y = view.input(0), view.output()
        window = view.elements(x) / max(1, view.elements(y))
        layer = _counted(view, OpKind.NORM, window * ops_per_reduced_element)
        return layer.replace(output_elements=view.elements(y))

    handler.__name__ = f"reduce_{ops_per_reduced_element:g}"
    return handler


def pool(view: NodeView) -> Layer:
    """MaxPool / AveragePool / LpPool: a window of kernel_shape reads per output."""
    y = view.output()
    window = math.prod(view.ints("kernel_shape", []))
    layer = _counted(view, OpKind.POOL, float(window))
    return layer.replace(output_elements=view.elements(y))  # not MaxPool's optional Indices


def global_pool(view: NodeView) -> Layer:
    x = view.input(0)
    return _counted(view, OpKind.POOL, float(math.prod(view.shape(x)[2:])))


def data_movement(view: NodeView) -> Layer:
    return _counted(view, OpKind.DATA_MOVEMENT, 0.0)


def gather(view: NodeView) -> Layer:
    """Gather from a constant table (an embedding) reads only the gathered rows."""
    layer = _counted(view, OpKind.DATA_MOVEMENT, 0.0)
    if view.is_constant(view.input(0)):
        layer = layer.replace(input_elements=layer.input_elements + view.elements(view.output()))
    return layer


def shape_only(view: NodeView) -> Layer:
    """Zero cost: the op only renames or reinterprets its input (kept for the graph's edges)."""
    return Layer(name=view.name, op=OpKind.SHAPE, onnx_op=view.op, inputs=view.activation_inputs(), outputs=view.outputs())


def _table() -> dict[str, Handler]:
    t: dict[str, Handler] = {
        "Conv": conv, "ConvInteger": conv_integer, "QLinearConv": qlinear_conv, "ConvTranspose": conv_transpose,
        "Gemm": gemm, "MatMul": matmul, "MatMulInteger": matmul_integer, "QLinearMatMul": qlinear_matmul,
        "MaxPool": pool, "AveragePool": pool, "LpPool": pool,
        "GlobalAveragePool": global_pool, "GlobalMaxPool": global_pool, "GlobalLpPool": global_pool,
        "Gather": gather, "GatherElements": gather, "GatherND": gather,
    }
    cheap = ("Relu LeakyRelu PRelu Clip ThresholdedRelu Shrink Add Sub Mul Neg Abs Max Min Sum Mean Where Cast CastLike "
             "Sign Floor Ceil Round Not And Or Xor Equal Less LessOrEqual Greater GreaterOrEqual IsNaN IsInf Mod BitShift "
             "QuantizeLinear DequantizeLinear CumSum")
    for op in cheap.split():
        t[op] = elementwise(1.0)
    for op in "Div Reciprocal Sqrt".split():
        t[op] = elementwise(DIVIDE_OPS)
    for op in "Exp Log Tanh Sigmoid Erf Softplus Pow Sin Cos Tan Asin Acos Atan Sinh Cosh Asinh Acosh Atanh".split():
        t[op] = elementwise(TRANSCENDENTAL_OPS)
    composite = {"Gelu": TRANSCENDENTAL_OPS + 3, "Elu": TRANSCENDENTAL_OPS + 1, "Celu": TRANSCENDENTAL_OPS + 1,
                 "Selu": TRANSCENDENTAL_OPS + 2, "Mish": 2 * TRANSCENDENTAL_OPS + 1, "Softsign": DIVIDE_OPS + 2,
                 "HardSigmoid": 2.0, "HardSwish": 3.0, "BatchNormalization": 2.0, "InstanceNormalization": 2.0}
    for op, ops in composite.items():
        t[op] = elementwise(ops)
    for op, ops in {"Softmax": 12.0, "LogSoftmax": 12.0, "LayerNormalization": 6.0, "GroupNormalization": 6.0,
                    "MeanVarianceNormalization": 6.0, "LpNormalization": 3.0}.items():
        t[op] = norm(ops)
    for op, ops in {"ReduceSum": 1.0, "ReduceMean": 1.0, "ReduceMax": 1.0, "ReduceMin": 1.0, "ReduceProd": 1.0,
                    "ReduceL1": 1.0, "ReduceL2": 2.0, "ReduceSumSquare": 2.0, "ReduceLogSum": 1.0,
                    "ReduceLogSumExp": TRANSCENDENTAL_OPS + 1, "ArgMax": 1.0, "ArgMin": 1.0}.items():
        t[op] = reduce(ops)
    moves = ("Concat Split Transpose Slice Pad Expand Tile Resize DepthToSpace SpaceToDepth ScatterND "
             "ScatterElements TopK NonZero OneHot Range ReverseSequence Compress Trilu CenterCropPad GridSample")
    for op in moves.split():
        t[op] = data_movement
    for op in "Reshape Flatten Squeeze Unsqueeze Identity Shape Size Constant ConstantOfShape Dropout".split():
        t[op] = shape_only
    return t


OP_TABLE: Mapping[str, Handler] = MappingProxyType(_table())
"""op_type (default ONNX domain) -> handler; read-only."""


# --- joulecut's own domain ---------------------------------------------------------------------
JOULECUT_DOMAIN = "joulecut"


def hashed_linear(view: NodeView) -> Layer:
    """joulecut.HashedLinear(X[..., in], W[out, in], B[out], hash parameters...): a SLIDE layer.
    Dims as the Gemm X @ W^T; K, L and the measured active fraction come from its attributes."""
    x, w, y = view.input(0), view.input(1), view.output()
    x_shape, w_shape = view.shape(x), view.shape(w)
    if len(w_shape) != 2 or x_shape[-1] != w_shape[1]:
        raise view.error(f"HashedLinear needs X[..., in] and W[out, in], got {list(x_shape)} and {list(w_shape)}")
    active = float(view.attr("active_fraction", 1.0))
    if not 0.0 < active <= 1.0:
        raise view.error(f"HashedLinear attribute active_fraction must be in (0, 1], got {active}")
    name, density, bits = view.weight(w, axis=1)
    return Layer(
        name=view.name, op=OpKind.HASHED, onnx_op=f"{JOULECUT_DOMAIN}.{view.op}", inputs=view.activation_inputs(),
        outputs=view.outputs(), dims=LoopDims(N=math.prod(x_shape[:-1]), C=w_shape[1], M=w_shape[0]),
        weight=name, weight_density=density, weight_bits=bits, input_bits=view.activation_bits(x),
        output_bits=view.result_bits(y), input_elements=view.elements(x), output_elements=view.elements(y),
        hash_bits=int(view.attr("K", 0)), hash_tables=int(view.attr("L", 0)), active_fraction=active,
        batched=view.attr("mode", "batched") == "batched",
    )


def reuse_conv(view: NodeView) -> Layer:
    """joulecut.ReuseConv(X, W, B?): a Conv (same attributes) with adaptive deep reuse; the
    measured cluster ratio and the hashes per sub-vector come from its attributes."""
    ratio = float(view.attr("cluster_ratio", 1.0))
    if not 0.0 < ratio <= 1.0:
        raise view.error(f"ReuseConv attribute cluster_ratio must be in (0, 1], got {ratio}")
    layer = _conv_layer(view, view.input(0), view.input(1), view.output())
    return layer.replace(op=OpKind.REUSE, onnx_op=f"{JOULECUT_DOMAIN}.{view.op}", cluster_ratio=ratio,
                         reuse_hashes=int(view.attr("n_hashes", 0)))


def joulecut_output_shape(node: onnx.NodeProto, x: tuple[int, ...], w: tuple[int, ...]) -> tuple[int, ...]:
    """Output shape of a joulecut op from its input and weight shapes (onnx cannot infer it)."""
    if node.op_type == "HashedLinear":
        return tuple(x[:-1]) + (w[0],)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    kernel = w[2:]
    strides = list(attrs.get("strides", [1] * len(kernel)))
    pads = list(attrs.get("pads", [0] * 2 * len(kernel)))
    dil = list(attrs.get("dilations", [1] * len(kernel)))
    spatial = tuple((size + pads[i] + pads[i + len(kernel)] - (k - 1) * dil[i] - 1) // strides[i] + 1
                    for i, (size, k) in enumerate(zip(x[2:], kernel)))
    return (x[0], w[0]) + spatial


JOULECUT_TABLE: Mapping[str, Handler] = MappingProxyType({"HashedLinear": hashed_linear, "ReuseConv": reuse_conv})
"""op_type (joulecut domain) -> handler; read-only."""
