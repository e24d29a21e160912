"""ONNX importer: a model file (or ModelProto) -> ``energy.ir.Graph``.

Steps: load (external data allowed) -> check the graph is wired (every input defined, every op
known) -> ``onnx.checker`` -> fix symbolic input dims from ``batch`` / ``input_shapes`` ->
strict shape inference -> one ``Layer`` per node through ``energy.opset.OP_TABLE``.

Every failure is a ``ModelError`` naming the file and, where there is one, the node; no raw
protobuf or onnx exception escapes.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from energy.errors import ModelError
from energy.ir import Graph, Layer, OpKind
from energy.opset import JOULECUT_DOMAIN, JOULECUT_TABLE, OP_TABLE, NodeView, TensorFacts, joulecut_output_shape

_DEFAULT_DOMAINS = ("", "ai.onnx")
# Ops whose output is not a function of their inputs: never constant-folded.
_NOT_FOLDABLE = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"})
IN_MEMORY = "<in-memory model>"


@dataclass(frozen=True)
class ImportResult:
    """What ``load_model`` returns.

    ``graph``: the IR. ``warnings``: things the user should know (unknown ops costed as data
    movement, ignored options). ``model``: the shape-inferred model with the resolved input
    shapes (what ``energy.activations`` runs). ``file``: the label errors use (path or
    ``<in-memory model>``). ``layer_nodes``: layer name -> index of its node in
    ``model.graph.node``.
    """

    graph: Graph
    warnings: tuple[str, ...]
    model: onnx.ModelProto
    file: str = IN_MEMORY
    layer_nodes: Mapping[str, int] = field(default_factory=dict)


def load_model(
    model: str | os.PathLike | onnx.ModelProto,
    *,
    batch: int | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    strict: bool = False,
) -> ImportResult:
    """Import an ONNX model into the energy IR.

    ``batch`` sets every symbolic (or zero) first dim of the graph inputs; ``input_shapes``
    sets whole shapes by input name (it wins over ``batch``). With ``strict`` an op outside the
    op table is an error; without, a warning, and the node is costed as data movement.
    """
    proto, file, graph_name = _load(model)
    warnings: list[str] = []
    _check_wiring(proto, file)
    warnings += _check_ops(proto, file, strict)
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:  # onnx's ValidationError, or a C++ error surfaced as RuntimeError
        raise _onnx_error(exc, file, "is not a valid ONNX model") from None
    warnings += _resolve_inputs(proto, file, batch, input_shapes or {})
    _densify_sparse_initializers(proto, file)
    inferred, strict_error = _infer_shapes(proto, file)
    try:
        graph, layer_nodes, notes = _build(inferred, file, graph_name)
    except ModelError:
        if strict_error is not None:
            raise strict_error from None
        raise
    warnings += notes
    if strict_error is not None:
        # onnx's strict inference failed (e.g. inside a function op's body) but the lenient pass,
        # with the shapes the model declares, gave every costed tensor a static shape.
        warnings.append(f"strict shape inference failed{f' at node {strict_error.node!r}' if strict_error.node else ''} "
                        f"({strict_error.reason}); using the shapes the lenient pass and the model's value_info give")
    return ImportResult(graph=graph, warnings=tuple(warnings), model=inferred, file=file,
                        layer_nodes=MappingProxyType(layer_nodes))


def _declare_joulecut_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """onnx cannot infer the outputs of joulecut's own ops: declare them from their input and
    weight shapes, pass by pass until every such output has a shape, then infer the rest."""
    custom = [n for n in proto.graph.node if n.domain == JOULECUT_DOMAIN and n.op_type in JOULECUT_TABLE]
    inits = {t.name: tuple(t.dims) for t in proto.graph.initializer}
    model = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    for _ in range(len(custom)):
        shapes = {v.name: v for v in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}

        def shape_of(name: str) -> tuple[int, ...] | None:
            if name in inits:
                return inits[name]
            info = shapes.get(name)
            if info is None or not info.type.tensor_type.HasField("shape"):
                return None
            dims = info.type.tensor_type.shape.dim
            return tuple(d.dim_value for d in dims) if all(d.HasField("dim_value") for d in dims) else None

        added = False
        for node in custom:
            out = node.output[0]
            x, w = shape_of(node.input[0]), shape_of(node.input[1])
            if shape_of(out) is None and x is not None and w is not None:
                info = onnx.helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, list(joulecut_output_shape(node, x, w)))
                kept = [v for v in proto.graph.value_info if v.name != out]
                del proto.graph.value_info[:]
                proto.graph.value_info.extend(kept + [info])
                added = True
        if not added:
            break
        model = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    return model


def _infer_shapes(proto: onnx.ModelProto, file: str) -> tuple[onnx.ModelProto, ModelError | None]:
    """Strict shape inference; when it fails, the lenient result and the strict error."""
    if any(n.domain == JOULECUT_DOMAIN for n in proto.graph.node):
        try:
            return _declare_joulecut_shapes(proto), None
        except Exception as exc:
            raise _onnx_error(exc, file, "shapes cannot be inferred") from None
    try:
        return onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True), None
    except Exception as exc:
        strict_error = _onnx_error(exc, file, "shapes cannot be inferred")
    try:
        return onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True), strict_error
    except Exception:
        raise strict_error from None


# --- loading ----------------------------------------------------------------------------------
def _load(model: str | os.PathLike | onnx.ModelProto) -> tuple[onnx.ModelProto, str, str]:
    """(a private copy of the model, the file label for errors, the graph name)."""
    if isinstance(model, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
        return proto, IN_MEMORY, proto.graph.name or "model"
    path = Path(model)
    file = str(path)
    if not path.is_file():
        raise ModelError("no such file" if not path.exists() else "not a file", file=file)
    if path.stat().st_size == 0:
        raise ModelError("file is empty, expected an ONNX model", file=file)
    try:
        proto = onnx.load(str(path), load_external_data=True)
    except Exception as exc:  # DecodeError for garbage / truncation, OSError for missing external data
        detail = "truncated or not an ONNX protobuf" if "pars" in str(exc).lower() else str(exc).strip()
        raise ModelError(f"cannot read the model: {detail}", file=file) from None
    if proto.ir_version == 0 or len(proto.graph.node) == 0:
        raise ModelError("no ONNX graph in the file (truncated, or not an ONNX model?)", file=file)
    return proto, file, proto.graph.name or path.stem


_NODE_IN_MESSAGE = re.compile(r"node name: ([^)]*)\)|Name: (\S+) OpType")


def _onnx_error(exc: Exception, file: str, what: str) -> ModelError:
    """Turn an onnx checker / inference exception into one readable ModelError."""
    text = " ".join(str(exc).split())
    match = _NODE_IN_MESSAGE.search(text)
    node = (match.group(1) or match.group(2)).strip() if match else None
    text = re.sub(r"\[\w+\]\s*", "", text)
    text = re.sub(r"Inference error\(s\):\s*", "", text)
    text = re.sub(r"\(op_type:[^)]*\):\s*", "", text)
    return ModelError(f"{what}: {text.strip()}", file=file, node=node or None)


def _check_wiring(proto: onnx.ModelProto, file: str) -> None:
    """Every node input must be an initializer, a graph input or an earlier node's output."""
    defined = {i.name for i in proto.graph.input} | {t.name for t in proto.graph.initializer}
    defined |= {t.values.name for t in proto.graph.sparse_initializer}
    for index, node in enumerate(proto.graph.node):
        for position, tensor in enumerate(node.input):
            if tensor and tensor not in defined:
                role = "the weight" if position == 1 and node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") else f"input {position}"
                raise ModelError(f"{role} '{tensor}' is neither an initializer, a graph input nor an output of an earlier node",
                                 file=file, node=node.name or f"{node.op_type}_{index}")
        defined.update(t for t in node.output if t)


