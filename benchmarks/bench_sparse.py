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
  channel  output channels pruned: dense_gemm on the kept rows (numpy.matmul, BLAS threads set
           with threadpoolctl); "eff" = speed-up / (M / kept rows), 1.0 = the FLOP ideal.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from kernels import BSRMatrix, CSRMatrix, compact_channels, conv2d_sparse, dense_gemm, spmm

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # the channel figures then use NumPy's default BLAS threads
    threadpool_limits = None

SHAPES = [  # name, M, K, N
    ("3x3 conv 512ch 56x56", 512, 4608, 3136),
    ("1x1 conv 512ch 56x56", 512, 512, 3136),
    ("FC 4096, batch 64", 4096, 4096, 64),
    ("3x3 conv 512ch 7x7", 512, 4608, 49),
    ("3x3 conv 256ch 14x14", 256, 2304, 196),
]
SPARSITIES = [0.5, 0.8, 0.9, 0.95, 0.99]
VARIANTS = ["csr", "bsr4x1", "bsr4x4", "channel"]
# Targets on the 3x3 shape, one thread (speed-up over dense; channel: fraction of the FLOP ideal).
TARGETS = {("csr", 0.9): 2.5, ("csr", 0.95): 4.5, ("bsr4x4", 0.9): 4.5, ("bsr4x4", 0.95): 7.0}
CHANNEL_TARGET = 0.9
SECTION = "## Sparse kernels"
RESULTS = Path(__file__).with_name("RESULTS.md")


