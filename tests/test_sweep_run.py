"""Running sweeps: values of real cells, identical tables on every backend (serial, process
pool, Ray), resuming after an interruption or a kill, failed cells, the report's plots."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sweep import CellResult, SweepOutputError, cell_seed, load_config, run_sweep

REPO = Path(__file__).resolve().parent.parent
CONFIG = """\
seed: 1
models:
  - {name: mlp, onnx: mlp.onnx, train: train.npz, test: test.npz}
devices: [eyeriss, mobile-cpu]
budgets: [100%, 50%, 1%]
prune: {finetune_epochs: 0.2, short_epochs: 0.05}
"""
TABLES = ("results.csv", "results.json", "plots.json", "report.md")


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Path:
    """A small trained MLP on 8x8 digits (ONNX) with train/test data, and a sweep config."""
    import torch
    from sklearn.datasets import load_digits
    from torch import nn

    from pruning.export import export_onnx
    from pruning.train import fine_tune

    folder = tmp_path_factory.mktemp("sweep")
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    fine_tune(model, torch.from_numpy(x[:600]), torch.from_numpy(y[:600]), epochs=3, seed=0, lr=1e-2)
    export_onnx(model, torch.from_numpy(x[:1]), folder / "mlp.onnx")
    np.savez(folder / "train.npz", x=x[:600], y=y[:600])
    np.savez(folder / "test.npz", x=x[600:900], y=y[600:900])
    (folder / "sweep.yaml").write_text(CONFIG)
    return folder


@pytest.fixture(scope="module")
def serial(setup: Path):
    return run_sweep(setup / "sweep.yaml", setup / "serial", jobs=1, progress=False)


def _same_tables(a: Path, b: Path) -> None:
    for name in TABLES:
        assert (a / name).read_text() == (b / name).read_text(), name


def test_cell_values(setup: Path, serial):
    from energy import estimate, load_model
    from pruning.data import load_npz
    from sweep.cells import _accuracy

    keys = [r.key for r in serial.results]
    assert keys == ["mlp/eyeriss/100%", "mlp/eyeriss/50%/budget/channel", "mlp/eyeriss/1%/budget/channel",
                    "mlp/mobile-cpu/100%", "mlp/mobile-cpu/50%/budget/channel", "mlp/mobile-cpu/1%/budget/channel"]
    assert serial.backend == "serial" and serial.computed == tuple(keys) and serial.reused == ()
    assert all(r.seed == cell_seed(1, r.key) for r in serial.results)
    x_test, y_test = load_npz(setup / "test.npz")
    for r in serial.results:
        if r.budget == "1%":  # below the floor of the model: a failed cell, the others go on
            assert r.status == "failed" and "BudgetError" in r.error and "cannot be met" in r.error
            continue
        assert r.ok, r.error
        dense = estimate(load_model(setup / "mlp.onnx", batch=1).graph, r.device)
        assert r.dense_energy_pj == dense.total_energy_pj
        assert r.dense_levels_pj == pytest.approx(dense.level_totals_pj(), rel=1e-12)
        assert sum(r.levels_pj.values()) == pytest.approx(r.energy_pj, rel=1e-9)
        if r.method == "dense":
            assert r.energy_pj == r.dense_energy_pj and r.accuracy == r.dense_accuracy and r.samples_trained == 0
            continue
        exported = serial.output / r.onnx
        assert r.energy_pj == estimate(load_model(exported, batch=1).graph, r.device).total_energy_pj
        assert r.target_pj == pytest.approx(0.5 * r.dense_energy_pj)
        assert r.energy_pj <= r.target_pj  # the exported model meets the budget
        assert r.accuracy == _accuracy(exported, x_test, y_test)
        assert r.samples_trained > 0 and r.max_abs_diff < 1e-4
        assert set(r.timings_s) >= {"estimate", "prune", "export", "validate", "total"}
        assert r.timings_s["prune"] < r.timings_s["total"]
    rows = (serial.output / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 6 and rows[0].startswith("key,model,device,budget,method,granularity,seed,status,")
    assert rows[0].endswith(",error")
    assert len(list((serial.output / "cells").glob("*.json"))) == 6
    import csv

    with open(serial.output / "timings.csv", newline="") as f:
        timings = list(csv.DictReader(f))
    assert len(timings) == 6
    pruned_ok = {r.key for r in serial.results if r.ok and r.budget != "100%"}
    assert len(pruned_ok) >= 2
    for row in timings:
        pruned = row["key"] in pruned_ok
        assert (float(row["prune_fine_tuning_s"]) > 0) == pruned and (float(row["prune_estimation_s"]) > 0) == pruned
        parts = sum(float(row[f"prune_{p}_s"]) for p in ("fine_tuning", "estimation", "proposals", "evaluation", "other"))
        assert parts <= float(row["prune_s"]) + 1e-3  # the split is of the time inside prune()


def test_report_plots_match_cells(serial):
    from matplotlib.image import imread

    plots = json.loads((serial.output / "plots.json").read_text())
    assert plots == serial.report.plots
    assert sorted(plots) == ["levels_mlp.png", "pareto_eyeriss.png", "pareto_mobile-cpu.png"]
    for device in ("eyeriss", "mobile-cpu"):
        data = plots[f"pareto_{device}.png"]
        ok = [r for r in serial.results if r.ok and r.device == device]
        assert data["cells"] == [r.key for r in ok] and len(data["points"]) == 2
        assert data["points"] == [[r.energy_pj, r.accuracy] for r in ok]
        dense, pruned = ok
        want = [pruned.key] if pruned.accuracy >= dense.accuracy else [pruned.key, dense.key]
        assert data["pareto"] == want
    panels = plots["levels_mlp.png"]["panels"]
    assert [len(p["bars"]) for p in panels] == [2, 2]
    assert panels[0]["bars"][1]["levels_pj"] == serial.results[1].levels_pj
    for name in plots:
        image = imread(serial.output / name)
        assert (serial.output / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and image.shape[0] > 100
    report = (serial.output / "report.md").read_text()
    assert all(f"]({name})" in report for name in plots)
    assert "## Failed cells" in report and "mlp/eyeriss/1%/budget/channel" in report


def _eyeriss_only(setup: Path):
    config = load_config(setup / "sweep.yaml")
    return replace(config, devices=config.devices[:1])


def _same_as_serial(other, serial) -> None:
    """Cells of ``other`` (a sub-sweep) equal the serial run's, value for value, and so do
    the rows of its table and its plots (the table is made from the results alone)."""
    keys = [r.key for r in other.results]
    assert other.results == tuple(r for r in serial.results if r.key in keys)
    serial_rows = {line.split(",", 1)[0]: line for line in (serial.output / "results.csv").read_text().splitlines()}
    header, *rows = (other.output / "results.csv").read_text().splitlines()
    assert header.split(",")[:8] == serial_rows["key"].split(",")[:8]
    other_plots = json.loads((other.output / "plots.json").read_text())
    serial_plots = json.loads((serial.output / "plots.json").read_text())
    assert other_plots["pareto_eyeriss.png"] == serial_plots["pareto_eyeriss.png"]
    assert len(rows) == len(keys)


def test_process_pool_gives_identical_results(setup: Path, serial):
    pool = run_sweep(_eyeriss_only(setup), setup / "pool", jobs=2, progress=False)
    assert pool.backend == "pool" and pool.jobs == 2 and len(pool.results) == 3
    _same_as_serial(pool, serial)


def test_ray_gives_identical_results(setup: Path, serial):
    ray = pytest.importorskip("ray", reason="ray is not installed (optional extra joulecut[ray])")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}})
    try:
        on_ray = run_sweep(_eyeriss_only(setup), setup / "ray", ray="local", progress=False)
    finally:
        ray.shutdown()
    assert on_ray.backend == "ray" and len(on_ray.results) == 3
    _same_as_serial(on_ray, serial)


def test_interrupted_sweep_resumes_and_loses_nothing(setup: Path, serial):
    out = setup / "interrupted"
    seen = []

    def stop_after_two(result: CellResult) -> None:
        seen.append(result.key)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(setup / "sweep.yaml", out, jobs=1, progress=False, on_cell=stop_after_two)
    assert len(list((out / "cells").glob("*.json"))) == 2 and not (out / "results.csv").exists()
    with pytest.raises(SweepOutputError, match="already holds 2 cell results"):
        run_sweep(setup / "sweep.yaml", out, jobs=1, progress=False)
    resumed = run_sweep(setup / "sweep.yaml", out, jobs=1, progress=False, resume=True)
    assert resumed.reused == tuple(seen)
    # failed cells are retried on resume; everything else that was missing is computed
    assert resumed.computed == tuple(r.key for r in serial.results if r.key not in seen)
    assert resumed.results == serial.results
    _same_tables(serial.output, out)
    again = run_sweep(setup / "sweep.yaml", out, jobs=1, progress=False, resume=True)
    assert again.computed == tuple(r.key for r in serial.results if not r.ok)


KILLED_SCRIPT = """\
import sys, time
from sweep import run_sweep
from sweep.cells import CellResult

