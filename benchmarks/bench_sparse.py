"""Sparse weight x dense activation kernels vs torch's dense CPU matmul, side by side.

    python benchmarks/bench_sparse.py            # full run, rewrites "## Sparse kernels" in RESULTS.md
    python benchmarks/bench_sparse.py --quick    # the 3x3 shape at 90/95 %, printed only

For every shape, thread count and sparsity the dense baseline (torch.matmul on the same float32
data, torch.set_num_threads matching) and every sparse variant are timed in turn within each
repetition, so they see the same machine load; figures are medians over the repetitions.
Speed-up = dense time / variant time. Variants:
  csr      unstructured random mask, CSRMatrix, kernels.spmm
  bsr4x1   random 4x1 blocks kept, BSRMatrix(block=(4, 1))
  bsr4x4   random 4x4 blocks kept, BSRMatrix(block=(4, 4))
  channel  output channels pruned (the target figure): dense_gemm on the kept rows of a
           CompactWeight — skinny_gemm where kernels.conv.use_skinny picks it, else numpy.matmul;
           "eff" = speed-up / (M / kept rows), 1.0 = the FLOP ideal.
  channel_blas  the same kept rows on numpy.matmul (OpenBLAS, threads set with threadpoolctl):
           what dense_gemm ran before skinny_gemm, for comparison.
  channel_io  informative only: output AND input channels pruned, sqrt(1 - s) of each kept (the
           weight density is 1 - s, as in a network where every layer is channel-pruned, so X
           arrives with only the kept channels); eff = speed-up * density.
Timing: benchmarks/timing.interleaved_medians (every variant in turn in each round).
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import math
import sys
from pathlib import Path

import numpy as np
import torch

from kernels import BSRMatrix, CSRMatrix, compact_channels, conv2d_sparse, dense_gemm, spmm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import update_section  # noqa: E402
from timing import interleaved_medians  # noqa: E402

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # the channel figures then use NumPy's default BLAS threads
    threadpool_limits = None

SHAPES = [  # name, M, K, N (a 3x3 conv's K is 9 columns per input channel)
    ("3x3 conv 512ch 56x56", 512, 4608, 3136),
    ("1x1 conv 512ch 56x56", 512, 512, 3136),
    ("FC 4096, batch 64", 4096, 4096, 64),
    ("3x3 conv 512ch 7x7", 512, 4608, 49),
    ("3x3 conv 256ch 14x14", 256, 2304, 196),
]
SPARSITIES = [0.5, 0.8, 0.9, 0.95, 0.99]
VARIANTS = ["csr", "bsr4x1", "bsr4x4", "channel", "channel_blas", "channel_io"]
# Targets on the 3x3 shape, one thread (speed-up over dense; channel: fraction of the FLOP ideal).
TARGETS = {("csr", 0.9): 2.5, ("csr", 0.95): 4.5, ("bsr4x4", 0.9): 4.5, ("bsr4x4", 0.95): 7.0}
CHANNEL_TARGET = 0.9
# The target rows (3x3 shape, one thread, 90 / 95 %) take this many times the runs: the kept
# GEMMs there last 8-17 ms, short enough that one scheduler slice lost to another job moves a
# median of 9 by several percent on this shared 2-core machine.
TARGET_REPEATS_FACTOR = 3
SECTION = "## Sparse kernels"
RESULTS = Path(__file__).with_name("RESULTS.md")


def block_mask(rng: np.random.Generator, m: int, k: int, block: tuple[int, int],
               sparsity: float) -> np.ndarray:
    br, bc = block
    keep = rng.random((-(-m // br), -(-k // bc))) >= sparsity
    return np.repeat(np.repeat(keep, br, 0), bc, 1)[:m, :k]


def taps(shape) -> int:
    """Columns of K per input channel: 9 for the 3x3 convolutions, else 1."""
    return 9 if shape[0].startswith("3x3") else 1


def build_variants(rng: np.random.Generator, w: np.ndarray, sparsity: float, tap: int) -> dict:
    m, k = w.shape
    variants = {
        "csr": CSRMatrix.from_dense(w * (rng.random((m, k)) >= sparsity)),
        "bsr4x1": BSRMatrix.from_dense(w * block_mask(rng, m, k, (4, 1), sparsity), block=(4, 1)),
        "bsr4x4": BSRMatrix.from_dense(w * block_mask(rng, m, k, (4, 4), sparsity), block=(4, 4)),
    }
    kept = max(1, round(m * (1 - sparsity)))
    pruned = w.copy()
    pruned[np.sort(rng.choice(m, m - kept, replace=False))] = 0.0
    variants["channel"] = compact_channels(pruned)
    # in + out: keep sqrt(1 - s) of the output rows and of the input channels (all their taps)
    frac = math.sqrt(1 - sparsity)
    rows = np.sort(rng.choice(m, max(1, round(m * frac)), replace=False))
    chans = np.sort(rng.choice(k // tap, max(1, round(k // tap * frac)), replace=False))
    cols = (chans[:, None] * tap + np.arange(tap)).ravel()
    variants["channel_io"] = compact_channels(np.ascontiguousarray(w[rows][:, cols]))
    variants["channel_io_cols"] = cols
    return variants


def measure(shape, threads: int, sparsity: float, repeats: int, rng) -> dict:
    _, m, k, n = shape
    w = rng.standard_normal((m, k)).astype(np.float32)
    x = rng.standard_normal((k, n)).astype(np.float32)
    tw, tx = torch.from_numpy(w), torch.from_numpy(x)
    variants = build_variants(rng, w, sparsity, taps(shape))
    x_io = np.ascontiguousarray(x[variants["channel_io_cols"]])  # what a pruned previous layer hands on
    kept_rows = np.ascontiguousarray(variants["channel"].weight)
    pack_only = CSRMatrix.from_dense(np.zeros((1, k), np.float32))
    torch.set_num_threads(threads)
    runs = {
        "dense": lambda: torch.matmul(tw, tx),
        "csr": lambda: spmm(variants["csr"], x, threads=threads),
        "bsr4x1": lambda: spmm(variants["bsr4x1"], x, threads=threads),
        "bsr4x4": lambda: spmm(variants["bsr4x4"], x, threads=threads),
        "channel": lambda: dense_gemm(variants["channel"], x, expand=False, threads=threads),
        "channel_blas": lambda: np.matmul(kept_rows, x),
        "channel_io": lambda: dense_gemm(variants["channel_io"], x_io, expand=False, threads=threads),
        # one all-zero row: packs every panel of X once and computes nothing — the floor that
        # reading X sets under any kernel here
        "pack": lambda: spmm(pack_only, x, threads=threads),
    }
    limits = threadpool_limits(limits=threads, user_api="blas") if threadpool_limits else None
    try:
        med, cpu_med = interleaved_medians(runs, repeats)
    finally:
        if limits is not None:
            limits.unregister()
    kept = variants["channel"].weight.shape[0]
    io = variants["channel_io"].weight
    density_io = io.size / (m * k)
    return {
        "median_s": med,
        "speedup": {v: med["dense"] / med[v] for v in VARIANTS},
        "cpu_speedup": {v: cpu_med["dense"] / cpu_med[v] for v in VARIANTS} if threads == 1 else None,
        "channel_eff": med["dense"] / med["channel"] / (m / kept),
        "channel_blas_eff": med["dense"] / med["channel_blas"] / (m / kept),
        "channel_io_eff": med["dense"] / med["channel_io"] * density_io,
        "kept": kept,
        "kept_io": io.shape,
        "density_io": density_io,
        "dense_gflops": 2 * m * k * n / med["dense"] / 1e9,
        "x_offset": x.ctypes.data % 64,  # NumPy's large arrays start 16 bytes into a line
    }


def measure_conv(threads: int, sparsity: float, repeats: int, rng) -> dict:
    """The 3x3 shape as a real convolution: x[1, 512, 56, 56], pad 1, im2col packed on the fly,
    against torch.nn.functional.conv2d (oneDNN) on the same data."""
    x = rng.standard_normal((1, 512, 56, 56)).astype(np.float32)
    w = rng.standard_normal((512, 512, 3, 3)).astype(np.float32)
    flat = w.reshape(512, -1)
    csr = CSRMatrix.from_dense(flat * (rng.random(flat.shape) >= sparsity))
    bsr = BSRMatrix.from_dense(flat * block_mask(rng, 512, 4608, (4, 4), sparsity), block=(4, 4))
    tx, tw = torch.from_numpy(x), torch.from_numpy(w)
    torch.set_num_threads(threads)
    runs = {
        "dense": lambda: torch.nn.functional.conv2d(tx, tw, padding=1),
        "csr": lambda: conv2d_sparse(x, csr, pad=1, threads=threads),
        "bsr4x4": lambda: conv2d_sparse(x, bsr, pad=1, threads=threads),
    }
    med, _ = interleaved_medians(runs, repeats)
    return {"median_s": med, "speedup": {v: med["dense"] / med[v] for v in ("csr", "bsr4x4")}}


def measure_int8(threads: int, sparsity: float, repeats: int, rng) -> dict:
    """int8 W x int8 X -> int32 on the 3x3 shape, beside torch's float32 dense matmul and our
    float32 kernel on the same masks (a cross-precision comparison: same shapes and sparsity)."""
    _, m, k, n = SHAPES[0]
    x = rng.standard_normal((k, n)).astype(np.float32)
    x8 = rng.integers(-128, 128, (k, n)).astype(np.int8)
    w = rng.standard_normal((m, k)).astype(np.float32)
    w8 = rng.integers(-128, 128, (m, k)).astype(np.int8)
    unstructured = rng.random((m, k)) >= sparsity
    blocks = block_mask(rng, m, k, (4, 4), sparsity)
    mats = {
        "csr": CSRMatrix.from_dense(w * unstructured), "csr_i8": CSRMatrix.from_dense(w8 * unstructured),
        "bsr4x4": BSRMatrix.from_dense(w * blocks, (4, 4)),
        "bsr4x4_i8": BSRMatrix.from_dense(w8 * blocks, (4, 4)),
    }
    tw, tx = torch.from_numpy(w), torch.from_numpy(x)
    torch.set_num_threads(threads)
    runs = {"dense": lambda: torch.matmul(tw, tx)}
    for name, mat in mats.items():
        runs[name] = (lambda a=mat, b=(x8 if name.endswith("_i8") else x): spmm(a, b, threads=threads))
    med, _ = interleaved_medians(runs, repeats)
    return {"median_s": med, "speedup": {v: med["dense"] / med[v] for v in mats}}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, NumPy {np.__version__}, torch {torch.__version__} "
            f"(torch.backends.mkldnn={torch.backends.mkldnn.is_available()})")


def render(rows: list[dict], conv_rows: list[dict], int8_rows: list[dict], command: str,
           started: str, repeats: int) -> str:
    out = [SECTION, "",
           f"- date (UTC): {started}",
           f"- command: `{command}`",
           f"- machine: {machine()}",
           f"- method: benchmarks/timing.interleaved_medians, {max(1, repeats // 3)} rounds x 3 runs per "
           f"figure ({max(1, repeats * TARGET_REPEATS_FACTOR // 3)} rounds for the target rows: 3x3 shape, "
           "one thread, 90 / 95 %), every variant in turn in each round; dense baseline = torch.matmul on the same "
           "float32 data with torch.set_num_threads(threads), timed in the same rounds; "
           "speed-up = dense time / kernel time. Masks: csr unstructured, bsr random 4x1 / 4x4 "
           "blocks. channel = whole output rows removed, run by dense_gemm on the kept rows of a "
           "CompactWeight (skinny_gemm: X read in place in 64-column strips, no packing pass, from "
           "X's first cache-line boundary when N >= 1536; "
           "numpy.matmul where kernels.conv.use_skinny says BLAS is faster); eff = fraction of the "
           "FLOP ideal (dense time x kept / M). channel BLAS = the same kept rows on numpy.matmul "
           "(OpenBLAS; what dense_gemm ran before). channel in+out (informative, not the target): "
           "sqrt(1 - s) of the output rows and of the input channels kept (weight density 1 - s), "
           "X already holding only the kept channels; eff = speed-up x density. Load average "
           "(1/5/15 min) logged per row. For one thread the targets table also gives the ratio of "
           "median thread CPU times (time.thread_time), which leaves out the time other jobs kept "
           "the thread off the CPU.",
           ""]
    out += ["### Targets (3x3 conv shape 512 x 4608 x 3136, one thread)", "",
            "| kernel | sparsity | target | measured (wall) | met | CPU-time ratio |",
            "|---|---|---|---|---|---|"]
    for r in rows:
        if r["shape"][0] != SHAPES[0][0] or r["threads"] != 1:
            continue
        for (v, s), target in TARGETS.items():
            if r["sparsity"] == s:
                got = r["speedup"][v]
                out.append(f"| {v} | {s:.0%} | >= {target}x | {got:.2f}x | {'yes' if got >= target else 'NO'} "
                           f"| {r['cpu_speedup'][v]:.2f}x |")
        if r["sparsity"] in (0.9, 0.95):
            eff = r["channel_eff"]
            cpu_eff = r["cpu_speedup"]["channel"] / (r["shape"][1] / r["kept"])
            out.append(f"| channel (dense on kept rows) | {r['sparsity']:.0%} | >= {CHANNEL_TARGET} of ideal "
                       f"| {eff:.3f} | {'yes' if eff >= CHANNEL_TARGET else 'NO'} | {cpu_eff:.3f} of ideal |")
            cpu_io = r["cpu_speedup"]["channel_io"] * r["density_io"]
            out.append(f"| channel in+out (informative, not the target) | {r['sparsity']:.0%} | - "
                       f"| {r['channel_io_eff']:.3f} of ideal | - | {cpu_io:.3f} of ideal |")
    out += ["", "Notes:", ""]
    cores = os.cpu_count() or 1
    worst = max((r["load"][0] for r in rows), default=0.0)
    if worst > cores:
        out.append(f"- The 1-minute load average reached {worst:.1f} on {cores} cores during this run "
                   "(other jobs shared the machine): every figure is noisy, and the 2-thread ones, "
                   "where a descheduled OpenMP thread stalls the whole call, are not meaningful.")
    one = {(r["shape"], r["sparsity"]): r["median_s"]["pack"] for r in rows if r["threads"] == 1}
    slow = [(r, one[(r["shape"], r["sparsity"])]) for r in rows
            if r["threads"] == 2 and (r["shape"], r["sparsity"]) in one
            and r["median_s"]["pack"] > 5 * one[(r["shape"], r["sparsity"])]]
    if slow:
        worst_r, base = max(slow, key=lambda rb: rb[0]["median_s"]["pack"] / rb[1])
        out.append(f"- In {len(slow)} 2-thread rows, packing X alone took over 5x its 1-thread time "
                   f"(worst: {worst_r['shape'][1]} x {worst_r['shape'][2]} x {worst_r['shape'][3]}, "
                   f"{worst_r['median_s']['pack'] * 1e3:.2f} ms vs {base * 1e3:.2f} ms): with any other job "
                   "runnable, the second thread can wait a scheduler slice to start, so short 2-thread "
                   "calls (ours and torch's) are unreliable here.")
    for r in rows:
        if r["shape"][0] == SHAPES[0][0] and r["threads"] == 1 and r["sparsity"] in (0.9, 0.95):
            med = r["median_s"]
            kept = r["kept"]
            ideal = med["dense"] * kept / r["shape"][1]
            out.append(
                f"- channel at {r['sparsity']:.0%}: the kept GEMM is {kept} x {r['shape'][2]} x "
                f"{r['shape'][3]}, FLOP-ideal time {ideal * 1e3:.1f} ms; skinny_gemm "
                f"{med['channel'] * 1e3:.1f} ms ({r['channel_eff']:.2f} of ideal), numpy.matmul "
                f"{med['channel_blas'] * 1e3:.1f} ms ({r['channel_blas_eff']:.2f}). X is "
                f"{r['shape'][2] * r['shape'][3] * 4 / 1e6:.0f} MB, starting {r['x_offset']} bytes "
                "into a 64-byte line as NumPy allocated it; copying it into panels alone takes "
                f"{med['pack'] * 1e3:.1f} ms ({med['pack'] / ideal:.0%} of the ideal time), a pass a BLAS "
                "makes before its FLOPs and skinny_gemm does not: it streams X from DRAM under the FMAs, "
                "so unlike the compute-bound dense baseline it also slows when other jobs load the "
                "memory bus.")
    out += ["", "### All figures", "",
            "| shape M x K x N | threads | sparsity | dense ms (GFLOP/s) | csr | bsr 4x1 | bsr 4x4 "
            "| channel (eff) | channel BLAS (eff) | channel in+out (eff) | X pack ms | load avg |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name, m, k, n = r["shape"]
        med, sp = r["median_s"], r["speedup"]
        cells = [f"{med[v] * 1e3:.2f} ms {sp[v]:.2f}x" for v in ("csr", "bsr4x1", "bsr4x4")]
        out.append(
            f"| {name}: {m} x {k} x {n} | {r['threads']} | {r['sparsity']:.0%} "
            f"| {med['dense'] * 1e3:.2f} ({r['dense_gflops']:.0f}) | " + " | ".join(cells)
            + f" | {med['channel'] * 1e3:.2f} ms {sp['channel']:.2f}x ({r['channel_eff']:.2f}) "
            f"| {med['channel_blas'] * 1e3:.2f} ms ({r['channel_blas_eff']:.2f}) "
            f"| {med['channel_io'] * 1e3:.2f} ms ({r['channel_io_eff']:.2f}) "
            f"| {med['pack'] * 1e3:.2f} | {' / '.join(f'{v:.2f}' for v in r['load'])} |")
    if conv_rows:
        out += ["", "### As a convolution: x[1, 512, 56, 56], 3x3, pad 1 (im2col packed into panels "
                "on the fly) vs torch.nn.functional.conv2d", "",
                "| threads | sparsity | torch conv2d ms | csr | bsr 4x4 | load avg |", "|---|---|---|---|---|---|"]
        for r in conv_rows:
            med, sp = r["median_s"], r["speedup"]
            out.append(f"| {r['threads']} | {r['sparsity']:.0%} | {med['dense'] * 1e3:.2f} "
                       f"| {med['csr'] * 1e3:.2f} ms {sp['csr']:.2f}x | {med['bsr4x4'] * 1e3:.2f} ms "
                       f"{sp['bsr4x4']:.2f}x | {' / '.join(f'{v:.2f}' for v in r['load'])} |")
    if int8_rows:
        out += ["", "### int8 x int8 -> int32 (exact), 3x3 shape, vs torch float32 dense and our float32 "
                "kernel on the same masks", "",
                "| threads | sparsity | torch fp32 ms | csr fp32 | csr int8 | bsr 4x4 fp32 | bsr 4x4 int8 "
                "| load avg |", "|---|---|---|---|---|---|---|---|"]
        for r in int8_rows:
            med, sp = r["median_s"], r["speedup"]
            cells = [f"{med[v] * 1e3:.2f} ms {sp[v]:.2f}x" for v in ("csr", "csr_i8", "bsr4x4", "bsr4x4_i8")]
            out.append(f"| {r['threads']} | {r['sparsity']:.0%} | {med['dense'] * 1e3:.2f} | "
                       + " | ".join(cells) + f" | {' / '.join(f'{v:.2f}' for v in r['load'])} |")
    return "\n".join(out) + "\n"


def write_section(text: str, path: Path = RESULTS) -> None:
    """Replace (or append) our section through benchmarks/results.py, leaving every other
    section as it is."""
    update_section(SECTION.removeprefix("## "), text.removeprefix(SECTION), path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3x3 shape, 90/95 %%, one thread; print only")
    ap.add_argument("--repeats", type=int, default=None, help="runs per figure, in rounds of 3 (default 9, quick 6; 3x that for the target rows)")
    ap.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = ap.parse_args(argv)
    repeats = args.repeats or (6 if args.quick else 9)
    shapes = SHAPES[:1] if args.quick else SHAPES
    sparsities = [0.9, 0.95] if args.quick else SPARSITIES
    thread_counts = [1] if args.quick else [1, 2]
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    command = "python benchmarks/bench_sparse.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rng = np.random.default_rng(0)
    rows = []
    for shape in shapes:
        for threads in thread_counts:
            for s in sparsities:
                target_row = shape == SHAPES[0] and threads == 1 and s in (0.9, 0.95)
                r = measure(shape, threads, s, repeats * (TARGET_REPEATS_FACTOR if target_row else 1), rng)
                r.update(shape=shape, threads=threads, sparsity=s, load=os.getloadavg())
                rows.append(r)
                sp = r["speedup"]
                print(f"{shape[0]:>22} t={threads} s={s:.2f} dense {r['median_s']['dense'] * 1e3:8.2f} ms"
                      f" | csr {sp['csr']:5.2f}x  4x1 {sp['bsr4x1']:5.2f}x  4x4 {sp['bsr4x4']:5.2f}x"
                      f"  channel eff {r['channel_eff']:.2f} (blas {r['channel_blas_eff']:.2f},"
                      f" in+out {r['channel_io_eff']:.2f})"
                      f" | load {r['load'][0]:.2f}", flush=True)
    conv_rows = []
    if not args.quick:
        for threads in thread_counts:
            for s in (0.9, 0.95):
                r = measure_conv(threads, s, repeats, rng)
                r.update(threads=threads, sparsity=s, load=os.getloadavg())
                conv_rows.append(r)
                print(f"{'conv2d 3x3 512ch 56x56':>22} t={threads} s={s:.2f} torch {r['median_s']['dense'] * 1e3:8.2f} ms"
                      f" | csr {r['speedup']['csr']:5.2f}x  4x4 {r['speedup']['bsr4x4']:5.2f}x", flush=True)
    int8_rows = []
    if not args.quick:
        for threads in thread_counts:
            for s in (0.9, 0.95, 0.99):
                r = measure_int8(threads, s, repeats, rng)
                r.update(threads=threads, sparsity=s, load=os.getloadavg())
                int8_rows.append(r)
                sp = r["speedup"]
                print(f"{'int8 3x3 shape':>22} t={threads} s={s:.2f} | csr {sp['csr']:5.2f}x i8 {sp['csr_i8']:5.2f}x"
                      f"  4x4 {sp['bsr4x4']:5.2f}x i8 {sp['bsr4x4_i8']:5.2f}x", flush=True)
    text = render(rows, conv_rows, int8_rows, command.strip(), started, repeats)
    if args.quick or args.no_write:
        print(text)
    else:
        write_section(text)
        print(f"wrote the '{SECTION}' section of {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
