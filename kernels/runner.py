"""A small ONNX graph runner: Conv / Gemm / MatMul on joulecut's kernels, everything else in NumPy.

Each weight layer gets the format its weight calls for (``choose_format``): a channel-pruned
weight runs as a smaller dense GEMM, a dense one on BLAS (or ``skinny_gemm`` for few rows), a
sparse one as CSR or as 4x4 / 4x1 blocks when its nonzeros come in blocks. Every call records,
per layer, the MACs the kernels actually executed and the bytes of weights and activations
they moved.

The graph is compiled once, at construction, into a flat list of steps over numbered value
slots (no name lookups, attribute parsing or weight conversion per call):

- weight layers are prepared once (packed weight, float32 bias, the BLAS/skinny choice);
- a Conv absorbs a following BatchNormalization into its weight and bias (only when that keeps
  every zero a zero and every nonzero a nonzero, so the executed MACs do not change), and a
  Conv or Gemm absorbs a following chain of Add (a residual) / Relu / Clip as an in-place
  epilogue, when each intermediate has no other consumer and is not a graph output;
- a convolution writes [M, N*P*Q] (what the kernels produce) into a buffer kept between calls
  and hands on the [N, M, P, Q] *view* of it, channel-major in memory: the next kernel reads
  any strides, NumPy ops keep that layout, so no transpose is ever copied; 1x1 stride-1 dense
  convolutions read that layout as their im2col matrix without a copy.

Between the weight layers, small C loops (kernels.glue) take what NumPy's per-call and per-row
overhead makes slow on small tensors: max pooling without padding and global pooling write into
buffers kept between calls, in the input's layout; a direct conv whose output only feeds a
Flatten(axis=1) writes [N, M, P, Q] in C order, so the Flatten is a view; a CSR Gemm / MatMul on
one row, or with few outputs on up to ``CSR_ROWS_MAX`` rows, runs on ``csr_rows`` (bias and a
leading ReLU inside), which executes the same nnz x rows MACs as spmm.

Fusion does not change what is counted: ``last_run`` still has one ``LayerRun`` per ONNX node,
with the MACs and the activation bytes of the unfused node (an absorbed node has format
"fused" and 0 seconds; its host's seconds include it). Outputs are returned as fresh
C-contiguous arrays. A runner keeps buffers between calls: run one call at a time on it.

Supports the op set of CNNs and MLPs (see ``SUPPORTED_OPS``) and the custom
``joulecut.HashedLinear`` (a SLIDE layer on kernels.slide, see ``_prepare_hashed``: outputs
outside a sample's active set are 0) and ``joulecut.ReuseConv``; any other op is a ValueError
naming the node. Layer names follow the importer's rule: the node name, else ``{op}_{index}``.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from onnx import numpy_helper

from kernels.conv import CompactWeight, compact_channels, use_skinny
from kernels.direct_conv import direct_conv
from kernels.formats import BSRMatrix, CSRMatrix
from kernels.glue import csr_rows, global_pool, max_pool
from kernels.reuse import reuse_conv2d
from kernels.slide import HashedLinear
from kernels.sparse_gemm import skinny_gemm, spmm, spmm_im2col

# Density above which the runner's dense path (im2col + BLAS / skinny_gemm) is used instead of
# CSR/BSR: a fixed rule, from benchmarks/bench_runner.py's crossover table (one thread, 3x3 convs
# of 16-256 channels): CSR is 1.2-3x faster at 10-40% density on every shape and the two meet at
# about 50%. (At 90% sparsity CSR beat the dense path on every conv of the benchmark models, at
# batch 1 and 32; only tiny FC layers lose a few microseconds to the kernel's call overhead.)
DENSE_ABOVE = 0.45
BLOCK_FILL = 0.75  # a block format pays when stored blocks are at least this full
COMPACT_GAIN = 0.9  # run channel-pruned when the kept rows x cols are at most this share of the weight
SPARSE_FORMATS = ("csr", "bsr4x4", "bsr4x1", "direct")
# A conv whose weight calls for CSR or BSR runs as a direct sparse convolution
# (kernels.direct_conv: the weight's CSRMatrix over a zero-padded copy of the input, no im2col
# panels, bias and a leading ReLU in the kernel) where that measured faster than the im2col
# panels (benchmarks/bench_runner.py's direct-vs-im2col table, RESULTS.md "Whole-model runner";
# four runs at load 1.4-3):
# - every stride-1 conv: 1.1x-4.2x over CSR at 1-512 channels and 4x4-56x56 outputs, batch 1
#   and 8 (0.9x-1.0x in single runs at 256-512 channels); 1.2x-2.2x over 4x4 blocks at 64-256 channels (0.7x-1.1x only at 512 channels of 7x7,
#   a shape the benchmark models lack);
# - at a larger stride, filters of at least DIRECT_STRIDED_MIN_TAPS taps and at most
#   DIRECT_STRIDED_MAX_K = C*R*S (up to 64 channels of 3x3, or a 7x7 stem): 0.9x-2.5x, mostly
#   above 1.1x. 128 channels of 3x3 at stride 2 are within 20% either way, and 1x1 stride-2
#   shortcuts swing from 0.3x to 2.6x between runs (the copy of the input is most of their
#   work): those stay on the im2col kernels.
DIRECT_STRIDED_MAX_K = 576
DIRECT_STRIDED_MIN_TAPS = 9
# A CSR Gemm / MatMul runs on kernels.glue.csr_rows (a gather-dot per output, bias and a leading
# ReLU inside, straight into a [rows, F] buffer) instead of spmm on one row, or on up to
# CSR_ROWS_MAX rows when it has at most CSR_ROWS_FEATURES outputs; both execute nnz x rows MACs.
# Measured (one thread, 90% magnitude-pruned weights, kernel calls only): on one row csr_rows took
# 0.4-0.7x spmm's time from 10 x 512 to 4096 x 4096; with 10 outputs (the digits CNN's 10 x 512
# fc) 0.2-0.4x at 8-128 rows (spmm's 64-column panels are built for many output rows); with
# 64-256 outputs spmm wins from 2-8 rows on (256 x 256: 1.2x-6x at 2-32 rows).
CSR_ROWS_MAX = 128
CSR_ROWS_FEATURES = 16


@dataclass
class LayerRun:
    """What one ONNX node did in the last run."""

    name: str
    op: str
    format: str  # dense | compact | csr | direct | bsr4x4 | bsr4x1 | hashed | reuse | numpy | fused
    macs_executed: int
    dense_macs: int
    weight_bytes: int
    activation_bytes: int  # non-initializer inputs + outputs of this node, as if run unfused
    seconds: float  # 0 for a node fused into its host (the host's step time includes it)


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


def use_direct(kernel: tuple[int, int], k: int, strides: tuple[int, int]) -> bool:
    """Whether a CSR conv with an R x S kernel, k = C*R*S and these strides runs direct."""
    if tuple(strides) == (1, 1):
        return True
    return kernel[0] * kernel[1] >= DIRECT_STRIDED_MIN_TAPS and k <= DIRECT_STRIDED_MAX_K


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


def _dense_operator(w2: np.ndarray) -> CompactWeight:
    """A dense [M, K] weight as a CompactWeight that keeps everything: CompactWeight packs it for
    skinny_gemm when it has few rows (kernels.conv's rule), which ``_gemm_into`` then uses."""
    w2 = np.ascontiguousarray(w2, dtype=np.float32)
    return CompactWeight(w2, np.arange(w2.shape[0]), np.arange(w2.shape[1]), tuple(w2.shape))


def _gemm_into(op: CompactWeight, x: np.ndarray, out: np.ndarray, threads: int) -> np.ndarray:
    """out[M', N] = op.weight @ x[K', N]: skinny_gemm where conv.use_skinny says it wins, else BLAS."""
    if op.skinny is not None and use_skinny(op.weight.shape[0], x.shape[1]):
        return skinny_gemm(op.skinny, x, out=out, threads=threads)
    return np.matmul(op.weight, x, out=out)


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


class _Pool:
    """Max / average pooling as a max (sum) over the R*S strided slices of the padded input:
    R*S whole-array NumPy calls that keep the input's memory layout. The geometry (pads,
    slices, the divisor) is worked out once per input shape."""

    def __init__(self, attrs: dict, kind: str, glue: bool = True):
        self.glue = glue
        self.kernel = tuple(attrs["kernel_shape"])
        if len(self.kernel) != 2:
            raise ValueError(f"only 2-D pooling is supported, got kernel_shape {self.kernel}")
        if attrs.get("ceil_mode", 0):
            raise ValueError("ceil_mode=1 pooling is not supported by the runner")
        self.attrs, self.kind, self.shape = attrs, kind, None
        self.strides = tuple(attrs.get("strides", [1, 1]))
        self.dil = tuple(attrs.get("dilations", [1, 1]))

    def _plan(self, shape: tuple[int, ...]) -> None:
        if len(shape) != 4:
            raise ValueError(f"pooling needs an [N, C, H, W] input, got shape {shape}")
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.strides, self.dil
        pads = _conv_pads(self.attrs, shape[2:], self.kernel, self.strides, self.dil)
        self.pads = ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])) if any(pads) else None
        h, w = shape[2] + pads[0] + pads[2], shape[3] + pads[1] + pads[3]
        p, q = (h - (kh - 1) * dh - 1) // sh + 1, (w - (kw - 1) * dw - 1) // sw + 1
        if p < 1 or q < 1:
            raise ValueError(f"the pooling window {self.kernel} does not fit the padded input {h}x{w}")
        self.windows = [(slice(r * dh, r * dh + sh * (p - 1) + 1, sh), slice(s * dw, s * dw + sw * (q - 1) + 1, sw))
                        for r in range(kh) for s in range(kw)]
        self.divisor = np.float32(kh * kw)
        if self.kind == "avg" and self.pads is not None and not self.attrs.get("count_include_pad", 0):
            ones = np.pad(np.ones((1, 1) + tuple(shape[2:]), np.float32), self.pads)
            self.divisor = sum(ones[:, :, a, b] for a, b in self.windows)
        self.shape = shape

    def _plan_fast(self, x: np.ndarray) -> None:
        """Max pooling without padding or dilation runs on kernels.glue.max_pool into a buffer
        kept between calls, in the input's layout (channel-major stays channel-major)."""
        self.fast = None
        if not self.glue or self.kind != "max" or self.pads is not None or self.dil != (1, 1) or x.dtype != np.float32:
            return
        n, c = x.shape[:2]
        (kh, kw), (sh, sw) = self.kernel, self.strides
        p, q = (x.shape[2] - kh) // sh + 1, (x.shape[3] - kw) // sw + 1
        if n > 1 and x.transpose(1, 0, 2, 3).flags.c_contiguous:
            self.fast = np.empty((c, n, p, q), np.float32).transpose(1, 0, 2, 3)
        else:
            self.fast = np.empty((n, c, p, q), np.float32)
        self.fast_strides = x.strides

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if x.shape != self.shape:
            self._plan(x.shape)
            self._plan_fast(x)
        if self.fast is not None and x.dtype == np.float32:
            if x.strides != self.fast_strides:  # a new layout: pick the output's again
                self._plan_fast(x)
            return max_pool(x, self.kernel, self.strides, self.fast)
        xp = x if self.pads is None else np.pad(x, self.pads, constant_values=-np.inf if self.kind == "max" else 0.0)
        combine = np.maximum if self.kind == "max" else np.add
        if len(self.windows) == 1:
            out = np.array(xp[:, :, self.windows[0][0], self.windows[0][1]], dtype=np.float32)
        else:  # the first combine allocates the output (in the input's layout)
            (a0, b0), (a1, b1), *rest = self.windows
            out = combine(xp[:, :, a0, b0], xp[:, :, a1, b1], dtype=np.float32)
            for a, b in rest:
                combine(out, xp[:, :, a, b], out=out)
        if self.kind == "avg":
            out /= self.divisor
        return out


