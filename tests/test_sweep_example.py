"""The committed default sweep report (examples/sweep/report): valid PNGs whose plotted data
match the results table, and numbers a re-run reproduces."""
from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest

from sweep import load_config, run_sweep
from sweep.report import pareto_front

REPO = Path(__file__).resolve().parent.parent
REPORT = REPO / "examples" / "sweep" / "report"


def _rows() -> list[dict]:
    with open(REPORT / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_committed_report_plots_match_the_table():
    from matplotlib.image import imread

    config = load_config(REPO / "examples" / "sweep" / "default.yaml")
    rows = _rows()
    assert [r["key"] for r in rows] == [c.key for c in config.cells()]
    assert all(r["status"] == "ok" for r in rows)
    plots = json.loads((REPORT / "plots.json").read_text())
    assert sorted(plots) == ["levels_digits.png", "pareto_eyeriss.png", "pareto_mobile-cpu.png"]
    report = (REPORT / "report.md").read_text()
    for name in plots:
        data = (REPORT / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        height, width = imread(REPORT / name).shape[:2]
        assert height > 200 and width > 300
        assert f"]({name})" in report
    for device in ("eyeriss", "mobile-cpu"):
        mine = [r for r in rows if r["device"] == device]
        data = plots[f"pareto_{device}.png"]
        assert data["cells"] == [r["key"] for r in mine]
        assert data["points"] == [[float(r["energy_pj"]), float(r["accuracy"])] for r in mine]
        assert data["pareto"] == [mine[i]["key"] for i in pareto_front(data["points"])]
        dense = next(r for r in mine if r["method"] == "dense")
        assert all(float(r["energy_pj"]) <= float(r["target_pj"]) for r in mine if r is not dense)
    panels = plots["levels_digits.png"]["panels"]
    assert [p["device"] for p in panels] == ["eyeriss", "mobile-cpu"]
    for panel in panels:
        mine = [r for r in rows if r["device"] == panel["device"]]
        assert len(panel["bars"]) == len(mine) == 3
        for bar, row in zip(panel["bars"], mine):
            prefix = "dense_" if row["method"] == "dense" else ""
            assert bar["levels_pj"] == {k: float(row[f"{prefix}{k}_pj"]) for k in panel["levels"]}
            assert sum(bar["levels_pj"].values()) == pytest.approx(float(row["energy_pj"]), rel=1e-9)


def test_a_rerun_reproduces_committed_numbers(tmp_path: Path):
    """Build the digits model afresh and recompute the mobile-cpu dense and 50% cells."""
    config = load_config(REPO / "examples" / "sweep" / "default.yaml")
    small = replace(config, devices=tuple(d for d in config.devices if d.label == "mobile-cpu"),
                    budgets=("100%", "50%"))
    result = run_sweep(small, tmp_path, jobs=1, progress=False, report=False)
    committed = {r["key"]: r for r in _rows()}
    with open(tmp_path / "results.csv", newline="") as f:
        fresh = list(csv.DictReader(f))
    assert [r["key"] for r in fresh] == ["digits/mobile-cpu/100%", "digits/mobile-cpu/50%/budget/channel"]
    regenerate = ("the committed examples/sweep/report no longer matches a re-run (did pruning change?); "
                  "regenerate it with the command in examples/sweep/default.yaml")
    for row in fresh:
        assert row == {k: committed[row["key"]][k] for k in row}, f"{row['key']}: {regenerate}"
    assert result.results[1].samples_trained > 0
