"""ONNX -> torch: an nn.Module that runs an ONNX graph with trainable layers.

Conv -> nn.Conv2d, Gemm and MatMul-with-a-constant -> nn.Linear, BatchNormalization ->
nn.BatchNorm2d, each initialised from the model's initializers; every other supported op is
a functional call. Each trainable module is registered under the ONNX node name, so the energy
estimator's IR layers (named after ONNX nodes) map onto modules: ``module.layer(node_name)``.

The module keeps the source model's node list; ``pruning.export.export_onnx`` writes that same
node list back with the module's current parameters, so node names survive prune -> export.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from energy.errors import ModelError

# Ops turned into trainable modules; everything else is functional (see _FUNCTIONAL).
TRAINABLE_OPS = frozenset({"Conv", "Gemm", "MatMul", "BatchNormalization"})


@dataclass(frozen=True)
class Step:
    """One ONNX node as the module executes it."""

    name: str
    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    flatten_reshape: bool = False  # a Reshape [b, ...] -> [b, prod(...)]: run as flatten(1)


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _load(model: onnx.ModelProto | str | Path) -> tuple[onnx.ModelProto, str | None]:
    if isinstance(model, onnx.ModelProto):
        return model, None
    path = Path(model)
    if not path.is_file():
        raise ModelError("no such ONNX file", file=str(path))
    try:
        return onnx.load(str(path)), str(path)
    except Exception as exc:  # onnx raises DecodeError, ValueError, ... for a bad file
        raise ModelError(f"cannot read ONNX model: {exc}", file=str(path)) from exc


def _pads(attrs: dict[str, Any], node: str, file: str | None) -> tuple[int, int]:
    """Symmetric (pad_h, pad_w) from ONNX pads [h0, w0, h1, w1]; auto_pad is not supported."""
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad not in ("NOTSET", "VALID"):
        raise ModelError(f"auto_pad={auto_pad} is not supported; export with explicit pads", file=file, node=node)
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    if len(pads) != 4 or pads[0] != pads[2] or pads[1] != pads[3]:
        raise ModelError(f"only symmetric 2-D pads are supported, got {pads}", file=file, node=node)
    return int(pads[0]), int(pads[1])


class BatchNorm(nn.BatchNorm2d):
    """BatchNorm2d that also accepts (N, C) and (N, C, L) inputs, like ONNX BatchNormalization."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"BatchNormalization needs (N, C, ...) input, got {input.dim()}-D")