class _GlobalPool:
    """GlobalAveragePool / GlobalMaxPool of a float32 [N, C, H, W] on kernels.glue.global_pool into
    a [N, C, 1, 1] buffer kept between calls (so a Flatten after it is a view); NumPy otherwise."""

    def __init__(self, average: bool, fallback, attrs: dict):
        self.average, self.fallback, self.attrs, self.out = average, fallback, attrs, None

    def __call__(self, ins) -> np.ndarray:
        x = ins[0]
        if x.dtype != np.float32 or x.ndim != 4 or x.shape[2] * x.shape[3] == 0:
            return self.fallback(x, self.attrs)
        if self.out is None or self.out.shape[:2] != x.shape[:2]:
            self.out = np.empty(x.shape[:2] + (1, 1), np.float32)
        return global_pool(x, self.average, self.out)


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


def _flatten(x: np.ndarray, axis: int) -> np.ndarray:
    return x.reshape(math.prod(x.shape[:axis]), -1)


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
    "Flatten": lambda x, a: _flatten(x, a.get("axis", 1)),
    "Transpose": lambda x, a: np.transpose(x, a.get("perm")),
}
BINARY_OPS = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}
SUPPORTED_OPS = frozenset(SIMPLE_OPS) | frozenset(BINARY_OPS) | frozenset(
    {"Conv", "Gemm", "MatMul", "MaxPool", "AveragePool", "BatchNormalization", "Clip", "Reshape", "Concat", "Squeeze", "Unsqueeze",
     "Constant", "Shape", "Gather", "Cast"})
