"""Model builders shared by the tests.

- Small torch ``nn.Module``s (``ResNetTiny``, ``MobileNetTiny``, ``TransformerBlock``,
  ``DigitsCNN``), each with ``example_input(batch)`` and ``ANALYTIC_MACS`` (dense MACs at
  batch 1, arithmetic in the class docstring), plus ``export_onnx``.
- ``onnx_model``: a one-call onnx.helper wrapper for hand-built graphs (no torch needed).

torch lives here and in tests only, never in the ``energy`` package.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from torch.nn import functional as F


# --- onnx.helper models -------------------------------------------------------------------------
def onnx_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: dict[str, Sequence[int | str | None]],
    outputs: dict[str, Sequence[int | str | None] | None],
    initializers: dict[str, np.ndarray] | None = None,
    *,
    dtype: int = TensorProto.FLOAT,
    input_types: dict[str, int] | None = None,
    output_types: dict[str, int] | None = None,
    value_info: Iterable[onnx.ValueInfoProto] = (),
    opset: int = 17,
    extra_opsets: dict[str, int] | None = None,
    name: str = "test_graph",
) -> onnx.ModelProto:
    """A ModelProto from nodes, input/output shapes (a str or None dim is symbolic / unknown)
    and numpy initializers. Element types default to ``dtype`` unless given per tensor; an
    output given as None gets the type and shape onnx's shape inference finds for it."""
    input_types, output_types = input_types or {}, output_types or {}
    def build(outs: list[onnx.ValueInfoProto]) -> onnx.ModelProto:
        graph = helper.make_graph(
            list(nodes),
            name,
            [helper.make_tensor_value_info(n, input_types.get(n, dtype), list(s)) for n, s in inputs.items()],
            outs,
            [numpy_helper.from_array(np.asarray(a), n) for n, a in (initializers or {}).items()],
            value_info=list(value_info),
        )
        opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
        return helper.make_model(graph, opset_imports=opsets, ir_version=8, producer_name="joulecut-tests")

    outs = []
    for n, s in outputs.items():
        if s is None:  # type and shape to be filled in by onnx's own shape inference
            outs.append(helper.make_value_info(n, onnx.TypeProto()))
        else:
            outs.append(helper.make_tensor_value_info(n, output_types.get(n, dtype), list(s)))
    model = build(outs)
    if any(s is None for s in outputs.values()):
        inferred = {o.name: o for o in onnx.shape_inference.infer_shapes(model).graph.output}
        model = build([inferred[o.name] if outputs[o.name] is None else o for o in outs])
    return model


