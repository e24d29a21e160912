"""Sweep benchmark: 3 models x 3 devices x 4 budgets on this machine's cores, where the time goes
(per phase inside each cell, and the sweep's own overhead), and a kill + resume check.

    python benchmarks/bench_sweep.py [--jobs 2] [--out build/bench_sweep] [--no-small] [--no-kill] [--write]

Models: the digits CNN of examples/digits (built by the sweep), a smaller CNN and an MLP, all
trained here on the same noisy 8x8 digits. Each pruned cell: the `budget` method at channel
granularity. Three sweeps: digits.py's data (3 noisy copies of each training image) with
pruning's default fine-tuning; one copy with the default fine-tuning; one copy with the quick
fine-tuning of examples/sweep/default.yaml. The cells time estimate/prune/export/validate, and
pruning itself splits its time into fine-tuning, the energy cost model, proposals (least-squares
restoration included), accuracy evaluation and the rest (pruning.api PruningResult.time_s),
which the cells record as prune.<phase>. The kill check runs the quick sweep in a subprocess,
SIGKILLs it after half the cells, resumes it and compares the tables with the uninterrupted
run.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DEVICES = ["eyeriss", "mobile-cpu", "edge-tpu-int8"]
BUDGETS = ["100%", "60%", "40%", "25%"]


def warm_cell(job):
    """run_cell, after importing torch._dynamo: torch's first optimizer construction imports it
    (~3 s, once per process), which is worker start-up, not the first cell's fine-tuning."""
    import torch._dynamo  # noqa: F401

    from sweep.cells import run_cell

    return run_cell(job)


def make_models(folder: Path, copies: int) -> None:
    """Train the small CNN and the MLP on the digits example's data (``copies`` noisy copies of
    each training image); write ONNX + npz into ``folder``."""
    import numpy as np
    import torch
    from torch import nn

    from pruning.export import export_onnx
    from sweep.models import load_example

    torch.set_num_threads(1)
    digits = load_example("digits")
    (x, y), (x_test, y_test) = digits.make_dataset("hard", seed=0, copies=copies)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "train.npz", x=x, y=y)
    np.savez(folder / "test.npz", x=x_test, y=y_test)
    nets = {
        "small-cnn": lambda: nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1),
                                           nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 16, 10)),
        "mlp": lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                                     nn.Linear(64, 10)),
    }
    from pruning.train import fine_tune

    for name, make in nets.items():
        torch.manual_seed(0)
        model = make()
        fine_tune(model, torch.from_numpy(x), torch.from_numpy(y), epochs=8, seed=0, lr=4e-3)
        export_onnx(model, torch.from_numpy(x[:1]), folder / f"{name}.onnx")


QUICK_PRUNE = "prune: {finetune_epochs: 1, short_epochs: 0.2}\n"  # what examples/sweep/default.yaml uses


def write_config(folder: Path, name: str, copies: int, prune_line: str = "") -> Path:
    """The 3 x 3 x 4 sweep on the data of make_models(folder, copies); ``prune_line`` empty:
    pruning's default fine-tuning. The digits CNN trains as digits.py does (20 epochs) on the
    3-copy data, 8 epochs on the 1-copy data."""
    models = "\n".join(f"  - {{name: {n}, onnx: {n}.onnx, train: train.npz, test: test.npz}}" for n in ("small-cnn", "mlp"))
    epochs = 20 if copies >= 3 else 8
    text = (f"seed: 0\nmodels:\n  - {{name: digits-cnn, example: digits, epochs: {epochs}, copies: {copies}}}\n{models}\n"
            f"devices: [{', '.join(DEVICES)}]\nbudgets: [{', '.join(BUDGETS)}]\nmethods: [budget]\n"
            f"granularities: [channel]\n{prune_line}")
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def kill_and_resume(config: Path, out: Path, jobs: int, total: int) -> dict:
    """Run the sweep in a subprocess, SIGKILL it once half the cells are stored, resume."""
    from sweep import run_sweep

    cells = out / "cells"
    script = f"import sys; sys.path.insert(0, {str(REPO)!r}); from sweep import run_sweep; run_sweep(sys.argv[1], sys.argv[2], jobs={jobs}, progress=False)"
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", script, str(config), str(out)], start_new_session=True)
    while proc.poll() is None and (len(list(cells.glob("*.json"))) if cells.is_dir() else 0) < total // 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its pool workers, as a hard crash would
    proc.wait()
    killed_at = time.perf_counter() - start
    stored = len(list(cells.glob("*.json")))
    resumed = run_sweep(config, out, jobs=jobs, progress=False, resume=True)
    return {"killed_after_s": killed_at, "stored": stored, "reused": len(resumed.reused),
            "computed": len(resumed.computed), "resume_wall_s": resumed.wall_s, "result": resumed}


