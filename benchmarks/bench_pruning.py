"""Pruning benchmark: the digits CNN on a built-in accelerator spec.

    python benchmarks/bench_pruning.py [--seeds 0 1 2] [--hw eyeriss] [--finetune-epochs 4] [--write] [--quick]

For every seed and data variant (clean digits; the harder noisy, shifted digits of
examples/digits) it trains the dense CNN, then prunes it at each budget with each method at
channel granularity, exports the result to ONNX and measures test accuracy in onnxruntime.
``magnitude`` gets the same number of fine-tuning samples as ``budget`` at the same budget
(``magnitude-ea`` as ``energy-aware``); ``--finetune-epochs`` sets the final fine-tune of
``budget``, ``energy-aware`` and ``magnitude-ft`` (and the fine-tune after each of
``energy-aware``'s passes, which the library ties to it).
It then measures onnxruntime latency (median of repeated runs, one thread) of the dense and
the channel-pruned exports, and with ``--write`` replaces the "## Pruning" section of
benchmarks/RESULTS.md (figures, machine, date, command).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "digits"))
import digits  # noqa: E402

from energy import estimate, load_model  # noqa: E402
from pruning.api import prune  # noqa: E402
from pruning.export import export_onnx  # noqa: E402

METHODS = ("budget", "energy-aware", "magnitude", "magnitude-ea", "magnitude-ft")
# The magnitude baseline each method is compared with: the same fine-tuning samples at the same budget.
BASELINE = {"budget": "magnitude", "energy-aware": "magnitude-ea"}
# "magnitude-ft" is not a baseline but a diagnostic: magnitude with only the methods' final
# fine-tune (finetune_epochs), to tell the channel allocation from the amount of training.
BUDGETS = {"channel": (0.60, 0.45, 0.35, 0.25, 0.18, 0.12, 0.10, 0.07, 0.05, 0.035),  # floor ~1.9 % on eyeriss
           "weight": (0.60, 0.50, 0.42, 0.36, 0.32)}  # weight pruning cannot go below ~31 % on eyeriss


def _latency_ms(path: Path, x: np.ndarray, repeats: int) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for _ in range(10):
        session.run(None, {name: x})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, {name: x})
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def run_seed(seed: int, variant: str, hw: str, budgets, work: Path, finetune_epochs: float, log,
             granularity: str = "channel") -> dict:
    (x, y), (vx, vy), (xt, yt) = digits.make_splits(variant, seed=seed)
    model = digits.train_cnn(x, y, epochs=20, seed=seed)
    dense_path = export_onnx(model, torch.from_numpy(x[:1]), work / f"dense_{variant}_{seed}.onnx")
    dense_acc = digits.onnx_accuracy(dense_path, xt, yt)
    dense_pj = estimate(load_model(dense_path, batch=1).graph, hw).total_energy_pj
    rows = []
    for budget in budgets:
        samples = {}
        for method in METHODS:
            epochs = finetune_epochs
            matched = next((m for m, base in BASELINE.items() if base == method), None)
            if matched is not None:
                epochs = samples[matched] / len(x)
            result = prune(dense_path, hw, budget=budget, method="magnitude" if method.startswith("magnitude") else method,
                           granularity=granularity,
                           train=(x, y), val=(vx, vy), seed=seed, finetune_epochs=epochs)
            samples[method] = result.samples_trained
            out = result.save(work / f"{granularity}_{variant}_{seed}_{method}_{int(round(budget * 100))}.onnx", source=dense_path)
            exported_pj = estimate(load_model(out, batch=1).graph, hw).total_energy_pj  # what a user re-estimates
            row = {"seed": seed, "variant": variant, "granularity": granularity, "budget": budget, "method": method,
                   "energy_ratio": exported_pj / dense_pj, "pruner_energy_ratio": result.energy_ratio,
                   "test_accuracy": digits.onnx_accuracy(out, xt, yt),
                   "dense_test_accuracy": dense_acc, "samples_trained": result.samples_trained,
                   "wall_s": result.wall_time_s, "channels": [(p.kept, p.total) for p in result.plan], "path": str(out)}
            rows.append(row)
            log(f"{granularity} {variant} seed {seed} {method:12s} budget {budget:.0%}: energy {row['energy_ratio']:.3f} "
                f"test acc {row['test_accuracy']:.4f} (dense {dense_acc:.4f}) {row['wall_s']:.1f}s")
    return {"dense_path": str(dense_path), "dense_test_accuracy": dense_acc, "rows": rows, "x_test": xt,
            "variant": variant, "seed": seed, "granularity": granularity}


def min_energy_at(points: list[tuple[float, float]], level: float) -> float | None:
    """Smallest energy ratio reaching mean accuracy >= level, interpolating linearly between
    neighbouring budgets (points: (energy ratio, accuracy), any order)."""
    pts = sorted(points)
    best = None
    for (e0, a0), (e1, a1) in zip(pts, pts[1:]):
        if a0 >= level:
            best = e0 if best is None else min(best, e0)
        elif a1 >= level:  # crosses between e0 (too low) and e1
            best = min(best, e0 + (e1 - e0) * (level - a0) / (a1 - a0)) if best is not None else e0 + (e1 - e0) * (level - a0) / (a1 - a0)
    if pts and pts[-1][1] >= level:
        best = pts[-1][0] if best is None else min(best, pts[-1][0])
    return best


def summarise(rows: list[dict]) -> dict:
    table: dict = {}
    for r in rows:
        table.setdefault((r.get("granularity", "channel"), r["variant"], r["method"], r["budget"]), []).append(r)
    means = {k: {"energy": statistics.mean(r["energy_ratio"] for r in v),
                 "acc": statistics.mean(r["test_accuracy"] for r in v),
                 "acc_min": min(r["test_accuracy"] for r in v),
                 "acc_sd": statistics.pstdev([r["test_accuracy"] for r in v]),
                 "n": len(v), "samples": statistics.mean(r["samples_trained"] for r in v),
                 "wall": statistics.mean(r["wall_s"] for r in v)} for k, v in table.items()}
    return means


def equal_accuracy(means: dict, granularity: str, variant: str, dense: float) -> list[dict]:
    out = []
    for drop in (0.005, 0.01, 0.02, 0.03):
        level = dense - drop
        energies = {}
        for method in METHODS:
            pts = [(v["energy"], v["acc"]) for (g, var, m, _), v in means.items() if g == granularity and var == variant and m == method]
            energies[method] = min_energy_at(pts, level) if pts else None
        row = {"level": level, "drop": drop, **{f"E_{m}": e for m, e in energies.items()}}
        for m, base in BASELINE.items():
            e, mag = energies[m], energies.get(base)
            row[f"saving_ratio_{m}"] = (1 - e) / (1 - mag) if e is not None and mag is not None and mag < 1 else None
            row[f"energy_ratio_{m}"] = mag / e if e is not None and mag is not None else None
        out.append(row)
    return out


def speed(results: dict, repeats: int, log) -> list[dict]:
    """onnxruntime latency of dense vs channel-pruned exports (clean variant, first seed),
    also re-pruned with channel counts rounded to a multiple of 8."""
    first = next((r for r in results if r["variant"] == "clean" and r["granularity"] == "channel"), None)
    if first is None:  # e.g. --variants hard
        return []
    dense = Path(first["dense_path"])
    xt = first["x_test"]
    rows = []
    candidates = [("dense", dense)]
    for r in first["rows"]:
        if r["method"] == "budget" and r["budget"] in (0.25, 0.10):
            candidates.append((f"budget {r['budget']:.0%} (channels {r['channels']})", Path(r["path"])))
    (x, y), (vx, vy), _ = digits.make_splits("clean", seed=first["seed"])
    for budget in (0.25,):
        res = prune(dense, "eyeriss", budget=budget, method="budget", granularity="channel", train=(x, y),
                    val=(vx, vy), seed=first["seed"], channel_multiple=8)
        path = res.save(dense.parent / f"mult8_{int(budget * 100)}.onnx", source=dense)
        candidates.append((f"budget {budget:.0%}, multiple of 8 (channels {[(p.kept, p.total) for p in res.plan]}, energy {res.energy_ratio:.3f})", path))
    for batch in (1, 256):
        xb = np.ascontiguousarray(np.resize(xt, (batch,) + xt.shape[1:]).astype(np.float32))
        base = None
        for name, path in candidates:
            ms = _latency_ms(path, xb, repeats if batch == 1 else max(20, repeats // 20))
            base = ms if base is None else base
            rows.append({"batch": batch, "model": name, "ms": ms, "speedup": base / ms, "bytes": path.stat().st_size})
            log(f"batch {batch} {name}: {ms:.4f} ms ({base / ms:.2f}x)")
    return rows


def _epochs_text(finetune_epochs) -> str:
    """'4-epoch' (or '4/12-epoch' for dumps run with different final fine-tunes)."""
    values = sorted({float(e) for e in finetune_epochs}) or [4.0]
    return "/".join(f"{e:g}" for e in values) + "-epoch"


def markdown(means: dict, comparisons: dict, speed_rows: list[dict], dense: dict, command: str, seeds, wall_min: float,
             load: str, finetune_epochs=(4.0,)) -> str:
    epochs = _epochs_text(finetune_epochs)
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
    lines = ["## Pruning", "",
             f"Command: `{command}`  ",
             f"Date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; machine: {platform.machine()}, "
             f"{os.cpu_count()} cores, 1-minute load average {load}, torch {torch.__version__} with 1 thread, "
             f"onnxruntime with 1 thread; measuring took {wall_min:.0f} min.",
             "",
             "Model: examples/digits DigitsCNN (conv 1-16-32, pool, conv 32, fc 512-10), trained 20 epochs (Adam) per seed. "
             "Spec `eyeriss` (zero weights skipped, zero inputs gated). Energies are the estimator's, as a fraction of the "
             "dense estimate (batch 1), re-estimated from the exported ONNX file; test accuracy of the exported ONNX in onnxruntime, mean / min / sd over seeds "
             f"{list(seeds)}. `clean`: sklearn digits / 16; `hard`: 3 copies of each image with N(0, 0.15) pixel noise "
             "and random +-1 pixel shifts. Train / validation / test = 60 / 15 / 25 % of the source images (so the "
             "validation set that pruning selects on holds no noisy twin of a training image); least squares uses up "
             "to 1024 training images. Same training budget: `magnitude` gets "
             "the same number of fine-tuning samples as `budget` at the same budget (all its proposals' short "
             "fine-tunes included), `magnitude-ea` as many as `energy-aware` used there (its passes' and final "
             f"{epochs} fine-tunes; samples column); each method is compared with its own baseline. `magnitude-ft` "
             f"is not a baseline but a diagnostic: magnitude with only the {epochs} final fine-tune the other methods "
             "end with: the channels `magnitude` keeps, trained less.", ""]
    for (granularity, variant), comps in comparisons.items():
        lines += [f"### {granularity} granularity, {variant} digits (dense test accuracy {dense[(granularity, variant)]:.4f})", "",
                  "| budget | method | energy (of dense) | test acc mean | min | sd | fine-tune samples | wall s |",
                  "|---|---|---|---|---|---|---|---|"]
        for (g, var, method, budget), v in sorted(means.items(), key=lambda kv: (-kv[0][3], METHODS.index(kv[0][2]) if kv[0][2] in METHODS else 9)):
            if g == granularity and var == variant:
                lines.append(f"| {budget:.0%} | {method} | {v['energy']:.3f} | {v['acc']:.4f} | {v['acc_min']:.4f} | "
                             f"{v['acc_sd']:.4f} | {v['samples']:.0f} | {v['wall']:.1f} |")
        lines += ["", "Equal accuracy (mean over seeds, interpolated between budgets): the smallest energy that reaches "
                  "the accuracy; energy ratio = E_baseline / E_method (Yang's 'x more energy reduction'); saving ratio "
                  "= (1 - E_method) / (1 - E_baseline); baseline = magnitude with the same samples (n/a: never reached "
                  "on the grid).", "",
                  "| accuracy >= | E budget | E magnitude | E energy-aware | E magnitude-ea | energy ratio budget | energy ratio energy-aware | saving ratio budget | saving ratio energy-aware |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for c in comps:
            lines.append(f"| {c['level']:.4f} (dense - {c['drop']:.1%}) | {fmt(c['E_budget'])} | {fmt(c['E_magnitude'])} | "
                         f"{fmt(c['E_energy-aware'])} | {fmt(c.get('E_magnitude-ea'))} | {fmt(c['energy_ratio_budget'])} | "
                         f"{fmt(c['energy_ratio_energy-aware'])} | {fmt(c['saving_ratio_budget'])} | "
                         f"{fmt(c['saving_ratio_energy-aware'])} |")
        lines.append("")
    lines += targets(means, comparisons, speed_rows, dense)
    lines += allocation(means, epochs)
    lines += ["Notes: the test sets hold 449 (clean) and 1347 (hard) images, so one image is 0.22 % / 0.07 %; the "
              "equal-accuracy figures interpolate three-seed means and move by tens of percent with one seed. Weight "
              "pruning cannot go below about 31 % of the dense energy on eyeriss at 2 % minimum density: activation "
              "traffic (and the max pool) does not shrink with sparse weights. Channel pruning reaches about 2 % (one channel per group).", ""]
    lines += CHANGES
    if speed_rows:
        lines += ["### onnxruntime latency, dense vs channel-pruned exports (clean, first seed; median, 1 thread)", "",
                  "| batch | model | median ms | speed-up | file bytes |", "|---|---|---|---|---|"]
        lines += [f"| {r['batch']} | {r['model']} | {r['ms']:.4f} | {r['speedup']:.2f}x | {r['bytes']} |" for r in speed_rows]
    return "\n".join(lines) + "\n"


# What changed in pruning/methods.py for this run, and what the diagnosis measured (2026-12-01).
# Those figures come from separate runs, not from the tables above: hard digits, channel
# granularity, eyeriss, 4-epoch final fine-tune, test accuracy of the torch model, paired by seed
# (the same dense model); "+-" is one standard error of the mean paired difference.
CHANGES = [
    "### Low budgets on the noisy digits: diagnosis and changes (2026-12-01)", "",
    "Changed in `pruning/methods.py`:", "",
    "- `budget` keeps, as NetAdapt does, the most accurate proposal among those that meet the step's target "
    "(ties: the one saving more). It ranked by accuracy lost per pJ saved, which rewards overshoot where one "
    "channel is a large share of a group: on seed 2 at a 5 % budget it cut conv1 from 4 channels to 1 "
    "(validation accuracy 0.425, 2.6 % of the dense energy saved) rather than conv3 from 5 to 2 (0.468, 2.1 %). "
    "The two rules agree in most steps; over seeds 0-4 mean test accuracy went 0.908 -> 0.906 (25 %), "
    "0.774 -> 0.796 (10 %), 0.440 -> 0.448 (5 %), each change from one or two seeds whose path differed.",
    "- `energy-aware`, once its accuracy limit is relaxed to meet a budget, ranks each candidate step after a "
    "short fine-tune (kept with the step) instead of straight after least squares: over seeds 0-4 "
    "+0.9 +- 0.4 points at 25 %, +1.1 +- 1.5 at 10 %, +1.2 +- 4.4 at 5 %, for 10 / 33 / 46 % more "
    "fine-tuning samples (which `magnitude-ea` then also gets). Ranking `budget`'s proposals straight "
    "after least squares had lost 1.3 / 2.2 / 8 points (8 of 9 seed pairs lower).", "",
    "Measured and not adopted:", "",
    "- Noise of the short fine-tune that ranks proposals: one proposal's validation accuracy has sd 0.006 "
    "over data orders, while the proposals of an early step differ by 0.005-0.015, so early choices are "
    "close to random. Giving a step's proposals one shared data order halves the noise of their "
    "comparison (sd of the difference 0.011 -> 0.006) but lowered final accuracy (seeds 0-4: "
    "-0.8 +- 0.4 / -2.8 +- 1.3 / -3.5 +- 0.8 points at 25 / 10 / 5 %): with independent orders the best of "
    "three fine-tuned proposals is also the best-trained one, and its weights carry on.",
    "- Step size: the step shrinks by 0.9 a step in pJ, but each step overshoots its target (whole "
    "channels), so the energy falls faster than the schedule and late steps ask for 17-22 % of what is "
    "left; then every proposal halves a group (7 -> 4, 6 -> 3, 4 -> 1 channels), and at 5 % conv3 ends "
    "with one channel on 3 of 5 seeds. Capping the step at 10 % of the remaining energy left one channel on "
    "1 of 5 seeds and scored +3.2 +- 3.9 (5 %) and +3.4 +- 3.9 (7 %) points, but -3.2 +- 0.8 (seeds 0-4) and "
    "-1.0 +- 0.6 (seeds 5-9) at 10 %, with 7-21 % more samples.",
    "- Least-squares restoration toward the dense outputs: switched off, accuracy fell at 25 % and 10 % "
    "(-1.6 and -2.8 points, 3 of 3 seeds each) and rose at 5 % (+14 points, 3 of 3), so it hurts only "
    "where a group keeps 1-3 channels. Restoring toward the outputs of the model being pruned instead of "
    "the dense one: -0.2 +- 0.3 (25 %), -2.0 +- 1.6 (10 %, 8 seeds), -0.6 +- 6.2 (5 %).",
    "- Training rather than channel choice is most of the gap to `magnitude` at low budgets: the "
    "`magnitude-ft` rows keep the channels `magnitude` keeps with only the final fine-tune, and fall far "
    "below `budget` and `energy-aware` there (summary above). At 10 % on seed 2 (hard) all three kept the "
    "very same channels (4, 6, 5): `magnitude-ft` 0.704 after 12,936 samples, `budget` 0.789 (59,016 "
    "samples, its final fine-tune 12,936 of them), `magnitude` 0.820 after 59,044 on that one network. "
    "Under the same-samples rule the NetAdapt search spends about half of its samples on proposals it "
    "discards, so at low budgets it must pick much better channels than magnitude to come out ahead, and "
    "on this three-group model it does not. (With a 12-epoch final fine-tune for every method this holds only "
    "down to about 10 % on the hard digits; below that `budget`'s own channel choice is worse than magnitude's: "
    "see \"Pruning: is 1.5x reachable on this model?\".)", "",
    "Against the previous run (2026-12-01 09:58, before these changes): channel, hard digits, mean test "
    "accuracy at 10 / 7 / 5 %: `budget` 0.774 / 0.615 / 0.370 -> 0.774 / 0.603 / 0.394 (its path changed on "
    "one seed only), `energy-aware` 0.764 / 0.638 / 0.505 -> 0.772 / 0.659 / 0.539, but `magnitude-ea`, "
    "which now gets the extra samples, 0.822 / 0.754 / 0.667 -> 0.832 / 0.776 / 0.700. At equal accuracy on "
    "the hard digits `budget` is unchanged (energy ratio 0.89-1.19) and `energy-aware` 1.00-1.04 -> "
    "1.09-1.15: the 1.5x target is still missed, and the accuracy levels it is judged at (dense -0.5 to "
    "-3 %) lie at about 25-60 % of the dense energy, where the methods differ by about the spread over "
    "seeds or less. Clean "
    "digits: `budget` 1.19-1.51 -> 1.21-1.68, `energy-aware` 1.24-2.55 -> 1.10-2.66; at 3.5 % `budget` fell "
    "0.807 -> 0.709 (on seeds 1 and 2 the path took another turn part-way and ended with conv2 and "
    "conv3 at one channel each), `energy-aware` rose 0.710 -> 0.820. Weight granularity: unchanged "
    "(1.12-1.15 and 1.32-1.48). While the channel run measured, the diagnosis experiments ran on the "
    "other core for about 8 minutes: the wall-s columns carry that load, the accuracies (seeded, one "
    "thread) do not.", ""]


def allocation(means: dict, epochs: str = "4-epoch") -> list[str]:
    """Low budgets: each method against magnitude with the same samples and with only the final
    fine-tune (computed from the means; empty when the diagnostic was not run)."""
    keys = sorted({(g, var) for (g, var, m, _) in means if m == "magnitude-ft"})
    lines, ratios = [], []
    for g, var in keys:
        budgets = sorted({b for (g2, v2, m, b) in means if (g2, v2) == (g, var)})[:4]
        parts = []
        for b in budgets:
            acc = {m: means[(g, var, m, b)]["acc"] for m in METHODS if (g, var, m, b) in means}
            parts.append(f"{b:.1%}: " + ", ".join(f"{m} {a:.3f}" for m, a in acc.items()))
            short = means[(g, var, "magnitude-ft", b)]["samples"]
            ratios += [means[(g, var, m, b)]["samples"] / short for m in BASELINE.values() if (g, var, m, b) in means and short]
        lines.append(f"- {g}, {var} digits, mean test accuracy at the lowest budgets: " + "; ".join(parts) + ".")
    if not lines:
        return []
    return ([f"What is kept, or how long it is trained? At the lowest budgets `budget`, `energy-aware` and "
             f"`magnitude-ft` end with the same {epochs} fine-tune, while `magnitude` and `magnitude-ea` fine-tune "
             f"their final networks on {min(ratios):.1f}-{max(ratios):.1f}x the samples of `magnitude-ft`:", ""]
            + lines + [""])


def targets(means: dict, comparisons: dict, speed_rows: list[dict], dense: dict) -> list[str]:
    """The brief's targets against the measured figures (met or not, computed, not typed in)."""
    lines = ["### Targets", "", "| target | measured | met |", "|---|---|---|"]
    for budget, floor in ((0.25, 0.97), (0.10, 0.95)):
        for method in ("budget", "energy-aware"):
            v = means.get(("channel", "clean", method, budget))
            if v:
                lines.append(f"| channel, clean digits, {budget:.0%} budget: test accuracy >= {floor:.0%} ({method}) | "
                             f"mean {v['acc']:.4f}, min {v['acc_min']:.4f} (dense {dense[('channel', 'clean')]:.4f}) | "
                             f"{'yes' if v['acc'] >= floor else 'no'}{'' if v['acc_min'] >= floor else ' (not every seed)'} |")
    for (granularity, variant), comps in comparisons.items():
        for method in ("budget", "energy-aware"):
            savings = [c[f"saving_ratio_{method}"] for c in comps if c[f"saving_ratio_{method}"] is not None]
            energies = [c[f"energy_ratio_{method}"] for c in comps if c[f"energy_ratio_{method}"] is not None]
            if savings:
                hits = sum(e >= 1.5 for e in energies)
                lines.append(f"| {granularity}, {variant}: {method} saves >= 1.5x the energy {BASELINE[method]} saves at equal accuracy | "
                             f"saving ratio {min(savings):.2f}-{max(savings):.2f}; energy ratio E_mag/E {min(energies):.2f}-{max(energies):.2f} "
                             f"(accuracy levels dense -0.5 to -3 %) | saving ratio: {'yes' if max(savings) >= 1.5 else 'no'}; "
                             f"energy ratio (Yang's 'x more energy reduction'): >= 1.5 at {hits} of {len(energies)} levels |")
    for r in speed_rows:
        if r["model"] != "dense":
            lines.append(f"| channel-pruned export faster than dense in onnxruntime (batch {r['batch']}, {r['model'].split(' (')[0]}) | "
                         f"{r['speedup']:.2f}x | {'yes' if r['speedup'] > 1 else 'no'} |")
    return lines + ["", "The same comparison with a 12-epoch final fine-tune for every method, and the best any channel "
                    "allocation of this model can do: \"Pruning: is 1.5x reachable on this model?\" below.", ""]


