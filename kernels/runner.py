"""A small ONNX graph runner: Conv / Gemm / MatMul on joulecut's kernels, everything else in NumPy.

Each weight layer gets the format its weight calls for (``choose_format``): a channel-pruned
weight runs as a smaller dense GEMM, a dense one on BLAS, a sparse one as CSR or as 4x4 / 4x1
blocks when its nonzeros come in blocks. Every call records, per layer, the MACs the kernels
actually executed and the bytes of weights and activations they moved.

Supports the op set of CNNs and MLPs (see ``SUPPORTED_OPS``) and the custom
``joulecut.HashedLinear`` (a SLIDE layer on kernels.slide, see ``_prepare_hashed``: outputs
outside a sample's active set are 0); any other op is a ValueError naming the node.
Layer names follow the importer's rule: the node name, else ``{op}_{index}``.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from onnx import numpy_helper

from kernels.conv import CompactWeight, compact_channels, conv2d_dense, conv2d_sparse, dense_gemm
from kernels.formats import BSRMatrix, CSRMatrix
from kernels.reuse import reuse_conv2d
from kernels.slide import HashedLinear
from kernels.sparse_gemm import spmm

DENSE_ABOVE = 0.30  # density above which dense BLAS beats the sparse kernels on this CPU class
BLOCK_FILL = 0.75  # a block format pays when stored blocks are at least this full
COMPACT_GAIN = 0.9  # run channel-pruned when the kept rows x cols are at most this share of the weight


@dataclass
class LayerRun:
    """What one layer did in the last run."""

    name: str
    op: str
    format: str  # dense | compact | csr | bsr4x4 | bsr4x1 | numpy
    macs_executed: int
    dense_macs: int
    weight_bytes: int
    activation_bytes: int
    seconds: float


def choose_format(w2: np.ndarray, *, allow_compact: bool = True) -> str:
    """The execution format for a 2-D weight [M, K]."""
    nnz = int(np.count_nonzero(w2))
    if allow_compact:
        rows = int(np.count_nonzero(np.any(w2 != 0, axis=1)))
        cols = int(np.count_nonzero(np.any(w2 != 0, axis=0)))
        kept = rows * cols
        if kept <= COMPACT_GAIN * w2.size and (kept == 0 or nnz / kept > DENSE_ABOVE):
            return "compact"
    if nnz > DENSE_ABOVE * w2.size:
        return "dense"
    for name, (bh, bw) in (("bsr4x4", (4, 4)), ("bsr4x1", (4, 1))):
        if w2.shape[0] % bh == 0 and w2.shape[1] % bw == 0 and nnz:
            blocks = np.any(w2.reshape(w2.shape[0] // bh, bh, w2.shape[1] // bw, bw) != 0, axis=(1, 3))
            if nnz / (np.count_nonzero(blocks) * bh * bw) >= BLOCK_FILL:
                return name
    return "csr"


def _weight_bytes(fmt: str, w) -> int:
    if isinstance(w, CSRMatrix):
        return w.nnz * 8 + (w.shape[0] + 1) * 4
    if isinstance(w, BSRMatrix):
        return w.stored * 4 + w.n_blocks * 4 + (w.shape[0] // w.block[0] + 1) * 4
    if isinstance(w, CompactWeight):
        return int(w.weight.size) * 4
    return int(np.asarray(w).size) * 4


def _pack(fmt: str, w2: np.ndarray):
    if fmt == "csr":
        return CSRMatrix.from_dense(w2)
    if fmt.startswith("bsr"):
        return BSRMatrix.from_dense(w2, block=(4, 4) if fmt == "bsr4x4" else (4, 1))
    if fmt == "compact":
        return compact_channels(w2)
    return np.ascontiguousarray(w2, dtype=np.float32)


def layer_names(graph: onnx.GraphProto) -> list[str]:
    """Node name, or ``{op_type}_{index}`` (then ``_1``, ``_2`` ...) when empty or taken: the
    same rule as ``energy.importer.layer_names`` (kernels may not import energy), so the
    validator can match the runner's layers with the estimator's."""
    explicit = {n.name for n in graph.node if n.name}
    taken: set[str] = set()
    names = []
    for i, node in enumerate(graph.node):
        name = node.name
        if not name or name in taken:
            name, suffix = f"{node.op_type}_{i}", 1
            while name in taken or name in explicit:
                name, suffix = f"{node.op_type}_{i}_{suffix}", suffix + 1
        taken.add(name)
        names.append(name)
    return names


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _conv_pads(attrs: dict, x_hw: tuple[int, int], kernel: tuple[int, int], strides, dilations) -> list[int]:
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("NOTSET", ""):
        return list(attrs.get("pads", [0, 0, 0, 0]))
    if auto == "VALID":
        return [0, 0, 0, 0]
    pads_begin, pads_end = [], []
    for size, k, s, d in zip(x_hw, kernel, strides, dilations):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, big = total // 2, total - total // 2
        pads_begin.append(big if auto == "SAME_LOWER" else small)
        pads_end.append(small if auto == "SAME_LOWER" else big)
    return pads_begin + pads_end


def _pool(x: np.ndarray, attrs: dict, kind: str) -> np.ndarray:
    kernel = tuple(attrs["kernel_shape"])
    strides = tuple(attrs.get("strides", [1] * len(kernel)))
    dil = tuple(attrs.get("dilations", [1] * len(kernel)))
    pads = _conv_pads(attrs, x.shape[2:], kernel, strides, dil)
    if attrs.get("ceil_mode", 0):
        raise ValueError("ceil_mode=1 pooling is not supported by the runner")
    fill = -np.inf if kind == "max" else 0.0
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])), constant_values=fill)
    span = tuple((k - 1) * d + 1 for k, d in zip(kernel, dil))
    win = sliding_window_view(xp, span, axis=(2, 3))[:, :, :: strides[0], :: strides[1], :: dil[0], :: dil[1]]
    if kind == "max":
        return win.max(axis=(-2, -1)).astype(np.float32)
    total = win.sum(axis=(-2, -1))
    if attrs.get("count_include_pad", 0):
        return (total / (kernel[0] * kernel[1])).astype(np.float32)
    ones = np.pad(np.ones((1, 1) + x.shape[2:], np.float32), ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    count = sliding_window_view(ones, span, axis=(2, 3))[:, :, :: strides[0], :: strides[1], :: dil[0], :: dil[1]].sum(axis=(-2, -1))
    return (total / count).astype(np.float32)


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _grouped_conv_numpy(x, w, b, strides, dil, groups) -> np.ndarray:
    """Reference-quality grouped conv (padded x) for layers the GEMM kernels don't take."""
    n, c, _, _ = x.shape
    m, cg, r, s = w.shape
    span = ((r - 1) * dil[0] + 1, (s - 1) * dil[1] + 1)
    win = sliding_window_view(x, span, axis=(2, 3))[:, :, :: strides[0], :: strides[1], :: dil[0], :: dil[1]]
    win = win.reshape(n, groups, cg, win.shape[2], win.shape[3], r, s)
    wg = w.reshape(groups, m // groups, cg, r, s)
    y = np.einsum("ngcpqrs,gmcrs->ngmpq", win, wg, optimize=True).reshape(n, m, win.shape[3], win.shape[4])
    if b is not None:
        y = y + b.reshape(1, -1, 1, 1)
    return y.astype(np.float32)


SIMPLE_OPS = {
    "Relu": lambda x, a: np.maximum(x, 0),
    "LeakyRelu": lambda x, a: np.where(x >= 0, x, x * a.get("alpha", 0.01)),
    "Sigmoid": lambda x, a: 1 / (1 + np.exp(-x)),
    "Tanh": lambda x, a: np.tanh(x),
    "HardSigmoid": lambda x, a: np.clip(x * a.get("alpha", 0.2) + a.get("beta", 0.5), 0, 1),
    "HardSwish": lambda x, a: x * np.clip(x / 6 + 0.5, 0, 1),
    "Exp": lambda x, a: np.exp(x),
    "Sqrt": lambda x, a: np.sqrt(x),
    "Neg": lambda x, a: -x,
    "Abs": lambda x, a: np.abs(x),
    "Identity": lambda x, a: x,
    "Dropout": lambda x, a: x,
    "GlobalAveragePool": lambda x, a: x.mean(axis=(2, 3), keepdims=True),
    "GlobalMaxPool": lambda x, a: x.max(axis=(2, 3), keepdims=True),
    "Softmax": lambda x, a: _softmax(x, a.get("axis", -1)),
    "Flatten": lambda x, a: x.reshape(int(np.prod(x.shape[: a.get("axis", 1)])), -1),
    "Transpose": lambda x, a: np.transpose(x, a.get("perm")),
    "MaxPool": lambda x, a: _pool(x, a, "max"),
    "AveragePool": lambda x, a: _pool(x, a, "avg"),
}
BINARY_OPS = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}
SUPPORTED_OPS = frozenset(SIMPLE_OPS) | frozenset(BINARY_OPS) | frozenset(
    {"Conv", "Gemm", "MatMul", "BatchNormalization", "Clip", "Reshape", "Concat", "Squeeze", "Unsqueeze",
     "Constant", "Shape", "Gather", "Cast"})