def slow(job):
    time.sleep(0.3)
    c = job.cell
    return CellResult(model=c.model, device=c.device, budget=c.budget, method=c.method,
                      granularity=c.granularity, seed=c.seed, fingerprint=job.fingerprint, status="ok",
                      dense_energy_pj=100.0, energy_pj=float(c.seed % 97), dense_accuracy=0.9,
                      accuracy=(c.seed % 89) / 89, dense_levels_pj={"MAC": 100.0}, levels_pj={"MAC": float(c.seed % 97)})

if __name__ == "__main__":
    run_sweep(sys.argv[1], sys.argv[2], jobs=1, progress=False, cell_fn=slow, report=False)
"""


def test_killed_sweep_resumes(setup: Path):
    """SIGKILL a sweep process after two cells; the re-run computes the rest, and the table equals
    an uninterrupted run's. (Cells are stand-ins that take 0.3 s: this checks the store.)"""
    script = setup / "killed_sweep.py"
    script.write_text(KILLED_SCRIPT)
    sys.path.insert(0, str(setup))
    try:
        from killed_sweep import slow
    finally:
        sys.path.remove(str(setup))
    out = setup / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(script), str(setup / "sweep.yaml"), str(out)], env=env)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list((out / "cells").glob("*.json"))) >= 2:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    stored = sorted(p.name for p in (out / "cells").glob("*.json"))
    assert 2 <= len(stored) < 6 and not list((out / "cells").glob(".*.tmp"))
    assert not (out / "results.csv").exists()
    resumed = run_sweep(setup / "sweep.yaml", out, jobs=1, progress=False, resume=True, cell_fn=slow, report=False)
    assert len(resumed.reused) == len(stored) and len(resumed.computed) == 6 - len(stored)
    whole = run_sweep(setup / "sweep.yaml", setup / "unkilled", jobs=1, progress=False, cell_fn=slow, report=False)
    assert resumed.results == whole.results
    for name in ("results.csv", "results.json"):
        assert (out / name).read_text() == (whole.output / name).read_text()