# Custom ops by (domain, op_type). joulecut.HashedLinear: a SLIDE layer (see _prepare_hashed).
# joulecut.ReuseConv: a Conv with adaptive deep reuse (see _reuse).
CUSTOM_OPS = frozenset({("joulecut", "HashedLinear"), ("joulecut", "ReuseConv")})
HASHED_MODES = {"batched": "batched", "per-sample": "per_sample"}
FUSABLE_ACTIVATIONS = ("Relu", "Clip")


# ---------------------------------------------------------------------------------------------
# Compiled steps. Each runs on ``vals`` (one slot per tensor) and reports its nodes' LayerRuns.

class _Graph:
    """What steps need to know about the graph at compile time."""

    def __init__(self, graph: onnx.GraphProto, names: list[str]):
        self.names = names
        self.constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.slot: dict[str, int] = {}
        for name in self.constants:
            self.slot_of(name)
        for v in graph.input:
            self.slot_of(v.name)
        for node in graph.node:
            for t in list(node.input) + list(node.output):
                if t:
                    self.slot_of(t)
        self.outputs = {o.name for o in graph.output}
        self.consumers: dict[str, list[int]] = {}
        for i, node in enumerate(graph.node):
            for t in set(node.input):
                if t:
                    self.consumers.setdefault(t, []).append(i)

    def slot_of(self, tensor: str) -> int:
        """The slot of a tensor name, -1 for an omitted optional input ("")."""
        if not tensor:
            return -1
        return self.slot.setdefault(tensor, len(self.slot))

    def counted(self, tensor: str) -> bool:
        """Whether a node input counts as moved activation bytes (initializers do not)."""
        return bool(tensor) and tensor not in self.constants

    def sole_consumer(self, tensor: str) -> int | None:
        users = self.consumers.get(tensor, [])
        return users[0] if len(users) == 1 and tensor not in self.outputs else None


def _nbytes(shape: tuple[int, ...], itemsize: int = 4) -> int:
    return int(np.prod(shape, dtype=np.int64)) * itemsize


def _io_bytes(node: onnx.NodeProto, g: _Graph, vals: list) -> int:
    total = 0
    for t in node.input:
        if g.counted(t) and vals[g.slot[t]] is not None:
            total += np.asarray(vals[g.slot[t]]).nbytes
    for t in node.output:
        if t and vals[g.slot[t]] is not None:
            total += np.asarray(vals[g.slot[t]]).nbytes
    return total


class _Epilogue:
    """The Add (residual) / Relu / Clip nodes absorbed after a Conv or Gemm, applied in place in
    graph order. Entries: ("add", slot, counted), ("relu",), ("clip", lo, hi)."""

    def __init__(self):
        self.ops: list[tuple] = []
        self.nodes: list[tuple[int, onnx.NodeProto]] = []

    @property
    def leading_relu(self) -> bool:
        """Whether the first entry is a ReLU (which the direct conv and csr_rows can apply)."""
        return bool(self.ops) and self.ops[0] == ("relu",)

    def apply(self, y: np.ndarray, flat: np.ndarray | None, vals: list, skip: int = 0) -> np.ndarray:
        """y: the logical output; flat: the same memory as one 2-D array (or None); skip: the
        leading entries a kernel already applied."""
        for op in self.ops[skip:] if skip else self.ops:
            kind = op[0]
            if kind == "add":
                r = vals[op[1]]
                if r.shape == y.shape:
                    np.add(y, r, out=y)
                else:  # a broadcast that grows the output: leave the buffer alone
                    y, flat = np.asarray(y + r, dtype=np.float32), None
            elif kind == "relu":
                target = flat if flat is not None else y
                np.maximum(target, 0, out=target)
            else:
                target = flat if flat is not None else y
                np.clip(target, op[1], op[2], out=target)
        return y

    def layer_runs(self, g: _Graph, shape: tuple[int, ...], vals: list) -> list[tuple[int, LayerRun]]:
        """One LayerRun per absorbed node: the bytes it would have moved unfused."""
        runs = []
        ops = iter(self.ops)
        for index, node in self.nodes:
            if node.op_type == "BatchNormalization":
                runs.append((index, LayerRun(g.names[index], node.op_type, "fused", 0, 0, 0, 2 * _nbytes(shape), 0.0)))
                continue
            op = next(ops)
            moved = _nbytes(shape)
            if op[0] == "add":
                r = vals[op[1]]
                shape = np.broadcast_shapes(shape, r.shape)
                moved += r.nbytes if op[2] else 0
            runs.append((index, LayerRun(g.names[index], node.op_type, "fused", 0, 0, 0, moved + _nbytes(shape), 0.0)))
        return runs


def _clip_bounds(node: onnx.NodeProto, g: _Graph) -> tuple[float, float] | None:
    """Clip's (min, max) when both are attributes, initializers or absent; else None."""
    a = _attrs(node)
    bounds = [a.get("min", -np.inf), a.get("max", np.inf)]
    for i in (1, 2):
        if len(node.input) > i and node.input[i]:
            if node.input[i] not in g.constants:
                return None
            bounds[i - 1] = float(g.constants[node.input[i]])
    return float(bounds[0]), float(bounds[1])


def _grow_epilogue(start: int, tensor: str, g: _Graph, nodes, claimed: set[int], ep: _Epilogue) -> tuple[int, str]:
    """Absorb the Add / Relu / Clip chain after ``tensor``: (index of the last node, its output)."""
    last = start
    while (j := g.sole_consumer(tensor)) is not None and j not in claimed:
        node = nodes[j]
        if node.domain not in ("", "ai.onnx") or len(node.output) != 1:
            break
        if node.op_type == "Relu":
            ep.ops.append(("relu",))
        elif node.op_type == "Clip" and (bounds := _clip_bounds(node, g)) is not None:
            ep.ops.append(("clip", *bounds))
        elif node.op_type == "Add" and len(node.input) == 2 and list(node.input).count(tensor) == 1:
            other = node.input[1] if node.input[0] == tensor else node.input[0]
            ep.ops.append(("add", g.slot[other], g.counted(other)))
        else:
            break
        ep.nodes.append((j, node))
        claimed.add(j)
        last, tensor = j, node.output[0]
    return last, tensor