class OnnxModule(nn.Module):
    """Executes an ONNX graph in topological order (see module docstring).

    ``forward(*inputs)`` takes the graph inputs in order and returns the single output, or a
    tuple when the graph has several.
    """

    def __init__(self, model: onnx.ModelProto, file: str | None = None):
        super().__init__()
        model = fold_constant_identities(model)
        self.source = model  # kept for export: opset, node list, graph input/output names
        self.file = file
        graph = model.graph
        inits = {t.name: t for t in graph.initializer}
        self._init_names = set(inits)
        self.input_names = tuple(i.name for i in graph.input if i.name not in inits)
        self.output_names = tuple(o.name for o in graph.output)
        self.layers = nn.ModuleDict()
        self._key: dict[str, str] = {}  # node name -> ModuleDict key
        self._const_key: dict[str, str] = {}  # constant tensor name -> buffer name
        self._param_tensors: dict[str, tuple[str, ...]] = {}  # node name -> its parameter initializers
        self.steps: list[Step] = []
        self._init_np = {name: numpy_helper.to_array(t) for name, t in inits.items()}
        shapes = _static_shapes(model)
        for node, name in zip(graph.node, node_names(graph)):
            attrs = _attrs(node)
            if node.op_type not in _FUNCTIONAL and node.op_type not in TRAINABLE_OPS:
                raise ModelError(f"op {node.op_type} cannot be converted to torch", file=file, node=name)
            step = Step(name, node.op_type, tuple(node.input), tuple(node.output), attrs)
            if node.op_type in TRAINABLE_OPS:
                module = self._trainable(node, name, attrs)
                if module is None:  # MatMul of two activations: functional
                    pass
                else:
                    key = f"m{len(self._key)}"
                    self._key[name] = key
                    self.layers[key] = module
            elif node.op_type == "Reshape":
                step = Step(name, node.op_type, step.inputs, step.outputs, attrs, self._is_flatten(node, shapes))
            for t in node.input:
                if t in inits and t not in self._const_key and not self._owned_by_module(name, t):
                    buffer = f"c{len(self._const_key)}"
                    self._const_key[t] = buffer
                    self.register_buffer(buffer, torch.from_numpy(self._init_np[t].copy()))
            self.steps.append(step)
        del self._init_np

    # --- construction helpers -------------------------------------------------------------
    def _owned_by_module(self, node_name: str, tensor: str) -> bool:
        key = self._key.get(node_name)
        return key is not None and tensor in self._param_tensors.get(node_name, ())

    def _init(self, tensor: str, node: str) -> np.ndarray:
        if tensor not in self._init_np:
            raise ModelError(f"input {tensor!r} must be a constant initializer", file=self.file, node=node)
        return self._init_np[tensor]

    def _trainable(self, node: onnx.NodeProto, name: str, attrs: dict[str, Any]) -> nn.Module | None:
        op, ins = node.op_type, list(node.input)
        if op == "Conv":
            w = self._init(ins[1], name)
            if w.ndim != 4:
                raise ModelError(f"only 2-D Conv is supported, weight has shape {w.shape}", file=self.file, node=name)
            groups = int(attrs.get("group", 1))
            pad = _pads(attrs, name, self.file)
            has_bias = len(ins) > 2 and ins[2] != ""
            conv = nn.Conv2d(
                w.shape[1] * groups, w.shape[0], (w.shape[2], w.shape[3]),
                stride=tuple(attrs.get("strides", [1, 1])), padding=pad,
                dilation=tuple(attrs.get("dilations", [1, 1])), groups=groups, bias=has_bias,
            )
            conv.weight.data = torch.from_numpy(w.astype(np.float32).copy())
            if has_bias:
                conv.bias.data = torch.from_numpy(self._init(ins[2], name).astype(np.float32).copy())
            self._param_tensors[name] = tuple(ins[1:3])
            return conv
        if op == "Gemm":
            if attrs.get("transA", 0):
                raise ModelError("Gemm with transA=1 is not supported", file=self.file, node=name)
            w = self._init(ins[1], name)
            w = w if attrs.get("transB", 0) else w.T  # nn.Linear weight is [out, in]
            alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
            has_bias = len(ins) > 2 and ins[2] != ""
            linear = nn.Linear(w.shape[1], w.shape[0], bias=has_bias)
            linear.weight.data = torch.from_numpy((alpha * w).astype(np.float32).copy())
            if has_bias:
                b = np.broadcast_to(self._init(ins[2], name), (w.shape[0],))
                linear.bias.data = torch.from_numpy((beta * b).astype(np.float32).copy())
            self._param_tensors[name] = tuple(ins[1:3])
            return linear
        if op == "MatMul":
            if ins[1] not in self._init_np:
                return None
            w = self._init_np[ins[1]]
            if w.ndim != 2:
                raise ModelError(f"MatMul weight must be 2-D, got shape {w.shape}", file=self.file, node=name)
            linear = nn.Linear(w.shape[0], w.shape[1], bias=False)
            linear.weight.data = torch.from_numpy(w.T.astype(np.float32).copy())
            self._param_tensors[name] = (ins[1],)
            return linear
        # BatchNormalization: inputs X, scale, B, mean, var
        scale = self._init(ins[1], name)
        bn = BatchNorm(scale.shape[0], eps=float(attrs.get("epsilon", 1e-5)), momentum=1.0 - float(attrs.get("momentum", 0.9)))
        bn.weight.data = torch.from_numpy(scale.astype(np.float32).copy())
        bn.bias.data = torch.from_numpy(self._init(ins[2], name).astype(np.float32).copy())
        bn.running_mean.data = torch.from_numpy(self._init(ins[3], name).astype(np.float32).copy())
        bn.running_var.data = torch.from_numpy(self._init(ins[4], name).astype(np.float32).copy())
        self._param_tensors[name] = tuple(ins[1:5])
        return bn

    def _is_flatten(self, node: onnx.NodeProto, shapes: dict[str, list[int | None]]) -> bool:
        """True for a Reshape that keeps dim 0 and merges the rest (what exporters emit for
        x.view(x.size(0), -1)); it then runs as flatten(1), so it survives channel pruning and
        batch size changes."""
        if len(node.input) < 2 or node.input[1] not in self._init_np:
            return False
        target = [int(v) for v in self._init_np[node.input[1]].reshape(-1)]
        src = shapes.get(node.input[0])
        if len(target) != 2 or not src or len(src) < 2:
            return False
        rest = src[1:]
        if any(d is None for d in rest):
            return False
        return (target[0] in (0, src[0]) or src[0] is None) and target[1] in (-1, int(np.prod(rest)))

    # --- public ---------------------------------------------------------------------------
    def layer(self, node_name: str) -> nn.Module:
        """The trainable module of an ONNX node (Conv, Gemm, MatMul, BatchNormalization)."""
        if node_name not in self._key:
            raise KeyError(f"node {node_name!r} has no trainable module")
        return self.layers[self._key[node_name]]

    def qualified_name(self, node_name: str) -> str:
        """The node's module name as ``named_modules()`` spells it (keys of pruning.blocks masks)."""
        return f"layers.{self._key[node_name]}"

    def set_layer(self, node_name: str, module: nn.Module) -> None:
        """Replace a node's module (channel pruning swaps in a smaller one)."""
        self.layers[self._key[node_name]] = module

    @property
    def node_modules(self) -> dict[str, nn.Module]:
        """node name -> trainable module, in graph order."""
        return {name: self.layers[key] for name, key in self._key.items()}

    def constant(self, tensor: str) -> torch.Tensor:
        return getattr(self, self._const_key[tensor])

    def forward(self, *inputs: torch.Tensor, _record: dict[str, torch.Tensor] | None = None,
                _until: frozenset[str] | None = None):
        if len(inputs) != len(self.input_names):
            raise ValueError(f"model takes {len(self.input_names)} inputs {self.input_names}, got {len(inputs)}")
        env: dict[str, torch.Tensor] = dict(zip(self.input_names, inputs))
        for t, buffer in self._const_key.items():
            env[t] = getattr(self, buffer)
        for step in self.steps:
            if step.name in self._key:
                x = env[step.inputs[0]]
                if step.op == "Gemm" and x.dim() != 2:
                    raise ModelError(f"Gemm input must be 2-D, got {tuple(x.shape)}", node=step.name)
                outs = (self.layers[self._key[step.name]](x),)
            else:
                outs = _run(step, [env[t] if t else None for t in step.inputs])
            for t, v in zip(step.outputs, outs):
                if t:
                    env[t] = v
            if _until is not None and _until.issubset(env):
                _record.update(env)
                return None
        if _record is not None:
            _record.update(env)
        result = tuple(env[t] for t in self.output_names)
        return result[0] if len(result) == 1 else result

    def tensors(self, *inputs: torch.Tensor, until: set[str] | None = None) -> dict[str, torch.Tensor]:
        """Every intermediate tensor of one forward pass, by ONNX tensor name; with ``until``,
        the pass stops as soon as those tensors are computed (the rest is not run)."""
        record: dict[str, torch.Tensor] = {}
        self.forward(*inputs, _record=record, _until=None if until is None else frozenset(until))
        return record


