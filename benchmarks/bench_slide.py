"""SLIDE hashed layer 128 -> 100,000 vs torch's dense CPU matmul, side by side in one process.

    python benchmarks/bench_slide.py [--threads 2] [--repeats 15] [--write]

Weights and inputs are synthetic but structured (not trained): 2,000 cluster centres in
128-d; each neuron's weight row is a centre plus noise (unit-normalised), each input is a
centre plus noise. The true top-10 of an input are then neurons of its own cluster, which
is what a trained layer looks like to LSH. Cases: structured weights with SimHash and with
DWTA, and pure-noise weights (SimHash) so the recall on structureless weights is visible.

K and L come from choose_k_l on 64 calibration inputs for a 5% active fraction. Timings:
median of --repeats, the dense and hashed calls interleaved in blocks (a short sleep between
blocks so one OpenMP runtime's spinning threads do not slow the other's first call); wall
clock, and the calling thread's CPU time (leaves out time the scheduler gave to other
processes; meaningful with 1 thread). Dense = the faster of F.linear(x, W, b) and
torch.addmm(b, x, W^T stored [in, out]) (float32, same thread count; at batch 1 the second
is ~3x faster here). Hashed = hashing + bucket lookup + active products, output in sparse
(CSR) form; "dense out" also scatters it into a zero-filled [B, 100000] array.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import time

import numpy as np
import torch
try:
    from threadpoolctl import threadpool_limits
except ImportError:  # optional: only keeps NumPy's BLAS pool from spinning
    threadpool_limits = None

from results import update_subsection  # noqa: E402  (benchmarks/ is on sys.path)
from timing import interleaved_medians  # noqa: E402
from kernels.slide import HashedLinear, choose_k_l

N_OUT, N_IN, N_CENTRES = 100_000, 128, 2_000
SECTION = "Hashed and reuse kernels"


def make_layer(rng, structured: bool):
    if structured:
        centres = rng.standard_normal((N_CENTRES, N_IN)).astype(np.float32)
        W = centres[rng.integers(0, N_CENTRES, N_OUT)] + 0.7 * rng.standard_normal((N_OUT, N_IN))
        W = (W / np.linalg.norm(W, axis=1, keepdims=True)).astype(np.float32)

        def inputs(n):
            return (centres[rng.integers(0, N_CENTRES, n)]
                    + 0.7 * rng.standard_normal((n, N_IN))).astype(np.float32)
    else:
        W = (rng.standard_normal((N_OUT, N_IN)) / np.sqrt(N_IN)).astype(np.float32)

        def inputs(n):
            return rng.standard_normal((n, N_IN)).astype(np.float32)
    b = (0.01 * rng.standard_normal(N_OUT)).astype(np.float32)
    return W, b, inputs


def run(threads: int, repeats: int) -> tuple[str, dict]:
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    lines, figures = [], {}
    cases = [(True, "simhash"), (True, "dwta"), (False, "simhash")]
    made = {}
    for structured, family in cases:
        if structured not in made:
            made[structured] = make_layer(rng, structured)
        W, b, inputs = made[structured]
        calib = inputs(64)
        t0 = time.perf_counter()
        k_range = (7, 12) if family == "simhash" else (2, 6)
        K, L, info = choose_k_l(W, calib, 0.05, family=family, K_range=k_range, L_max=64, bias=b)
        t_choose = time.perf_counter() - t0
        t0 = time.perf_counter()
        layer = HashedLinear(W, b, family=family, K=K, L=L, seed=0, num_threads=threads)
        t_build = time.perf_counter() - t0
        Wt, bt = torch.from_numpy(W), torch.from_numpy(b)
        WtT = Wt.T.contiguous()        # [in, out]: torch's GEMV is ~3x faster on this layout
        name = ("structured" if structured else "pure noise") + f" weights, {family}"
        lines.append(f"\n**{name}**: K={K}, L={L} (choose_k_l {t_choose:.1f} s, "
                     f"table build {t_build:.2f} s)\n")
        lines.append("| batch | dense ms | per-sample ms (x) | batched ms (x) | batched, dense out ms (x) "
                     "| active | recall@10 | MACs / dense | weight MB gathered (per-sample / batched) "
                     "| CPU-time x (per-sample / batched) |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
        for B in (1, 128):
            x = inputs(B)
            xt = torch.from_numpy(x)
            fns = {
                "dense_linear": lambda: torch.nn.functional.linear(xt, Wt, bt),
                "dense_t": lambda: torch.addmm(bt, xt, WtT),
                "per_sample": lambda: layer.forward_sparse(x, "per_sample"),
                "batched": lambda: layer.forward_sparse(x, "batched"),
                "batched_dense_out": lambda: layer.forward(x, "batched"),
            }
            with torch.inference_mode():
                med, cpu = interleaved_medians(fns, repeats)
            # the dense baseline is the faster of the two layouts, in each clock
            for d in (med, cpu):
                d["dense"] = min(d.pop("dense_linear"), d.pop("dense_t"))
            layer.forward_sparse(x, "per_sample")
            mb_per = layer.bytes_gathered / 1e6
            layer.forward_sparse(x, "batched")
            mb_bat = layer.bytes_gathered / 1e6
            af = layer.active_fraction
            macs = layer.macs_executed / (B * N_OUT * N_IN)
            rec = layer.recall_at_k(inputs(256) if B == 1 else x, 10)
            sp = {k: med["dense"] / med[k] for k in med}
            cp = {k: cpu["dense"] / cpu[k] for k in cpu}
            figures[(name, B)] = sp
            lines.append(
                f"| {B} | {med['dense'] * 1e3:.2f} | {med['per_sample'] * 1e3:.3f} ({sp['per_sample']:.1f}x) "
                f"| {med['batched'] * 1e3:.3f} ({sp['batched']:.1f}x) "
                f"| {med['batched_dense_out'] * 1e3:.2f} ({sp['batched_dense_out']:.1f}x) "
                f"| {af:.3f} | {rec:.2f} | {macs:.3f} | {mb_per:.1f} / {mb_bat:.1f} "
                f"| {cp['per_sample']:.1f}x / {cp['batched']:.1f}x |")
    return "\n".join(lines), figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = ap.parse_args()
    # NumPy's BLAS pool (used for references and set-up) spins after each call and would
    # steal a core from the timed code: keep it to one thread.
    if threadpool_limits is not None:
        threadpool_limits(1, user_api="blas")
    load0 = os.getloadavg()
    table, _ = run(args.threads, args.repeats)
    load1 = os.getloadavg()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
               platform.processor())
    key = f"bench_slide ({args.threads} thread(s))"
    text = (f"### {key}: hashed layer {N_IN} -> {N_OUT:,}, target 5% active\n\n"
            f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {cpu}, "
            f"{os.cpu_count()} cores; torch {torch.__version__}, {args.threads} threads for both\n"
            f"- command: `python benchmarks/bench_slide.py --threads {args.threads} --repeats {args.repeats}`\n"
            f"- load average before / after: {load0[0]:.2f} / {load1[0]:.2f}\n"
            f"- (x) = dense time / hashed time, medians; targets: batch 1 >= 8x, batch 128 >= 2.5x (batched)\n"
            + table + "\n")
    print(text)
    if args.write:
        update_subsection(SECTION, key, text)


if __name__ == "__main__":
    main()