class _Im2col:
    """cols[C*R*S, N*P*Q] of x (any strides) into buffers kept between calls; the zero-padded
    copy is channel-major, [C, N, H+2p, W+2p], so the column copy reads whole rows. A 1x1
    stride-1 unpadded conv of a channel-major input needs no copy at all."""

    def __init__(self, kernel, stride, pad, dil):
        self.kernel, self.stride, self.pad, self.dil = kernel, stride, pad, dil
        self.shape = None

    def _plan(self, shape):
        n, c, h, w = shape
        (r, s), (sh, sw), (ph, pw), (dh, dw) = self.kernel, self.stride, self.pad, self.dil
        self.shape = shape
        self.identity = (r, s, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0)
        if self.identity:
            return
        self.xp = np.zeros((c, n, h + 2 * ph, w + 2 * pw), np.float32)
        self.interior = self.xp[:, :, ph:ph + h, pw:pw + w]
        span = ((r - 1) * dh + 1, (s - 1) * dw + 1)
        win = sliding_window_view(self.xp, span, axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]  # C N P Q R S
        self.source = win.transpose(0, 4, 5, 1, 2, 3)
        p, q = win.shape[2], win.shape[3]
        self.cols = np.empty((c * r * s, n * p * q), np.float32)
        self.target = self.cols.reshape(c, r, s, n, p, q)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if x.shape != self.shape:
            self._plan(x.shape)
        xt = x.transpose(1, 0, 2, 3)  # channel-major view
        if self.identity:
            n, c, h, w = x.shape
            return xt.reshape(c, n * h * w)  # a view when x is channel-major, else a copy
        np.copyto(self.interior, xt)
        np.copyto(self.target, self.source)
        return self.cols


class _ConvStep:
    """A Conv with a constant weight (and bias), optionally with a folded BatchNormalization
    and an epilogue; writes [M, N*P*Q] into a kept buffer and hands on its [N, M, P, Q] view."""

    def __init__(self, index: int, node: onnx.NodeProto, g: _Graph, mode: str, threads: int,
                 fuse: bool, claimed: set[int], nodes, direct: bool = True, glue: bool = True):
        self.g, self.index, self.node, self.threads = g, index, node, threads
        name = g.names[index]
        a = _attrs(node)
        w = g.constants[node.input[1]].astype(np.float32)
        if w.ndim != 4:
            raise ValueError(f"node '{name}': only 2-D Conv is supported by the kernel runner")
        bias_name = node.input[2] if len(node.input) > 2 else ""
        bias = g.constants[bias_name].astype(np.float64) if bias_name else None
        self.groups = int(a.get("group", 1))
        m, cg = w.shape[:2]
        if m % self.groups:
            raise ValueError(f"node '{name}': group={self.groups} does not divide the {m} output channels")
        self.attrs, self.kernel = a, tuple(w.shape[2:])
        self.strides = tuple(a.get("strides", [1, 1]))
        self.dil = tuple(a.get("dilations", [1, 1]))
        self.in_channels = cg * self.groups
        self.dense_per_col = int(np.prod(w.shape[1:]))
        self.x_slot = g.slot[node.input[0]]
        self.epilogue = _Epilogue()
        last, out = index, node.output[0]
        if fuse:
            w, bias, last, out = self._fold_batchnorm(w, bias, out, nodes, claimed, last)
            last, out = _grow_epilogue(last, out, g, nodes, claimed, self.epilogue)
        self.last, self.out_slot = last, g.slot[out]
        self.bias_col = None if bias is None else bias.astype(np.float32).reshape(-1, 1)
        self.bias_vec = None if bias is None else np.ascontiguousarray(self.bias_col[:, 0])
        self.direct_relu = self.epilogue.leading_relu
        self._prepare_weight(w, mode, direct)
        # A direct conv whose output only feeds a Flatten(axis=1) writes [N, M, P, Q] C order (the
        # kernel takes either layout), so the Flatten is a view instead of a transposing copy.
        j = g.sole_consumer(out)
        self.batch_major = (glue and self.format == "direct" and j is not None and nodes[j].op_type == "Flatten"
                            and nodes[j].domain in ("", "ai.onnx") and _attrs(nodes[j]).get("axis", 1) == 1)
        self.shape = None

    def _fold_batchnorm(self, w, bias, out, nodes, claimed, last):
        """Fold an inference BatchNormalization right after the conv into w and bias, when that
        keeps the zero pattern (and hence the MACs the kernels execute) exactly."""
        j = self.g.sole_consumer(out)
        if j is None or j in claimed:
            return w, bias, last, out
        bn = nodes[j]
        params = list(bn.input[1:5])
        if (bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx") or len(bn.output) != 1
                or len(params) != 4 or any(p not in self.g.constants for p in params)
                or _attrs(bn).get("training_mode", 0)):
            return w, bias, last, out
        scale, shift, mean, var = (self.g.constants[p].astype(np.float64).reshape(-1) for p in params)
        if any(v.shape != (w.shape[0],) for v in (scale, shift, mean, var)):
            return w, bias, last, out
        factor = scale / np.sqrt(var + _attrs(bn).get("epsilon", 1e-5))
        folded = (w.astype(np.float64) * factor[:, None, None, None]).astype(np.float32)
        if not np.array_equal(folded != 0, w != 0):
            return w, bias, last, out
        bias = ((bias if bias is not None else 0.0) - mean) * factor + shift
        self.epilogue.nodes.append((j, bn))
        claimed.add(j)
        return folded, bias, j, bn.output[0]

    def _prepare_weight(self, w: np.ndarray, mode: str, direct: bool) -> None:
        w2 = w.reshape(w.shape[0], -1)
        fmt = "dense" if mode == "dense" else choose_format(w2, allow_compact=self.groups == 1)
        if self.groups > 1 and fmt.startswith("bsr") and (w.shape[0] // self.groups) % 4:
            fmt = "csr"
        if (direct and fmt in ("csr", "bsr4x4", "bsr4x1") and self.groups == 1
                and use_direct(self.kernel, self.dense_per_col, self.strides)):
            fmt = "direct"  # on the CSR of the weight: it executes only the nonzeros, blocks or not
        self.format, self.weight = fmt, w
        if fmt in SPARSE_FORMATS:
            packed = _pack("csr" if fmt == "direct" else fmt, w2)
            mg = w.shape[0] // self.groups
            self.group_weights = [packed] if self.groups == 1 else [
                packed.row_slice(g * mg, (g + 1) * mg) for g in range(self.groups)]
            self.macs_per_col = sum(p.macs(1) for p in self.group_weights)
        elif fmt == "compact":
            packed = compact_channels(w)
            kept = packed.weight
            k_kept = int(np.prod(kept.shape[1:]))
            self.operator = CompactWeight(kept.reshape(kept.shape[0], k_kept), packed.out_index,
                                          np.arange(k_kept), (w.shape[0], k_kept))
            self.in_index = None if packed.in_index.size == w.shape[1] else packed.in_index
            self.dropped = np.setdiff1d(np.arange(w.shape[0]), packed.out_index)
            self.macs_per_col = int(kept.size)
        elif self.groups == 1:
            packed = w
            self.operator, self.in_index, self.dropped = _dense_operator(w2), None, np.empty(0, np.int64)
            self.macs_per_col = int(w.size)
        else:
            packed = w
            self.macs_per_col = int(w.size)  # per output pixel: M x C/groups x R x S
        self.packed = packed
        self.weight_bytes = _weight_bytes(fmt, packed)

    def _plan(self, shape: tuple[int, ...]) -> None:
        """Geometry and buffers for one input shape (kept until the shape changes)."""
        name = self.g.names[self.index]
        if len(shape) != 4 or shape[1] != self.in_channels:
            raise ValueError(f"node '{name}': Conv input must be [N, {self.in_channels}, H, W], got {shape}")
        n, _, h, w = shape
        pads = _conv_pads(self.attrs, (h, w), self.kernel, self.strides, self.dil)
        self.pre_pad = None
        if pads[0] != pads[2] or pads[1] != pads[3]:
            self.pre_pad = ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3]))
            h, w, self.pad = h + pads[0] + pads[2], w + pads[1] + pads[3], (0, 0)
        else:
            self.pad = (pads[0], pads[1])
        m = self.weight.shape[0]
        p = (h + 2 * self.pad[0] - (self.kernel[0] - 1) * self.dil[0] - 1) // self.strides[0] + 1
        q = (w + 2 * self.pad[1] - (self.kernel[1] - 1) * self.dil[1] - 1) // self.strides[1] + 1
        if p < 1 or q < 1:
            raise ValueError(f"node '{name}': the kernel {self.kernel} does not fit the padded input {h}x{w}")
        self.out_shape, self.cols = (n, m, p, q), n * p * q
        if self.batch_major:  # flat: the same memory as one 2-D array, what the epilogue needs
            self.view = np.empty((n, m, p, q), np.float32)
            self.flat = self.view.reshape(n, m * p * q)
        else:
            self.flat = np.empty((m, n * p * q), np.float32)
            self.view = self.flat.reshape(m, n, p, q).transpose(1, 0, 2, 3)
        if self.format == "compact":
            self.kept = np.empty((self.operator.weight.shape[0], n * p * q), np.float32)
        if self.format in ("dense", "compact") and self.groups == 1:
            self.im2col = _Im2col(self.kernel, self.strides, self.pad, self.dil)
        self.shape = shape

    def run(self, vals: list) -> None:
        x = vals[self.x_slot]
        if x.shape != self.shape:
            self._plan(x.shape)
        if x.dtype != np.float32:
            x = x.astype(np.float32)
        if self.pre_pad is not None:
            x = np.pad(x, self.pre_pad)
        flat, y = self.flat, self.view
        if self.format == "direct":  # bias (and a leading ReLU) are applied in the kernel
            direct_conv(self.group_weights[0], x, self.kernel, self.strides, self.pad, self.dil, bias=self.bias_vec,
                        relu=self.direct_relu, out=y, threads=self.threads)
            skip = int(self.direct_relu)
            vals[self.out_slot] = self.epilogue.apply(y, flat, vals, skip) if len(self.epilogue.ops) > skip else y
            return
        if self.format in SPARSE_FORMATS:
            self._sparse(x, flat)
        elif self.groups == 1:
            self._dense(x, flat)
        else:  # grouped dense (depthwise): reference-quality NumPy, NCHW
            xp = np.pad(x, ((0, 0), (0, 0), (self.pad[0],) * 2, (self.pad[1],) * 2))
            y = _grouped_conv_numpy(xp, self.weight, None, self.strides, self.dil, self.groups)
            flat = None
        if self.bias_col is not None:
            if flat is not None:
                flat += self.bias_col
            else:
                y += self.bias_col.reshape(1, -1, 1, 1)
        vals[self.out_slot] = self.epilogue.apply(y, flat, vals) if self.epilogue.ops else y

    def _sparse(self, x: np.ndarray, flat: np.ndarray) -> None:
        if self.groups == 1:
            spmm_im2col(self.group_weights[0], x, self.kernel, self.strides, self.pad, self.dil,
                        out=flat, threads=self.threads)
            return
        cg, mg = self.in_channels // self.groups, self.weight.shape[0] // self.groups
        for g, wg in enumerate(self.group_weights):
            spmm_im2col(wg, x[:, g * cg:(g + 1) * cg], self.kernel, self.strides, self.pad, self.dil,
                        out=flat[g * mg:(g + 1) * mg], threads=self.threads)

    def _dense(self, x: np.ndarray, flat: np.ndarray) -> None:
        if self.in_index is not None:
            x = x[:, self.in_index]
        cols = self.im2col(x)
        if self.format == "dense":
            _gemm_into(self.operator, cols, flat, self.threads)
            return
        _gemm_into(self.operator, cols, self.kept, self.threads)
        flat[self.operator.out_index] = self.kept
        if self.dropped.size:
            flat[self.dropped] = 0.0

    def layer_runs(self, vals: list, seconds: float) -> list[tuple[int, LayerRun]]:
        g, n_cols = self.g, self.cols
        x_bytes = vals[self.x_slot].nbytes
        dense_macs = n_cols * self.weight.shape[0] * self.dense_per_col
        host = LayerRun(g.names[self.index], "Conv", self.format, self.macs_per_col * n_cols, dense_macs,
                        self.weight_bytes, x_bytes + _nbytes(self.out_shape), seconds)
        return [(self.index, host)] + self.epilogue.layer_runs(g, self.out_shape, vals)


