"""The sweep report: ``report.md`` with PNG plots, and ``plots.json`` holding exactly the data
each plot shows (so tests and readers can check the plots against the table).

- per device: accuracy vs estimated energy of every finished cell, Pareto front marked
  (no other cell on the device is at most as costly and at least as accurate);
- per model: energy by memory level (and MAC) before and after pruning, one panel per device.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from sweep.cells import CellResult
from sweep.store import atomic_write_bytes, atomic_write_text


@dataclass(frozen=True)
class ReportData:
    """What the report shows: ``plots`` maps each PNG name to its plotted data."""

    path: Path
    plots: dict
    wall_s: float


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points (energy, accuracy) no other point dominates (energy <= and
    accuracy >=, one strictly), sorted by energy."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def _label(r: CellResult, multi: bool) -> str:
    if r.budget == "100%":
        return "dense"
    return f"{r.budget} {r.method}/{r.granularity}" if multi else r.budget


def _png(fig) -> bytes:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def _pareto_plot(device: str, cells: list[CellResult], out: Path) -> dict:
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    points = [(r.energy_pj, r.accuracy) for r in cells]
    front = pareto_front(points)
    models = sorted({r.model for r in cells}, key=[r.model for r in cells].index)
    methods = sorted({r.method for r in cells}, key=[r.method for r in cells].index)
    markers = dict(zip(methods, "*osD^v<>ph"))
    colors = dict(zip(models, plt.get_cmap("tab10").colors))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in cells:
        ax.scatter(r.energy_pj / 1e6, 100 * r.accuracy, color=colors[r.model], marker=markers[r.method],
                   s=90 if r.method == "dense" else 45, zorder=3)
    fx = [points[i][0] / 1e6 for i in front]
    fy = [100 * points[i][1] for i in front]
    ax.step(fx, fy, where="post", color="black", linewidth=1, zorder=2, label="Pareto front")
    ax.scatter(fx, fy, facecolors="none", edgecolors="black", s=160, linewidths=1.2, zorder=4)
    for m in models:
        ax.scatter([], [], color=colors[m], marker="o", label=m)
    for m in methods:
        ax.scatter([], [], color="gray", marker=markers[m], label=m)
    ax.set_xscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    low, high = ax.get_xlim()
    # label the 2..9 ticks too when the axis spans little more than a decade
    ax.xaxis.set_minor_formatter(plain if high / low < 30 else matplotlib.ticker.NullFormatter())
    ax.set_xlabel("estimated energy per inference (uJ, log)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{device}: accuracy vs estimated energy")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    name = f"pareto_{_slug(device)}.png"
    atomic_write_bytes(out / name, _png(fig))
    plt.close(fig)
    return {"kind": "pareto", "device": device, "cells": [r.key for r in cells],
            "points": [[e, a] for e, a in points], "pareto": [cells[i].key for i in front]}


def _levels_plot(model: str, by_device: dict[str, list[CellResult]], multi: bool, out: Path) -> dict:
    import matplotlib.pyplot as plt

    devices = list(by_device)
    fig, axes = plt.subplots(1, len(devices), figsize=(4.2 * len(devices) + 1, 4.0), squeeze=False)
    panels = []
    for ax, device in zip(axes[0], devices):
        cells = by_device[device]
        dense = next((r for r in cells if r.method == "dense"), cells[0])
        levels = list(dense.dense_levels_pj)
        bars = [("dense", dense.dense_levels_pj)] + [(_label(r, multi), r.levels_pj) for r in cells if r.method != "dense"]
        bottoms = [0.0] * len(bars)
        colors = plt.get_cmap("tab10").colors
        for j, level in enumerate(levels):
            heights = [values.get(level, 0.0) / 1e6 for _, values in bars]
            ax.bar(range(len(bars)), heights, bottom=bottoms, color=colors[j % 10], label=level)
            bottoms = [b + h for b, h in zip(bottoms, heights)]
        ax.set_xticks(range(len(bars)), [b[0] for b in bars], rotation=30, ha="right", fontsize=8)
        ax.set_title(device)
        ax.set_ylabel("estimated energy (uJ)")
        ax.legend(fontsize=7)
        panels.append({"device": device, "levels": levels, "bars": [
            {"label": label, "levels_pj": {k: values.get(k, 0.0) for k in levels}} for label, values in bars],
            "cells": [r.key for r in cells]})
    fig.suptitle(f"{model}: energy by memory level, dense and pruned")
    name = f"levels_{_slug(model)}.png"
    atomic_write_bytes(out / name, _png(fig))
    plt.close(fig)
    return {"kind": "levels", "model": model, "panels": panels}


def _fmt(pj: float | None) -> str:
    from energy import format_energy

    return "-" if pj is None else format_energy(pj)


def write_report(sweep) -> ReportData:
    """Write ``report.md``, its PNGs and ``plots.json`` into ``sweep.output`` (a SweepResult)."""
    import matplotlib

    matplotlib.use("Agg")
    started = time.perf_counter()
    out, config = Path(sweep.output), sweep.config
    ok = [r for r in sweep.results if r.ok]
    failed = [r for r in sweep.results if not r.ok]
    multi = len(config.methods) * len(config.granularities) > 1
    plots: dict[str, dict] = {}
    lines = [
        "# Sweep report", "",
        f"Config `{Path(config.file).name}`, seed {config.seed}: {len(config.models)} model(s) x "
        f"{len(config.devices)} device(s) x {len(config.budgets)} budget(s) "
        f"({', '.join(config.budgets)}); methods {', '.join(config.methods)}; granularities "
        f"{', '.join(config.granularities)}. {len(sweep.results)} cells, {len(ok)} ok, {len(failed)} failed.",
        "",
        "Energy is the dataflow model's estimate per inference (batch 1) of the exported ONNX model; "
        "accuracy is top-1 on the model's test set in onnxruntime. The full table is `results.csv` "
        "(per-phase times of each cell: `timings.csv`).", "",
        "## Accuracy vs estimated energy", "",
    ]
    for device in [d.label for d in config.devices]:
        cells = [r for r in ok if r.device == device]
        if not cells:
            continue
        data = _pareto_plot(device, cells, out)
        name = f"pareto_{_slug(device)}.png"
        plots[name] = data
        on_front = set(data["pareto"])
        lines += [f"### {device}", "", f"![{device}]({name})", "",
                  "| model | budget | method | granularity | energy | % of dense | accuracy | Pareto |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in cells:
            lines.append(f"| {r.model} | {r.budget} | {r.method} | {r.granularity} | {_fmt(r.energy_pj)} | "
                         f"{100 * r.energy_ratio:.1f}% | {100 * r.accuracy:.2f}% | {'yes' if r.key in on_front else ''} |")
        lines.append("")
    lines += ["## Energy by memory level, before and after pruning", ""]
    for model in [m.name for m in config.models]:
        by_device = {d.label: [r for r in ok if r.model == model and r.device == d.label] for d in config.devices}
        by_device = {k: v for k, v in by_device.items() if v}
        if not by_device:
            continue
        data = _levels_plot(model, by_device, multi, out)
        name = f"levels_{_slug(model)}.png"
        plots[name] = data
        lines += [f"### {model}", "", f"![{model}]({name})", ""]
        for panel in data["panels"]:
            levels = panel["levels"]
            lines += [f"{panel['device']}:", "", "| cell | " + " | ".join(levels) + " | total |",
                      "|---" * (len(levels) + 2) + "|"]
            for bar in panel["bars"]:
                values = bar["levels_pj"]
                lines.append(f"| {bar['label']} | " + " | ".join(_fmt(values[k]) for k in levels)
                             + f" | {_fmt(sum(values.values()))} |")
            lines.append("")
    if failed:
        lines += ["## Failed cells", "", "| cell | error |", "|---|---|"]
        lines += [f"| {r.key} | {r.error.replace('|', '/')} |" for r in failed]
        lines.append("")
    atomic_write_text(out / "plots.json", json.dumps(plots, indent=1) + "\n")
    path = atomic_write_text(out / "report.md", "\n".join(lines).rstrip("\n") + "\n")
    return ReportData(path=path, plots=plots, wall_s=time.perf_counter() - started)
