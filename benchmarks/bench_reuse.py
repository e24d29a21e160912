"""Adaptive deep reuse on the conv layers of the trained digits CNN, vs dense, side by side.

    python benchmarks/bench_reuse.py [--threads 2] [--repeats 15] [--epochs 20] [--seeds 5]
                                     [--spread 6] [--write]

The model is examples/digits/digits.py's DigitsCNN trained on its "hard" digits (pixel
noise + shifts), as that example trains it (make_splits: train / validation / test, split by
source image). On the test set,
the inputs of conv2 (16 -> 32 ch, 8x8) and conv3 (32 -> 32 ch, 4x4) are run through:
  dense im2col: the im2col matrix [N*P*Q, C*R*S] (precomputed, not timed) times the weight
    [C*R*S, M], float32, same thread count, in three equivalent formulations timed side by
    side: torch.matmul (allocates its output), torch.mm into a preallocated output, NumPy's
    matmul (OpenBLAS). The baseline is the fastest of the three (median) in this process;
  torch conv2d: torch.nn.functional.conv2d (oneDNN) on NCHW and on channels_last input
    (the layout converted beforehand, not timed); the faster one is reported;
  reuse: kernels.reuse.reuse_conv2d (hashing shared across kernel offsets, share="pixel").
The allocator: glibc's default mmap threshold moves with the process's history (it rises to
the size of a freed mmapped block) and the heap top is trimmed back to the OS, so whether an
11-22 MB temporary (a matmul output, oneDNN's NCHW reorder buffers, reuse's product table)
is faulted in afresh on every call differs between processes: conv2d on NCHW took 9 ms in
one process and 19 ms (5,356 page faults a call) in the next. main() therefore fixes the
mmap threshold at 32 MiB and turns trimming off (mallopt, for every timed function alike),
and the tables give the page faults per call. --spread N re-times the dense formulations and
the setting chosen on conv2 in N fresh processes, alternately with and without that fix.
Timings are medians of --repeats, measured in interleaved rounds (reuse is timed whole:
layout, hashing, products, scatter, bias); accuracy is the whole network's test accuracy with only that layer
replaced by its reuse version, for seed 0 (the timed one) and as mean / worst over --seeds
seeds of the projections and thresholds (one draw can be lucky); the same on the validation
split, on which the operating point is chosen (the fastest setting whose validation mean over
seeds is within VAL_MARGIN points of dense and whose worst seed is within VAL_WORST), never on test. "centred" thresholds: kernels.reuse.conv_thresholds,
calibrated once on the layer's inputs for CALIB_IMAGES training images (not timed).
metric "input": Gaussian hyperplanes (Ning & Shen); "output": hyperplanes drawn through
the layer's weight (kernels.reuse.projections), hashing ||(x - y) W|| instead of ||x - y||.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
try:
    from threadpoolctl import threadpool_limits
except ImportError:  # optional: only keeps NumPy's BLAS pool from spinning
    threadpool_limits = None
import torch.nn.functional as F

from results import update_subsection  # noqa: E402  (benchmarks/ is on sys.path)
from timing import interleaved_medians  # noqa: E402
from kernels.reuse import conv_thresholds, im2col, reuse_conv2d

ROOT = Path(__file__).resolve().parents[1]
CALIB_IMAGES = 512   # training images the centred thresholds are calibrated on, once
SECTION = "Hashed and reuse kernels"
# choice on validation: mean over seeds >= -VAL_MARGIN and every seed >= -VAL_WORST points (the
# validation split is ~810 images, where one image is 0.12 points: a mean alone picked settings
# that were lucky on validation and lost ~0.9 points on test)
VAL_MARGIN, VAL_WORST = 0.25, 0.5
# (sub_len, n_hashes, centred thresholds, rows clustered together, hash metric)
SETTINGS = [(16, 8, False, 8192, "input"), (16, 16, False, 8192, "input"), (16, 32, False, 8192, "input"),
            (16, 24, True, 8192, "input"), (16, 32, True, 4096, "input"), (16, 32, True, 8192, "input"),
            (16, 32, True, 16384, "input"), (16, 32, True, 32768, "input"), (16, 36, True, 16384, "input"),
            (16, 40, True, 16384, "input"), (16, 40, True, 32768, "input"), (16, 48, True, 8192, "input"),
            (8, 32, True, 8192, "input"), (32, 48, True, 8192, "input"),
            (16, 32, True, 16384, "output"), (16, 40, True, 16384, "output"), (16, 48, True, 16384, "output"),
            (16, 36, True, 32768, "input"), (16, 36, True, 16384, "output"), (16, 40, True, 32768, "output"),
            (16, 44, True, 16384, "output"), (16, 40, True, 65536, "input"), (16, 40, True, 65536, "output")]


def stable_malloc() -> bool:
    """Fix glibc's mmap threshold at 32 MiB (the most mallopt takes) and never trim the heap,
    so large temporaries are reused from the heap instead of being faulted in per call."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 32 << 20)) and bool(libc.mallopt(-1, 1 << 30))  # M_MMAP_/M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        return False