class _GemmStep:
    """Gemm (transA=0) or MatMul with a constant 2-D weight, bias and epilogue fused."""

    def __init__(self, index: int, node: onnx.NodeProto, g: _Graph, mode: str, threads: int,
                 fuse: bool, claimed: set[int], nodes, glue: bool = True):
        self.g, self.index, self.node, self.threads, self.glue = g, index, node, threads, glue
        a = _attrs(node)
        b = g.constants[node.input[1]].astype(np.float32)
        w2 = b if (node.op_type == "Gemm" and a.get("transB", 0)) else b.T  # [F, K]
        if node.op_type == "Gemm":
            w2 = w2 * np.float32(a.get("alpha", 1.0))
        w2 = np.ascontiguousarray(w2, dtype=np.float32)
        self.features, self.k = w2.shape
        c_name = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 else ""
        self.bias = None
        if c_name:
            self.bias = (np.float32(a.get("beta", 1.0)) * g.constants[c_name]).astype(np.float32)
        self.x_slot = g.slot[node.input[0]]
        self.epilogue = _Epilogue()
        last, out = index, node.output[0]
        if fuse:
            last, out = _grow_epilogue(last, out, g, nodes, claimed, self.epilogue)
        self.last, self.out_slot = last, g.slot[out]
        fmt = "dense" if mode == "dense" else choose_format(w2)
        self.format = fmt
        self.packed = _pack(fmt, w2)
        self.weight_bytes = _weight_bytes(fmt, self.packed)
        if fmt == "dense":
            self.wt = np.ascontiguousarray(w2.T)  # [K, F]: x[B, K] @ wt is [B, F], C order
            self.macs_per_row = int(w2.size)
        elif fmt == "compact":
            cw = self.operator = self.packed  # _gemm_into reads only its kept weight (and skinny)
            self.in_index = None if cw.in_index.size == self.k else cw.in_index
            self.dropped = np.setdiff1d(np.arange(self.features), cw.out_index)
            self.macs_per_row = int(cw.weight.size)
        else:
            self.macs_per_row = self.packed.macs(1)
        self.rows = None

    def _use_rows(self, rows: int) -> bool:
        return self.glue and self.format == "csr" and (
            rows == 1 or (rows <= CSR_ROWS_MAX and self.features <= CSR_ROWS_FEATURES))

    def _plan(self, rows: int) -> None:
        self.on_rows = self._use_rows(rows)
        if self.format == "dense" or self.on_rows:  # matmul and csr_rows write [B, F]
            self.flat = np.empty((rows, self.features), np.float32)
            self.view = self.flat
        else:  # the kernels produce [F, B]; hand on its [B, F] view
            self.flat = np.empty((self.features, rows), np.float32)
            self.view = self.flat.T
        if self.format == "compact":
            self.kept = np.empty((self.operator.weight.shape[0], rows), np.float32)
        self.bias_in_place = True
        # csr_rows adds a [F] bias itself, and then a leading ReLU; any other bias shape is added after
        fused_bias = self.on_rows and self.bias is not None and self.bias.shape == (self.features,)
        self.rows_bias = np.ascontiguousarray(self.bias) if fused_bias else None
        self.bias_after = None if fused_bias else self.bias
        self.rows_relu = self.on_rows and (self.bias is None or fused_bias) and self.epilogue.leading_relu
        if self.bias is not None:
            try:
                self.bias_in_place = np.broadcast_shapes(self.bias.shape, self.view.shape) == self.view.shape
            except ValueError:
                raise ValueError(f"node '{self.g.names[self.index]}': bias C of shape {self.bias.shape} does not "
                                 f"broadcast to the output [{rows}, {self.features}]") from None
        self.rows = rows

    def run(self, vals: list) -> None:
        x = vals[self.x_slot]
        if x.ndim < 1 or x.shape[-1] != self.k or (self.node.op_type == "Gemm" and x.ndim != 2):
            raise ValueError(f"node '{self.g.names[self.index]}': input must be [..., {self.k}]"
                             f"{' (2-D for Gemm)' if self.node.op_type == 'Gemm' else ''}, got shape {x.shape}")
        if x.dtype != np.float32:
            x = x.astype(np.float32)
        lead = x.shape[:-1]
        x2 = x if x.ndim == 2 else x.reshape(-1, self.k)
        if x2.shape[0] != self.rows:
            self._plan(x2.shape[0])
        y = self.view
        if self.on_rows:  # bias (a [F] one) and a leading ReLU inside the kernel
            if x2.strides[-1] != 4:
                x2 = np.ascontiguousarray(x2)  # the kernel reads rows with unit stride along K
            csr_rows(self.packed, x2, self.rows_bias, self.rows_relu, self.flat)
        elif self.format == "dense":
            np.matmul(x2, self.wt, out=self.flat)
        elif self.format == "compact":
            xt = x2.T if self.in_index is None else x2.T[self.in_index]
            _gemm_into(self.operator, xt, self.kept, self.threads)
            self.flat[self.operator.out_index] = self.kept
            if self.dropped.size:
                self.flat[self.dropped] = 0.0
        else:
            spmm(self.packed, x2.T, out=self.flat, threads=self.threads)
        if self.bias_after is not None:
            if self.bias_in_place:
                y += self.bias_after
            else:
                y = y + self.bias_after
        flat = self.flat if y is self.view else None
        if len(lead) != 1:  # MatMul of an N-D input: the epilogue sees the [..., F] shape
            y, flat = y.reshape(*lead, self.features), None
        skip = int(self.rows_relu)
        vals[self.out_slot] = self.epilogue.apply(y, flat, vals, skip) if len(self.epilogue.ops) > skip else y

    def layer_runs(self, vals: list, seconds: float) -> list[tuple[int, LayerRun]]:
        g = self.g
        x = vals[self.x_slot]
        rows = int(np.prod(x.shape[:-1], dtype=np.int64))
        shape = tuple(x.shape[:-1]) + (self.features,)
        if self.bias is not None:
            shape = np.broadcast_shapes(shape, self.bias.shape)
        host = LayerRun(g.names[self.index], self.node.op_type, self.format, self.macs_per_row * rows,
                        rows * self.features * self.k, self.weight_bytes, x.nbytes + _nbytes(shape), seconds)
        return [(self.index, host)] + self.epilogue.layer_runs(g, shape, vals)


