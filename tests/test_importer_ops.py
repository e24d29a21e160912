"""Every op in energy.opset.OP_TABLE, one hand-built ONNX node each (no torch).

The element-counted ops run through one parametrized test; the MAC ops have their own tests in
test_importer_mac.py and register themselves there. ``test_every_op_has_a_case`` fails when an
op is added to the table without a test.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
from onnx import TensorProto, helper

from energy.importer import load_model
from energy.ir import OpKind
from energy.opset import OP_TABLE
from models import onnx_model
from test_importer_mac import MAC_OPS_TESTED

F32 = TensorProto.FLOAT
X = (2, 3, 4, 5)  # 120 elements


@dataclass(frozen=True)
class Case:
    """One node 'n' with its inputs/initializers, and the hand-computed expectations."""

    op: str
    kind: OpKind
    ops_per_element: float
    input_elements: int
    output_elements: int
    inputs: dict = field(default_factory=lambda: {"x": X})
    outputs: tuple[str, ...] = ("y",)
    initializers: dict = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)
    node_inputs: tuple[str, ...] = ("x",)
    input_types: dict = field(default_factory=dict)
    opset: int = 17
    out_shape: tuple[int, ...] | None = None  # None: found by onnx's shape inference

    def model(self):
        node = helper.make_node(self.op, list(self.node_inputs), list(self.outputs), name="n", **self.attrs)
        return onnx_model([node], self.inputs, {o: self.out_shape for o in self.outputs}, self.initializers,
                          input_types=self.input_types, opset=self.opset)


def unary(op: str, ops: float, **attrs) -> Case:
    return Case(op, OpKind.ELEMENTWISE, ops, 120, 120, attrs=attrs)


def binary(op: str, ops: float = 1.0, dtype: int = F32) -> Case:
    # two activations of 120 elements each: 240 in, 120 out
    return Case(op, OpKind.ELEMENTWISE, ops, 240, 120, inputs={"x": X, "z": X}, node_inputs=("x", "z"),
                input_types={"x": dtype, "z": dtype})


def reduce(op: str, ops: float, opset: int = 17) -> Case:
    # reduce [2,3,4,5] over axes 2,3 without keepdims: 6 outputs, each reads 4*5 = 20 elements
    if op == "ReduceSum" or opset >= 18:
        return Case(op, OpKind.NORM, ops, 120, 6, node_inputs=("x", "axes"), attrs={"keepdims": 0},
                    initializers={"axes": np.array([2, 3], np.int64)}, opset=opset)
    return Case(op, OpKind.NORM, ops, 120, 6, attrs={"axes": [2, 3], "keepdims": 0})


def moved(op: str, input_elements: int, output_elements: int, **kw) -> Case:
    return Case(op, OpKind.DATA_MOVEMENT, 0.0, input_elements, output_elements, **kw)


def shape_op(op: str, **kw) -> Case:
    return Case(op, OpKind.SHAPE, 0.0, 0, 0, **kw)


def const(*values, dtype=np.float32):
    return np.array(values, dtype)


CASES = [
    # cheap elementwise: 1 op per element, 120 in / 120 out
    *(unary(op, 1.0) for op in "Relu Neg Abs Sign Floor Ceil Round IsNaN IsInf".split()),
    unary("LeakyRelu", 1.0, alpha=0.1),
    unary("ThresholdedRelu", 1.0, alpha=0.5),
    unary("Shrink", 1.0, lambd=0.5),
    unary("Cast", 1.0, to=TensorProto.FLOAT16),
    Case("Clip", OpKind.ELEMENTWISE, 1.0, 120, 120, node_inputs=("x", "lo", "hi"),
         initializers={"lo": np.float32(0), "hi": np.float32(6)}),  # the bounds are constants, not inputs
    Case("CumSum", OpKind.ELEMENTWISE, 1.0, 120, 120, node_inputs=("x", "axis"), initializers={"axis": np.int64(1)}),
    Case("PRelu", OpKind.ELEMENTWISE, 1.0, 120, 120, node_inputs=("x", "slope"), initializers={"slope": const(0.1)}),
    Case("CastLike", OpKind.ELEMENTWISE, 1.0, 120, 120, node_inputs=("x", "like"),
         initializers={"like": np.zeros(1, np.float16)}),
    *(binary(op) for op in "Add Sub Mul Max Min Sum Mean Equal Less LessOrEqual Greater GreaterOrEqual".split()),
    *(binary(op, dtype=TensorProto.BOOL) for op in "And Or Xor".split()),
    Case("Not", OpKind.ELEMENTWISE, 1.0, 120, 120, input_types={"x": TensorProto.BOOL}),
    Case("Mod", OpKind.ELEMENTWISE, 1.0, 240, 120, inputs={"x": X, "z": X}, node_inputs=("x", "z"),
         input_types={"x": TensorProto.INT32, "z": TensorProto.INT32}),
    Case("BitShift", OpKind.ELEMENTWISE, 1.0, 240, 120, inputs={"x": X, "z": X}, node_inputs=("x", "z"),
         input_types={"x": TensorProto.UINT8, "z": TensorProto.UINT8}, attrs={"direction": "LEFT"}),
    # Where(cond, a, b): three activations of 120 = 360 in
    Case("Where", OpKind.ELEMENTWISE, 1.0, 360, 120, inputs={"c": X, "x": X, "z": X}, node_inputs=("c", "x", "z"),
         input_types={"c": TensorProto.BOOL}),
    Case("QuantizeLinear", OpKind.ELEMENTWISE, 1.0, 120, 120, node_inputs=("x", "s", "zp"),
         initializers={"s": np.float32(0.1), "zp": np.uint8(128)}),
    Case("DequantizeLinear", OpKind.ELEMENTWISE, 1.0, 120, 120, node_inputs=("x", "s", "zp"),
         initializers={"s": np.float32(0.1), "zp": np.uint8(128)}, input_types={"x": TensorProto.UINT8}),
    # division-like: 4 (seed + Newton steps)
    binary("Div", 4.0),
    unary("Reciprocal", 4.0),
    unary("Sqrt", 4.0),
    # transcendental: 8
    *(unary(op, 8.0) for op in "Exp Log Tanh Sigmoid Erf Softplus Sin Cos Tan Asin Acos Atan Sinh Cosh Asinh Acosh Atanh".split()),
    Case("Pow", OpKind.ELEMENTWISE, 8.0, 120, 120, node_inputs=("x", "e"), initializers={"e": np.float32(2)}),
    # composites
    Case("Gelu", OpKind.ELEMENTWISE, 11.0, 120, 120, opset=20),  # erf 8 + 3
    Case("Mish", OpKind.ELEMENTWISE, 17.0, 120, 120, opset=18),  # 2 * 8 + 1
    unary("Elu", 9.0), unary("Celu", 9.0), unary("Selu", 10.0), unary("Softsign", 6.0),
    unary("HardSigmoid", 2.0), unary("HardSwish", 3.0),
    Case("BatchNormalization", OpKind.ELEMENTWISE, 2.0, 120, 120, node_inputs=("x", "sc", "b", "mu", "var"),
         initializers={"sc": np.ones(3, np.float32), "b": np.zeros(3, np.float32),
                       "mu": np.zeros(3, np.float32), "var": np.ones(3, np.float32)}),
    Case("InstanceNormalization", OpKind.ELEMENTWISE, 2.0, 120, 120, node_inputs=("x", "sc", "b"),
         initializers={"sc": np.ones(3, np.float32), "b": np.zeros(3, np.float32)}),
    # normalisations
    Case("Softmax", OpKind.NORM, 12.0, 120, 120, attrs={"axis": -1}),
    Case("LogSoftmax", OpKind.NORM, 12.0, 120, 120, attrs={"axis": -1}),
    Case("LayerNormalization", OpKind.NORM, 6.0, 120, 120, node_inputs=("x", "sc"), attrs={"axis": -1},
         initializers={"sc": np.ones(5, np.float32)}),
    Case("GroupNormalization", OpKind.NORM, 6.0, 120, 120, node_inputs=("x", "sc", "b"), attrs={"num_groups": 3},
         initializers={"sc": np.ones(3, np.float32), "b": np.zeros(3, np.float32)}, opset=21, out_shape=X),
    Case("MeanVarianceNormalization", OpKind.NORM, 6.0, 120, 120, out_shape=X),
    Case("LpNormalization", OpKind.NORM, 3.0, 120, 120),
    # reductions over 20 elements per output
    *(reduce(op, 20.0) for op in "ReduceSum ReduceMean ReduceMax ReduceMin ReduceProd ReduceL1 ReduceLogSum".split()),
    reduce("ReduceL2", 40.0), reduce("ReduceSumSquare", 40.0),
    reduce("ReduceLogSumExp", 180.0),  # 20 * (exp 8 + add 1)
    # ArgMax over the last axis (5): 2*3*4 = 24 outputs, 5 reads each
    Case("ArgMax", OpKind.NORM, 5.0, 120, 24, attrs={"axis": 3, "keepdims": 0}),
    Case("ArgMin", OpKind.NORM, 5.0, 120, 24, attrs={"axis": 3, "keepdims": 0}),
    # pools: MaxPool 2x2 stride 2 on 4x6 -> 2x3: 2*3*2*3 = 36 outputs of 4 reads
    Case("MaxPool", OpKind.POOL, 4.0, 144, 36, inputs={"x": (2, 3, 4, 6)}, attrs={"kernel_shape": [2, 2], "strides": [2, 2]}),
    # AveragePool 3x3 pad 1 stride 1 keeps 4x6: 144 outputs of 9 reads
    Case("AveragePool", OpKind.POOL, 9.0, 144, 144, inputs={"x": (2, 3, 4, 6)},
         attrs={"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    # LpPool 2x2 stride 1 on 4x6 -> 3x5: 2*3*3*5 = 90
    Case("LpPool", OpKind.POOL, 4.0, 144, 90, inputs={"x": (2, 3, 4, 6)}, attrs={"kernel_shape": [2, 2]}),
    *(Case(op, OpKind.POOL, 20.0, 120, 6) for op in ("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")),  # 4*5 window
    # data movement: elements in + out, no ops
    moved("Concat", 240, 240, inputs={"x": X, "z": X}, node_inputs=("x", "z"), attrs={"axis": 1}),
    moved("Split", 120, 120, outputs=("y0", "y1", "y2"), attrs={"axis": 1}),  # 3 outputs of 40
    moved("Transpose", 120, 120, attrs={"perm": [0, 2, 1, 3]}),
    moved("Slice", 120, 60, node_inputs=("x", "st", "en", "ax"),  # x[:, :, 0:2] -> 2*3*2*5
          initializers={"st": np.array([0], np.int64), "en": np.array([2], np.int64), "ax": np.array([2], np.int64)}),
    moved("Pad", 120, 168, node_inputs=("x", "p"),  # last axis 5 -> 7: 2*3*4*7
          initializers={"p": np.array([0, 0, 0, 1, 0, 0, 0, 1], np.int64)}),
    moved("Expand", 15, 120, inputs={"x": (1, 3, 1, 5)}, node_inputs=("x", "s"), initializers={"s": np.array(X, np.int64)}),
    moved("Tile", 120, 240, node_inputs=("x", "r"), initializers={"r": np.array([1, 1, 1, 2], np.int64)}),
    moved("Resize", 120, 480, node_inputs=("x", "", "sc"), initializers={"sc": const(1, 1, 2, 2)}),  # 2*3*8*10
    moved("DepthToSpace", 48, 48, inputs={"x": (1, 8, 2, 3)}, attrs={"blocksize": 2}),
    moved("SpaceToDepth", 48, 48, inputs={"x": (1, 2, 4, 6)}, attrs={"blocksize": 2}),
    # ScatterND: data 120 + updates 3*4*5 = 60 in, 120 out (indices are constant)
    moved("ScatterND", 180, 120, inputs={"x": X, "u": (1, 3, 4, 5)}, node_inputs=("x", "i", "u"),
          initializers={"i": np.array([[0]], np.int64)}),
    moved("ScatterElements", 240, 120, inputs={"x": X, "u": X}, node_inputs=("x", "i", "u"),
          initializers={"i": np.zeros(X, np.int64)}),
    # TopK 2 of the last axis: values and indices of 2*3*4*2 = 48 each
    moved("TopK", 120, 96, node_inputs=("x", "k"), outputs=("v", "i"), initializers={"k": np.array([2], np.int64)}),
    # OneHot of 2x3 indices, depth 4: 6 in, 24 out
    moved("OneHot", 6, 24, inputs={"x": (2, 3)}, node_inputs=("x", "d", "vals"), input_types={"x": TensorProto.INT64},
          initializers={"d": np.array(4, np.int64), "vals": const(0, 1)}),
    moved("ReverseSequence", 24, 24, inputs={"x": (4, 2, 3)}, node_inputs=("x", "l"),
          initializers={"l": np.array([4, 3], np.int64)}),
    moved("Trilu", 120, 120),
    moved("CenterCropPad", 120, 72, node_inputs=("x", "s"), opset=18,  # crop to 2*3*4*3
          initializers={"s": np.array([2, 3, 4, 3], np.int64)}),
    # GridSample: x 1*3*4*5 = 60 + grid 1*6*7*2 = 84 in, 1*3*6*7 = 126 out
    moved("GridSample", 144, 126, inputs={"x": (1, 3, 4, 5), "g": (1, 6, 7, 2)}, node_inputs=("x", "g")),
    # Gather of 2 channels: 2*2*4*5 = 80 out
    moved("Gather", 120, 80, node_inputs=("x", "i"), attrs={"axis": 1}, initializers={"i": np.array([0, 2], np.int64)}),
    moved("GatherElements", 120, 120, node_inputs=("x", "i"), initializers={"i": np.zeros(X, np.int64)}),
    moved("GatherND", 120, 60, node_inputs=("x", "i"), initializers={"i": np.array([[0]], np.int64)}),  # 3*4*5
    # shape ops: zero cost
    shape_op("Reshape", node_inputs=("x", "s"), initializers={"s": np.array([6, 20], np.int64)}),
    shape_op("Flatten"),
    shape_op("Squeeze", inputs={"x": (1, 3, 1, 5)}, node_inputs=("x", "a"), initializers={"a": np.array([0, 2], np.int64)}),
    shape_op("Unsqueeze", node_inputs=("x", "a"), initializers={"a": np.array([0], np.int64)}),
    shape_op("Identity"),
    shape_op("Dropout"),
    shape_op("Shape"),
    shape_op("Size"),
    shape_op("Constant", node_inputs=(), attrs={"value": helper.make_tensor("v", F32, [2], [1.0, 2.0])}),
    shape_op("ConstantOfShape", node_inputs=("s",), initializers={"s": np.array([2, 3], np.int64)}),
    # Range from constants only: folded before the model runs
    shape_op("Range", node_inputs=("a", "b", "c"),
             initializers={"a": np.array(0, np.int64), "b": np.array(5, np.int64), "c": np.array(1, np.int64)}),
]

# Ops with a data-dependent output size: a clear error, since they cannot be costed statically.
DATA_DEPENDENT = {"NonZero": ("x",), "Compress": ("x", "c")}


@pytest.mark.parametrize("case", CASES, ids=[c.op for c in CASES])
def test_op(case: Case) -> None:
    result = load_model(case.model(), strict=True)
    layer = result.graph["n"]
    assert layer.onnx_op == case.op
    assert (layer.op, layer.ops_per_element, layer.input_elements, layer.output_elements) == (
        case.kind, case.ops_per_element, case.input_elements, case.output_elements)
    assert layer.macs == 0


@pytest.mark.parametrize("op", sorted(DATA_DEPENDENT))
def test_data_dependent_output_size_is_a_model_error(op: str) -> None:
    from energy.errors import ModelError

    inputs = {"x": X, "c": (2,)}
    node = helper.make_node(op, list(DATA_DEPENDENT[op]), ["y"], name="n", **({"axis": 0} if op == "Compress" else {}))
    model = onnx_model([node], {k: inputs[k] for k in DATA_DEPENDENT[op]}, {"y": None},
                       input_types={"c": TensorProto.BOOL})
    with pytest.raises(ModelError, match="no static shape") as info:
        load_model(model)
    assert info.value.node == "n" and "node 'n'" in str(info.value)


def test_every_op_has_a_case() -> None:
    tested = {c.op for c in CASES} | set(DATA_DEPENDENT) | MAC_OPS_TESTED
    assert set(OP_TABLE) - tested == set()
    assert tested - set(OP_TABLE) == set()


def test_op_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        OP_TABLE["Relu"] = None  # type: ignore[index]