def _known(node: onnx.NodeProto) -> bool:
    return ((node.domain in _DEFAULT_DOMAINS and node.op_type in OP_TABLE)
            or (node.domain == JOULECUT_DOMAIN and node.op_type in JOULECUT_TABLE))


def _check_ops(proto: onnx.ModelProto, file: str, strict: bool) -> list[str]:
    warnings = []
    for index, node in enumerate(proto.graph.node):
        if _known(node):
            continue
        label = node.name or f"{node.op_type}_{index}"
        op = f"{node.domain}.{node.op_type}" if node.domain not in _DEFAULT_DOMAINS else node.op_type
        if strict:
            raise ModelError(f"unknown op '{op}' (not in joulecut's op table; without --strict it is costed as data movement)",
                             file=file, node=label)
        if node.domain in _DEFAULT_DOMAINS and not onnx.defs.has(node.op_type):
            raise ModelError(f"'{node.op_type}' is not an ONNX op (custom ops need their own domain)", file=file, node=label)
        warnings.append(f"unknown op '{op}' at node '{label}': costed as data movement of its input and output elements")
    return warnings


# --- symbolic input dims ----------------------------------------------------------------------
def _resolve_inputs(proto: onnx.ModelProto, file: str, batch: int | None, shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """Give every graph input a static shape, in place; return warnings."""
    graph = proto.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    names = [i.name for i in inputs]
    for name in shapes:
        if name not in names:
            raise ModelError(f"input_shapes names '{name}', but the model's inputs are: {', '.join(names)}", file=file)
    if batch is not None and (not isinstance(batch, int) or batch < 1):
        raise ModelError(f"batch must be a positive integer, got {batch!r}", file=file)
    warnings: list[str] = []
    params: dict[str, int] = {}
    for value in inputs:
        if not value.type.HasField("tensor_type"):
            continue
        dims = value.type.tensor_type.shape.dim
        given = shapes.get(value.name)
        if given is not None:
            given = tuple(given)
            if len(given) != len(dims) or any(not isinstance(d, (int, np.integer)) or d < 1 for d in given):
                raise ModelError(f"input_shapes gives '{value.name}' the shape {list(given)}, but it has rank {len(dims)} "
                                 "and dims must be positive integers", file=file)
            for i, (dim, size) in enumerate(zip(dims, given)):
                if dim.HasField("dim_value") and dim.dim_value not in (0, size):
                    raise ModelError(f"input_shapes gives '{value.name}' dim {i} = {size}, but the model fixes it to {dim.dim_value}", file=file)
                _set_dim(dim, int(size), params)
        elif batch is not None and len(dims) > 0:
            if _is_symbolic(dims[0]):
                _set_dim(dims[0], batch, params)
            elif dims[0].dim_value != batch:
                warnings.append(f"input '{value.name}' has a static batch of {dims[0].dim_value}; batch={batch} ignored for it")
        for i, dim in enumerate(dims):
            if _is_symbolic(dim):
                example = "x".join(str(d.dim_value) if not _is_symbolic(d) else "1" for d in dims)
                label = f"'{dim.dim_param}'" if dim.dim_param else "unnamed"
                raise ModelError(f"input '{value.name}' dim {i} ({label}) is symbolic: pass --batch N or "
                                 f"--input-shape {value.name}={example}", file=file)
    # The same symbols elsewhere (outputs, value_info) take the values just chosen.
    for value in list(graph.output) + list(graph.value_info):
        if value.type.HasField("tensor_type"):
            for dim in value.type.tensor_type.shape.dim:
                if dim.dim_param in params:
                    _set_dim(dim, params[dim.dim_param], {})
    return warnings


def _is_symbolic(dim: onnx.TensorShapeProto.Dimension) -> bool:
    return not dim.HasField("dim_value") or dim.dim_value == 0


def _set_dim(dim: onnx.TensorShapeProto.Dimension, size: int, params: dict[str, int]) -> None:
    if dim.dim_param:
        params.setdefault(dim.dim_param, size)
    dim.dim_value = size  # clears dim_param (a oneof)


# --- IR building ------------------------------------------------------------------------------
def _tensor_facts(proto: onnx.ModelProto, file: str) -> TensorFacts:
    graph = proto.graph
    shapes: dict[str, tuple[int, ...] | None] = {}
    elem_types: dict[str, int] = {}
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        if value.type.HasField("tensor_type"):
            tt = value.type.tensor_type
            elem_types[value.name] = tt.elem_type
            static = tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim)
            shapes[value.name] = tuple(d.dim_value for d in tt.shape.dim) if static else None
    constants: dict[str, np.ndarray | None] = {}
    for tensor in graph.initializer:
        shapes[tensor.name] = tuple(tensor.dims)
        elem_types[tensor.name] = tensor.data_type
        constants[tensor.name] = _to_array(tensor, file)
    producers: dict[str, onnx.NodeProto] = {}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for t in node.input:
            consumers.setdefault(t, []).append(node)
        for t in node.output:
            if t:
                producers[t] = node
        inputs = [t for t in node.input if t]
        if node.op_type == "Constant":
            value = next((a for a in node.attribute if a.name == "value"), None)
            constants[node.output[0]] = _to_array(value.t, file) if value is not None else None
        elif node.op_type in ("Shape", "Size") and inputs and shapes.get(inputs[0]) is not None:
            for t in node.output:
                constants[t] = None  # a function of a static shape only
        elif (inputs and all(t in constants for t in inputs) and node.op_type not in _NOT_FOLDABLE
              and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)):
            for t in node.output:
                if t:
                    constants[t] = None
    return TensorFacts(file, shapes, elem_types, constants, producers, consumers)