class _NodeStep:
    """One node run by a prepared function ``fn(ins) -> (outputs, macs, dense_macs, format,
    weight_bytes)``; the work figures are kept for ``last_run``."""

    def __init__(self, index: int, node: onnx.NodeProto, g: _Graph, fn):
        self.g, self.index, self.node, self.last, self.fn = g, index, node, index, fn
        self.in_slots = [g.slot_of(t) for t in node.input]
        self.out_slots = [g.slot[t] for t in node.output if t]
        self.work = (0, 0, "numpy", 0)

    def run(self, vals: list) -> None:
        outs, *work = self.fn([vals[i] if i >= 0 else None for i in self.in_slots])
        self.work = work
        for slot, value in zip(self.out_slots, outs):
            vals[slot] = value

    def layer_runs(self, vals: list, seconds: float) -> list[tuple[int, LayerRun]]:
        macs, dense_macs, fmt, w_bytes = self.work
        name = self.g.names[self.index]
        return [(self.index, LayerRun(name, self.node.op_type, fmt, int(macs), int(dense_macs), int(w_bytes),
                                      _io_bytes(self.node, self.g, vals), seconds))]


class _SimpleStep(_NodeStep):
    """A single-output NumPy op without MACs: ``fn(ins) -> output``."""

    def run(self, vals: list) -> None:
        vals[self.out_slots[0]] = self.fn([vals[i] if i >= 0 else None for i in self.in_slots])


