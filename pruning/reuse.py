"""Turn chosen Conv layers into joulecut.ReuseConv nodes (adaptive deep reuse, Ning & Shen 2019).

The cluster ratio each layer reaches is measured on calibration inputs (the layer's real input
activations, from onnxruntime) and stored in the node, so the estimator costs it and
``kernels.runner.GraphRunner`` runs it. onnxruntime cannot run the custom node.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from energy.errors import DataError, ModelError, OptionError
from energy.importer import layer_names
from kernels.reuse import reuse_conv2d

DOMAIN, OP_TYPE = "joulecut", "ReuseConv"


@dataclass(frozen=True)
class ReuseLayer:
    name: str
    cluster_ratio: float
    relative_error: float  # ||Y_reuse - Y|| / ||Y|| on the calibration inputs
    mac_ratio: float  # dense MACs / executed MACs


@dataclass(frozen=True)
class ReuseResult:
    model: onnx.ModelProto
    layers: dict[str, ReuseLayer]


def _layer_input(model: onnx.ModelProto, tensor: str, name: str, x: np.ndarray) -> np.ndarray:
    """``tensor`` as the model computes it from inputs ``x``, in batches of the model's own
    (static) batch size."""
    import onnxruntime as ort

    probe = onnx.ModelProto.FromString(model.SerializeToString())
    if tensor not in {o.name for o in probe.graph.output}:
        probe.graph.output.append(helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    shape = [d if isinstance(d, int) else None for d in session.get_inputs()[0].shape]
    if len(shape) != x.ndim or any(s is not None and s != g for s, g in zip(shape[1:], x.shape[1:])):
        raise DataError(f"calibration inputs have shape {list(x.shape)}, the model's input '{name}' is {shape}")
    step = shape[0] or len(x)
    if len(x) % step:
        x = x[: len(x) - len(x) % step] if len(x) >= step else x
    return np.concatenate([session.run([tensor], {name: x[i:i + step]})[0] for i in range(0, len(x), step)])


def to_reuse(model: onnx.ModelProto | str | os.PathLike, layers: list[str], calib_x: np.ndarray, *,
             sub_len: int = 8, n_hashes: int = 6, seed: int = 0) -> ReuseResult:
    """A copy of ``model`` with each Conv in ``layers`` as a ReuseConv (groups 1, equal strides and
    symmetric pads), its cluster ratio measured on ``calib_x`` (the model's first input)."""
    proto = onnx.load(os.fspath(model)) if not isinstance(model, onnx.ModelProto) else onnx.ModelProto.FromString(model.SerializeToString())
    names = layer_names(proto.graph)
    by_name = dict(zip(names, proto.graph.node))
    unknown = [n for n in layers if n not in by_name]
    if unknown:
        raise OptionError(f"no layer named {', '.join(unknown)} (convs: {', '.join(n for n in names if by_name[n].op_type == 'Conv')})")
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    inputs = [i.name for i in proto.graph.input if i.name not in inits]
    calib_x = np.ascontiguousarray(calib_x, dtype=np.float32)
    found: dict[str, ReuseLayer] = {}
    original = onnx.ModelProto.FromString(proto.SerializeToString())
    for name in layers:
        node = by_name[name]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        strides, pads = list(attrs.get("strides", [1, 1])), list(attrs.get("pads", [0, 0, 0, 0]))
        if node.op_type != "Conv" or attrs.get("group", 1) != 1 or len(set(strides)) != 1 or len(set(pads)) != 1 \
                or node.input[1] not in inits or inits[node.input[1]].ndim != 4:
            raise ModelError("deep reuse needs a 2-D Conv with a constant weight, group 1, equal strides and pads",
                             node=name)
        x = _layer_input(original, node.input[0], inputs[0], calib_x)
        w = inits[node.input[1]].astype(np.float32)
        b = inits[node.input[2]].astype(np.float32) if len(node.input) > 2 and node.input[2] else None
        _, stats = reuse_conv2d(np.ascontiguousarray(x), w, b, stride=int(strides[0]), pad=int(pads[0]),
                                sub_len=sub_len, n_hashes=n_hashes, seed=seed)
        found[name] = ReuseLayer(name, stats.cluster_ratio, float(stats.relative_error), stats.mac_ratio)
        keep = {k: v for k, v in attrs.items() if k in ("strides", "pads", "dilations", "kernel_shape")}
        node.CopyFrom(helper.make_node(OP_TYPE, list(node.input), list(node.output), name=node.name, domain=DOMAIN,
                                       sub_len=sub_len, n_hashes=n_hashes, seed=seed,
                                       cluster_ratio=float(stats.cluster_ratio), **keep))
    if not any(o.domain == DOMAIN for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    onnx.checker.check_model(proto)
    return ReuseResult(proto, found)
