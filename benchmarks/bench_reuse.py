"""Adaptive deep reuse on the conv layers of the trained digits CNN, vs dense, side by side.

    python benchmarks/bench_reuse.py [--threads 2] [--repeats 15] [--epochs 20] [--seeds 5] [--write]

The model is examples/digits/digits.py's DigitsCNN trained on its "hard" digits (pixel
noise + shifts), as that example trains it. On the test set,
the inputs of conv2 (16 -> 32 ch, 8x8) and conv3 (32 -> 32 ch, 4x4) are run through:
  dense im2col: im2col + torch.matmul (float32, same thread count) + NCHW reshape;
  torch conv2d: torch.nn.functional.conv2d (oneDNN);
  reuse: kernels.reuse.reuse_conv2d (hashing shared across kernel offsets, share="pixel").
Timings are medians of --repeats, measured in interleaved rounds (the dense im2col matmul
is timed on a precomputed im2col matrix; reuse is timed whole: layout, hashing, products,
scatter, bias); accuracy is the whole network's test accuracy with only that layer
replaced by its reuse version, for seed 0 (the timed one) and as mean / worst over --seeds
seeds of the projections and thresholds (one draw can be lucky). "centred" thresholds: kernels.reuse.conv_thresholds,
calibrated once on the layer's inputs for CALIB_IMAGES training images (not timed).
metric "input": Gaussian hyperplanes (Ning & Shen); "output": hyperplanes drawn through
the layer's weight (kernels.reuse.projections), hashing ||(x - y) W|| instead of ||x - y||.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
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
# (sub_len, n_hashes, centred thresholds, rows clustered together, hash metric)
SETTINGS = [(16, 8, False, 8192, "input"), (16, 16, False, 8192, "input"), (16, 32, False, 8192, "input"),
            (16, 24, True, 8192, "input"), (16, 32, True, 4096, "input"), (16, 32, True, 8192, "input"),
            (16, 32, True, 16384, "input"), (16, 32, True, 32768, "input"), (16, 36, True, 16384, "input"),
            (16, 40, True, 16384, "input"), (16, 40, True, 32768, "input"), (16, 48, True, 8192, "input"),
            (8, 32, True, 8192, "input"), (32, 48, True, 8192, "input"),
            (16, 32, True, 16384, "output"), (16, 40, True, 16384, "output"), (16, 48, True, 16384, "output")]


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


def reuse_accuracy(model, layer, xt, y_test, w, b, calib, setting, seed, threads):
    """(test accuracy with `layer` run by reuse at `setting`, its ReuseStats on xt's layer
    input): projections and centred thresholds drawn with `seed`."""
    L, H, cen, blk, mt = setting
    kw = dict(stride=1, pad=1, sub_len=L, n_hashes=H, block_rows=blk, metric=mt, seed=seed,
              thresholds=conv_thresholds(calib, L, H, seed=seed, weight=w if mt == "output" else None)
              if cen else None, num_threads=threads)
    _, st = reuse_conv2d(layer_input(model, layer, xt).numpy(), w, b, **kw)

    def replaced(h):
        return torch.from_numpy(reuse_conv2d(h.numpy(), w, b, compute_error=False, **kw)[0])
    acc = float((forward_from(model, layer, xt, replaced).argmax(1).numpy() == y_test).mean())
    return acc, st


def run(threads: int, repeats: int, epochs: int, variant: str = "hard", seeds: int = 5) -> str:
    torch.set_num_threads(threads)
    mod = load_digits_example()
    t0 = time.perf_counter()
    (x, y), (x_test, y_test) = mod.make_dataset(variant, seed=0)
    model = mod.train_cnn(x, y, epochs=epochs, seed=0)
    source = f"examples/digits/digits.py DigitsCNN, `train_cnn(epochs={epochs})` on make_dataset('{variant}')"
    x_calib = torch.from_numpy(np.ascontiguousarray(x[:CALIB_IMAGES]))
    t_train = time.perf_counter() - t0
    xt = torch.from_numpy(x_test)
    lines = [f"- model: {source}; trained in {t_train:.0f} s; test set {len(x_test)} images"]
    with torch.inference_mode():
        base_acc = float((forward_from(model, "", xt).argmax(1).numpy() == y_test).mean())
        lines.append(f"- test accuracy, dense: {100 * base_acc:.2f}%\n")
        for layer in ("conv2", "conv3"):
            conv = getattr(model, layer)
            w = conv.weight.detach().numpy().astype(np.float32)
            b = conv.bias.detach().numpy().astype(np.float32)
            inp = layer_input(model, layer, xt).numpy()
            calib = layer_input(model, layer, x_calib).numpy()
            thr = {(L, H, mt): conv_thresholds(calib, L, H, seed=0, weight=w if mt == "output" else None)
                   for L, H, cen, _, mt in SETTINGS if cen and L <= inp.shape[1]}
            M, C, R, S = w.shape
            wt = torch.from_numpy(np.ascontiguousarray(w.reshape(M, -1).T))
            it = torch.from_numpy(inp)
            n = inp.shape[0]

            cols = torch.from_numpy(im2col(inp, R, S, 1, 1)[0])   # im2col itself not timed
            fns = {"im2col": lambda: torch.matmul(cols, wt),
                   "conv2d": lambda: F.conv2d(it, conv.weight, conv.bias, padding=1)}
            for L, H, cen, blk, mt in SETTINGS:
                if L <= C:
                    fns[(L, H, cen, blk, mt)] = (lambda L=L, H=H, cen=cen, blk=blk, mt=mt: reuse_conv2d(
                        inp, w, b, stride=1, pad=1, sub_len=L, n_hashes=H, block_rows=blk,
                        thresholds=thr[(L, H, mt)] if cen else None, metric=mt,
                        compute_error=False, num_threads=threads))
            med, cpu = interleaved_medians(fns, repeats)
            lines.append(f"**{layer}** ({C} -> {M} ch, {inp.shape[2]}x{inp.shape[3]}, 3x3 pad 1; "
                         f"im2col {n * inp.shape[2] * inp.shape[3]} x {C * R * S} times {C * R * S} x {M}): "
                         f"dense im2col matmul {med['im2col'] * 1e3:.2f} ms, torch conv2d (whole layer) "
                         f"{med['conv2d'] * 1e3:.2f} ms\n")
            lines.append("| sub_len | H | thresholds | metric | block rows | reuse ms (whole layer) | vs im2col matmul "
                         "| vs conv2d | r_c (per pixel) | zero chunks | MACs exec / dense | rel. error "
                         f"| accuracy (pts vs dense) | seeds 0-{seeds - 1}: mean / worst pts "
                         "| CPU-time x (im2col / conv2d) |")
            lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
            for key in fns:
                if not isinstance(key, tuple):
                    continue
                L, H, cen, blk, mt = key
                acc, st = reuse_accuracy(model, layer, xt, y_test, w, b, calib, key, 0, threads)
                pts = [100 * (acc - base_acc)] + [
                    100 * (reuse_accuracy(model, layer, xt, y_test, w, b, calib, key, sd, threads)[0] - base_acc)
                    for sd in range(1, seeds)]
                lines.append(
                    f"| {L} | {H} | {'centred' if cen else 'sign (0)'} | {mt} | {blk} | {med[key] * 1e3:.2f} "
                    f"| {med['im2col'] / med[key]:.2f}x "
                    f"| {med['conv2d'] / med[key]:.2f}x | {st.cluster_ratio:.3f} | {st.zero_fraction:.2f} "
                    f"| {1 / st.mac_ratio:.3f} | {st.relative_error:.3f} "
                    f"| {100 * acc:.2f}% ({pts[0]:+.2f}) | {np.mean(pts):+.2f} / {min(pts):+.2f} "
                    f"| {cpu['im2col'] / cpu[key]:.2f}x / {cpu['conv2d'] / cpu[key]:.2f}x |")
            lines.append("")
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
    ap.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = ap.parse_args()
    # NumPy's BLAS pool (used for references and set-up) spins after each call and would
    # steal a core from the timed code: keep it to one thread.
    if threadpool_limits is not None:
        threadpool_limits(1, user_api="blas")
    load0 = os.getloadavg()
    body = run(args.threads, args.repeats, args.epochs, args.variant, args.seeds)
    load1 = os.getloadavg()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
               platform.processor())
    text = (f"### bench_reuse ({args.variant} digits, {args.threads} thread(s)): deep reuse on the "
            f"digits CNN's conv layers\n\n"
            f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {cpu}, "
            f"{os.cpu_count()} cores; torch {torch.__version__}, {args.threads} threads for both\n"
            f"- command: `python benchmarks/bench_reuse.py --threads {args.threads} --repeats {args.repeats} "
            f"--epochs {args.epochs} --variant {args.variant} --seeds {args.seeds}`\n"
            f"- load average before / after: {load0[0]:.2f} / {load1[0]:.2f}\n"
            f"- target: >= 1.5x over the dense im2col matmul on a conv layer, accuracy within 0.5 points\n"
            + body + "\n")
    print(text)
    if args.write:
        update_subsection(SECTION, f"bench_reuse ({args.variant} digits, {args.threads} thread(s))", text)


if __name__ == "__main__":
    main()