def fold_constant_identities(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy without the Identity nodes that only forward an initializer (what the TorchScript
    exporter emits without constant folding); their consumers read the initializer itself.
    The model is returned unchanged when it has none."""
    inits = {t.name for t in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    alias = {}
    for node in model.graph.node:
        if node.op_type == "Identity" and len(node.input) == 1 and (node.input[0] in inits or node.input[0] in alias) \
                and node.output[0] not in outputs:
            alias[node.output[0]] = alias.get(node.input[0], node.input[0])
    if not alias:
        return model
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    kept = [n for n in folded.graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for node in kept:
        for i, t in enumerate(node.input):
            if t in alias:
                node.input[i] = alias[t]
    del folded.graph.node[:]
    folded.graph.node.extend(kept)
    return folded


def node_names(graph: onnx.GraphProto) -> list[str]:
    """Node names exactly as the energy importer names its layers (``energy.importer.layer_names``):
    the node name, or ``{op_type}_{index}`` when empty or already taken."""
    from energy.importer import layer_names

    return layer_names(graph)


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shape inference is only a hint here
        inferred = model
    shapes: dict[str, list[int | None]] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    return shapes


def onnx_to_torch(model: onnx.ModelProto | str | Path) -> OnnxModule:
    """Build an :class:`OnnxModule` from an ONNX model or file. Raises ModelError naming the
    node and op for anything it cannot convert."""
    proto, file = _load(model)
    return OnnxModule(proto, file)


# --- functional ops -------------------------------------------------------------------------
def _int_list(t: torch.Tensor) -> list[int]:
    return [int(v) for v in t.reshape(-1).tolist()]


def _reshape(step: Step, a: list) -> tuple:
    x = a[0]
    if step.flatten_reshape:
        return (x.flatten(1),)
    shape = _int_list(a[1])
    shape = [x.shape[i] if v == 0 and not step.attrs.get("allowzero", 0) else v for i, v in enumerate(shape)]
    return (x.reshape(shape),)


def _tiled(x: torch.Tensor, kernel, stride, pad, dilation, ceil: bool) -> bool:
    """Whether a max pool is one over non-overlapping tiles (kernel = stride, no padding or
    dilation, floor mode) of a 4-D tensor that needs no gradient."""
    return (x.dim() == 4 and len(kernel) == 2 and tuple(kernel) == tuple(stride) and tuple(pad) == (0, 0)
            and tuple(dilation) == (1, 1) and not ceil and not (torch.is_grad_enabled() and x.requires_grad))


def _tiled_max_pool(x: torch.Tensor, kernel) -> torch.Tensor:
    """F.max_pool2d over non-overlapping kh x kw tiles as the elementwise maximum of kh * kw
    strided views: the same values (NaN propagates as there), several times faster than
    torch's CPU max pool on small NCHW maps (12.6 vs 1.3 ms for 1024 x 32 x 8 x 8 here).
    Inference only: on ties the gradient would differ from max_pool2d's, so training keeps it."""
    kh, kw = kernel
    oh, ow = x.shape[2] // kh, x.shape[3] // kw
    out = None
    for i in range(kh):
        for j in range(kw):
            view = x[:, :, i:oh * kh:kh, j:ow * kw:kw]
            out = view if out is None else torch.maximum(out, view)
    return out.contiguous()


def _pool(step: Step, a: list, kind: str) -> tuple:
    at = step.attrs
    pad = _pads(at, step.name, None)
    kernel = tuple(at["kernel_shape"])
    stride = tuple(at.get("strides", [1] * len(kernel)))
    ceil = bool(at.get("ceil_mode", 0))
    if kind == "max":
        dilation = tuple(at.get("dilations", [1, 1]))
        if _tiled(a[0], kernel, stride, pad, dilation, ceil):
            return (_tiled_max_pool(a[0], kernel),)
        return (F.max_pool2d(a[0], kernel, stride, pad, dilation, ceil_mode=ceil),)
    return (F.avg_pool2d(a[0], kernel, stride, pad, ceil_mode=ceil, count_include_pad=bool(at.get("count_include_pad", 0))),)


def _clip(step: Step, a: list) -> tuple:
    lo = a[1] if len(a) > 1 and a[1] is not None else step.attrs.get("min")
    hi = a[2] if len(a) > 2 and a[2] is not None else step.attrs.get("max")
    lo = float(lo) if lo is not None else None
    hi = float(hi) if hi is not None else None
    return (torch.clamp(a[0], lo, hi),)


def _gelu(step: Step, a: list) -> tuple:
    approx = step.attrs.get("approximate", b"none")
    approx = approx.decode() if isinstance(approx, bytes) else approx
    return (F.gelu(a[0], approximate="tanh" if approx == "tanh" else "none"),)


def _softmax(step: Step, a: list) -> tuple:
    return (torch.softmax(a[0], dim=int(step.attrs.get("axis", -1))),)


def _flatten(step: Step, a: list) -> tuple:
    axis = int(step.attrs.get("axis", 1))
    x = a[0]
    axis = axis if axis >= 0 else x.dim() + axis
    lead = int(np.prod(x.shape[:axis])) if axis > 0 else 1
    return (x.reshape(lead, -1),)


def _transpose(step: Step, a: list) -> tuple:
    perm = step.attrs.get("perm")
    perm = list(perm) if perm is not None else list(reversed(range(a[0].dim())))
    return (a[0].permute(*perm),)


def _concat(step: Step, a: list) -> tuple:
    return (torch.cat(a, dim=int(step.attrs["axis"])),)


def _constant(step: Step, a: list) -> tuple:
    value = step.attrs.get("value")
    if value is None:
        raise ModelError("Constant without a tensor 'value' is not supported", node=step.name)
    return (torch.from_numpy(numpy_helper.to_array(value).copy()),)


def _unsqueeze(step: Step, a: list) -> tuple:
    axes = _int_list(a[1]) if len(a) > 1 else list(step.attrs["axes"])
    x = a[0]
    for ax in sorted(v if v >= 0 else v + x.dim() + len(axes) for v in axes):
        x = x.unsqueeze(ax)
    return (x,)


def _squeeze(step: Step, a: list) -> tuple:
    axes = _int_list(a[1]) if len(a) > 1 and a[1] is not None else step.attrs.get("axes")
    x = a[0]
    if axes is None:
        return (x.squeeze(),)
    for ax in sorted((v if v >= 0 else v + x.dim() for v in axes), reverse=True):
        x = x.squeeze(ax)
    return (x,)


def _gather(step: Step, a: list) -> tuple:
    axis = int(step.attrs.get("axis", 0))
    idx = a[1].long()
    out = torch.index_select(a[0], axis, idx.reshape(-1))
    shape = list(a[0].shape[:axis]) + list(idx.shape) + list(a[0].shape[axis + 1:])
    return (out.reshape(shape),)


_FUNCTIONAL: dict[str, Callable[[Step, list], tuple]] = {
    "Relu": lambda s, a: (F.relu(a[0]),),
    "LeakyRelu": lambda s, a: (F.leaky_relu(a[0], float(s.attrs.get("alpha", 0.01))),),
    "Sigmoid": lambda s, a: (torch.sigmoid(a[0]),),
    "Tanh": lambda s, a: (torch.tanh(a[0]),),
    "Clip": _clip,
    "HardSwish": lambda s, a: (F.hardswish(a[0]),),
    "HardSigmoid": lambda s, a: (torch.clamp(float(s.attrs.get("alpha", 0.2)) * a[0] + float(s.attrs.get("beta", 0.5)), 0, 1),),
    "Gelu": _gelu,
    "MaxPool": lambda s, a: _pool(s, a, "max"),
    "AveragePool": lambda s, a: _pool(s, a, "avg"),
    "GlobalAveragePool": lambda s, a: (a[0].mean(dim=tuple(range(2, a[0].dim())), keepdim=True),),
    "GlobalMaxPool": lambda s, a: (a[0].amax(dim=tuple(range(2, a[0].dim())), keepdim=True),),
    "Erf": lambda s, a: (torch.erf(a[0]),),
    "Exp": lambda s, a: (torch.exp(a[0]),),
    "Sqrt": lambda s, a: (torch.sqrt(a[0]),),
    "Neg": lambda s, a: (-a[0],),
    "Pow": lambda s, a: (torch.pow(a[0], a[1]),),
    "Add": lambda s, a: (a[0] + a[1],),
    "Sub": lambda s, a: (a[0] - a[1],),
    "Mul": lambda s, a: (a[0] * a[1],),
    "Div": lambda s, a: (a[0] / a[1],),
    "MatMul": lambda s, a: (torch.matmul(a[0], a[1]),),  # activation x activation only
    "Concat": _concat,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Transpose": _transpose,
    "Softmax": _softmax,
    "Identity": lambda s, a: (a[0],),
    "Dropout": lambda s, a: (a[0],) + ((torch.ones_like(a[0], dtype=torch.bool),) if len(s.outputs) > 1 else ()),
    "Constant": _constant,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Shape": lambda s, a: (torch.tensor(list(a[0].shape), dtype=torch.int64),),
    "Gather": _gather,
}


def _run(step: Step, args: list) -> tuple:
    try:
        return _FUNCTIONAL[step.op](step, args)
    except ModelError:
        raise
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{step.op} failed: {exc}", node=step.name) from exc
