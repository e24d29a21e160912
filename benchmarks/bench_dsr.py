"""Benchmark: dynamic sparse reparameterization vs static sparse vs dense, same budget.

Task: scikit-learn digits (8x8, bundled, no download) made harder: each image is padded to
10x10, shifted by a random -1/0/+1 pixel in each axis and given Gaussian noise; the training
set holds ``--copies`` independently perturbed copies of each training image, the test set
one perturbed copy of each held-out image. For every seed, the three methods share the data
split, the perturbations, the initial weights and the training budget (epochs, lr, batch,
SGD momentum, cosine schedule); the sparse ones share the initial random mask too.

Run:  python benchmarks/bench_dsr.py [--seeds 0 1 2] [--write]
``--write`` replaces the "## Sparse training (DSR)" section of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from pruning.dsr import first_and_last_layers, train_sparse

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import update_section  # noqa: E402  (benchmarks/results.py, shared writer)

TITLE = "Sparse training (DSR)"


def perturb(images: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """Pad 8x8 digits (0..16) to 10x10, shift by -1/0/+1 px per axis, add N(0, noise) (0..1 units)."""
    n = images.shape[0]
    out = np.zeros((n, 10, 10), dtype=np.float32)
    shifts = rng.integers(0, 3, size=(n, 2))  # top-left corner of the 8x8 inside the 10x10
    for i, (r, c) in enumerate(shifts):
        out[i, r : r + 8, c : c + 8] = images[i] / 16.0
    return out + rng.normal(0.0, noise, size=out.shape).astype(np.float32)


def make_data(seed: int, copies: int, noise: float, test_copies: int):
    digits = load_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(
        digits.images, digits.target, test_size=0.3, random_state=seed, stratify=digits.target
    )
    rng = np.random.default_rng(seed)
    xs = np.concatenate([perturb(x_tr, rng, noise) for _ in range(copies)])
    ys = np.concatenate([y_tr] * copies)
    xt = np.concatenate([perturb(x_te, rng, noise) for _ in range(test_copies)])
    yt = np.concatenate([y_te] * test_copies)
    return (xs.reshape(len(xs), -1), ys), (xt.reshape(len(xt), -1), yt)


def make_mlp(seed: int, width: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(100, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10)
    )


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        pred = model(torch.as_tensor(x)).argmax(1).numpy()
    return float((pred == y).mean())


def _train(args, train, seed: int, lr: float, method: str, scaled: bool):
    model = make_mlp(seed, args.width)
    kw = {}
    if method != "dense":
        dense_layers = first_and_last_layers(model) if args.dense_first_last else ()
        kw = dict(sparsity=args.sparsity, dense_layers=dense_layers, scale_initial_weights=scaled)
    return train_sparse(
        model, train, epochs=args.epochs, lr=lr, method=method, seed=seed,
        batch_size=args.batch, weight_decay=args.weight_decay,
        reallocate_every=args.reallocate_every,
        prune_fraction_per_cycle=args.prune_fraction, initial_threshold=args.threshold, **kw,
    )


def run_config(args, noise: float, lr: float) -> list[dict]:
    """Dense once, then static and DSR for each initialisation, for every seed."""
    rows = {init: {"noise": noise, "lr": lr, "init": init, "acc": {"dense": [], "static": [], "dsr": []},
                   "dsr": []} for init in args.inits}
    for seed in args.seeds:
        train, test = make_data(seed, args.copies, noise, args.test_copies)
        model, _ = _train(args, train, seed, lr, "dense", False)
        dense_acc = accuracy(model, *test)
        print(f"noise {noise} lr {lr} seed {seed} dense         test acc {dense_acc:.4f}", flush=True)
        for init in args.inits:
            row = rows[init]
            row["acc"]["dense"].append(dense_acc)
            for method in ("static", "dsr"):
                model, hist = _train(args, train, seed, lr, method, init == "scaled")
                a = accuracy(model, *test)
                row["acc"][method].append(a)
                if method == "dsr":
                    row["dsr"].append(hist)
                print(f"noise {noise} lr {lr} seed {seed} {method:6s} {init:6s} test acc {a:.4f}  "
                      f"final train loss {hist.loss_per_epoch[-1]:.4f}", flush=True)
            row["n_train"], row["n_test"] = len(train[1]), len(test[1])
    return list(rows.values())


def _mean_std(v: list[float]) -> str:
    return f"{100 * statistics.mean(v):.2f} ± {100 * statistics.stdev(v):.2f}"


def section(args, results: list[dict], wall_s: float, command: str) -> str:
    model = make_mlp(0, args.width)
    n_weights = sum(m.weight.numel() for m in model if isinstance(m, nn.Linear))
    pct = f"{args.sparsity:.0%}"
    lines = [
        f"- date: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; machine: "
        f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads); load average (1/5/15 min) "
        f"before: {args.load_before}, after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
        f"wall {wall_s:.0f} s",
        f"- command: `{command}`",
        f"- task: sklearn digits, 70/30 stratified split per seed, padded to 10x10, random ±1 px shift "
        f"per axis, Gaussian pixel noise σ (pixels in 0..1); {results[0]['n_train']} training samples "
        f"({args.copies} perturbed copies of each), {results[0]['n_test']} test samples "
        f"({args.test_copies} perturbed copies of each held-out image)",
        f"- model: MLP 100-{args.width}-{args.width}-10 ({n_weights} weights); sparsity {pct} over "
        f"{'the hidden layer only (first and last dense)' if args.dense_first_last else 'all three layers'}; "
        f"biases dense",
        f"- same budget for every method: {args.epochs} epochs, batch {args.batch}, SGD momentum 0.9, "
        f"cosine-annealed lr, weight decay {args.weight_decay}; per seed the methods share data, "
        f"initial weights and (sparse ones) the initial random uniform-density mask. DSR: "
        f"reallocate every {args.reallocate_every} steps until 90% of training, "
        f"N_p = {args.prune_fraction:.0%} of the budget, H0 = {args.threshold}, tolerance 0.1. "
        f"Sparse init `plain`: the dense PyTorch init, masked; `scaled`: kept weights x "
        f"1/sqrt(density) (`scale_initial_weights=True`), same for static and DSR",
        "",
        f"Test accuracy in % (mean ± std over seeds {', '.join(map(str, args.seeds))}); "
        f"the last column is the per-seed DSR − static difference.",
        "",
        f"| noise σ | lr | sparse init | dense | static {pct} | DSR {pct} | DSR − static (per seed) | DSR wins |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        acc = r["acc"]
        diffs = [d - s for d, s in zip(acc["dsr"], acc["static"])]
        lines.append(
            f"| {r['noise']} | {r['lr']} | {r['init']} | {_mean_std(acc['dense'])} | {_mean_std(acc['static'])} | "
            f"{_mean_std(acc['dsr'])} | {100 * statistics.mean(diffs):+.2f} "
            f"({', '.join(f'{100 * d:+.2f}' for d in diffs)}) | {sum(d > 0 for d in diffs)}/{len(diffs)} |"
        )
    pooled = [d - st for r in results for d, st in zip(r["acc"]["dsr"], r["acc"]["static"])]
    lines += [
        "",
        f"Pooled over all {len(pooled)} (setting, seed) pairs: DSR − static "
        f"{100 * statistics.mean(pooled):+.2f} ± {100 * statistics.stdev(pooled):.2f} points, "
        f"DSR ahead in {sum(d > 0 for d in pooled)}, tied in {sum(d == 0 for d in pooled)}, "
        f"behind in {sum(d < 0 for d in pooled)}.",
    ]
    hist = results[0]["dsr"][0]
    cycles = hist.cycles
    lines += [] if not cycles else [
        "",
        f"DSR reallocation (noise {results[0]['noise']}, lr {results[0]['lr']}, init {results[0]['init']}, "
        f"seed {args.seeds[0]}): "
        f"{len(cycles)} cycles, pruned per cycle min/median/max {min(c.pruned for c in cycles)}/"
        f"{int(statistics.median(c.pruned for c in cycles))}/{max(c.pruned for c in cycles)} "
        f"(target {cycles[0].target_pruned}), threshold {cycles[0].threshold:g} -> "
        f"{cycles[-1].next_threshold:g}; final density per layer: "
        + ", ".join(f"{n}: {d:.3f}" for n, d in hist.density_per_layer.items()),
        "",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--sparsity", type=float, default=0.8)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lrs", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.4])
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--copies", type=int, default=3)
    p.add_argument("--test-copies", type=int, default=5)
    p.add_argument("--noises", type=float, nargs="+", default=[0.2])
    p.add_argument("--reallocate-every", type=int, default=100)
    p.add_argument("--prune-fraction", type=float, default=0.1)
    p.add_argument("--threshold", type=float, default=1e-3)
    p.add_argument("--inits", nargs="+", choices=["plain", "scaled"], default=["plain", "scaled"])
    p.add_argument("--dense-first-last", action="store_true")
    p.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    if len(args.seeds) < 2:
        p.error("--seeds needs at least 2 seeds for a standard deviation")
    args.load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    torch.set_num_threads(1)  # small MLP: one thread, and leave the other core to co-workers
    t0 = time.perf_counter()
    results = [row for noise in args.noises for lr in args.lrs for row in run_config(args, noise, lr)]
    wall = time.perf_counter() - t0
    command = "python benchmarks/bench_dsr.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = section(args, results, wall, command.strip())
    print(f"## {TITLE}\n\n{text}")
    if args.write:
        update_section(TITLE, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