def render(payloads: list[dict], command: str) -> str:
    rows = [r for p in payloads for r in p["rows"]]
    speed_rows = [r for p in payloads for r in p.get("speed", [])]
    means = summarise(rows)
    dense: dict = {}
    for r in rows:
        dense.setdefault((r.get("granularity", "channel"), r["variant"]), {})[r["seed"]] = r["dense_test_accuracy"]
    dense = {k: statistics.mean(v.values()) for k, v in dense.items()}
    comparisons = {k: equal_accuracy(means, k[0], k[1], dense[k]) for k in sorted(dense)}
    seeds = sorted({r["seed"] for r in rows})
    wall = sum(p.get("wall_s", 0.0) for p in payloads) / 60
    loads = [v for p in payloads for v in p.get("load_average", [])]
    load = f"{min(loads):.1f}-{max(loads):.1f} (start and end of each run)" if loads else "not recorded"
    finetune_epochs = [p.get("finetune_epochs", 4.0) for p in payloads]  # dumps from before the option: 4
    return markdown(means, comparisons, speed_rows, dense, command, seeds, wall, load, finetune_epochs)


def write_section(path: Path, section: str) -> None:
    """Replace (or append) the '## Pruning' section of RESULTS.md, atomically."""
    text = path.read_text() if path.exists() else "# Benchmark results\n\n"
    start = text.find("\n## Pruning\n")
    if text.startswith("## Pruning\n"):
        start = 0
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start].rstrip("\n") + "\n\n" + section + ("\n" + text[end + 1:] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".RESULTS.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--hw", default="eyeriss")
    parser.add_argument("--granularities", nargs="+", default=["channel", "weight"], choices=["channel", "weight"])
    parser.add_argument("--variants", nargs="+", default=None, choices=["clean", "hard"],
                        help="default: clean and hard for channel, clean for weight")
    parser.add_argument("--write", action="store_true", help="update the Pruning section of benchmarks/RESULTS.md")
    parser.add_argument("--quick", action="store_true", help="two budgets, clean digits only")
    parser.add_argument("--finetune-epochs", type=float, default=4.0,
                        help="final fine-tune (epochs) of budget, energy-aware (also after each of its passes) "
                             "and magnitude-ft; the matched magnitude baselines get the same total samples as "
                             "their method (default 4)")
    parser.add_argument("--json", type=Path, default=None, help="dump all rows as JSON")
    parser.add_argument("--render", type=Path, nargs="+", default=None, help="only render these JSON dumps")
    args = parser.parse_args(argv)
    command = "python benchmarks/bench_pruning.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.render:
        payloads = [json.loads(p.read_text()) for p in args.render]
        command = " ; ".join(p.get("command", "?") for p in payloads)
    else:
        torch.set_num_threads(1)
        started = time.perf_counter()
        load_before = os.getloadavg()[0]
        log = lambda message: print(message, flush=True)
        results = []
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            for granularity in args.granularities:
                budgets = (0.25, 0.10) if args.quick and granularity == "channel" else (0.5, 0.36) if args.quick else BUDGETS[granularity]
                variants = args.variants or (["clean"] if args.quick or granularity == "weight" else ["clean", "hard"])
                for variant in variants:
                    results += [run_seed(s, variant, args.hw, budgets, work, args.finetune_epochs, log, granularity) for s in args.seeds]
            speed_rows = speed(results, 2000 if not args.quick else 300, log) if "channel" in args.granularities else []
        payloads = [{"command": command, "finetune_epochs": args.finetune_epochs, "rows": [r for res in results for r in res["rows"]], "speed": speed_rows,
                     "wall_s": time.perf_counter() - started, "load_average": [load_before, os.getloadavg()[0]]}]
        if args.json:
            args.json.write_text(json.dumps(payloads[0], indent=1, default=str))
    section = render(payloads, command)
    print(section)
    if args.write:
        write_section(ROOT / "benchmarks" / "RESULTS.md", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