def cpu_ticks() -> tuple[int, int]:
    """(all, steal) clock ticks of /proc/stat's cpu line: steal is the time the hypervisor ran
    something else while this VM's CPUs wanted to run (not in the load average)."""
    try:
        f = [int(v) for v in open("/proc/stat").readline().split()[1:]]
        return sum(f[:8]), f[7]
    except (OSError, ValueError, IndexError):
        return 0, 0


def steal_since(t0: tuple[int, int]) -> str:
    t1 = cpu_ticks()
    return f"{100 * (t1[1] - t0[1]) / max(t1[0] - t0[0], 1):.1f}%"


def faults_per_call(fn, calls: int = 3) -> float:
    """Median minor page faults of one call of fn (after it has run once)."""
    fn()
    out = []
    for _ in range(calls):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        fn()
        out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return float(np.median(out))


DENSE = ("torch.matmul", "torch.mm out=", "NumPy matmul")
CONV = ("conv2d NCHW", "conv2d channels_last")


def dense_fns(cols_np: np.ndarray, w: np.ndarray, b: np.ndarray, inp: np.ndarray) -> dict:
    """The equivalent dense formulations (see the module docstring), keyed by DENSE + CONV."""
    M = w.shape[0]
    cols = torch.from_numpy(cols_np)
    wt_np = np.ascontiguousarray(w.reshape(M, -1).T)
    wt = torch.from_numpy(wt_np)
    out = torch.empty(cols.shape[0], M)
    it = torch.from_numpy(inp)
    it_cl = it.contiguous(memory_format=torch.channels_last)
    wc, bc = torch.from_numpy(w), torch.from_numpy(b)
    pad = (w.shape[2] - 1) // 2
    return {"torch.matmul": lambda: torch.matmul(cols, wt),
            "torch.mm out=": lambda: torch.mm(cols, wt, out=out),
            "NumPy matmul": lambda: cols_np @ wt_np,
            "conv2d NCHW": lambda: F.conv2d(it, wc, bc, padding=pad),
            "conv2d channels_last": lambda: F.conv2d(it_cl, wc, bc, padding=pad)}


def best_of(med: dict, keys) -> str:
    """The fastest (median) of keys; NumPy's matmul only at 1 thread (its BLAS pool is kept to
    one thread: at more, its spinning workers would steal the cores of the other functions)."""
    if torch.get_num_threads() > 1:
        keys = [k for k in keys if k != "NumPy matmul"]
    return min(keys, key=lambda k: med[k])


