"""The digits example runs end to end (quick mode), so it cannot drift from the library."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "digits"))
import digits  # noqa: E402

torch.set_num_threads(1)


def test_digits_example_quick(tmp_path, capsys):
    assert digits.main(["--quick", "--out", str(tmp_path), "--variant", "clean", "--budget", "30%"]) == 0
    printed = capsys.readouterr().out
    assert "pruned:" in printed and "## Pruning: budget, channel granularity, on eyeriss" in printed
    for name in ("digits_cnn.onnx", "digits.npz", "digits_test.npz", "digits_cnn_pruned.onnx"):
        assert (tmp_path / name).is_file()


def test_digits_example_summary(tmp_path):
    s = digits.run(tmp_path, quick=True, variant="clean", budget="40%", method="magnitude")
    assert s["pruned_energy_pj"] == pytest.approx(s["result_energy_pj"], rel=1e-9)  # estimate of the exported file
    assert s["pruned_energy_pj"] <= 0.4 * s["dense_energy_pj"]
    assert s["onnxruntime_max_abs_diff"] <= 1e-4
    assert s["pruned_bytes"] < s["dense_bytes"]
    assert s["dense_test_accuracy"] > 0.9


def test_make_dataset_is_seeded_and_harder():
    (x1, y1), (t1, _) = digits.make_dataset("hard", seed=3, copies=1)
    (tr, _), (va, _), (te, _) = digits.make_splits("clean", seed=3)
    assert len(tr) + len(va) + len(te) == 1797 and len(va) > 0
    (x2, y2), _ = digits.make_dataset("hard", seed=3, copies=1)
    (c, _), (tc, _) = digits.make_dataset("clean", seed=3)
    assert (x1 == x2).all() and (y1 == y2).all()
    assert x1.shape[1:] == (1, 8, 8) and len(t1) == len(tc)
    assert abs(float((x1 - c).std())) > 0.1  # noise and shifts changed the images
    with pytest.raises(ValueError, match="variant"):
        digits.make_dataset("noisy")
