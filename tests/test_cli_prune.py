"""joulecut prune / train-sparse from the command line: outputs, and bad input refused before work."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from sklearn.datasets import load_digits

ROOT = Path(__file__).resolve().parents[1]
MLP = ROOT / "examples" / "models" / "tiny_mlp.onnx"  # 64 -> 256 -> 256 -> 10


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "joulecut", *args], cwd=ROOT, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    d = load_digits()
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    np.savez(path, x=(d.data[:400] / 16).astype(np.float32), y=d.target[:400].astype(np.int64))
    return path


def refused(proc: subprocess.CompletedProcess, out: Path, *text: str) -> None:
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("joulecut: error:")
    for t in text:
        assert t in proc.stderr, proc.stderr
    assert not out.exists()


def test_bad_prune_inputs_exit_3_and_write_nothing(tmp_path, digits):
    out = tmp_path / "out.onnx"
    base = ("prune", str(MLP), "--hw", "eyeriss", "--data", str(digits), "-o", str(out))
    refused(run(*base, "--budget", "40"), out, "needs a unit")
    refused(run(*base, "--budget", "100%"), out, "100%")
    wrong_shape = tmp_path / "shape.npz"
    np.savez(wrong_shape, x=np.zeros((10, 63), np.float32), y=np.zeros(10, np.int64))
    refused(run("prune", str(MLP), "--hw", "eyeriss", "--data", str(wrong_shape), "-o", str(out), "--budget", "40%"), out, "63")
    bad_labels = tmp_path / "labels.npz"
    np.savez(bad_labels, x=np.zeros((10, 64), np.float32), y=np.full(10, 12, np.int64))
    refused(run("prune", str(MLP), "--hw", "eyeriss", "--data", str(bad_labels), "-o", str(out), "--budget", "40%"), out, "12")
    refused(run("prune", str(MLP), "--hw", "eyeriss", "--data", str(digits), "-o", str(MLP), "--budget", "40%"), out,
            "is the input model")


def test_few_validation_samples_are_a_warning_not_an_error(tmp_path):
    d = load_digits()
    few = tmp_path / "few.npz"
    np.savez(few, x=(d.data[:30] / 16).astype(np.float32), y=d.target[:30].astype(np.int64))
    out = tmp_path / "out.onnx"
    proc = run("prune", str(MLP), "--hw", "eyeriss", "--data", str(few), "-o", str(out), "--budget", "60%",
               "--finetune-epochs", "0.2", "-q")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith("joulecut: warning: accuracy is judged on only 6 validation sample(s)"), proc.stderr
    assert out.exists()


def test_unconvertible_op_is_named(tmp_path, digits):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])
    w = onnx.numpy_helper.from_array(np.ones((64, 10), np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"), helper.make_node("Hardmax", ["h"], ["y"], name="odd_hardmax")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "erf.onnx"
    onnx.save(model, path)
    out = tmp_path / "out.onnx"
    refused(run("prune", str(path), "--hw", "eyeriss", "--data", str(digits), "-o", str(out), "--budget", "40%"), out,
            "odd_hardmax", "Hardmax")


def test_prune_writes_model_and_reports(tmp_path, digits):
    out = tmp_path / "pruned.onnx"
    before = MLP.read_bytes()
    proc = run("prune", str(MLP), "--hw", "eyeriss", "--budget", "60%", "--data", str(digits), "-o", str(out),
               "--method", "magnitude", "--granularity", "weight", "--finetune-epochs", "0.3", "-q")
    assert proc.returncode == 0, proc.stderr
    onnx.checker.check_model(onnx.load(out), full_check=True)
    report = json.loads((tmp_path / "pruned.json").read_text())
    assert report["energy_after_pj"] <= 0.6 * report["energy_before_pj"] * (1 + 1e-9)
    assert (tmp_path / "pruned.md").read_text().startswith("## Pruning")
    assert MLP.read_bytes() == before


def test_train_sparse_cli(tmp_path, digits):
    out = tmp_path / "sparse.onnx"
    proc = run("train-sparse", str(MLP), "--data", str(digits), "--sparsity", "0.8", "--epochs", "15", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    accuracy = float(proc.stdout.split("validation accuracy ")[1].split()[0])
    assert accuracy > 0.6  # 10 classes: chance is 0.1
    weights = [onnx.numpy_helper.to_array(t) for t in onnx.load(out).graph.initializer if len(t.dims) == 2]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.size for w in weights)
    # the mask keeps 20% of the weights; a few kept ones (regrown at zero) may still be zero
    assert 0.8 <= zeros < 0.85
    proc = run("train-sparse", str(MLP), "--data", str(digits), "--epochs", "1", "-o", str(out))
    assert proc.returncode == 2 and "exactly one of --sparsity" in proc.stderr