def _to_array(tensor: onnx.TensorProto, file: str) -> np.ndarray | None:
    try:
        return numpy_helper.to_array(tensor)
    except Exception:  # an exotic dtype, or external data not loaded: its density stays unknown
        return None


def _densify_sparse_initializers(proto: onnx.ModelProto, file: str) -> None:
    """Sparse initializers (e.g. a pruned weight stored as values + indices) become dense ones
    in the private copy: onnx's shape inference and most ops do not accept sparse tensors."""
    for sparse in proto.graph.sparse_initializer:
        proto.graph.initializer.append(numpy_helper.from_array(_sparse_to_array(sparse, file), sparse.values.name))
    del proto.graph.sparse_initializer[:]


def _sparse_to_array(sparse: onnx.SparseTensorProto, file: str) -> np.ndarray:
    """The dense value of a sparse initializer (indices: linear [NNZ] or coordinates [NNZ, rank])."""
    values, indices = _to_array(sparse.values, file), _to_array(sparse.indices, file)
    if values is None or indices is None:
        raise ModelError(f"sparse initializer '{sparse.values.name}' cannot be read", file=file)
    dense = np.zeros(tuple(sparse.dims), values.dtype)
    try:
        if indices.ndim == 1:
            dense.reshape(-1)[indices] = values
        else:
            dense[tuple(indices.T)] = values
    except (IndexError, ValueError):
        raise ModelError(f"sparse initializer '{sparse.values.name}': indices do not fit its shape {list(sparse.dims)}", file=file) from None
    return dense