def _fake_cell(job) -> CellResult:
    c = job.cell
    return CellResult(model=c.model, device=c.device, budget=c.budget, method=c.method, granularity=c.granularity,
                      seed=c.seed, fingerprint=job.fingerprint, status="ok", dense_energy_pj=100.0,
                      energy_pj=100.0 if c.is_dense else 50.0, dense_accuracy=0.9, accuracy=0.9 if c.is_dense else 0.8,
                      dense_levels_pj={"MAC": 100.0}, levels_pj={"MAC": 100.0 if c.is_dense else 50.0})


def test_changed_options_recompute_only_affected_cells(setup: Path):
    out = setup / "fingerprint"
    first = run_sweep(setup / "sweep.yaml", out, jobs=1, progress=False, cell_fn=_fake_cell, report=False)
    assert len(first.computed) == 6
    config = load_config(setup / "sweep.yaml")
    changed = replace(config, prune_options=(("finetune_epochs", 0.3), ("short_epochs", 0.05)))
    second = run_sweep(changed, out, jobs=1, progress=False, cell_fn=_fake_cell, report=False, resume=True)
    assert second.computed == tuple(r.key for r in first.results if r.method != "dense")
    assert second.reused == tuple(r.key for r in first.results if r.method == "dense")


def test_changed_code_recomputes_every_cell(setup: Path, monkeypatch):
    import sweep.cells

    out = setup / "code"
    first = run_sweep(setup / "sweep.yaml", out, jobs=1, progress=False, cell_fn=_fake_cell, report=False)
    again = run_sweep(setup / "sweep.yaml", out, jobs=1, progress=False, cell_fn=_fake_cell, report=False, resume=True)
    assert again.computed == () and len(again.reused) == 6
    monkeypatch.setattr(sweep.cells, "code_digest", lambda: "another version")
    changed = run_sweep(setup / "sweep.yaml", out, jobs=1, progress=False, cell_fn=_fake_cell, report=False, resume=True)
    assert changed.computed == tuple(r.key for r in first.results) and changed.reused == ()


def test_code_digest_follows_the_source(tmp_path: Path, monkeypatch):
    import sweep.cells

    digest = sweep.cells.code_digest()
    assert digest == sweep.cells.code_digest() and len(digest) == 16
    for package in sweep.cells.CODE_PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "a.py").write_text("x = 1\n")
    (tmp_path / "sweep" / "cells.py").write_text("")
    monkeypatch.setattr(sweep.cells, "__file__", str(tmp_path / "sweep" / "cells.py"))
    sweep.cells.code_digest.cache_clear()
    try:
        before = sweep.cells.code_digest()
        sweep.cells.code_digest.cache_clear()
        (tmp_path / "energy" / "a.py").write_text("x = 2\n")
        assert sweep.cells.code_digest() != before
        sweep.cells.code_digest.cache_clear()
        (tmp_path / "energy" / "notes.txt").write_text("not code")
        (tmp_path / "energy" / "a.py").write_text("x = 1\n")
        assert sweep.cells.code_digest() == before
    finally:
        monkeypatch.undo()
        sweep.cells.code_digest.cache_clear()
    assert sweep.cells.code_digest() == digest


