"""Whole pruned models on joulecut's kernel runner vs onnxruntime, side by side.

    python benchmarks/bench_runner.py [--repeats 15] [--quick]

Models, each pruned to 90% weight sparsity per layer:

- the digits CNN (examples/digits, trained 4 epochs on clean digits), batch 1 and 32;
- the shipped examples/models/tiny_resnet.onnx (16-32 channels at 32x32), batch 1 and 32;
- a ResNet-18-style network built here in torch and exported to ONNX (not stored): a 3x3 stem
  to 64 channels at 56x56, then two basic blocks each at 64 (56x56), 128 (28x28) and 256
  (14x14) channels with residual adds and 1x1 projection shortcuts, global average pool, fc;
  random weights with BatchNorm statistics calibrated on random inputs; batch 1 and 8. Pruned
  two ways: by per-layer magnitude, and by 4x4 blocks of the [M, C*R*S] weight (the blocks
  with the largest L2 norm kept; a layer whose shape has no 4x4 tiling by magnitude).

For each: onnxruntime on the dense model, onnxruntime on the pruned model (it gains nothing
from zeros), and GraphRunner on the pruned model (each layer in the format its weight calls
for), one thread each (BLAS too), interleaved rounds (benchmarks/timing.py), medians of wall
and of this thread's CPU time. Two more tables measure one conv at a time: the direct sparse
convolution (kernels.direct_conv) against the im2col CSR / 4x4-block kernels, behind
``kernels.runner.use_direct``, and the dense-vs-CSR crossover behind
``kernels.runner.DENSE_ABOVE``. The runner is also timed with ``glue=False`` (pooling, flatten
and the small CSR fc without kernels/glue.pyx) in the same rounds. Writes the "## Whole-model runner" section of RESULTS.md, with
the previous recorded figures beside the new ones (``--quick`` prints without writing).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "examples" / "digits"), str(Path(__file__).resolve().parent)]
from results import update_section  # noqa: E402
from timing import interleaved_medians  # noqa: E402

SPARSITY = 0.9
DENSITIES = (0.1, 0.3, 0.4, 0.5)  # of the crossover table
# The figures recorded before the direct convolution (this script, 2026-12-01 10:14 UTC, load
# 1.0-1.1): speed-up vs onnxruntime dense, (wall, CPU time), and the formats chosen.
BEFORE = {
    ("digits CNN", 1): (0.31, 0.30, "csr x4"), ("digits CNN", 32): (0.39, 0.39, "csr x4"),
    ("tiny ResNet", 1): (0.51, 0.51, "csr x7"), ("tiny ResNet", 32): (0.76, 0.76, "csr x7"),
    ("ResNet-18-style, 90% magnitude", 1): (2.12, 2.12, "csr x16"),
    ("ResNet-18-style, 90% magnitude", 8): (2.14, 2.14, "csr x16"),
    ("ResNet-18-style, 90% in 4x4 blocks", 1): (2.53, 2.52, "bsr4x4 x14, csr x2"),
    ("ResNet-18-style, 90% in 4x4 blocks", 8): (2.41, 2.41, "bsr4x4 x14, csr x2"),
}
# The figures recorded before the glue fast paths (kernels/glue.pyx: max / global pooling into kept
# buffers, a Flatten that is a view, the small-batch CSR fc on csr_rows): this script, 2026-12-01
# 13:40 UTC, load 0.6-0.7: speed-up vs onnxruntime dense (wall).
GLUE_BEFORE = {
    ("digits CNN", 1): 0.28, ("digits CNN", 32): 0.79, ("tiny ResNet", 1): 1.26, ("tiny ResNet", 32): 1.84,
    ("ResNet-18-style, 90% magnitude", 1): 2.94, ("ResNet-18-style, 90% magnitude", 8): 3.09,
    ("ResNet-18-style, 90% in 4x4 blocks", 1): 3.78, ("ResNet-18-style, 90% in 4x4 blocks", 8): 3.33,
}
# Convs of the direct-vs-im2col table: (label, C, M, kernel, stride, output size); pad k // 2.
DIRECT_CONVS = (
    ("digits conv1", 1, 16, 3, 1, 8), ("digits conv2", 16, 32, 3, 1, 8), ("digits conv3", 32, 32, 3, 1, 4),
    ("tiny ResNet block", 16, 16, 3, 1, 32), ("tiny ResNet downsample", 16, 32, 3, 2, 16),
    ("tiny ResNet shortcut", 16, 32, 1, 2, 16), ("ResNet-18 stage 1", 64, 64, 3, 1, 56),
    ("ResNet-18 stage 2", 128, 128, 3, 1, 28), ("ResNet-18 stage 3", 256, 256, 3, 1, 14),
    ("ResNet-18 downsample 2", 64, 128, 3, 2, 28), ("ResNet-18 downsample 3", 128, 256, 3, 2, 14),
    ("ResNet-18 shortcut 2", 64, 128, 1, 2, 28), ("256 ch at 7x7", 256, 256, 3, 1, 7),
    ("512 ch at 7x7", 512, 512, 3, 1, 7),
)


def prune_90(model: onnx.ModelProto) -> onnx.ModelProto:
    """Zero the 90% smallest-magnitude entries of every weight (initializer of rank >= 2)."""
    pruned = onnx.ModelProto.FromString(model.SerializeToString())
    for t in pruned.graph.initializer:
        w = numpy_helper.to_array(t).copy()
        if w.ndim >= 2:
            w[np.abs(w) < np.quantile(np.abs(w), SPARSITY)] = 0
            t.CopyFrom(numpy_helper.from_array(w, t.name))
    return pruned


def prune_blocks_90(model: onnx.ModelProto) -> onnx.ModelProto:
    """Keep the 10% of 4x4 blocks of each [M, C*R*S] weight with the largest L2 norm; a weight
    whose flattened shape does not tile into 4x4 blocks is pruned by magnitude instead."""
    pruned = onnx.ModelProto.FromString(model.SerializeToString())
    for t in pruned.graph.initializer:
        w = numpy_helper.to_array(t).copy()
        if w.ndim < 2:
            continue
        w2 = w.reshape(w.shape[0], -1)
        if w2.shape[0] % 4 or w2.shape[1] % 4:
            w2[np.abs(w2) < np.quantile(np.abs(w2), SPARSITY)] = 0
        else:
            tiles = w2.reshape(w2.shape[0] // 4, 4, w2.shape[1] // 4, 4)
            norms = np.sqrt((tiles.astype(np.float64) ** 2).sum(axis=(1, 3)))
            keep = norms >= np.quantile(norms, SPARSITY)
            w2 = (tiles * keep[:, None, :, None]).reshape(w2.shape)
        t.CopyFrom(numpy_helper.from_array(w2.reshape(w.shape).astype(np.float32), t.name))
    return pruned


def with_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    m = onnx.ModelProto.FromString(model.SerializeToString())
    for v in list(m.graph.input) + list(m.graph.output):
        v.type.tensor_type.shape.dim[0].dim_value = batch
    del m.graph.value_info[:]
    return m


def digits_model(folder: Path) -> onnx.ModelProto:
    import torch

    import digits
    from pruning.export import export_onnx

    (x, y), _ = digits.make_dataset("clean", seed=0, copies=1)
    model = digits.train_cnn(x, y, epochs=4, seed=0)
    return onnx.load(export_onnx(model, torch.from_numpy(x[:1]), folder / "digits.onnx"))


def resnet_model(folder: Path, size: int = 56, widths: tuple[int, ...] = (64, 128, 256)) -> onnx.ModelProto:
    """The ResNet-18-style test model (module docstring), exported with a symbolic batch."""
    import torch
    from torch import nn

    from pruning.export import export_onnx
    from tests.models import BasicBlock  # the tests' ResNet block

    layers = [nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()]
    cin = widths[0]
    for i, width in enumerate(widths):
        layers += [BasicBlock(cin, width, 1 if i == 0 else 2), BasicBlock(width, width, 1)]
        cin = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10)]
    torch.manual_seed(0)
    model = nn.Sequential(*layers)
    with torch.no_grad():  # BatchNorm statistics of random inputs, so activations stay O(1)
        model.train()
        for _ in range(3):
            model(torch.randn(8, 3, size, size))
    model.eval()
    return onnx.load(export_onnx(model, torch.randn(1, 3, size, size), folder / "resnet.onnx"))


def conv_model(w: np.ndarray, shape: list[int]) -> onnx.ModelProto:
    """One 3x3 'same' Conv with weight w on an input of ``shape``."""
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], name="conv")], "conv",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def crossover_rows(repeats: int) -> tuple[list[str], dict]:
    """CSR conv (spmm_im2col) vs the runner's dense path (im2col + BLAS / skinny_gemm) by density:
    table rows and {(channels, density): dense CPU time / CSR CPU time}."""
    from kernels.formats import CSRMatrix
    from kernels.runner import GraphRunner
    from kernels.sparse_gemm import spmm_im2col

    rng = np.random.default_rng(0)
    rows, ratios = [], {}
    for m, c, hw in ((16, 16, 32), (64, 64, 56), (128, 128, 28), (256, 256, 14)):
        x = rng.standard_normal((1, c, hw, hw)).astype(np.float32)
        cells = []
        for density in DENSITIES:
            w = rng.standard_normal((m, c, 3, 3)).astype(np.float32)
            w[np.abs(w) < np.quantile(np.abs(w), 1 - density)] = 0
            csr = CSRMatrix.from_dense(w.reshape(m, -1))
            dense = GraphRunner(conv_model(w, list(x.shape)), mode="dense")
            _, cpu = interleaved_medians({  # CPU time: one thread, and robust to a shared machine
                "csr": lambda: spmm_im2col(csr, x, (3, 3), (1, 1), (1, 1), (1, 1)),
                "dense": lambda: dense.run({"x": x})}, repeats)
            ratios[(m, density)] = cpu["dense"] / cpu["csr"]
            cells.append(f"{cpu['csr'] * 1e3:.2f} / {cpu['dense'] * 1e3:.2f} ({ratios[(m, density)]:.2f}x)")
        load = os.getloadavg()
        rows.append(f"| {m} x {c} x 3x3, {hw}x{hw}, batch 1 | " + " | ".join(cells) + f" | {load[0]:.2f} |")
        print(rows[-1], flush=True)
    return rows, ratios


def _block_pruned(w: np.ndarray) -> np.ndarray | None:
    """w with only the 10% of 4x4 blocks of its [M, C*R*S] form with the largest L2 norm kept;
    None when that form does not tile into 4x4 blocks."""
    m, k = w.shape[0], int(np.prod(w.shape[1:]))
    if m % 4 or k % 4:
        return None
    blocks = w.reshape(m // 4, 4, k // 4, 4)
    norms = np.sqrt((blocks ** 2).sum(axis=(1, 3)))
    keep = norms >= np.quantile(norms, SPARSITY)
    return (blocks * keep[:, None, :, None]).reshape(w.shape)


def direct_rows(repeats: int) -> tuple[list[str], dict]:
    """The direct convolution against the im2col kernels, one conv at a time (kernel calls only,
    output buffers preallocated, no bias): per batch, CSR / direct on a 90% magnitude-pruned
    weight and 4x4 BSR / direct (on the same weight's CSR) on a 90% block-pruned one. Returns the
    table rows and {(label, batch, "csr" | "bsr", what the runner picks): im2col CPU time / direct
    CPU time}."""
    from kernels.direct_conv import direct_conv
    from kernels.formats import BSRMatrix, CSRMatrix
    from kernels.runner import use_direct
    from kernels.sparse_gemm import spmm_im2col

    rng = np.random.default_rng(0)
    rows, ratios = [], {}
    for label, c, m, k, stride, out in DIRECT_CONVS:
        hw, pad = out * stride, k // 2
        picks = "direct" if use_direct((k, k), c * k * k, (stride, stride)) else "im2col"
        cells = []
        for batch in (1, 8):
            x = rng.standard_normal((batch, c, hw, hw)).astype(np.float32)
            flat = np.empty((m, batch * out * out), np.float32)
            view = flat.reshape(m, batch, out, out).transpose(1, 0, 2, 3)  # what the runner hands over
            w = rng.standard_normal((m, c, k, k)).astype(np.float32)
            magnitude = w * (np.abs(w) >= np.quantile(np.abs(w), SPARSITY))
            geo = ((k, k), (stride, stride), (pad, pad), (1, 1))
            for weight, im2col_format in ((magnitude, "csr"), (_block_pruned(w), "bsr")):
                if weight is None:
                    cells.append("-")
                    continue
                w2 = weight.reshape(m, -1)
                csr = CSRMatrix.from_dense(w2)
                packed = csr if im2col_format == "csr" else BSRMatrix.from_dense(w2, block=(4, 4))
                _, cpu = interleaved_medians({
                    "im2col": lambda: spmm_im2col(packed, x, *geo, out=flat),
                    "direct": lambda: direct_conv(csr, x, *geo, out=view)}, repeats)
                ratios[(label, batch, im2col_format, picks)] = cpu["im2col"] / cpu["direct"]
                cells.append(f"{cpu['im2col'] * 1e3:.3f} / {cpu['direct'] * 1e3:.3f} ({ratios[(label, batch, im2col_format, picks)]:.2f}x)")
        rows.append(f"| {label}: {c} -> {m}, {k}x{k}, stride {stride}, {out}x{out} out | " + " | ".join(cells)
                    + f" | {picks} | {os.getloadavg()[0]:.2f} |")
        print(rows[-1], flush=True)
    return rows, ratios


def bench_model(label: str, dense: onnx.ModelProto, pruned: onnx.ModelProto, batch: int, repeats: int) -> dict:
    import onnxruntime as ort

    from kernels.runner import GraphRunner

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    d, p = with_batch(dense, batch), with_batch(pruned, batch)
    shape = [batch] + [x.dim_value for x in d.graph.input[0].type.tensor_type.shape.dim[1:]]
    feeds = {d.graph.input[0].name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    ort_dense = ort.InferenceSession(d.SerializeToString(), options)
    ort_pruned = ort.InferenceSession(p.SerializeToString(), options)
    runner = GraphRunner(p)
    im2col = GraphRunner(p, direct=False)  # every sparse conv on the im2col kernels, as before
    noglue = GraphRunner(p, glue=False)  # pooling, flatten and the small CSR fc as before kernels/glue.pyx
    ref = ort_pruned.run(None, feeds)[0]
    err = float(np.abs(runner.run(feeds)[0] - ref).max() / np.abs(ref).max())
    wall, cpu = interleaved_medians({"ort dense": lambda: ort_dense.run(None, feeds),
                                     "ort pruned": lambda: ort_pruned.run(None, feeds),
                                     "kernels pruned": lambda: runner.run(feeds),
                                     "kernels im2col only": lambda: im2col.run(feeds),
                                     "kernels no glue": lambda: noglue.run(feeds)}, repeats)
    runs = runner.last_run
    weight_s = sum(r.seconds for r in runs if r.dense_macs)
    # where a call's time goes (medians of 21 calls): conv steps, the other steps (and per op
    # type), and the runner's own per-call work (feeding the inputs, copying the outputs out)
    split = {"glue": call_split(runner, feeds), "no glue": call_split(noglue, feeds)}
    ort_warm = []
    for _ in range(21):
        t = time.perf_counter()
        ort_dense.run(None, feeds)
        ort_warm.append(time.perf_counter() - t)
    split["ort dense"] = float(np.median(ort_warm))
    formats: dict[str, int] = {}
    for r in runs:
        if r.dense_macs:
            formats[r.format] = formats.get(r.format, 0) + 1
    row = dict(model=label, batch=batch, wall=wall, cpu=cpu, err=err, share=weight_s / sum(r.seconds for r in runs),
               formats=", ".join(f"{k} x{v}" for k, v in sorted(formats.items())), load=os.getloadavg()[0],
               steps=len(runner.steps), nodes=len(runs), split=split)
    print(label, batch, {k: f"{v * 1e3:.3f}" for k, v in wall.items()}, f"err {err:.1e}", row["formats"],
          f"load {row['load']:.2f}", flush=True)
    return row


def call_split(runner, feeds) -> dict:
    """Medians over 21 calls of the whole call, its conv steps, its other steps (and those per op
    type), in seconds."""
    parts, by_op = [], {}
    for _ in range(21):
        t = time.perf_counter()
        runner.run(feeds)
        total = time.perf_counter() - t
        runs = runner.last_run
        conv = sum(r.seconds for r in runs if r.op == "Conv")
        parts.append((conv, sum(r.seconds for r in runs) - conv, total))
        ops: dict[str, float] = {}
        for r in runs:
            if r.op != "Conv" and r.format != "fused":
                ops[r.op] = ops.get(r.op, 0.0) + r.seconds
        for op, sec in ops.items():
            by_op.setdefault(op, []).append(sec)
    conv_s, other_s, total_s = (float(np.median([p[i] for p in parts])) for i in range(3))
    return dict(conv_s=conv_s, other_s=other_s, total_s=total_s,
                by_op={op: float(np.median(v)) for op, v in by_op.items()})


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| model | batch | ort dense ms (CPU ms) | ort pruned ms (CPU ms) | kernels pruned ms (CPU ms) | kernels, im2col only ms (CPU ms) | speed-up vs ort dense (wall) | CPU-time ratio | "
        "formats chosen (weight layers) | share of runner time in weight layers | max rel. error vs ort | load avg (1 min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        w, c = r["wall"], r["cpu"]
        cells = " | ".join(f"{w[k] * 1e3:.3f} ({c[k] * 1e3:.3f})" for k in ("ort dense", "ort pruned", "kernels pruned", "kernels im2col only"))
        lines.append(f"| {r['model']} | {r['batch']} | {cells} | {w['ort dense'] / w['kernels pruned']:.2f}x | "
                     f"{c['ort dense'] / c['kernels pruned']:.2f}x | {r['formats']} | {100 * r['share']:.0f}% | "
                     f"{r['err']:.1e} | {r['load']:.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="ResNet-style rows only, printed, RESULTS.md untouched")
    args = parser.parse_args()
    from threadpoolctl import threadpool_limits

    from kernels.runner import DIRECT_STRIDED_MAX_K, DIRECT_STRIDED_MIN_TAPS

    started = time.time()
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, threadpool_limits(limits=1, user_api="blas"):
        resnet = resnet_model(Path(tmp))
        cases = [("ResNet-18-style, 90% magnitude", resnet, prune_90(resnet), (1, 8)),
                 ("ResNet-18-style, 90% in 4x4 blocks", resnet, prune_blocks_90(resnet), (1, 8))]
        if not args.quick:
            digits = digits_model(Path(tmp))
            tiny = onnx.load(ROOT / "examples/models/tiny_resnet.onnx")
            cases = [("digits CNN", digits, prune_90(digits), (1, 32)),
                     ("tiny ResNet", tiny, prune_90(tiny), (1, 32))] + cases
        for label, dense, pruned, batches in cases:
            for batch in batches:
                rows.append(bench_model(label, dense, pruned, batch, args.repeats))
        direct, direct_ratios = direct_rows(args.repeats)
        crossover, ratios = crossover_rows(max(3, args.repeats // 3))
    if args.quick:
        return
    load = os.getloadavg()
    by = {(r["model"], r["batch"]): r for r in rows}
    speedup = {k: r["wall"]["ort dense"] / r["wall"]["kernels pruned"] for k, r in by.items()}
    cpu_ratio = {k: r["cpu"]["ort dense"] / r["cpu"]["kernels pruned"] for k, r in by.items()}
    resnet = [k for k in by if k[0].startswith("ResNet-18")]
    slower = [k for k in by if speedup[k] < 1 or cpu_ratio[k] < 1]
    big = by[resnet[0]]

    def span(values, fmt: str) -> str:
        low, high = fmt.format(min(values)), fmt.format(max(values))
        return low if low == high else f"{low}-{high}"
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, one thread for every side (ort intra/inter-op 1, BLAS 1); "
        f"load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f} at the start, "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end "
        f"({'other jobs shared the 2 cores: wall figures are noisy; ' if max(load_before[0], load[0]) > 1.5 else ''}"
        "the CPU-time ratio, of this thread's CPU time, leaves out time it was descheduled); "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; the run took {time.time() - started:.0f} s.",
        f"Command: `python benchmarks/bench_runner.py --repeats {args.repeats}` (medians of interleaved rounds, "
        "benchmarks/timing.py). Pruned = 90% of every weight zeroed per layer, by magnitude or in 4x4 blocks (models: "
        "the script's docstring). Speed-up = ort dense / kernels pruned. Error = max |kernels - ort pruned| / max |ort pruned|.",
        "",
    ] + table(rows) + [
        "",
        "The runner compiles the graph once into steps: a Conv with its BatchNorm folded in and its residual Add / Relu "
        f"as an in-place epilogue is one step (the ResNet-18-style model: {big['nodes']} ONNX nodes in {big['steps']} "
        "steps), weights are packed and output buffers allocated once, and a conv's [M, N*P*Q] result is handed on as "
        "an [N, M, P, Q] view instead of being transposed. The node-by-node runner it replaces measured, in the "
        "previous recorded run (2026-12-01 08:34 UTC, load 1.0-2.9): digits CNN 0.420 / 2.399 ms and tiny ResNet "
        "0.815 / 27.961 ms at batch 1 / 32.",
        "",
        f"ResNet-18-style model: the pruned model on the kernels is {span([speedup[k] for k in resnet], '{:.2f}x')} faster "
        f"than onnxruntime dense end to end (wall; CPU-time ratio {span([cpu_ratio[k] for k in resnet], '{:.2f}x')}), with "
        f"{span([100 * by[k]['share'] for k in resnet], '{:.0f}%')} of the runner's time in the weight-layer steps. That share includes the fused epilogues (bias and "
        "a ReLU right after the conv run inside the direct kernel; a residual add and the ReLU after it are NumPy "
        "passes over the conv's output inside its step). Its stride-1 convs run direct, including the block-pruned "
        "ones (on its stage convs the 4x4 block kernel takes "
        f"{span([v for (lbl, _, f, _p), v in direct_ratios.items() if f == 'bsr' and lbl.startswith('ResNet-18 stage')], '{:.2f}x')} "
        "the direct kernel's time in the table below); its 64-channel stride-2 conv runs direct, "
        "the 128-channel one and the 1x1 shortcuts stay on the im2col kernels. The gain is below the 3.8x of \"Sparse "
        "kernels\" because that figure is a 512-channel layer against MKL; at the 64-256 channels here CSR at 10% density "
        f"is {span([ratios[(m, 0.1)] for m in (64, 128, 256)], '{:.1f}x')} faster than a dense conv on BLAS (crossover "
        "table below), and onnxruntime's convolutions are faster than that dense path.",
        "",
    ]
    lines += [
        "Before / after the direct sparse convolution (kernels/direct_conv.h). Speed-up vs onnxruntime dense, wall "
        "(CPU time). Recorded before: this script's run of 2026-12-01 10:14 UTC (load 1.0-1.1), when every sparse "
        "conv ran on the im2col kernels. im2col only: the same runner with `direct=False`, timed in this run beside "
        "the others (the side-by-side comparison: same load, same process)."
        + (" With other jobs on the 2 cores (load above 1.5) runs of this script minutes apart differed by up to "
           "about 1.4x in the speed-up columns (measured 2026-12-01 13:04-13:12 UTC, load 2.2-3.0); the last column is "
           "the stable comparison." if max(load_before[0], load[0]) > 1.5 else ""),
        "",
        "| model | batch | recorded before | formats before | im2col only, this run | with direct, this run | "
        "formats now | direct vs im2col only (CPU time) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (m, b), (wall_before, cpu_before, formats_before) in BEFORE.items():
        if (m, b) in by:
            w, c = by[(m, b)]["wall"], by[(m, b)]["cpu"]
            lines.append(f"| {m} | {b} | {wall_before:.2f}x ({cpu_before:.2f}x) | {formats_before} | "
                         f"{w['ort dense'] / w['kernels im2col only']:.2f}x ({c['ort dense'] / c['kernels im2col only']:.2f}x) | "
                         f"{speedup[(m, b)]:.2f}x ({cpu_ratio[(m, b)]:.2f}x) | {by[(m, b)]['formats']} | "
                         f"{c['kernels im2col only'] / c['kernels pruned']:.2f}x |")
    worse = [k for k in BEFORE if k in by and speedup[k] < BEFORE[k][0]]
    slower_than_im2col = [k for k in by if by[k]["cpu"]["kernels pruned"] > by[k]["cpu"]["kernels im2col only"]]
    lines += ["", ("Below the recorded figure (wall speed-up vs onnxruntime): " + "; ".join(
        f"{m} batch {b} ({BEFORE[(m, b)][0]:.2f}x -> {speedup[(m, b)]:.2f}x)" for m, b in worse) + "."
        if worse else "No speed-up is below the recorded figure.") + " " + (
        "Slower with direct than im2col only in this run: " + ", ".join(f"{m} batch {b}" for m, b in slower_than_im2col) + "."
        if slower_than_im2col else "With direct every model is faster than im2col only in this run."), ""]
    def split(k, which: str = "glue") -> str:
        r = by[k]["split"][which]
        ops = ", ".join(f"{op} {1e6 * t:.0f}" for op, t in sorted(r["by_op"].items(), key=lambda kv: -kv[1]))
        return (f"a {1e6 * r['total_s']:.0f} us call: conv steps {1e6 * r['conv_s']:.0f} us, the other steps "
                f"{1e6 * r['other_s']:.0f} us ({ops}), the runner's own per-call work "
                f"{1e6 * (r['total_s'] - r['conv_s'] - r['other_s']):.0f} us")
    glue = [k for k in GLUE_BEFORE if k in by]
    lines += [
        "Glue between the weight layers (kernels/glue.pyx, small C loops behind `GraphRunner`): max pooling without "
        "padding and global average / max pooling write into buffers kept between calls, in the input's layout, with "
        "no copy of the input (NumPy's strided maxima over the 2x2 windows of the digits CNN's 32 x 8x8 maps took "
        "8-15 us at batch 1 and 75-120 us at batch 32 in the runner's step times); a direct conv whose output only "
        "feeds a Flatten writes [N, M, P, Q] in C order, so the Flatten is a view; a CSR Gemm on one row, or with at most "
        "`kernels.runner.CSR_ROWS_FEATURES` outputs on up to `CSR_ROWS_MAX` rows, runs on `csr_rows` (a gather-dot per output, bias and ReLU inside; the "
        "same nnz x rows MACs as spmm, without its panel packing). Side by side in this run (`glue=False`: the runner "
        "without them, timed in the same interleaved rounds), CPU time without / with: "
        + "; ".join(f"{m} batch {b} {by[(m, b)]['cpu']['kernels no glue'] / by[(m, b)]['cpu']['kernels pruned']:.2f}x"
                    for m, b in glue) + ". "
        "Outside the digits CNN the glue touches a global average pool, a Flatten and a 10-output fc; their steps "
        "(all but the convs; medians of 21 back-to-back calls, without -> with the glue) take "
        + "; ".join(f"{m} batch {b} {1e6 * by[(m, b)]['split']['no glue']['other_s']:.0f} -> "
                    f"{1e6 * by[(m, b)]['split']['glue']['other_s']:.0f} us of a "
                    f"{1e6 * by[(m, b)]['split']['glue']['total_s']:.0f} us call"
                    for m, b in glue if m != "digits CNN") + ", so where that is a few percent of a call the "
        "whole-call ratios above show this run's spread between two runners doing the same conv work (in either "
        "direction), not the glue. "
        "Speed-up vs onnxruntime dense (wall), recorded before (this script's run of 2026-12-01 13:40 UTC, load "
        "0.6-0.7) -> this run (a different run: the conv steps, which the glue leaves alone, differ between runs "
        "too): "
        + "; ".join(f"{m} batch {b} {GLUE_BEFORE[(m, b)]:.2f}x -> {speedup[(m, b)]:.2f}x" for m, b in glue) + ". "
        "Where a digits CNN call goes (medians of 21 back-to-back calls, so warmer than the table's interleaved "
        "rounds): "
        + "; ".join(f"batch {b}: without the glue {split((m, b), 'no glue')}; with it {split((m, b))}"
                    for m, b in glue if m == "digits CNN") + ".",
        "",
    ]
    if slower:
        lines.append("Still slower than onnxruntime dense: " + "; ".join(
            f"{m} batch {b} ({speedup[(m, b)]:.2f}x wall, {cpu_ratio[(m, b)]:.2f}x CPU in the interleaved rounds; back to "
            f"back, onnxruntime dense takes {1e6 * by[(m, b)]['split']['ort dense']:.0f} us and the runner {split((m, b))})"
            for m, b in slower) + ". "
            "The convs no longer pack im2col panels (the table below: the direct kernel is "
            f"{span([v for (lbl, _, f, pick), v in direct_ratios.items() if f == 'csr' and pick == 'direct' and lbl.startswith(('digits', 'tiny'))], '{:.1f}x')} "
            "faster than the im2col CSR kernel on the convs of these models it runs); what is left is per-step cost that onnxruntime does not "
            "pay: each kernel call's Python wrapper and argument checks (timeit minimum on a trivial layer: about 2 us for "
            "direct_conv, 5 us for spmm_im2col / spmm, 1-2 us for the glue loops) and the step's own Python."
            + ("" if not (warm := [k for k in slower if by[k]["split"]["glue"]["total_s"] < by[k]["split"]["ort dense"]])
               else " Back to back the runner is the faster of the two on " + "; ".join(
                   f"{m} batch {b} (interleaved -> back to back: the runner {1e6 * by[(m, b)]['wall']['kernels pruned']:.0f} -> "
                   f"{1e6 * by[(m, b)]['split']['glue']['total_s']:.0f} us, onnxruntime dense "
                   f"{1e6 * by[(m, b)]['wall']['ort dense']:.0f} -> {1e6 * by[(m, b)]['split']['ort dense']:.0f} us)"
                   for m, b in warm)
               + ": the interleaved rounds (each group of 3 calls follows a 20 ms sleep, benchmarks/timing.py) cost the "
               "runner more than onnxruntime there."))
        lines.append("")
    lines += [
        "Direct sparse convolution vs the im2col kernels behind `kernels.runner.use_direct` (one conv, kernel calls "
        "only, output buffers preallocated, one thread; cells: median thread CPU ms, im2col / direct (im2col/direct); "
        "magnitude = 90% of the weight zeroed by magnitude, CSR im2col vs direct on that CSR; blocks = 90% of the 4x4 "
        "blocks zeroed, 4x4 BSR im2col vs direct on the same weight's CSR; - = M or C*R*S not a multiple of 4). The "
        "runner runs a CSR or block conv direct at stride 1, and at larger strides for filters of >= "
        f"{DIRECT_STRIDED_MIN_TAPS} taps with C*R*S <= {DIRECT_STRIDED_MAX_K}.",
        "",
        "| conv | magnitude, batch 1 | blocks, batch 1 | magnitude, batch 8 | blocks, batch 8 | runner picks | load avg |",
        "|---|---|---|---|---|---|---|",
    ] + direct + [""]
    lines += [
        "Dense vs CSR crossover behind `kernels.runner.DENSE_ABOVE` (one conv, batch 1, one thread; CSR = spmm_im2col, "
        "dense = the runner's dense path, im2col + numpy.matmul or skinny_gemm; cells: median thread CPU ms, CSR / dense "
        "(dense/CSR)). "
        "The runner picks CSR/BSR up to 45% density, the dense path above.",
        "",
        "| conv | " + " | ".join(f"{100 * d:.0f}% dense" for d in DENSITIES) + " | load avg |",
        "|---|" + "---|" * len(DENSITIES) + "---|",
    ] + crossover
    update_section("Whole-model runner", "\n".join(lines))


if __name__ == "__main__":
    main()