def digits_cnn_model(w: dict[str, np.ndarray], *, fc_relu: bool = False) -> onnx.ModelProto:
    """The digits CNN's graph (examples/digits DigitsCNN) on input [N, 1, 8, 8], with the
    weights w (w1, b1, w2, b2, w3, b3, fc, fcb; any widths): conv 3x3 pad 1 -> Relu -> conv ->
    Relu -> MaxPool 2x2/2 -> conv -> Relu -> Flatten -> Gemm (fc), then a Relu (fc_relu)."""
    conv = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    out = "g" if fc_relu else "y"
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", **conv),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", **conv),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("MaxPool", ["r2"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
             helper.make_node("Conv", ["p", "w3", "b3"], ["c3"], name="conv3", **conv),
             helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
             helper.make_node("Flatten", ["r3"], ["f"], axis=1, name="flatten"),
             helper.make_node("Gemm", ["f", "fc", "fcb"], [out], transB=1, name="fc")]
    if fc_relu:
        nodes.append(helper.make_node("Relu", ["g"], ["y"], name="fc_relu"))
    return onnx_model(nodes, {"x": ("N", 1, 8, 8)}, {"y": None}, w, name="digits_cnn")


# --- torch models ------------------------------------------------------------------------------


def export_onnx(module: nn.Module, example_input: torch.Tensor, path: str | Path, *, dynamic_batch: bool = False) -> Path:
    """Export with the TorchScript exporter (opset 17, named nodes, input 'x', output 'y')."""
    path = Path(path)
    module.eval()
    dynamic_axes = {"x": {0: "batch"}, "y": {0: "batch"}} if dynamic_batch else None
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "legacy TorchScript exporter": chosen on purpose
        torch.onnx.export(module, (example_input,), str(path), opset_version=17, dynamo=False,
                          input_names=["x"], output_names=["y"], dynamic_axes=dynamic_axes)
    return path


class _SeededInput:
    """``example_input(batch)``: a seeded random batch of the class's INPUT_SHAPE."""

    INPUT_SHAPE: tuple[int, ...]

    @classmethod
    def example_input(cls, batch: int = 1) -> torch.Tensor:
        return torch.randn((batch,) + cls.INPUT_SHAPE, generator=torch.Generator().manual_seed(0))


class BasicBlock(nn.Module):
    """A ResNet basic block (two 3x3 convs with BatchNorm, a projected shortcut when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.proj = None
        if stride != 1 or cin != cout:
            self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.proj is None else self.proj(x)))


class ResNetTiny(_SeededInput, nn.Module):
    """Input 3x32x32. Dense MACs at batch 1:
    stem 3->16 3x3 @32x32: 16*3*9*1024 = 442368;
    block1 (16->16, identity): 2 * 16*16*9*1024 = 4718592;
    block2 (16->32, stride 2): 32*16*9*256 = 1179648, 32*32*9*256 = 2359296, 1x1 projection 32*16*256 = 131072;
    fc 32->10: 320.  Total 8831296."""

    INPUT_SHAPE = (3, 32, 32)
    ANALYTIC_MACS = 442368 + 4718592 + 1179648 + 2359296 + 131072 + 320

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.block1 = BasicBlock(16, 16, 1)
        self.block2 = BasicBlock(16, 32, 2)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class MobileNetTiny(_SeededInput, nn.Module):
    """Input 3x32x32, depthwise-separable blocks. Dense MACs at batch 1:
    stem 3->16 3x3 stride 2 -> 16x16: 16*3*9*256 = 110592;
    dw 16 3x3 @16x16: 16*9*256 = 36864; pw 16->32: 32*16*256 = 131072;
    dw 32 3x3 stride 2 -> 8x8: 32*9*64 = 18432; pw 32->64: 64*32*64 = 131072;
    fc 64->10: 640.  Total 428672."""

    INPUT_SHAPE = (3, 32, 32)
    ANALYTIC_MACS = 110592 + 36864 + 131072 + 18432 + 131072 + 640

    def __init__(self, num_classes: int = 10):
        super().__init__()

        def dw_block(cin: int, cout: int, stride: int, act: type[nn.Module]) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), act(),
                nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), act(),
            )

        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.block1 = dw_block(16, 32, 1, nn.ReLU6)
        self.block2 = dw_block(32, 64, 2, nn.Hardswish)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class TransformerBlock(_SeededInput, nn.Module):
    """A post-norm encoder layer written out by hand; input [batch, seq 16, d 32], 2 heads of 16.
    Dense MACs at batch 1:
    Q, K, V, out projections: 4 * 16*32*32 = 65536;
    Q @ K^T (activation x activation): heads 2 * 16 rows * 16 (K) * 16 cols = 8192;
    softmax(scores) @ V: 2 * 16 * 16 * 16 = 8192;
    FFN 32->64->32: 16*32*64 + 16*64*32 = 65536.  Total 147456."""

    INPUT_SHAPE = (16, 32)
    ANALYTIC_MACS = 65536 + 8192 + 8192 + 65536

    def __init__(self, d_model: int = 32, heads: int = 2, ffn: int = 64):
        super().__init__()
        self.heads, self.head_dim = heads, d_model // heads
        self.q, self.k, self.v = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.ff1, self.ff2 = nn.Linear(d_model, ffn), nn.Linear(ffn, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        dh = self.head_dim

        def split(t: torch.Tensor) -> torch.Tensor:  # [b, s, d] -> [b, heads, s, dh]
            return t.reshape(b, s, self.heads, dh).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(dh)
        context = torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2).reshape(b, s, d)
        x = self.ln1(x + self.out(context))
        return self.ln2(x + self.ff2(F.gelu(self.ff1(x))))


def _digits_example():
    """examples/digits/digits.py as a module: the tests use the example's own network."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "examples" / "digits" / "digits.py"
    spec = importlib.util.spec_from_file_location("joulecut_digits_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class DigitsCNN(_SeededInput, _digits_example().DigitsCNN):
    """The digits example's CNN (input 1x8x8, 10 classes). Dense MACs at batch 1:
    conv 1->16 3x3 pad 1 @8x8: 16*1*9*64 = 9216; conv 16->32 @8x8: 32*16*9*64 = 294912;
    maxpool 2 -> 4x4; conv 32->32 @4x4: 32*32*9*16 = 147456; flatten 32*4*4 = 512 -> fc 10: 5120.
    Total 456704."""

    INPUT_SHAPE = (1, 8, 8)
    ANALYTIC_MACS = 9216 + 294912 + 147456 + 5120


TORCH_MODELS: tuple[type[nn.Module], ...] = (ResNetTiny, MobileNetTiny, TransformerBlock, DigitsCNN)