def test_a_raising_cell_function_fails_only_its_cell(setup: Path):
    def flaky(job):
        if job.cell.device == "mobile-cpu":
            raise RuntimeError("boom")
        return _fake_cell(job)

    result = run_sweep(setup / "sweep.yaml", setup / "flaky", jobs=1, progress=False, cell_fn=flaky)
    assert [r.ok for r in result.results] == [True, True, True, False, False, False]
    assert result.failed[0].error == "RuntimeError: boom (the cell function raised)"
    assert "mobile-cpu" not in "".join(result.report.plots)


def test_output_errors(setup: Path, tmp_path: Path):
    (tmp_path / "file").write_text("")
    with pytest.raises(SweepOutputError, match="must be a folder"):
        run_sweep(setup / "sweep.yaml", tmp_path / "file", cell_fn=_fake_cell)
    default = run_sweep(setup / "sweep.yaml", cell_fn=_fake_cell, report=False)
    assert default.output == setup / "sweep_sweep" and (setup / "sweep_sweep" / "results.csv").is_file()
    assert default.summary().splitlines()[0].startswith("6 cells: 6 ok, 0 failed (computed 6, reused 0) in ")
    with pytest.raises(ValueError, match="jobs must be an integer >= 1"):
        run_sweep(setup / "sweep.yaml", tmp_path / "o", jobs=0, cell_fn=_fake_cell)


def test_bad_model_or_data_stops_before_any_work(setup: Path, tmp_path: Path):
    from energy.errors import DataError, ModelError

    (tmp_path / "bad.onnx").write_bytes(b"not an onnx file")
    np.savez(tmp_path / "wide.npz", x=np.zeros((4, 1, 9, 9), np.float32), y=np.zeros(4, np.int64))
    base = f"models:\n  - {{example: digits}}\n  - {{name: m, onnx: {{onnx}}, train: {setup}/train.npz, test: {{test}}}}\n" \
           "devices: [eyeriss]\nbudgets: [100%, 50%]\n"
    bad_model = tmp_path / "bad_model.yaml"
    bad_model.write_text(base.replace("{onnx}", str(tmp_path / "bad.onnx")).replace("{test}", f"{setup}/test.npz"))
    with pytest.raises(ModelError, match="bad.onnx"):
        run_sweep(bad_model, tmp_path / "out1", cell_fn=_fake_cell)
    bad_data = tmp_path / "bad_data.yaml"
    bad_data.write_text(base.replace("{onnx}", str(setup / "mlp.onnx")).replace("{test}", str(tmp_path / "wide.npz")))
    with pytest.raises(DataError, match=r"wide\.npz: inputs must have shape \(N, 1, 8, 8\)"):
        run_sweep(bad_data, tmp_path / "out2", cell_fn=_fake_cell)
    # neither trained the example model nor ran a cell
    assert not (tmp_path / "out1" / "models").exists() and not (tmp_path / "out2" / "models").exists()
    assert not (tmp_path / "out1" / "cells").exists() and not (tmp_path / "out2" / "cells").exists()


def test_progress_bar_only_when_asked_or_on_a_terminal(setup: Path, capfd):
    run_sweep(setup / "sweep.yaml", setup / "quiet", jobs=1, cell_fn=_fake_cell, report=False)
    assert capfd.readouterr().err == ""  # stderr is not a terminal under pytest: quiet
    run_sweep(setup / "sweep.yaml", setup / "bar", jobs=1, cell_fn=_fake_cell, report=False, progress=True)
    err = capfd.readouterr().err
    assert "sweep: 100%" in err and "6/6" in err


def test_parallel_workers_start_the_smallest_budgets_first():
    from sweep.cells import CellJob
    from sweep.config import Cell
    from sweep.runner import _longest_first

    def job(budget: str, model: str = "m") -> CellJob:
        dense = budget == "100%"
        cell = Cell(model, "eyeriss", budget, "dense" if dense else "budget", "-" if dense else "channel", 0)
        return CellJob(cell=cell, onnx_path="", train_path="", test_path="", spec="eyeriss", prune_options=(),
                       validate=False, out_dir="", fingerprint="")

    pending = [job("100%"), job("50%"), job("25%"), job("2mJ"), job("100%", "n"), job("10%", "n")]
    order = [(j.cell.model, j.cell.budget) for j in _longest_first(pending)]
    # an absolute budget counts as half the dense energy; equals keep config order
    assert order == [("n", "10%"), ("m", "25%"), ("m", "50%"), ("m", "2mJ"), ("m", "100%"), ("n", "100%")]