def load_digits_example():
    """examples/digits/digits.py as a module (the benchmark measures that example's model)."""
    spec = importlib.util.spec_from_file_location("digits_example", ROOT / "examples" / "digits" / "digits.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def forward_from(model, layer: str, x: torch.Tensor, replace=None) -> torch.Tensor:
    """Run the CNN; when `replace` is given, it computes `layer`'s conv (pre-activation)."""
    def conv(name, h):
        mod = getattr(model, name)
        return replace(h) if (replace is not None and name == layer) else mod(h)
    h = F.relu(conv("conv2", F.relu(model.conv1(x))))
    h = F.relu(conv("conv3", F.max_pool2d(h, 2)))
    return model.fc(torch.flatten(h, 1))


def layer_input(model, layer: str, x: torch.Tensor) -> torch.Tensor:
    h = F.relu(model.conv1(x))
    if layer == "conv2":
        return h
    return F.max_pool2d(F.relu(model.conv2(h)), 2)


def reuse_accuracy(model, layer, xt, y_test, w, b, calib, setting, seed, threads, stats=True):
    """(test accuracy with `layer` run by reuse at `setting`, its ReuseStats on xt's layer
    input): projections and centred thresholds drawn with `seed`."""
    L, H, cen, blk, mt = setting
    kw = dict(stride=1, pad=1, sub_len=L, n_hashes=H, block_rows=blk, metric=mt, seed=seed,
              thresholds=conv_thresholds(calib, L, H, seed=seed, weight=w if mt == "output" else None)
              if cen else None, num_threads=threads)
    st = reuse_conv2d(layer_input(model, layer, xt).numpy(), w, b, **kw)[1] if stats else None

    def replaced(h):
        return torch.from_numpy(reuse_conv2d(h.numpy(), w, b, compute_error=False, **kw)[0])
    acc = float((forward_from(model, layer, xt, replaced).argmax(1).numpy() == y_test).mean())
    return acc, st


def run(threads: int, repeats: int, epochs: int, variant: str = "hard", seeds: int = 5,
        probe_file: str | None = None) -> tuple[str, dict]:
    """(markdown body, {layer: chosen setting}); with probe_file, conv2's inputs, weight and
    the chosen setting's thresholds are saved there for --spread."""
    torch.set_num_threads(threads)
    mod = load_digits_example()
    t0 = time.perf_counter()
    (x, y), (x_val, y_val), (x_test, y_test) = mod.make_splits(variant, seed=0)
    model = mod.train_cnn(x, y, epochs=epochs, seed=0)
    source = (f"examples/digits/digits.py DigitsCNN, `train_cnn(epochs={epochs})` on the train split of "
              f"make_splits('{variant}', seed=0)")
    x_calib = torch.from_numpy(np.ascontiguousarray(x[:CALIB_IMAGES]))
    t_train = time.perf_counter() - t0
    xt, xv = torch.from_numpy(x_test), torch.from_numpy(x_val)
    lines = [f"- model: {source}; trained in {t_train:.0f} s; {len(x)} train / {len(x_val)} validation / "
             f"{len(x_test)} test images"]
    chosen = {}
    with torch.inference_mode():
        base_acc = float((forward_from(model, "", xt).argmax(1).numpy() == y_test).mean())
        base_val = float((forward_from(model, "", xv).argmax(1).numpy() == y_val).mean())
        lines.append(f"- accuracy, dense: test {100 * base_acc:.2f}%, validation {100 * base_val:.2f}%\n")
        for layer in ("conv2", "conv3"):
            conv = getattr(model, layer)
            w = conv.weight.detach().numpy().astype(np.float32)
            b = conv.bias.detach().numpy().astype(np.float32)
            inp = layer_input(model, layer, xt).numpy()
            calib = layer_input(model, layer, x_calib).numpy()
            thr = {(L, H, mt): conv_thresholds(calib, L, H, seed=0, weight=w if mt == "output" else None)
                   for L, H, cen, _, mt in SETTINGS if cen and L <= inp.shape[1]}
            M, C, R, S = w.shape
            n = inp.shape[0]

            cols_np = im2col(inp, R, S, 1, 1)[0]   # im2col itself not timed
            fns = dense_fns(cols_np, w, b, inp)
            for L, H, cen, blk, mt in SETTINGS:
                if L <= C:
                    fns[(L, H, cen, blk, mt)] = (lambda L=L, H=H, cen=cen, blk=blk, mt=mt: reuse_conv2d(
                        inp, w, b, stride=1, pad=1, sub_len=L, n_hashes=H, block_rows=blk,
                        thresholds=thr[(L, H, mt)] if cen else None, metric=mt,
                        compute_error=False, num_threads=threads))
            med, cpu = interleaved_medians(fns, repeats)
            flt = {k: faults_per_call(f) for k, f in fns.items()}
            dk, ck = best_of(med, DENSE), best_of(med, CONV)
            lines.append(f"**{layer}** ({C} -> {M} ch, {inp.shape[2]}x{inp.shape[3]}, 3x3 pad 1; "
                         f"im2col {n * inp.shape[2] * inp.shape[3]} x {C * R * S} times {C * R * S} x {M}): "
                         "dense im2col matmul " + ", ".join(
                             f"{k} {med[k] * 1e3:.2f} ms ({flt[k]:.0f} faults)" for k in DENSE)
                         + f"; baseline = {dk}. torch conv2d (whole layer) " + ", ".join(
                             f"{k.split()[1]} {med[k] * 1e3:.2f} ms ({flt[k]:.0f} faults)" for k in CONV)
                         + f"; compared with {ck.split()[1]}\n")
            lines.append("| sub_len | H | thresholds | metric | block rows | reuse ms (whole layer) | vs im2col matmul "
                         "| vs conv2d | r_c (per pixel) | zero chunks | MACs exec / dense | rel. error "
                         f"| test accuracy (pts vs dense) | test, seeds 0-{seeds - 1}: mean / worst pts "
                         "| validation, seeds: mean / worst pts | CPU-time x (im2col / conv2d) | faults / call |")
            lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
            rows, ok = [], []
            for key in fns:
                if not isinstance(key, tuple):
                    continue
                L, H, cen, blk, mt = key
                acc, st = reuse_accuracy(model, layer, xt, y_test, w, b, calib, key, 0, threads)
                pts = [100 * (acc - base_acc)] + [
                    100 * (reuse_accuracy(model, layer, xt, y_test, w, b, calib, key, sd, threads,
                                          stats=False)[0] - base_acc)
                    for sd in range(1, seeds)]
                vpts = [100 * (reuse_accuracy(model, layer, xv, y_val, w, b, calib, key, sd, threads,
                                              stats=False)[0] - base_val) for sd in range(seeds)]
                if np.mean(vpts) >= -VAL_MARGIN and min(vpts) >= -VAL_WORST:
                    ok.append(key)
                rows.append((key,
                    f"| {L} | {H} | {'centred' if cen else 'sign (0)'} | {mt} | {blk} | {med[key] * 1e3:.2f} "
                    f"| {med[dk] / med[key]:.2f}x "
                    f"| {med[ck] / med[key]:.2f}x | {st.cluster_ratio:.3f} | {st.zero_fraction:.2f} "
                    f"| {1 / st.mac_ratio:.3f} | {st.relative_error:.3f} "
                    f"| {100 * acc:.2f}% ({pts[0]:+.2f}) | {np.mean(pts):+.2f} / {min(pts):+.2f} "
                    f"| {np.mean(vpts):+.2f} / {min(vpts):+.2f} "
                    f"| {cpu[dk] / cpu[key]:.2f}x / {cpu[ck] / cpu[key]:.2f}x | {flt[key]:.0f} |",
                    np.mean(pts), med[dk] / med[key]))
            pick = min(ok, key=lambda k: med[k]) if ok else None
            for key, row, _, _ in rows:
                lines.append(row.replace(f"| {key[0]} |", f"| **{key[0]}** (chosen) |", 1) if key == pick else row)
            if pick is not None:
                chosen[layer] = pick
                tm, sp = next((r[2], r[3]) for r in rows if r[0] == pick)
                lines.append(f"\nchosen on validation (the fastest with validation seeds mean >= -{VAL_MARGIN} and worst "
                             f">= -{VAL_WORST} pts): "
                             f"sub_len {pick[0]}, H {pick[1]}, {'centred' if pick[2] else 'sign'}, {pick[4]}, "
                             f"{pick[3]} rows: {sp:.2f}x over {dk}, test seeds-mean {tm:+.2f} pts")
            else:
                lines.append(f"\nno setting meets the validation rule (mean >= -{VAL_MARGIN}, worst >= -{VAL_WORST} pts)")
            lines.append("")
            if probe_file and layer == "conv2" and pick is not None:
                L, H, cen, blk, mt = pick
                np.savez(probe_file, inp=inp, w=w, b=b, L=L, H=H, blk=blk, mt=mt,
                         thr=thr[(L, H, mt)] if cen else np.zeros(0, np.float32))
    return "\n".join(lines), chosen


def probe(path: str, threads: int, repeats: int) -> dict:
    """Time the dense formulations and the saved reuse setting in this (fresh) process."""
    torch.set_num_threads(threads)
    d = np.load(path)
    inp, w, b = d["inp"], d["w"], d["b"]
    thr = d["thr"] if d["thr"].size else None
    fns = dense_fns(im2col(inp, w.shape[2], w.shape[3], 1, 1)[0], w, b, inp)
    fns["reuse"] = lambda: reuse_conv2d(inp, w, b, stride=1, pad=1, sub_len=int(d["L"]), n_hashes=int(d["H"]),
                                        block_rows=int(d["blk"]), thresholds=thr, metric=str(d["mt"]),
                                        compute_error=False, num_threads=threads)
    with torch.inference_mode():
        med, cpu = interleaved_medians(fns, repeats)
        flt = {k: faults_per_call(f) for k, f in fns.items()}
    return {"med": med, "cpu": cpu, "faults": flt, "load": os.getloadavg()[0]}


def spread(n: int, threads: int, repeats: int, path: str) -> str:
    """Markdown table: the probe in n fresh processes, alternately with and without stable_malloc."""
    lines = ["| process | allocator | load | " + " | ".join(f"{k} ms (faults)" for k in DENSE + CONV)
             + " | reuse ms (faults) | vs best im2col | vs torch.matmul | vs best conv2d | CPU-time x (best im2col) |",
             "|---" * (7 + len(DENSE) + len(CONV)) + "|"]
    for i in range(n):
        default = i % 2 == 1
        cmd = [sys.executable, __file__, "--probe", path, "--threads", str(threads), "--repeats", str(repeats)]
        out = subprocess.run(cmd + (["--default-malloc"] if default else []), capture_output=True, text=True,
                             check=True, cwd=ROOT).stdout
        r = json.loads(out.strip().splitlines()[-1])
        med, cpu, flt = r["med"], r["cpu"], r["faults"]
        dk, ck = best_of(med, DENSE), best_of(med, CONV)
        lines.append(f"| {i + 1} | {'glibc default' if default else 'fixed (mallopt)'} | {r['load']:.2f} | "
                     + " | ".join(f"{med[k] * 1e3:.2f} ({flt[k]:.0f})" for k in DENSE + CONV)
                     + f" | {med['reuse'] * 1e3:.2f} ({flt['reuse']:.0f}) | {med[dk] / med['reuse']:.2f}x "
                     f"| {med['torch.matmul'] / med['reuse']:.2f}x | {med[ck] / med['reuse']:.2f}x "
                     f"| {cpu[dk] / cpu['reuse']:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--variant", default="hard", choices=["hard", "clean"],
                    help="digits data of examples/digits/digits.py")
    ap.add_argument("--seeds", type=int, default=5,
                    help="projection seeds the accuracy is also measured over (timings: seed 0)")
    ap.add_argument("--spread", type=int, default=0,
                    help="re-time conv2's dense baselines and chosen setting in this many fresh processes")
    ap.add_argument("--probe", help=argparse.SUPPRESS)
    ap.add_argument("--default-malloc", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = ap.parse_args()
    malloc_fixed = False if args.default_malloc else stable_malloc()
    # NumPy's BLAS pool (used for references and set-up) spins after each call and would
    # steal a core from the timed code: keep it to one thread.
    if threadpool_limits is not None:
        threadpool_limits(1, user_api="blas")
    if args.probe:
        print(json.dumps(probe(args.probe, args.threads, args.repeats)))
        return
    load0, ticks0 = os.getloadavg(), cpu_ticks()
    with tempfile.TemporaryDirectory() as tmp:
        probe_file = os.path.join(tmp, "conv2.npz")
        body, chosen = run(args.threads, args.repeats, args.epochs, args.variant, args.seeds,
                           probe_file if args.spread else None)
        load1, steal1 = os.getloadavg(), steal_since(ticks0)
        if args.spread and "conv2" in chosen:
            body += (f"\n**spread over {args.spread} fresh processes** (conv2, the chosen setting, same inputs; "
                     f"each process times everything interleaved, {args.repeats} repeats):\n\n"
                     + spread(args.spread, args.threads, args.repeats, probe_file) + "\n")
    load2, steal2 = os.getloadavg(), steal_since(ticks0)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
               platform.processor())
    text = (f"### bench_reuse ({args.variant} digits, {args.threads} thread(s)): deep reuse on the "
            f"digits CNN's conv layers\n\n"
            f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {cpu}, "
            f"{os.cpu_count()} cores; torch {torch.__version__}, {args.threads} threads for both (NumPy's "
            f"BLAS: 1 thread, a baseline candidate only at 1 thread)\n"
            f"- command: `python benchmarks/bench_reuse.py --threads {args.threads} --repeats {args.repeats} "
            f"--epochs {args.epochs} --variant {args.variant} --seeds {args.seeds}"
            f"{f' --spread {args.spread}' if args.spread else ''}`\n"
            f"- allocator: {'glibc mmap threshold fixed at 32 MiB, no trimming (mallopt)' if malloc_fixed else 'glibc default'}\n"
            f"- load average before / after the main run / after the spread: {load0[0]:.2f} / {load1[0]:.2f} / {load2[0]:.2f}; "
            f"steal time (hypervisor) during the main run / to the end: {steal1} / {steal2}\n"
            f"- target: >= 1.5x over the dense im2col matmul on a conv layer, accuracy within 0.5 points\n"
            + body + "\n")
    print(text)
    if args.write:
        update_subsection(SECTION, f"bench_reuse ({args.variant} digits, {args.threads} thread(s))", text)


if __name__ == "__main__":
    main()