# Custom ops by (domain, op_type). joulecut.HashedLinear: a SLIDE layer (see _prepare_hashed).
# joulecut.ReuseConv: a Conv with adaptive deep reuse (see _reuse).
CUSTOM_OPS = frozenset({("joulecut", "HashedLinear"), ("joulecut", "ReuseConv")})
HASHED_MODES = {"batched": "batched", "per-sample": "per_sample"}


class GraphRunner:
    """Runs an ONNX model (path or ModelProto) on the kernels.

    ``mode="auto"`` picks each weight layer's format from its weight; ``mode="dense"`` runs
    every weight layer dense (the baseline the validator times against). ``threads`` is passed
    to the sparse kernels."""

    def __init__(self, model: str | os.PathLike | onnx.ModelProto, *, mode: str = "auto", threads: int = 1):
        if mode not in ("auto", "dense"):
            raise ValueError(f"mode must be 'auto' or 'dense', got {mode!r}")
        proto = model if isinstance(model, onnx.ModelProto) else onnx.load(os.fspath(model))
        self.graph = proto.graph
        self.mode, self.threads = mode, threads
        self.names = layer_names(self.graph)
        self.constants = {t.name: numpy_helper.to_array(t) for t in self.graph.initializer}
        init_names = set(self.constants)
        self.inputs = [i.name for i in self.graph.input if i.name not in init_names]
        self.outputs = [o.name for o in self.graph.output]
        for name, node in zip(self.names, self.graph.node):
            if (node.domain, node.op_type) in CUSTOM_OPS:
                continue
            if node.domain not in ("", "ai.onnx") or node.op_type not in SUPPORTED_OPS:
                raise ValueError(f"node '{name}': op {node.domain + '.' if node.domain else ''}{node.op_type} "
                                 "is not supported by the kernel runner")
        self.packed: dict[str, tuple[str, object]] = {}
        for name, node in zip(self.names, self.graph.node):
            self._prepare(name, node)
        self.last_run: list[LayerRun] = []

    def _prepare(self, name: str, node: onnx.NodeProto) -> None:
        attrs = _attrs(node)
        if node.domain == "joulecut" and node.op_type == "HashedLinear":
            self._prepare_hashed(name, node, attrs)
        elif node.op_type == "Conv" and node.input[1] in self.constants:
            w = self.constants[node.input[1]].astype(np.float32)
            groups = attrs.get("group", 1)
            w2 = w.reshape(w.shape[0], -1)
            fmt = "dense" if self.mode == "dense" else choose_format(w2, allow_compact=groups == 1)
            if groups > 1 and fmt.startswith("bsr") and (w.shape[0] // groups) % 4:
                fmt = "csr"
            self.packed[name] = (fmt, compact_channels(w) if fmt == "compact" else (w if fmt == "dense" else _pack(fmt, w2)))
        elif node.op_type in ("Gemm", "MatMul"):
            b_name = node.input[1]
            if b_name not in self.constants or (node.op_type == "Gemm" and attrs.get("transA", 0)):
                return
            b = self.constants[b_name].astype(np.float32)
            if b.ndim != 2:
                return
            w2 = b if (node.op_type == "Gemm" and attrs.get("transB", 0)) else b.T  # [F, K]
            if node.op_type == "Gemm":
                w2 = w2 * np.float32(attrs.get("alpha", 1.0))
            fmt = "dense" if self.mode == "dense" else choose_format(w2)
            self.packed[name] = (fmt, _pack(fmt, np.ascontiguousarray(w2)))

    def _prepare_hashed(self, name: str, node: onnx.NodeProto, a: dict) -> None:
        """joulecut.HashedLinear(X, W [out, in], B [out], offsets?, ids?), attributes K, L,
        family, seed, mode (+ density for simhash, bin_size for dwta). The hash functions and
        bucket tables are rebuilt from W and seed; stored tables (int32 ``bucket_offsets``
        [L, slots + 1], ``bucket_ids`` [L, out]) must equal the rebuilt ones."""
        def fail(message: str) -> ValueError:
            return ValueError(f"node '{name}': joulecut.HashedLinear {message}")

        missing = [k for k in ("K", "L", "family", "seed", "mode") if k not in a]
        if missing:
            raise fail(f"lacks attribute(s) {', '.join(missing)}")
        if len(node.input) < 3 or any(t not in self.constants for t in node.input[1:]):
            raise fail("needs constant initializers W [out, in] and B [out] (and the bucket tables)")
        text = {k: a[k].decode() if isinstance(a[k], bytes) else a[k] for k in ("family", "mode")}
        if text["mode"] not in HASHED_MODES:
            raise fail(f"mode must be one of {sorted(HASHED_MODES)}, got {text['mode']!r}")
        extra = {"density": float(a["density"])} if "density" in a else {}
        if "bin_size" in a:
            extra["bin_size"] = int(a["bin_size"])
        w, b = (self.constants[t] for t in node.input[1:3])
        try:
            layer = HashedLinear(w, b, family=text["family"], K=int(a["K"]), L=int(a["L"]),
                                 seed=int(a["seed"]), num_threads=self.threads, **extra)
        except (TypeError, ValueError) as exc:
            raise fail(str(exc)) from exc
        if len(node.input) > 3:
            stored = [self.constants[t] for t in node.input[3:5]]
            rebuilt = [layer.tables.offsets, layer.tables.ids][:len(stored)]
            if any(s.shape != r.shape or not np.array_equal(s, r) for s, r in zip(stored, rebuilt)):
                raise fail("stored bucket tables differ from the tables rebuilt from W and seed")
        self.packed[name] = ("hashed", (layer, HASHED_MODES[text["mode"]]))

    def _reuse(self, name: str, node: onnx.NodeProto, a: dict, ins: list):
        """joulecut.ReuseConv(X, W [M, C, R, S], B?): groups=1 Conv with symmetric pads and equal
        strides, attributes sub_len, n_hashes, seed (and Conv's strides, pads, kernel_shape)."""
        x, w = ins[0], ins[1].astype(np.float32)
        bias = ins[2].astype(np.float32) if len(ins) > 2 and ins[2] is not None else None
        strides, pads = list(a.get("strides", [1, 1])), list(a.get("pads", [0, 0, 0, 0]))
        if len(set(strides)) != 1 or len(set(pads)) != 1 or a.get("group", 1) != 1:
            raise ValueError(f"node '{name}': joulecut.ReuseConv needs equal strides, equal pads and group 1")
        y, stats = reuse_conv2d(np.ascontiguousarray(x, dtype=np.float32), w, bias, stride=int(strides[0]),
                                pad=int(pads[0]), sub_len=int(a["sub_len"]), n_hashes=int(a["n_hashes"]),
                                seed=int(a.get("seed", 0)), compute_error=False, num_threads=self.threads)
        return [np.ascontiguousarray(y)], stats.macs_executed, stats.macs_dense, "reuse", int(w.size) * 4

    def _hashed(self, name: str, ins: list):
        layer, mode = self.packed[name][1]
        x = ins[0]
        if x.shape[-1] != layer.n_in:
            raise ValueError(f"node '{name}': input must have {layer.n_in} features, got shape {x.shape}")
        lead = x.shape[:-1]
        x2 = np.ascontiguousarray(x.reshape(-1, layer.n_in), dtype=np.float32)
        y = layer.forward_sparse(x2, mode).to_dense().reshape(*lead, layer.n_out)
        dense_macs = x2.shape[0] * layer.n_out * layer.n_in
        return [y], layer.macs_executed, dense_macs, "hashed", layer.bytes_gathered

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs in the model's output order; per-layer stats land in ``last_run``."""
        missing = [n for n in self.inputs if n not in feeds]
        if missing:
            raise ValueError(f"missing model input(s): {', '.join(missing)}")
        env: dict[str, np.ndarray] = dict(self.constants)
        env.update({k: np.asarray(v, dtype=np.float32) if np.asarray(v).dtype.kind == "f" else np.asarray(v)
                    for k, v in feeds.items()})
        self.last_run = []
        for name, node in zip(self.names, self.graph.node):
            t = time.perf_counter()
            outs, macs, dense_macs, fmt, w_bytes = self._node(name, node, env)
            seconds = time.perf_counter() - t
            for out_name, value in zip(node.output, outs):
                env[out_name] = value
            act = sum(env[i].nbytes for i in node.input if i and i in env and i not in self.constants)
            act += sum(o.nbytes for o in outs)
            self.last_run.append(LayerRun(name, node.op_type, fmt, macs, dense_macs, w_bytes, int(act), seconds))
        return [env[o] for o in self.outputs]

    def _node(self, name: str, node: onnx.NodeProto, env: dict):
        a = _attrs(node)
        ins = [env[i] if i else None for i in node.input]
        op = node.op_type
        if node.domain == "joulecut" and op == "HashedLinear":
            return self._hashed(name, ins)
        if node.domain == "joulecut" and op == "ReuseConv":
            return self._reuse(name, node, a, ins)
        if op == "Conv":
            return self._conv(name, node, a, ins)
        if op in ("Gemm", "MatMul") and name in self.packed:
            return self._gemm(name, node, a, ins)
        if op == "Gemm":
            x, b = ins[0], ins[1]
            x = x.T if a.get("transA", 0) else x
            b = b.T if a.get("transB", 0) else b
            y = a.get("alpha", 1.0) * (x @ b)
            if len(ins) > 2 and ins[2] is not None:
                y = y + a.get("beta", 1.0) * ins[2]
            macs = x.shape[0] * x.shape[1] * b.shape[1]
            return [y.astype(np.float32)], macs, macs, "numpy", 0
        if op == "MatMul":
            y = np.matmul(ins[0], ins[1])
            macs = int(np.prod(y.shape)) * ins[0].shape[-1]
            return [y.astype(np.float32)], macs, macs, "numpy", 0
        if op in SIMPLE_OPS:
            return [np.asarray(SIMPLE_OPS[op](ins[0], a), dtype=ins[0].dtype)], 0, 0, "numpy", 0
        if op in BINARY_OPS:
            return [BINARY_OPS[op](ins[0], ins[1]).astype(np.result_type(ins[0], ins[1]))], 0, 0, "numpy", 0
        if op == "BatchNormalization":
            x, scale, bias, mean, var = ins[:5]
            shape = (1, -1) + (1,) * (x.ndim - 2)
            inv = scale / np.sqrt(var + a.get("epsilon", 1e-5))
            return [((x - mean.reshape(shape)) * inv.reshape(shape) + bias.reshape(shape)).astype(np.float32)], 0, 0, "numpy", 0
        if op == "Clip":
            lo = ins[1] if len(ins) > 1 and ins[1] is not None else a.get("min", -np.inf)
            hi = ins[2] if len(ins) > 2 and ins[2] is not None else a.get("max", np.inf)
            return [np.clip(ins[0], lo, hi).astype(ins[0].dtype)], 0, 0, "numpy", 0
        if op == "Reshape":
            shape = [int(s) for s in ins[1]]
            shape = [ins[0].shape[i] if s == 0 and not a.get("allowzero", 0) else s for i, s in enumerate(shape)]
            return [ins[0].reshape(shape)], 0, 0, "numpy", 0
        if op == "Concat":
            return [np.concatenate(ins, axis=a["axis"])], 0, 0, "numpy", 0
        if op in ("Squeeze", "Unsqueeze"):
            axes = a.get("axes") if "axes" in a else [int(v) for v in ins[1]] if len(ins) > 1 else None
            if op == "Squeeze":
                return [np.squeeze(ins[0], axis=tuple(axes) if axes is not None else None)], 0, 0, "numpy", 0
            return [np.expand_dims(ins[0], axis=tuple(axes))], 0, 0, "numpy", 0
        if op == "Constant":
            return [numpy_helper.to_array(a["value"])], 0, 0, "numpy", 0
        if op == "Shape":
            return [np.array(ins[0].shape, dtype=np.int64)], 0, 0, "numpy", 0
        if op == "Gather":
            return [np.take(ins[0], ins[1], axis=a.get("axis", 0))], 0, 0, "numpy", 0
        if op == "Cast":
            return [ins[0].astype(onnx.helper.tensor_dtype_to_np_dtype(a["to"]))], 0, 0, "numpy", 0
        raise ValueError(f"node '{name}': op {op} is not supported by the kernel runner")

    def _conv(self, name, node, a, ins):
        x, w = ins[0], ins[1]
        bias = ins[2] if len(ins) > 2 else None
        kernel = tuple(w.shape[2:])
        if len(kernel) != 2:
            raise ValueError(f"node '{name}': only 2-D Conv is supported by the kernel runner")
        strides = tuple(a.get("strides", [1, 1]))
        dil = tuple(a.get("dilations", [1, 1]))
        groups = a.get("group", 1)
        pads = _conv_pads(a, x.shape[2:], kernel, strides, dil)
        if pads[0] != pads[2] or pads[1] != pads[3]:
            x = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
            pad = (0, 0)
        else:
            pad = (pads[0], pads[1])
        fmt, packed = self.packed.get(name, ("numpy", None))
        n = x.shape[0]
        p = (x.shape[2] + 2 * pad[0] - ((kernel[0] - 1) * dil[0] + 1)) // strides[0] + 1
        q = (x.shape[3] + 2 * pad[1] - ((kernel[1] - 1) * dil[1] + 1)) // strides[1] + 1
        dense_macs = n * w.shape[0] * p * q * int(np.prod(w.shape[1:]))
        x = np.ascontiguousarray(x, dtype=np.float32)
        if fmt in ("csr", "bsr4x4", "bsr4x1"):
            y, macs = conv2d_sparse(x, packed, bias, stride=strides, pad=pad, dilation=dil, groups=groups,
                                    threads=self.threads, kernel_size=kernel, return_macs=True)
        elif groups == 1 and fmt in ("dense", "compact"):
            y, macs = conv2d_dense(x, packed, bias, stride=strides, pad=pad, dilation=dil, return_macs=True)
        else:  # grouped dense conv (depthwise) or a weight computed at run time
            xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
            y, macs = _grouped_conv_numpy(xp, w.astype(np.float32), bias, strides, dil, groups), dense_macs
            fmt = "dense" if fmt != "numpy" else fmt
        return [y], int(macs), dense_macs, fmt, _weight_bytes(fmt, packed if packed is not None else w)

    def _gemm(self, name, node, a, ins):
        fmt, packed = self.packed[name]
        x = ins[0]
        lead = x.shape[:-1]
        x2 = np.ascontiguousarray(x.reshape(-1, x.shape[-1]).T, dtype=np.float32)  # [K, B]
        if fmt in ("csr", "bsr4x4", "bsr4x1"):
            yt, macs = spmm(packed, x2, threads=self.threads, return_macs=True)
        else:
            yt, macs = dense_gemm(packed, x2, return_macs=True)
        y = yt.T.reshape(*lead, yt.shape[0])
        if node.op_type == "Gemm" and len(ins) > 2 and ins[2] is not None:
            y = y + np.float32(a.get("beta", 1.0)) * ins[2]
        dense_macs = int(np.prod(lead)) * packed_shape(packed)[0] * packed_shape(packed)[1]
        return [np.ascontiguousarray(y, dtype=np.float32)], int(macs), dense_macs, fmt, _weight_bytes(fmt, packed)


def packed_shape(packed) -> tuple[int, int]:
    if isinstance(packed, CompactWeight):
        return tuple(packed.full_shape)  # type: ignore[return-value]
    return tuple(packed.shape)  # type: ignore[return-value]
