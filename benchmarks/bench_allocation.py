"""Can any channel allocation beat magnitude's by 1.5x in energy on the digits CNN?

    python benchmarks/bench_allocation.py [--seeds 0 1 2] [--variant hard] [--epochs 12] [--tries 24]

The pruning target asks energy-aware / budget pruning to reach magnitude's accuracy with 1.5x
less estimated energy. Those methods differ from magnitude in how many channels each layer
keeps. This benchmark bounds what any such choice can gain on examples/digits' DigitsCNN
(three channel groups: conv1 16, conv2 32, conv3 32 channels) on the eyeriss spec:

- every (c1, c2, c3) allocation is estimated (16,384 of them, re-estimated from the IR);
- magnitude's allocation (global channel scores: pruning.methods.magnitude_levels) is built at
  each energy target, and so are --tries random allocations whose energy lies within
  [0.95, 1] x target at 25 %, 12 % and 7 %;
- every allocation keeps the largest-norm filters of each layer (as magnitude does), gets
  the same fine-tune (--epochs epochs of Adam from the dense weights), and is measured on
  the validation split (to choose) and the test split (to report), from make_splits.

Energy ratio = the energy at which magnitude's allocation reaches the chosen allocation's
test accuracy (interpolated on its curve of three-seed means) / the chosen one's energy.
It prints a markdown table (the figures in RESULTS.md "Pruning" came from this script).
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples" / "digits"))
import digits  # noqa: E402

from energy import load_model  # noqa: E402
from hwspecs import load_spec  # noqa: E402
from pruning.api import _to_module  # noqa: E402
from pruning.cost import EnergyModel  # noqa: E402
from pruning.export import export_onnx  # noqa: E402
from pruning.methods import magnitude_levels  # noqa: E402
from pruning.train import accuracy, fine_tune  # noqa: E402
from pruning.units import ChannelUnits, PruneState  # noqa: E402

MAGNITUDE_TARGETS = (0.60, 0.45, 0.35, 0.25, 0.18, 0.12, 0.10, 0.07, 0.05)
SEARCH_TARGETS = (0.25, 0.12, 0.07)


def run_seed(seed: int, variant: str, hw: str, epochs: float, tries: int, work: Path, log) -> dict:
    (x, y), (vx, vy), (xt, yt) = digits.make_splits(variant, seed=seed)
    model = digits.train_cnn(x, y, epochs=20, seed=seed)
    path = export_onnx(model, torch.from_numpy(x[:1]), work / f"dense_{variant}_{seed}.onnx")
    X, Y = torch.from_numpy(x), torch.from_numpy(y)
    val, test = (torch.from_numpy(vx), torch.from_numpy(vy)), (torch.from_numpy(xt), torch.from_numpy(yt))
    proto, module = _to_module(str(path), X[:1])
    graph = load_model(proto, batch=1).graph
    energy = EnergyModel(graph, load_spec(hw), None)
    units = ChannelUnits(module.eval(), energy, X[:1024], X[:1])
    base = PruneState(module)
    units.start(base)
    groups, sizes = units.units(), [units.sizes[u] for u in units.units()]
    dense_pj = energy.total_pj(graph)
    ratio = {counts: energy.total_pj(units.graph(base, {u: c / s for u, c, s in zip(groups, counts, sizes)})) / dense_pj
             for counts in itertools.product(*[range(1, s + 1) for s in sizes])}

    def trained(counts) -> dict:
        state = base.copy()
        units.apply_counts(state, dict(zip(groups, counts)), restore=False)
        fine_tune(state.module, X, Y, epochs=epochs, seed=seed * 1000 + 7)
        return {"counts": counts, "energy": ratio[counts], "val": accuracy(state.module, *val),
                "test": accuracy(state.module, *test)}

    levels = magnitude_levels(units, base)  # magnitude's own allocation rule

    def magnitude_counts(kept: float) -> tuple[int, ...]:
        chosen = levels(kept)
        return tuple(units.count(u, chosen[u]) for u in groups)

    def magnitude_at(target: float) -> tuple[int, ...]:
        lo, hi = 0.0, 1.0
        for _ in range(30):  # the largest kept score fraction whose allocation meets the target
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if ratio[magnitude_counts(mid)] <= target else (lo, mid)
        return magnitude_counts(lo)

    rng = np.random.default_rng(seed)
    out = {"seed": seed, "magnitude": {}, "search": {}}
    for target in MAGNITUDE_TARGETS:
        out["magnitude"][target] = r = trained(magnitude_at(target))
        log(f"seed {seed} magnitude {target:.0%}: {r['counts']} energy {r['energy']:.3f} test {r['test']:.4f}")
    for target in SEARCH_TARGETS:
        near = [c for c, e in ratio.items() if 0.95 * target <= e <= target]
        picked = [near[i] for i in rng.choice(len(near), min(tries, len(near)), replace=False)]
        tried = sorted((trained(c) for c in picked), key=lambda r: -r["val"])
        out["search"][target] = {"candidates": len(near), "tried": tried}
        log(f"seed {seed} {target:.0%}: best of {len(tried)} / {len(near)} on validation {tried[0]['counts']} "
            f"energy {tried[0]['energy']:.3f} test {tried[0]['test']:.4f}")
    return out


def magnitude_energy_at(curve: list[tuple[float, float]], acc: float) -> float | None:
    """The lowest energy at which the (energy, accuracy) curve reaches acc, interpolated."""
    pts = sorted(curve)
    if pts[0][1] >= acc:
        return pts[0][0]
    for (e0, a0), (e1, a1) in zip(pts, pts[1:]):
        if a0 < acc <= a1:
            return e0 + (e1 - e0) * (acc - a0) / (a1 - a0)
    return None


def render(runs: list[dict], args, wall_s: float, loads: tuple[float, float]) -> str:
    mean = lambda values: float(np.mean(list(values)))  # noqa: E731
    curve = [(mean(r["magnitude"][t]["energy"] for r in runs), mean(r["magnitude"][t]["test"] for r in runs))
             for t in MAGNITUDE_TARGETS]
    lines = [f"Command: `python benchmarks/bench_allocation.py --seeds {' '.join(map(str, args.seeds))} --variant "
             f"{args.variant} --epochs {args.epochs:g} --tries {args.tries}`; "
             f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {wall_s / 60:.0f} min, load average "
             f"{loads[0]:.2f} / {loads[1]:.2f} (start / end). Means over seeds {args.seeds}.", "",
             "| energy target | magnitude's allocation: energy / test acc | best of the random allocations on validation: "
             "energy / test acc | magnitude's energy at that accuracy | energy ratio | best on test (optimistic): "
             "energy / test acc | its ratio |", "|---|---|---|---|---|---|---|"]
    for target in SEARCH_TARGETS:
        chosen = [r["search"][target]["tried"][0] for r in runs]
        top = [max(r["search"][target]["tried"], key=lambda q: q["test"]) for r in runs]
        mag = [r["magnitude"][target] for r in runs]
        row = [f"{target:.0%}", f"{mean(m['energy'] for m in mag):.3f} / {mean(m['test'] for m in mag):.4f}"]
        for picks in (chosen, top):
            e, a = mean(p["energy"] for p in picks), mean(p["test"] for p in picks)
            at = magnitude_energy_at(curve, a)
            row.append(f"{e:.3f} / {a:.4f}")
            if picks is chosen:
                row.append("n/a" if at is None else f"{at:.3f}")
            row.append("n/a" if at is None else f"{at / e:.2f}x")
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Allocations (conv1, conv2, conv3 channels), magnitude's -> the one chosen on validation: " + "; ".join(
        f"seed {r['seed']}: " + ", ".join(f"{t:.0%} {r['magnitude'][t]['counts']} -> {r['search'][t]['tried'][0]['counts']}"
                                         for t in SEARCH_TARGETS) for r in runs) + "."]
    lines.append("Random allocations per target (of all within [0.95, 1] x target): " + ", ".join(
        f"{t:.0%} {len(runs[0]['search'][t]['tried'])} of {runs[0]['search'][t]['candidates']}" for t in SEARCH_TARGETS) + ".")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variant", default="hard", choices=["clean", "hard"])
    parser.add_argument("--hw", default="eyeriss")
    parser.add_argument("--epochs", type=float, default=12.0, help="fine-tune of every allocation")
    parser.add_argument("--tries", type=int, default=24, help="random allocations per energy target")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started, load0 = time.perf_counter(), os.getloadavg()[0]
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        runs = [run_seed(s, args.variant, args.hw, args.epochs, args.tries, Path(tmp), lambda m: print(m, flush=True))
                for s in args.seeds]
    print(render(runs, args, time.perf_counter() - started, (load0, os.getloadavg()[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
