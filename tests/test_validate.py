"""joulecut validate: kernels vs onnxruntime vs the estimate, on a magnitude-pruned model."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from pruning.validate import spearman, validate

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pruned(tmp_path_factory) -> Path:
    model = onnx.load(ROOT / "examples" / "models" / "tiny_resnet.onnx")
    for t in model.graph.initializer:
        w = numpy_helper.to_array(t).copy()
        if w.ndim >= 2:
            w[np.abs(w) < np.quantile(np.abs(w), 0.9)] = 0
            t.CopyFrom(numpy_helper.from_array(w, t.name))
    path = tmp_path_factory.mktemp("m") / "pruned.onnx"
    onnx.save(model, path)
    return path


def test_executed_macs_equal_the_estimate_for_csr(pruned):
    report = validate(pruned, "eyeriss", repeats=2)
    assert report.max_rel_error <= 1e-4
    assert len(report.layers) == 7  # 6 convs + fc
    for layer in report.layers:
        assert layer.format in ("csr", "direct")  # direct: the same CSRMatrix, run without im2col
        assert layer.executed_macs == layer.estimated_macs
        # eyeriss skips zero weights: the pruned layer costs less than its dense self
        assert layer.estimated_energy_pj < layer.dense_energy_pj
    assert "rank correlation" in report.table()


def test_cli_validate(pruned):
    proc = subprocess.run([sys.executable, "-m", "joulecut", "validate", str(pruned), "--hw", "eyeriss", "--repeats", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "outputs vs onnxruntime" in proc.stdout and "block1/conv1" in proc.stdout


def test_spearman_by_hand():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks [0,1,2] vs [0,2,1]: d^2 = 0+1+1 = 2, rho = 1 - 6*2/(3*(9-1)) = 0.5
    assert spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert spearman([1, 1, 1], [1, 2, 3]) is None
    assert spearman([1, 2], [1, 2]) is None


class _Recorder:
    """Stands in for a GraphRunner or an onnxruntime session: logs each call, reports step times."""

    def __init__(self, name, log, seconds):
        self.name, self.log, self.seconds = name, log, seconds
        self.last_run = []

    def run(self, *args):
        from types import SimpleNamespace

        self.log.append(self.name)
        self.last_run = [SimpleNamespace(name="a", seconds=self.seconds), SimpleNamespace(name="b", seconds=2 * self.seconds)]


def test_sides_are_timed_in_interleaved_rounds_after_a_warm_up():
    from pruning.validate import _interleaved_times

    log = []
    runners = {"kernels": _Recorder("kernels", log, 1.0), "dense": _Recorder("dense", log, 3.0)}
    totals, layers, ort = _interleaved_times(runners, {}, 3, session=_Recorder("ort", log, 0.0))
    assert log == ["kernels", "dense", "ort"] * 4  # one warm-up round, then 3 timed rounds in turn
    assert totals["kernels"] == 3.0 and totals["dense"] == 9.0  # the runners' own step times
    assert layers["kernels"] == {"a": 1.0, "b": 2.0} and layers["dense"] == {"a": 3.0, "b": 6.0}
    assert ort is not None and ort >= 0.0
    assert _interleaved_times(runners, {}, 1)[2] is None  # no session: no onnxruntime time