def layer_names(graph: onnx.GraphProto) -> list[str]:
    """The node name; ``{op_type}_{index}`` when empty or already taken (stable, unique)."""
    explicit = {n.name for n in graph.node if n.name}
    names: list[str] = []
    taken: set[str] = set()
    for index, node in enumerate(graph.node):
        name = node.name
        if not name or name in taken:
            name = f"{node.op_type}_{index}"
            suffix = 1
            while name in taken or name in explicit:
                name = f"{node.op_type}_{index}_{suffix}"
                suffix += 1
        taken.add(name)
        names.append(name)
    return names


def _build(proto: onnx.ModelProto, file: str, graph_name: str) -> tuple[Graph, dict[str, int], list[str]]:
    facts = _tensor_facts(proto, file)
    layers: list[Layer] = []
    layer_nodes: dict[str, int] = {}
    for index, (node, name) in enumerate(zip(proto.graph.node, layer_names(proto.graph))):
        view = NodeView(node, name, facts)
        known = _known(node)
        if node.output and all(t in facts.constants for t in node.output if t):
            # Computed from constants only: folded before the model runs, so it costs nothing.
            layer = Layer(name=name, op=OpKind.SHAPE, onnx_op=node.op_type)
        else:
            layer = _cost(view, known)
        layers.append(layer)
        layer_nodes[name] = index
    initializers = {t.name for t in proto.graph.initializer}
    inputs = tuple(i.name for i in proto.graph.input if i.name not in initializers)
    outputs = tuple(o.name for o in proto.graph.output)
    return Graph(graph_name, layers, inputs, outputs), layer_nodes, facts.warnings


def _cost(view: NodeView, known: bool) -> Layer:
    """The handler's layer; an unknown op is data movement of its inputs and outputs."""
    try:
        if known:
            table = JOULECUT_TABLE if view.node.domain == JOULECUT_DOMAIN else OP_TABLE
            return table[view.op](view)
        _require_static_outputs(view)
        return OP_TABLE["Concat"](view).replace(onnx_op=view.op)
    except ModelError:
        raise
    except (ValueError, IndexError, KeyError, TypeError) as exc:  # attributes or shapes the op cannot have
        raise view.error(f"cannot cost this {view.op} node: {exc}") from None


def _require_static_outputs(view: NodeView) -> None:
    for t in view.outputs():
        if view.facts.shapes.get(t) is None:
            raise view.error(f"unknown op '{view.op}': shape inference cannot give its output '{t}' a static shape; "
                             "add the shape to the model's value_info")