def _numpy_op(op: str, a: dict, name: str, glue: bool = True):
    """The prepared function of a non-weight op: ins -> output (a single array)."""
    if op in ("MaxPool", "AveragePool"):
        pool = _Pool(a, "max" if op == "MaxPool" else "avg", glue)
        return lambda ins: pool(ins[0])
    if op in ("GlobalAveragePool", "GlobalMaxPool") and glue:
        return _GlobalPool(op == "GlobalAveragePool", SIMPLE_OPS[op], a)
    if op == "Flatten":  # a view wherever the layout allows (see _ConvStep.batch_major)
        axis = a.get("axis", 1)
        if axis == 1:
            return lambda ins: ins[0].reshape(ins[0].shape[0], -1)
        return lambda ins: _flatten(ins[0], axis if axis >= 0 else axis + ins[0].ndim)
    if op in SIMPLE_OPS:
        f = SIMPLE_OPS[op]

        def simple(ins):
            y = f(ins[0], a)
            return y if getattr(y, "dtype", None) == ins[0].dtype else np.asarray(y, dtype=ins[0].dtype)
        return simple
    if op in BINARY_OPS:
        f = BINARY_OPS[op]
        return lambda ins: f(ins[0], ins[1]).astype(np.result_type(ins[0], ins[1]), copy=False)
    if op == "Clip":
        def clip(ins):
            lo = ins[1] if len(ins) > 1 and ins[1] is not None else a.get("min", -np.inf)
            hi = ins[2] if len(ins) > 2 and ins[2] is not None else a.get("max", np.inf)
            return np.clip(ins[0], lo, hi).astype(ins[0].dtype, copy=False)
        return clip
    if op == "Reshape":
        def reshape(ins):
            shape = [int(s) for s in ins[1]]
            shape = [ins[0].shape[i] if s == 0 and not a.get("allowzero", 0) else s for i, s in enumerate(shape)]
            return ins[0].reshape(shape)
        return reshape
    if op == "Concat":
        return lambda ins: np.concatenate(ins, axis=a["axis"])
    if op in ("Squeeze", "Unsqueeze"):
        def squeeze(ins):
            axes = a.get("axes") if "axes" in a else [int(v) for v in ins[1]] if len(ins) > 1 and ins[1] is not None else None
            if op == "Squeeze":
                return np.squeeze(ins[0], axis=tuple(axes) if axes is not None else None)
            return np.expand_dims(ins[0], axis=tuple(axes))
        return squeeze
    if op == "Constant":
        value = numpy_helper.to_array(a["value"])
        return lambda ins: value
    if op == "Shape":
        return lambda ins: np.array(ins[0].shape, dtype=np.int64)
    if op == "Gather":
        return lambda ins: np.take(ins[0], ins[1], axis=a.get("axis", 0))
    if op == "Cast":
        dtype = onnx.helper.tensor_dtype_to_np_dtype(a["to"])
        return lambda ins: ins[0].astype(dtype)
    if op == "BatchNormalization":
        def batchnorm(ins):
            x, scale, bias, mean, var = ins[:5]
            shape = (1, -1) + (1,) * (x.ndim - 2)
            inv = scale / np.sqrt(var + a.get("epsilon", 1e-5))
            return ((x - mean.reshape(shape)) * inv.reshape(shape) + bias.reshape(shape)).astype(np.float32)
        return batchnorm
    raise ValueError(f"node '{name}': op {op} is not supported by the kernel runner")


def _numpy_gemm(a: dict):
    def gemm(ins):
        x, b = ins[0], ins[1]
        x = x.T if a.get("transA", 0) else x
        b = b.T if a.get("transB", 0) else b
        y = a.get("alpha", 1.0) * (x @ b)
        if len(ins) > 2 and ins[2] is not None:
            y = y + a.get("beta", 1.0) * ins[2]
        macs = x.shape[0] * x.shape[1] * b.shape[1]
        return [y.astype(np.float32)], macs, macs, "numpy", 0
    return gemm


def _numpy_matmul(ins):
    y = np.matmul(ins[0], ins[1])
    macs = int(np.prod(y.shape)) * ins[0].shape[-1]
    return [y.astype(np.float32)], macs, macs, "numpy", 0