def time_split(sweep) -> list[str]:
    """Rows of the where-the-time-goes table of one sweep, and the two headline shares."""
    from pruning.api import TIME_PHASES

    phases = sweep.phase_totals_s()
    inner = {k: sum(r.timings_s.get(f"prune.{k}", 0.0) for r in sweep.results) for k in TIME_PHASES}
    total = phases["total"]
    rows = ["| part | s | share of cell time |", "|---|---|---|"]
    for name in ("load", "estimate", "prune", "export", "validate"):
        rows.append(f"| cell: {name} | {phases[name]:.1f} | {100 * phases[name] / total:.1f}% |")
    labels = {"fine-tuning": "fine-tuning", "estimation": "energy cost model (estimation)",
              "proposals": "proposals (state copies, masks, least-squares restoration)",
              "evaluation": "accuracy evaluation", "other": "other (data checks, ONNX -> torch, unit setup)"}
    for name in TIME_PHASES:
        rows.append(f"| &nbsp;&nbsp;prune: {labels[name]} | {inner[name]:.1f} | {100 * inner[name] / total:.1f}% |")
    overhead = sweep.orchestration_s()
    parts = {labels[k]: inner[k] for k in TIME_PHASES}
    parts.update({f"{k} phase": phases[k] for k in ("load", "estimate", "export", "validate")})
    estimation = phases["estimate"] + inner["estimation"]
    parts["estimation (estimate phase + cost model)"] = estimation
    top = max((k for k in parts if k not in (labels["estimation"], "estimate phase")), key=parts.get)
    rows += [
        f"| all cells | {total:.1f} | 100% |",
        "",
        f"Wall {sweep.wall_s:.1f} s on {sweep.jobs} workers. Outside the cells: preparing models (building the digits "
        f"CNN, checking files) {sweep.prepare_s:.1f} s, report {sweep.report.wall_s:.1f} s, orchestration overhead "
        f"(worker start-up, scheduling, idle tail = wall - prepare - report - cell time / workers) {overhead:.1f} s "
        f"= {100 * overhead / sweep.wall_s:.1f}% of the wall time. Fine-tuning is "
        f"**{100 * inner['fine-tuning'] / total:.0f}%** of cell time; estimation (the estimate phase plus the cost "
        f"model inside pruning) **{100 * estimation / total:.0f}%**; "
        f"the largest single part is {top} ({100 * parts[top] / total:.0f}%)"
        + ("." if top == "fine-tuning" else "; fine-tuning does **not** dominate here."),
    ]
    return rows


