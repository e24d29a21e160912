"""Write a (pruned) torch model as a single-file ONNX model, and check it in onnxruntime.

An :class:`~pruning.onnx_torch.OnnxModule` is written by reproducing its source model's node
list with the module's current parameters (smaller initializers after channel pruning, the new
group count of a pruned depthwise conv). Node names, and hence the energy IR's layer names, stay
exactly those of the source model. Any other nn.Module goes through ``torch.onnx.export``.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from energy.errors import ModelError
from energy.io import write_atomic
from pruning.onnx_torch import OnnxModule

DEFAULT_OPSET = 17  # for modules that are not an OnnxModule


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _set_attr(node: onnx.NodeProto, name: str, value: object) -> None:
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute(name, value))


def _own(node: onnx.NodeProto, node_name: str, tensor: str, owner: dict[str, str], dtypes: dict) -> str:
    """The initializer name this node's parameter is written to. Exporters deduplicate equal
    initializers (two zero biases become one); after pruning they differ, so a second user
    gets its own copy, ``{tensor}/{node}``, and the node input is rewired to it."""
    if not tensor or owner.setdefault(tensor, node_name) == node_name:
        return tensor
    fresh = f"{tensor}/{node_name}"
    for i, t in enumerate(node.input):
        if t == tensor:
            node.input[i] = fresh
    dtypes[fresh] = dtypes[tensor]
    owner[fresh] = node_name
    return fresh


def onnx_from_module(module: OnnxModule) -> onnx.ModelProto:
    """The source model of ``module`` with its current parameters written back (see module doc)."""
    model = onnx.ModelProto()
    model.CopyFrom(module.source)
    graph = model.graph
    dtypes = {t.name: numpy_helper.to_array(t).dtype for t in graph.initializer}
    values: dict[str, np.ndarray] = {}
    for t in graph.initializer:
        if t.name in module._const_key:
            values[t.name] = _np(module.constant(t.name))
    extra: list[onnx.TensorProto] = []
    owner: dict[str, str] = {t: "" for t in module._const_key}  # initializer -> the node whose values it holds ("": a constant)
    for node, step in zip(graph.node, module.steps):
        params = module._param_tensors.get(step.name)
        if params is not None:
            params = tuple(_own(node, step.name, t, owner, dtypes) for t in params)
            layer = module.layer(step.name)
            if step.op == "Conv":
                values[params[0]] = _np(layer.weight)
                if layer.bias is not None:
                    values[params[1]] = _np(layer.bias)
                _set_attr(node, "group", int(layer.groups))
            elif step.op == "Gemm":
                w = _np(layer.weight)  # [out, in]; alpha and beta are folded in
                values[params[0]] = w if step.attrs.get("transB", 0) else w.T
                if layer.bias is not None:
                    values[params[1]] = _np(layer.bias)
                _set_attr(node, "alpha", 1.0)
                _set_attr(node, "beta", 1.0)
            elif step.op == "MatMul":
                values[params[0]] = _np(layer.weight).T
            elif step.op == "BatchNormalization":
                for tensor, value in zip(params, (layer.weight, layer.bias, layer.running_mean, layer.running_var)):
                    values[tensor] = _np(value)
        if step.flatten_reshape:
            shape_name = f"{step.name}/flatten_shape"
            extra.append(numpy_helper.from_array(np.array([0, -1], dtype=np.int64), shape_name))
            node.input[1] = shape_name
            _set_attr(node, "allowzero", 0)  # 0 in the shape copies the batch dim
    new_inits = [numpy_helper.from_array(np.ascontiguousarray(values[t.name].astype(dtypes[t.name])), t.name)
                 if t.name in values else t for t in graph.initializer]
    existing = {t.name for t in graph.initializer}
    new_inits += [numpy_helper.from_array(np.ascontiguousarray(v.astype(dtypes[name])), name)
                  for name, v in values.items() if name not in existing]
    used = {t for node in graph.node for t in node.input}
    del graph.initializer[:]
    graph.initializer.extend([t for t in new_inits if t.name in used] + extra)
    del graph.value_info[:]  # intermediate shapes change with pruning; checker re-infers them
    init_types = {t.name: t for t in graph.initializer}
    for vi in graph.input:  # old IR versions list initializers as inputs too
        if vi.name in init_types:
            t = init_types[vi.name]
            vi.CopyFrom(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return model


def _torch_export(module: nn.Module, example: tuple[torch.Tensor, ...], opset: int) -> onnx.ModelProto:
    buffer = io.BytesIO()
    names = [f"input{i}" if len(example) > 1 else "input" for i in range(len(example))]
    was_training = module.training
    module.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter, chosen on purpose
            torch.onnx.export(
                module, example, buffer, dynamo=False, opset_version=opset,
                input_names=names, output_names=["output"],
                dynamic_axes={**{n: {0: "batch"} for n in names}, "output": {0: "batch"}},
            )
    finally:
        module.train(was_training)
    return onnx.load_from_string(buffer.getvalue())


def to_onnx_model(module: nn.Module, example_input: torch.Tensor | Sequence[torch.Tensor], *, opset: int | None = None) -> onnx.ModelProto:
    """The ONNX model of ``module`` in memory (see module docstring)."""
    example = (example_input,) if isinstance(example_input, torch.Tensor) else tuple(example_input)
    if isinstance(module, OnnxModule):
        model = onnx_from_module(module)
        source_opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        if opset is not None and opset != source_opset:
            try:
                model = onnx.version_converter.convert_version(model, opset)
            except Exception as exc:
                raise ModelError(f"cannot convert from opset {source_opset} to {opset}: {exc}", file=module.file) from exc
        return model
    return _torch_export(module, example, opset or DEFAULT_OPSET)


def export_onnx(
    module: nn.Module,
    example_input: torch.Tensor | Sequence[torch.Tensor],
    path: str | Path,
    *,
    opset: int | None = None,
    source: str | Path | None = None,
) -> Path:
    """Write ``module`` as one valid ONNX file at ``path`` (temp file + rename) and return it.

    ``opset`` None keeps an OnnxModule's source opset and uses 17 for other modules.
    ``source`` (default: the file an OnnxModule was read from) is never overwritten.
    Raises ModelError if the model fails ``onnx.checker.check_model(full_check=True)``.
    """
    path = Path(path)
    source = source if source is not None else getattr(module, "file", None)
    if source is not None and path.exists() and path.resolve() == Path(source).resolve():
        raise ModelError("refusing to overwrite the input model; choose another output path", file=str(path))
    model = to_onnx_model(module, example_input, opset=opset)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"exported model is not valid ONNX: {exc}", file=str(path)) from exc
    return write_atomic(path, model.SerializeToString())


def verify_onnx(
    path: str | Path,
    module: nn.Module,
    inputs: torch.Tensor | np.ndarray | Sequence[torch.Tensor | np.ndarray],
    atol: float = 1e-4,
) -> float:
    """Run ``path`` in onnxruntime and ``module`` in torch (eval mode) on ``inputs``; return the
    max abs difference of the outputs. Raises ModelError if it exceeds ``atol``."""
    import onnxruntime as ort

    batch = [inputs] if isinstance(inputs, (torch.Tensor, np.ndarray)) else list(inputs)
    arrays = [np.asarray(_np(x) if isinstance(x, torch.Tensor) else x, dtype=np.float32) for x in batch]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: a for i, a in zip(session.get_inputs(), arrays)}
    ort_out = session.run(None, feed)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(*[torch.from_numpy(a) for a in arrays])
    finally:
        module.train(was_training)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    if len(outs) != len(ort_out):
        raise ModelError(f"onnxruntime gave {len(ort_out)} outputs, torch {len(outs)}", file=str(path))
    diff = max(float(np.max(np.abs(_np(t) - o))) if o.size else 0.0 for t, o in zip(outs, ort_out))
    if not diff <= atol:
        raise ModelError(f"onnxruntime output differs from torch by {diff:.3g} (allowed {atol:g})", file=str(path))
    return diff