def block_mask(rng: np.random.Generator, m: int, k: int, block: tuple[int, int],
               sparsity: float) -> np.ndarray:
    br, bc = block
    keep = rng.random((-(-m // br), -(-k // bc))) >= sparsity
    return np.repeat(np.repeat(keep, br, 0), bc, 1)[:m, :k]


def build_variants(rng: np.random.Generator, w: np.ndarray, sparsity: float) -> dict:
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
    return variants


def timed(fn, cpu: dict | None = None, name: str = "") -> float:
    """Wall seconds of one call; with ``cpu``, also appends the calling thread's CPU seconds to
    cpu[name] (with one thread everything runs in the caller, so this excludes the time other
    jobs on a shared machine kept it descheduled)."""
    c0, t0 = time.thread_time(), time.perf_counter()
    fn()
    t1, c1 = time.perf_counter(), time.thread_time()
    if cpu is not None:
        cpu.setdefault(name, []).append(c1 - c0)
    return t1 - t0


def measure(shape, threads: int, sparsity: float, repeats: int, rng) -> dict:
    _, m, k, n = shape
    w = rng.standard_normal((m, k)).astype(np.float32)
    x = rng.standard_normal((k, n)).astype(np.float32)
    tw, tx = torch.from_numpy(w), torch.from_numpy(x)
    variants = build_variants(rng, w, sparsity)
    pack_only = CSRMatrix.from_dense(np.zeros((1, k), np.float32))
    torch.set_num_threads(threads)
    runs = {
        "dense": lambda: torch.matmul(tw, tx),
        "csr": lambda: spmm(variants["csr"], x, threads=threads),
        "bsr4x1": lambda: spmm(variants["bsr4x1"], x, threads=threads),
        "bsr4x4": lambda: spmm(variants["bsr4x4"], x, threads=threads),
        "channel": lambda: dense_gemm(variants["channel"], x, expand=False),
        # one all-zero row: packs every panel of X once and computes nothing — the floor that
        # reading X sets under any kernel here
        "pack": lambda: spmm(pack_only, x, threads=threads),
    }
    limits = threadpool_limits(limits=threads, user_api="blas") if threadpool_limits else None
    try:
        for fn in runs.values():  # warm-up: page in, first-touch, thread pools
            fn()
        times = {name: [] for name in runs}
        cpu: dict[str, list[float]] = {}
        for _ in range(repeats):
            for name, fn in runs.items():
                times[name].append(timed(fn, cpu, name))
    finally:
        if limits is not None:
            limits.unregister()
    med = {name: statistics.median(ts) for name, ts in times.items()}
    cpu_med = {name: statistics.median(ts) for name, ts in cpu.items()}
    kept = variants["channel"].weight.shape[0]
    return {
        "median_s": med,
        "speedup": {v: med["dense"] / med[v] for v in VARIANTS},
        "cpu_speedup": {v: cpu_med["dense"] / cpu_med[v] for v in VARIANTS} if threads == 1 else None,
        "channel_eff": med["dense"] / med["channel"] / (m / kept),
        "kept": kept,
        "density": {v: (variants[v].density if v != "channel" else kept / m) for v in VARIANTS},
        "dense_gflops": 2 * m * k * n / med["dense"] / 1e9,
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
    for fn in runs.values():
        fn()
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            times[name].append(timed(fn))
    med = {name: statistics.median(ts) for name, ts in times.items()}
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
    for fn in runs.values():
        fn()
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            times[name].append(timed(fn))
    med = {name: statistics.median(ts) for name, ts in times.items()}
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
           f"- method: median of {repeats} runs per figure; dense baseline = torch.matmul on the same "
           "float32 data with torch.set_num_threads(threads), timed in the same repetitions; "
           "speed-up = dense time / kernel time. Masks: csr unstructured, bsr random 4x1 / 4x4 "
           "blocks, channel = whole output rows removed, run as numpy.matmul on the kept rows "
           "(eff = fraction of the FLOP ideal). Load average (1/5/15 min) logged per shape. "
           "For one thread the targets table also gives the ratio of median thread CPU times "
           "(time.thread_time), which leaves out the time other jobs kept the thread off the CPU.",
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
                f"{r['shape'][3]}, FLOP-ideal time {ideal * 1e3:.1f} ms, measured "
                f"{med['channel'] * 1e3:.1f} ms; packing X once ({r['shape'][2] * r['shape'][3] * 4 / 1e6:.0f} MB, "
                f"which any GEMM must read) took {med['pack'] * 1e3:.1f} ms in our packer, "
                f"{med['pack'] / ideal:.0%} of the ideal time: so few rows leave too few FLOPs per "
                "byte of X to hide moving it.")
    out += ["", "### All figures", "",
            "| shape M x K x N | threads | sparsity | dense ms (GFLOP/s) | csr | bsr 4x1 | bsr 4x4 "
            "| channel (eff) | X pack ms | load avg |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name, m, k, n = r["shape"]
        med, sp = r["median_s"], r["speedup"]
        cells = [f"{med[v] * 1e3:.2f} ms {sp[v]:.2f}x" for v in ("csr", "bsr4x1", "bsr4x4")]
        out.append(
            f"| {name}: {m} x {k} x {n} | {r['threads']} | {r['sparsity']:.0%} "
            f"| {med['dense'] * 1e3:.2f} ({r['dense_gflops']:.0f}) | " + " | ".join(cells)
            + f" | {med['channel'] * 1e3:.2f} ms {sp['channel']:.2f}x ({r['channel_eff']:.2f}) "
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
    """Replace (or append) our section, leaving every other section as it is; atomic write."""
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    lines = old.splitlines(keepends=True)
    start = next((i for i, l in enumerate(lines) if l.rstrip() == SECTION), None)
    if start is None:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        tail = "".join(lines[end:])
        new = "".join(lines[:start]) + text + ("\n" + tail if tail else "")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".RESULTS.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(new)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3x3 shape, 90/95 %%, one thread; print only")
    ap.add_argument("--repeats", type=int, default=None, help="runs per figure (default 7, quick 5)")
    ap.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = ap.parse_args(argv)
    repeats = args.repeats or (5 if args.quick else 7)
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
                r = measure(shape, threads, s, repeats, rng)
                r.update(shape=shape, threads=threads, sparsity=s, load=os.getloadavg())
                rows.append(r)
                sp = r["speedup"]
                print(f"{shape[0]:>22} t={threads} s={s:.2f} dense {r['median_s']['dense'] * 1e3:8.2f} ms"
                      f" | csr {sp['csr']:5.2f}x  4x1 {sp['bsr4x1']:5.2f}x  4x4 {sp['bsr4x4']:5.2f}x"
                      f"  channel {sp['channel']:5.2f}x (eff {r['channel_eff']:.2f})"
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
