"""SLIDE hashed layer 128 -> 100,000 vs torch's dense CPU matmul, side by side in one process.

    python benchmarks/bench_slide.py [--threads 2] [--repeats 15] [--train-steps 300] [--write]

Synthetic cases (128 -> 100,000): weights and inputs are structured but not trained: 2,000
cluster centres in 128-d; each neuron's weight row is a centre plus noise (unit-normalised),
each input is a centre plus noise. Structured weights with SimHash and with DWTA, and
pure-noise weights (SimHash) so the recall on structureless weights is visible.

Trained case (128 -> N_TRAINED = 10,000, smaller than 100k so that it trains in about a
minute on 2 cores): an extreme-classification task generated in code. N_TRAINED class
prototypes in a 32-d latent space; an input is its class's prototype plus Gaussian noise,
through a fixed random linear map to 128-d. The 128 -> 10,000 softmax layer is trained
from torch's default init with full softmax cross-entropy (Adam, --train-steps steps of
256 fresh samples); recall@10 and top-1 accuracy are measured on held-out samples.

K and L come from choose_k_l on 64 calibration inputs for a 5% active fraction. Timings:
median of --repeats, the dense and hashed calls interleaved in blocks (timing.py: a short
sleep between blocks so one OpenMP runtime's spinning threads do not slow the other's first
call; each call is repeated 3 times on the same input); wall clock, and the calling
thread's CPU time (leaves out time the scheduler gave to other processes; meaningful with
1 thread). Dense = the faster of F.linear(x, W, b) and torch.addmm(b, x, W^T stored
[in, out]) (float32, same thread count; at batch 1 the second is ~3x faster here). Hashed =
hashing + bucket lookup + active products, output in sparse (CSR) form; "dense out" also
scatters it into a zero-filled [B, N] array.

Batch 1 is also timed in two other orders, because a repeated input finds its weight rows
in cache while a 51 MB dense weight never fits in L3 (32 MB):
  stream: STREAM distinct inputs back to back (each side its own loop; time per input);
  alternating: one dense call, then one hashed call, on a fresh input each time, so each
  hashed call starts with caches emptied by the dense one (the worst case for hashing).
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
N_TRAINED, LATENT, TRAIN_NOISE = 10_000, 32, 0.6
STREAM = 64
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


def make_trained_layer(rng, steps: int):
    """(W [N_TRAINED, 128], b, labelled sampler, seconds): a softmax layer trained on the
    latent-prototype task of the module docstring."""
    protos = rng.standard_normal((N_TRAINED, LATENT)).astype(np.float32)
    lift = (rng.standard_normal((LATENT, N_IN)) / np.sqrt(LATENT)).astype(np.float32)

    def labelled(n):
        y = rng.integers(0, N_TRAINED, n)
        z = protos[y] + TRAIN_NOISE * rng.standard_normal((n, LATENT)).astype(np.float32)
        return (z @ lift).astype(np.float32), y

    torch.manual_seed(0)
    head = torch.nn.Linear(N_IN, N_TRAINED)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    t0 = time.perf_counter()
    for _ in range(steps):
        x, y = labelled(256)
        loss = torch.nn.functional.cross_entropy(head(torch.from_numpy(x)), torch.from_numpy(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
    W = head.weight.detach().numpy().astype(np.float32, copy=True)
    b = head.bias.detach().numpy().astype(np.float32, copy=True)
    return W, b, labelled, time.perf_counter() - t0


def time_other_orders(layer, dense_fn, xs, repeats: int) -> dict:
    """Batch-1 medians (wall, CPU) per input for the 'stream' and 'alternating' orders."""
    xts = [torch.from_numpy(x) for x in xs]

    def dense_stream():
        for xt in xts:
            dense_fn(xt)

    def hashed_stream():
        for x in xs:
            layer.forward_sparse(x)

    med, cpu = interleaved_medians({"dense": dense_stream, "hashed": hashed_stream},
                                   max(3, repeats // 3))
    out = {"stream": ({k: v / len(xs) for k, v in med.items()},
                      {k: v / len(xs) for k, v in cpu.items()})}
    wall = {"dense": [], "hashed": []}
    cpus = {"dense": [], "hashed": []}
    for r in range(4 * len(xs)):
        i = r % len(xs)
        for key, fn in (("dense", lambda: dense_fn(xts[i])), ("hashed", lambda: layer.forward_sparse(xs[i]))):
            t, c = time.perf_counter(), time.thread_time()
            fn()
            cpus[key].append(time.thread_time() - c)
            wall[key].append(time.perf_counter() - t)
    out["alternating"] = ({k: float(np.median(v)) for k, v in wall.items()},
                          {k: float(np.median(v)) for k, v in cpus.items()})
    return out


def bench_case(name, W, b, inputs, family, threads, repeats, k_range, lines, figures,
               labelled=None):
    n_out = W.shape[0]
    calib = inputs(64)
    t0 = time.perf_counter()
    K, L, info = choose_k_l(W, calib, 0.05, family=family, K_range=k_range, L_max=64, bias=b)
    t_choose = time.perf_counter() - t0
    t0 = time.perf_counter()
    layer = HashedLinear(W, b, family=family, K=K, L=L, seed=0, num_threads=threads)
    t_build = time.perf_counter() - t0
    Wt, bt = torch.from_numpy(W), torch.from_numpy(b)
    WtT = Wt.T.contiguous()        # [in, out]: torch's GEMV is ~3x faster on this layout
    lines.append(f"\n**{name}**: K={K}, L={L} (choose_k_l {t_choose:.1f} s, "
                 f"table build {t_build:.2f} s)\n")
    if labelled is not None:
        xa, ya = labelled(2000)
        dense_acc = float(((xa @ W.T + b).argmax(axis=1) == ya).mean())
        hashed_acc = float((layer.predict(xa) == ya).mean())
        lines.append(f"held-out top-1 accuracy (2,000 samples): dense {dense_acc:.1%}, "
                     f"hashed (argmax over the active set) {hashed_acc:.1%}; "
                     f"recall@10 on the same samples {layer.recall_at_k(xa, 10):.2f}\n")
        figures[(name, "accuracy")] = (dense_acc, hashed_acc)
    lines.append("| batch | dense ms | per-sample ms (x) | batched ms (x) | batched, dense out ms (x) "
                 "| active | recall@10 | MACs / dense | weight MB gathered (per-sample / batched) "
                 "| CPU-time x (per-sample / batched) |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    orders = None
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
        faster_t = med["dense_t"] <= med["dense_linear"]
        # the dense baseline is the faster of the two layouts, in each clock
        for d in (med, cpu):
            d["dense"] = min(d.pop("dense_linear"), d.pop("dense_t"))
        layer.forward_sparse(x, "per_sample")
        mb_per = layer.bytes_gathered / 1e6
        layer.forward_sparse(x, "batched")
        mb_bat = layer.bytes_gathered / 1e6
        af = layer.active_fraction
        macs = layer.macs_executed / (B * n_out * N_IN)
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
        if B == 1:
            dense_fn = (lambda t: torch.addmm(bt, t, WtT)) if faster_t else \
                (lambda t: torch.nn.functional.linear(t, Wt, bt))
            with torch.inference_mode():
                orders = time_other_orders(layer, dense_fn, list(inputs(STREAM)[:, None, :]), repeats)
    lines.append(f"\nbatch 1 in other orders ({STREAM} distinct inputs; dense = the faster layout above):\n")
    lines.append("| order | dense ms | hashed ms (x) | CPU-time x |")
    lines.append("|---|---|---|---|")
    for order, (med, cpu) in orders.items():
        sp, cp = med["dense"] / med["hashed"], cpu["dense"] / cpu["hashed"]
        figures[(name, order)] = sp
        lines.append(f"| {order} | {med['dense'] * 1e3:.2f} | {med['hashed'] * 1e3:.3f} ({sp:.1f}x) "
                     f"| {cp:.1f}x |")


def run(threads: int, repeats: int, train_steps: int) -> tuple[str, dict]:
    rng = np.random.default_rng(0)
    lines, figures = [], {}
    cases = [(True, "simhash"), (True, "dwta"), (False, "simhash")]
    made = {}
    torch.set_num_threads(threads)
    for structured, family in cases:
        if structured not in made:
            made[structured] = make_layer(rng, structured)
        W, b, inputs = made[structured]
        name = ("structured" if structured else "pure noise") + f" weights, {family}"
        k_range = (7, 12) if family == "simhash" else (2, 6)
        bench_case(name, W, b, inputs, family, threads, repeats, k_range, lines, figures)
    made.clear()
    torch.set_num_threads(os.cpu_count() or 1)      # training is set-up, not timed
    W, b, labelled, t_train = make_trained_layer(rng, train_steps)
    torch.set_num_threads(threads)
    lines.append(f"\n#### trained weights: 128 -> {N_TRAINED:,} softmax layer\n\n"
                 f"Trained in {t_train:.0f} s ({train_steps} Adam steps of 256 samples, full softmax "
                 f"cross-entropy; task in the module docstring: {N_TRAINED:,} prototypes in "
                 f"{LATENT}-d, noise {TRAIN_NOISE}). W is {W.nbytes / 1e6:.1f} MB, so it fits in L3 "
                 f"and the dense GEMV is not memory-bound as at 100k: the speed-ups here are not "
                 f"comparable with the 100k targets.\n")
    for family, k_range in (("simhash", (6, 12)), ("dwta", (2, 6))):
        bench_case(f"trained weights, {family}", W, b, lambda n: labelled(n)[0], family, threads,
                   repeats, k_range, lines, figures, labelled=labelled)
    return "\n".join(lines), figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = ap.parse_args()
    # NumPy's BLAS pool (used for references and set-up) spins after each call and would
    # steal a core from the timed code: keep it to one thread.
    if threadpool_limits is not None:
        threadpool_limits(1, user_api="blas")
    load0 = os.getloadavg()
    table, _ = run(args.threads, args.repeats, args.train_steps)
    load1 = os.getloadavg()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
               platform.processor())
    key = f"bench_slide ({args.threads} thread(s))"
    text = (f"### {key}: hashed layer {N_IN} -> {N_OUT:,}, target 5% active\n\n"
            f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {cpu}, "
            f"{os.cpu_count()} cores; torch {torch.__version__}, {args.threads} threads for both\n"
            f"- command: `python benchmarks/bench_slide.py --threads {args.threads} --repeats {args.repeats} "
            f"--train-steps {args.train_steps}`\n"
            f"- load average before / after: {load0[0]:.2f} / {load1[0]:.2f}\n"
            f"- (x) = dense time / hashed time, medians; targets: batch 1 >= 8x, batch 128 >= 2.5x (batched)\n"
            + table + "\n")
    print(text)
    if args.write:
        update_subsection(SECTION, key, text)


if __name__ == "__main__":
    main()