def _sweep_lines(title: str, sweep, models_s: float) -> list[str]:
    ok = [r for r in sweep.results if r.ok]
    return [f"### {title}", "",
            f"{len(sweep.results)} cells ({len(ok)} ok, {len(sweep.failed)} failed) on a process pool of {sweep.jobs} "
            f"workers: **wall {sweep.wall_s:.1f} s ({sweep.wall_s / 60:.1f} min)**, plus {models_s:.1f} s to train the "
            "two extra models. Where the time goes (seconds summed over cells, measured inside the workers; the prune "
            "phase split as pruning.api reports it, PruningResult.time_s):", "",
            *time_split(sweep), ""]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--out", type=Path, default=REPO / "build" / "bench_sweep")
    parser.add_argument("--no-kill", action="store_true", help="skip the kill + resume check")
    parser.add_argument("--no-small", action="store_true", help="skip the two sweeps on the 1-copy data")
    parser.add_argument("--write", action="store_true", help="write the Sweep section of benchmarks/RESULTS.md")
    args = parser.parse_args(argv)

    from sweep import run_sweep

    load_before = os.getloadavg()
    started = time.perf_counter()
    if args.out.exists():
        shutil.rmtree(args.out)
    flags = "".join(f" --{f}" for f, on in (("no-kill", args.no_kill), ("no-small", args.no_small), ("write", args.write)) if on)
    lines = [
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}; load average (1/5/15 min) before "
        f"{' '.join(f'{v:.2f}' for v in load_before)}, after {{after}}",
        f"- command: `python benchmarks/bench_sweep.py --jobs {args.jobs}{flags}` (whole script {{script_s}})",
        f"- every sweep: 3 models (digits-cnn from examples/digits, small-cnn, mlp; noisy 8x8 digits) x 3 devices "
        f"({', '.join(DEVICES)}) x 4 budgets ({', '.join(BUDGETS)}); method budget, channel granularity, validation "
        "on (onnxruntime vs torch, kernels vs onnxruntime)",
        "",
    ]
    runs = [("main", 3, "", "digits.py's data (3 noisy copies of each training image), pruning's default "
             "fine-tuning (finetune_epochs 3, short_epochs 0.3)")]
    if not args.no_small:
        runs += [("small", 1, "", "one noisy copy of each training image, pruning's default fine-tuning"),
                 ("quick", 1, QUICK_PRUNE, "one noisy copy, the quick fine-tuning of examples/sweep/default.yaml "
                  "(finetune_epochs 1, short_epochs 0.2)")]
    sweeps, built = {}, set()
    for name, copies, prune_line, title in runs:
        folder = args.out / f"copies{copies}"
        t0 = time.perf_counter()
        if copies not in built:  # the 1-copy sweeps share their data and models
            make_models(folder, copies)
            built.add(copies)
        models_s = time.perf_counter() - t0
        config = write_config(folder, name, copies, prune_line)
        sweeps[name] = (config, run_sweep(config, args.out / name, jobs=args.jobs, progress=True, cell_fn=warm_cell))
        lines += _sweep_lines(title, sweeps[name][1], models_s)
    if args.no_kill:
        lines.append("Kill + resume: not run (--no-kill).")
    else:
        name = "quick" if "quick" in sweeps else "main"
        config, whole = sweeps[name]
        k = kill_and_resume(config, args.out / "killed", args.jobs, len(whole.results))
        same = all((args.out / name / n).read_text() == (args.out / "killed" / n).read_text()
                   for n in ("results.csv", "results.json", "plots.json", "report.md"))
        lines.append(f"Kill + resume (the {name} sweep): run in a subprocess, SIGKILLed (driver and pool workers) after "
                     f"{k['killed_after_s']:.1f} s with {k['stored']}/{len(whole.results)} cells stored; the "
                     f"re-run with resume reused {k['reused']} and computed {k['computed']} in {k['resume_wall_s']:.1f} s; "
                     f"results.csv, results.json, plots.json and report.md byte-identical to the uninterrupted run: "
                     f"**{'yes' if same else 'NO'}**.")
    after = " ".join(f"{v:.2f}" for v in os.getloadavg())
    body = "\n".join(lines).replace("{after}", after).replace("{script_s}", f"{time.perf_counter() - started:.0f} s")
    print(body)
    for _, sweep in sweeps.values():
        for r in sweep.failed:
            print(f"failed: {r.key}: {r.error}")
    if args.write:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from results import update_section

        update_section("Sweep", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
