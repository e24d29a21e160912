"""Measured activation density: run the model on sample data in onnxruntime and count the
nonzero values each MAC layer reads.

onnxruntime is imported lazily (only these functions need it); torch is never imported.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import helper

from energy.errors import DataError
from energy.importer import ImportResult
from energy.ir import Graph

# Quantized MAC ops: (input index of the activation, input index of its zero point).
_ZERO_POINT_OF_INPUT = {"QLinearConv": 2, "QLinearMatMul": 2, "ConvInteger": 2, "MatMulInteger": 2}


def measure_input_densities(result: ImportResult, inputs: dict[str, np.ndarray]) -> dict[str, float]:
    """Layer name -> fraction of nonzero values in its activation input, for every MAC layer.

    The activation input is the layer's first input (X of a conv, A of a matmul); for quantized
    ops a value counts as zero when it equals the zero point. ``inputs`` holds one array per
    model input; a first dim that is a multiple k of the model's batch is run as k batches, and
    the density is over all of them.
    """
    feeds = _fit_inputs(result, inputs)
    probes = _probes(result)
    if not probes:
        return {}
    counts = {tensor: [0, 0] for tensor in set(probes.values())}  # tensor -> [nonzero, total]
    graph_inputs = set(feeds[0]) if feeds else set()
    wanted = sorted(t for t in counts if t not in graph_inputs)
    session = _session(result, wanted) if wanted else None
    zero_points = _zero_points(result)
    for feed in feeds:
        values = dict(zip(wanted, _run(session, wanted, feed, result.file))) if session is not None else {}
        values.update({t: feed[t] for t in counts if t in graph_inputs})
        for tensor, count in counts.items():
            array = values[tensor]
            zero = zero_points.get(tensor, 0)
            count[0] += int(np.count_nonzero(array != zero))
            count[1] += int(array.size)
    return {layer: (counts[t][0] / counts[t][1] if counts[t][1] else 1.0) for layer, t in probes.items()}


def with_measured_densities(result: ImportResult, inputs: dict[str, np.ndarray]) -> Graph:
    """A copy of ``result.graph`` whose MAC layers carry the measured input densities."""
    return result.graph.with_densities(inputs=measure_input_densities(result, inputs))


def load_npz_inputs(path: str | os.PathLike, model: ImportResult | onnx.ModelProto) -> dict[str, np.ndarray]:
    """Model input name -> array from an .npz file.

    A single-input model reads the key named like its input, else ``x``; a model with several
    inputs needs one key per input name. DataError (naming the file) on a missing key or a file
    that is not an .npz.
    """
    proto = model.model if isinstance(model, ImportResult) else model
    file = str(path)
    names = _input_names(proto)
    try:
        with np.load(file, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise DataError("expected an .npz archive (numpy.savez), got a single array", file=file)
            keys = list(data.files)
            if len(names) == 1 and names[0] not in keys and "x" in keys:
                return {names[0]: data["x"]}
            missing = [n for n in names if n not in keys]
            if missing:
                wanted = ", ".join(f"'{n}'" for n in missing) + (" or 'x'" if len(names) == 1 and names[0] != "x" else "")
                raise DataError(f"no array {wanted} for the model's input; the file has: {', '.join(keys) or 'nothing'}", file=file)
            return {n: data[n] for n in names}
    except DataError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"cannot read sample data: {exc}", file=file) from None


# --- helpers ----------------------------------------------------------------------------------
def _input_names(proto: onnx.ModelProto) -> list[str]:
    initializers = {t.name for t in proto.graph.initializer}
    return [i.name for i in proto.graph.input if i.name not in initializers]


def _fit_inputs(result: ImportResult, inputs: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Check name, dtype and shape of every input; split the data into the model's batches."""
    proto = result.model
    initializers = {t.name for t in proto.graph.initializer}
    declared = {i.name: i for i in proto.graph.input if i.name not in initializers}
    unknown = sorted(set(inputs) - set(declared))
    if unknown:
        raise DataError(f"data for unknown input '{unknown[0]}'; the model's inputs are: {', '.join(declared)}", file=result.file)
    chunks: int | None = None
    arrays: dict[str, list[np.ndarray]] = {}
    for name, value in declared.items():
        if name not in inputs:
            raise DataError(f"no data for input '{name}'", file=result.file)
        tt = value.type.tensor_type
        expected = tuple(d.dim_value for d in tt.shape.dim)
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        array = np.asarray(inputs[name])
        same_kind = array.dtype.kind == np.dtype(dtype).kind or {array.dtype.kind, np.dtype(dtype).kind} <= {"i", "u"}
        if not (same_kind and np.can_cast(array.dtype, dtype, casting="same_kind")):  # float64 -> float32 is fine
            raise DataError(f"input '{name}' must be {dtype} data, got {array.dtype}", file=result.file)
        array = array.astype(dtype, copy=False)
        if expected:
            fits = array.ndim == len(expected) and array.shape[1:] == expected[1:] and array.shape[0] % expected[0] == 0 \
                and array.shape[0] > 0
            k = array.shape[0] // expected[0] if fits else 0
        else:
            fits, k = array.shape == (), 1
        if not fits:
            raise DataError(f"input '{name}' expects shape {list(expected)} (the first dim may be a multiple of it), "
                            f"got {list(array.shape)}", file=result.file)
        if chunks is not None and k != chunks:
            raise DataError(f"input '{name}' holds {k} batches, the other inputs {chunks}", file=result.file)
        chunks = k
        arrays[name] = np.split(array, k) if k > 1 else [array]
    return [{name: parts[i] for name, parts in arrays.items()} for i in range(chunks or 0)]


def _run(session, outputs: list[str], feed: dict[str, np.ndarray], file: str) -> list[np.ndarray]:
    try:
        return session.run(outputs, feed)
    except Exception as exc:  # onnxruntime's own errors: bad values for the model
        raise DataError(f"onnxruntime failed on this data: {' '.join(str(exc).split())}", file=file) from None


def _probes(result: ImportResult) -> dict[str, str]:
    """MAC layer name -> the tensor whose density it reads."""
    return {layer.name: layer.inputs[0] for layer in result.graph.mac_layers() if layer.inputs}


def _zero_points(result: ImportResult) -> dict[str, object]:
    """Activation tensor -> its zero point, for the inputs of quantized MAC ops (constant ones)."""
    initializers = {t.name: t for t in result.model.graph.initializer}
    points: dict[str, object] = {}
    for layer in result.graph.mac_layers():
        node = result.model.graph.node[result.layer_nodes[layer.name]]
        index = _ZERO_POINT_OF_INPUT.get(node.op_type)
        if index is None or index >= len(node.input) or node.input[index] not in initializers:
            continue
        zero = onnx.numpy_helper.to_array(initializers[node.input[index]])
        if zero.size == 1:
            points[node.input[0]] = zero.reshape(())
    return points


def _session(result: ImportResult, tensors: list[str]):
    """An onnxruntime session of the model with ``tensors`` added as graph outputs."""
    try:
        import onnxruntime as ort
    except ImportError as exc:  # an optional dependency
        raise DataError("measuring activation density needs onnxruntime (pip install joulecut[validate])",
                        file=result.file) from exc
    model = onnx.ModelProto()
    model.CopyFrom(result.model)
    infos = {v.name: v for v in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    present = {o.name for o in model.graph.output}
    for tensor in tensors:
        if tensor in present:
            continue
        info = infos.get(tensor)
        model.graph.output.append(info if info is not None else helper.make_empty_tensor_value_info(tensor))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise DataError(f"onnxruntime cannot run the model: {' '.join(str(exc).split())}", file=result.file) from None