def _numpy_conv(name: str, a: dict):
    """A Conv whose weight (or bias) is computed at run time: NumPy, counted dense."""
    def conv(ins):
        x, w = ins[0], ins[1].astype(np.float32)
        bias = ins[2].astype(np.float32) if len(ins) > 2 and ins[2] is not None else None
        kernel = tuple(w.shape[2:])
        if len(kernel) != 2:
            raise ValueError(f"node '{name}': only 2-D Conv is supported by the kernel runner")
        strides, dil = tuple(a.get("strides", [1, 1])), tuple(a.get("dilations", [1, 1]))
        pads = _conv_pads(a, x.shape[2:], kernel, strides, dil)
        xp = np.pad(np.asarray(x, dtype=np.float32), ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
        y = _grouped_conv_numpy(xp, w, bias, strides, dil, a.get("group", 1))
        macs = int(np.prod(y.shape)) * int(np.prod(w.shape[1:]))
        return [y], macs, macs, "numpy", int(w.size) * 4
    return conv


# ---------------------------------------------------------------------------------------------

class GraphRunner:
    """Runs an ONNX model (path or ModelProto) on the kernels.

    ``mode="auto"`` picks each weight layer's format from its weight; ``mode="dense"`` runs
    every weight layer dense (the baseline the validator times against). ``threads`` is passed
    to the sparse kernels. ``fuse=False`` runs every node as its own step (same outputs within
    rounding, same counts; for checking the fusion). ``direct=False`` keeps every sparse conv on
    the im2col kernels instead of the direct convolution where ``use_direct`` picks it (same
    outputs within rounding; for measuring that choice). ``glue=False`` turns off the kernels.glue
    fast paths between the weight layers (max / global pooling on NumPy, every conv output
    channel-major, every CSR Gemm on spmm; same outputs within rounding, same counts; for
    measuring them)."""

    def __init__(self, model: str | os.PathLike | onnx.ModelProto, *, mode: str = "auto", threads: int = 1,
                 fuse: bool = True, direct: bool = True, glue: bool = True):
        if mode not in ("auto", "dense"):
            raise ValueError(f"mode must be 'auto' or 'dense', got {mode!r}")
        proto = model if isinstance(model, onnx.ModelProto) else onnx.load(os.fspath(model))
        self.graph = proto.graph
        self.mode, self.threads, self.fuse, self.direct, self.glue = mode, threads, fuse, direct, glue
        self.names = layer_names(self.graph)
        for name, node in zip(self.names, self.graph.node):
            if (node.domain, node.op_type) in CUSTOM_OPS:
                continue
            if node.domain not in ("", "ai.onnx") or node.op_type not in SUPPORTED_OPS:
                raise ValueError(f"node '{name}': op {node.domain + '.' if node.domain else ''}{node.op_type} "
                                 "is not supported by the kernel runner")
        self._g = _Graph(self.graph, self.names)
        self.constants = self._g.constants
        self.inputs = [i.name for i in self.graph.input if i.name not in self.constants]
        self.outputs = [o.name for o in self.graph.output]
        self.packed: dict[str, tuple[str, object]] = {}
        self._steps = self._compile()
        self._template: list = [None] * len(self._g.slot)
        for name, value in self.constants.items():
            self._template[self._g.slot[name]] = value
        self._output_slots = [self._g.slot[o] for o in self.outputs]
        self._seconds = [0.0] * len(self._steps)
        self._vals: list | None = None
        self._last_run: list[LayerRun] | None = []

    # -- compilation ----------------------------------------------------------------------------
    def _compile(self) -> list:
        """Steps in execution order: a fused step runs where its last node stood (its inputs are
        all ready there; its intermediates have no other consumer)."""
        nodes, g = list(self.graph.node), self._g
        known = set(g.constants) | {v.name for v in self.graph.input}
        for name, node in zip(self.names, nodes):
            absent = [t for t in node.input if t and t not in known]
            if absent:
                raise ValueError(f"node '{name}': input(s) {', '.join(absent)} are neither graph inputs, "
                                 "initializers nor outputs of an earlier node")
            known.update(t for t in node.output if t)
        claimed: set[int] = set()
        by_last: dict[int, object] = {}
        for i, node in enumerate(nodes):
            if i in claimed:
                continue
            step = self._step(i, node, claimed, nodes)
            claimed.add(i)
            by_last[step.last] = step
        return [by_last[i] for i in sorted(by_last)]

    def _step(self, i: int, node: onnx.NodeProto, claimed: set[int], nodes):
        g, name = self._g, self.names[i]
        a = _attrs(node)
        op = node.op_type
        if node.domain == "joulecut" and op == "HashedLinear":
            return _NodeStep(i, node, g, self._prepare_hashed(name, node, a))
        if node.domain == "joulecut" and op == "ReuseConv":
            return _NodeStep(i, node, g, self._reuse_fn(name, a))
        if op == "Conv":
            if len(node.input) > 1 and node.input[1] in g.constants and (len(node.input) < 3 or not node.input[2]
                                                 or node.input[2] in g.constants):
                step = _ConvStep(i, node, g, self.mode, self.threads, self.fuse, claimed, nodes, self.direct, self.glue)
                self.packed[name] = (step.format, step.packed)
                return step
            return _NodeStep(i, node, g, _numpy_conv(name, a))
        if op in ("Gemm", "MatMul") and self._gemm_on_kernels(node, a):
            step = _GemmStep(i, node, g, self.mode, self.threads, self.fuse, claimed, nodes, self.glue)
            self.packed[name] = (step.format, step.packed)
            return step
        if op == "Gemm":
            return _NodeStep(i, node, g, _numpy_gemm(a))
        if op == "MatMul":
            return _NodeStep(i, node, g, _numpy_matmul)
        if len([t for t in node.output if t]) == 1:
            return _SimpleStep(i, node, g, _numpy_op(op, a, name, self.glue))
        fn = _numpy_op(op, a, name, self.glue)
        return _NodeStep(i, node, g, lambda ins: ([fn(ins)], 0, 0, "numpy", 0))

    def _gemm_on_kernels(self, node: onnx.NodeProto, a: dict) -> bool:
        c = self._g.constants
        if len(node.input) < 2 or node.input[1] not in c or c[node.input[1]].ndim != 2:
            return False
        if node.op_type == "MatMul":
            return True
        return not a.get("transA", 0) and (len(node.input) < 3 or not node.input[2] or node.input[2] in c)

    def _prepare_hashed(self, name: str, node: onnx.NodeProto, a: dict):
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
        mode = HASHED_MODES[text["mode"]]
        self.packed[name] = ("hashed", (layer, mode))

        def hashed(ins):
            x = ins[0]
            if x.shape[-1] != layer.n_in:
                raise ValueError(f"node '{name}': input must have {layer.n_in} features, got shape {x.shape}")
            lead = x.shape[:-1]
            x2 = np.ascontiguousarray(x.reshape(-1, layer.n_in), dtype=np.float32)
            y = layer.forward_sparse(x2, mode).to_dense().reshape(*lead, layer.n_out)
            dense_macs = x2.shape[0] * layer.n_out * layer.n_in
            return [y], layer.macs_executed, dense_macs, "hashed", layer.bytes_gathered
        return hashed

    def _reuse_fn(self, name: str, a: dict):
        """joulecut.ReuseConv(X, W [M, C, R, S], B?): groups=1 Conv with symmetric pads and equal
        strides, attributes sub_len, n_hashes, seed (and Conv's strides, pads, kernel_shape)."""
        strides, pads = list(a.get("strides", [1, 1])), list(a.get("pads", [0, 0, 0, 0]))
        if len(set(strides)) != 1 or len(set(pads)) != 1 or a.get("group", 1) != 1:
            raise ValueError(f"node '{name}': joulecut.ReuseConv needs equal strides, equal pads and group 1")

        def reuse(ins):
            x, w = ins[0], ins[1].astype(np.float32)
            bias = ins[2].astype(np.float32) if len(ins) > 2 and ins[2] is not None else None
            y, stats = reuse_conv2d(np.ascontiguousarray(x, dtype=np.float32), w, bias, stride=int(strides[0]),
                                    pad=int(pads[0]), sub_len=int(a["sub_len"]), n_hashes=int(a["n_hashes"]),
                                    seed=int(a.get("seed", 0)), compute_error=False, num_threads=self.threads)
            return [np.ascontiguousarray(y)], stats.macs_executed, stats.macs_dense, "reuse", int(w.size) * 4
        return reuse

    # -- execution ------------------------------------------------------------------------------
    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs in the model's output order (fresh C-contiguous arrays); per-layer stats land
        in ``last_run``."""
        missing = [n for n in self.inputs if n not in feeds]
        if missing:
            raise ValueError(f"missing model input(s): {', '.join(missing)}")
        vals = self._template.copy()
        slot = self._g.slot
        for k, v in feeds.items():
            if k in slot:
                v = np.asarray(v)
                vals[slot[k]] = v.astype(np.float32, copy=False) if v.dtype.kind == "f" else v
        seconds, clock = self._seconds, time.perf_counter
        for k, step in enumerate(self._steps):
            t = clock()
            step.run(vals)
            seconds[k] = clock() - t
        self._vals, self._last_run = vals, None
        return [np.array(vals[s], order="C") for s in self._output_slots]

    @property
    def last_run(self) -> list[LayerRun]:
        """One LayerRun per ONNX node of the last run, in graph order (built on first access)."""
        if self._last_run is None:
            runs = []
            for step, seconds in zip(self._steps, self._seconds):
                runs += step.layer_runs(self._vals, seconds)
            self._last_run = [run for _, run in sorted(runs, key=lambda r: r[0])]
        return self._last_run

    @property
    def steps(self) -> list[tuple[str, ...]]:
        """The compiled schedule: per step, the names of the nodes it runs (host first)."""
        out = []
        for step in self._steps:
            fused = [self.names[j] for j, _ in step.epilogue.nodes] if hasattr(step, "epilogue") else []
            out.append((self.names[step.index], *fused))
        return out


def packed_shape(packed) -> tuple[int, int]:
    if isinstance(packed, CompactWeight):
        return tuple(packed.full_shape)  # type: ignore[return-value]
    return tuple(packed.shape)  # type: ignore[return-value]
