"""The command line: outputs, exit codes, and one-line errors (never a traceback) for bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples" / "models" / "tiny_resnet.onnx"


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "joulecut", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def assert_user_error(proc: subprocess.CompletedProcess, *must_contain: str, code: int = 3) -> None:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert lines and lines[-1].startswith("joulecut: error:"), proc.stderr
    for text in must_contain:
        assert text in proc.stderr, proc.stderr


def test_estimate_json_keys_and_totals(tmp_path):
    out = tmp_path / "r.json"
    proc = run("estimate", str(TINY), "--hw", "eyeriss", "--format", "json", "-o", str(out), "-q")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    for key in ("model", "hardware", "total_energy_pj", "total_macs", "total_cycles", "layers"):
        assert key in data
    layer = next(l for l in data["layers"] if l["op"] == "Conv")
    for key in ("name", "op", "macs", "effective_macs", "energy_pj", "compute_pj", "levels", "cycles", "mapping"):
        assert key in layer
    assert data["total_energy_pj"] == pytest.approx(sum(l["energy_pj"] for l in data["layers"]))
    assert data["total_macs"] == sum(l["macs"] for l in data["layers"])
    # a layer's energy is its compute, its accesses and its static energy, nothing else
    parts = layer["compute_pj"] + layer["static_pj"] + sum(
        a["energy_pj"] for ops in layer["levels"].values() for a in ops.values())
    assert layer["energy_pj"] == pytest.approx(parts)


def test_estimate_csv_plot_and_explain(tmp_path):
    csv_path, png = tmp_path / "r.csv", tmp_path / "r.png"
    proc = run("estimate", str(TINY), "--hw", "edge-tpu-int8", "--format", "csv", "-o", str(csv_path), "--plot", str(png), "-q")
    assert proc.returncode == 0, proc.stderr
    rows = csv_path.read_text().splitlines()
    assert rows[0].startswith("name,op,macs,effective_macs,energy_pj")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    proc = run("estimate", str(TINY), "--hw", "eyeriss", "--explain", "block1/conv1", "-q")
    assert proc.returncode == 0, proc.stderr
    assert "layer block1/conv1 (Conv)" in proc.stdout and "mapping " in proc.stdout


def test_compare_and_hw_commands(tmp_path):
    proc = run("compare", str(TINY), str(TINY), "--hw", "eyeriss")
    assert proc.returncode == 0, proc.stderr
    assert "TOTAL" in proc.stdout and "1.000x" in proc.stdout
    proc = run("hw", "list")
    assert proc.returncode == 0 and "eyeriss" in proc.stdout and "cortex-m" in proc.stdout
    proc = run("hw", "show", "eyeriss")
    assert proc.returncode == 0 and "DRAM" in proc.stdout
    proc = run("hw", "check", str(ROOT / "hwspecs" / "builtin" / "mobile-cpu.yaml"))
    assert proc.returncode == 0 and ": ok" in proc.stdout


def test_bad_models_exit_3_with_one_line(tmp_path):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    assert_user_error(run("estimate", str(empty), "--hw", "eyeriss"), "empty.onnx")
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(TINY.read_bytes()[: len(TINY.read_bytes()) // 2])
    assert_user_error(run("estimate", str(truncated), "--hw", "eyeriss"), "cut.onnx")
    assert_user_error(run("estimate", str(tmp_path / "missing.onnx"), "--hw", "eyeriss"), "missing.onnx")


def test_op_with_missing_weight_names_the_node(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])
    node = helper.make_node("Conv", ["x", "w_missing"], ["y"], name="conv_without_weight", kernel_shape=[3, 3], pads=[1] * 4)
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "noweight.onnx"
    path.write_bytes(model.SerializeToString())
    assert_user_error(run("estimate", str(path), "--hw", "eyeriss"), "noweight.onnx")


def test_bad_specs_exit_3_with_file_and_line(tmp_path):
    spec = (ROOT / "hwspecs" / "builtin" / "eyeriss.yaml").read_text()
    wrong_type = tmp_path / "wrong_type.yaml"
    wrong_type.write_text(spec.replace("clock_hz:", "clock_hz: fast #", 1))
    proc = run("hw", "check", str(wrong_type))
    assert_user_error(proc, "wrong_type.yaml:", "clock_hz")
    negative = tmp_path / "negative.yaml"
    negative.write_text(spec.replace("read_pj: 200", "read_pj: -200", 1))
    proc = run("estimate", str(TINY), "--hw", str(negative))
    assert_user_error(proc, "negative.yaml:", "read_pj", "must be >= 0")


def test_usage_errors_exit_2(tmp_path):
    assert run("estimate", str(TINY)).returncode == 2  # --hw missing
    proc = run("estimate", str(TINY), "--hw", "edge-tpu-int8", "--dataflow", "rs")
    assert_user_error(proc, "does not support dataflow 'rs'", code=2)
    proc = run("estimate", str(TINY), "--hw", "eyeriss", "--input-shape", "x=1xAx3")
    assert_user_error(proc, "--input-shape", code=2)


def test_output_never_overwrites_the_input(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(TINY.read_bytes())
    before = model.read_bytes()
    proc = run("estimate", str(model), "--hw", "eyeriss", "-o", str(model))
    assert proc.returncode == 2 and "refusing to overwrite" in proc.stderr
    assert model.read_bytes() == before
    onnx.checker.check_model(str(model))


def test_estimate_with_data_measures_activation_density(tmp_path):
    import numpy as np

    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    plain = run("estimate", str(TINY), "--hw", "eyeriss", "--format", "json", "-q")
    measured = run("estimate", str(TINY), "--hw", "eyeriss", "--format", "json", "-q", "--data", str(tmp_path / "d.npz"))
    assert plain.returncode == 0 and measured.returncode == 0, measured.stderr
    a, b = json.loads(plain.stdout), json.loads(measured.stdout)
    dens = {l["name"]: l["input_density"] for l in b["layers"] if l["macs"]}
    assert dens["stem/conv"] == 1.0  # gaussian inputs have no zeros
    assert 0.2 < dens["block1/conv2"] < 0.8  # after a ReLU about half are zero
    # eyeriss gates zero inputs: measured sparsity lowers the estimate
    assert b["total_energy_pj"] < a["total_energy_pj"]
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((4, 3, 31, 32), np.float32))
    assert_user_error(run("estimate", str(TINY), "--hw", "eyeriss", "--data", str(bad)), "31")


def test_uninferable_shapes_and_empty_level_exit_3(tmp_path):
    # MatMul of [1, 4] by a [5, 3] weight: onnx's shape inference rejects it
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    w = onnx.numpy_helper.from_array(__import__("numpy").ones((5, 3), "float32"), "w")
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="bad_matmul")
    model = helper.make_model(helper.make_graph([node], "g", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "shapes.onnx"
    path.write_bytes(model.SerializeToString())
    assert_user_error(run("estimate", str(path), "--hw", "eyeriss"), "shapes.onnx", "bad_matmul")
    spec = (ROOT / "hwspecs" / "builtin" / "eyeriss.yaml").read_text()
    no_operands = tmp_path / "no_operands.yaml"
    no_operands.write_text(spec.replace("operands: [weights, inputs, outputs]", "operands: []", 1))
    assert_user_error(run("hw", "check", str(no_operands)), "no_operands.yaml:", "operands")


def test_sweep_config_errors_are_named_before_any_work(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("seed: 0\nmodels:\n  - name: d\n    example: digits\ndevices: [eyeris]\nbudgets: [50%, 50%]\n")
    proc = run("sweep", str(config), "-o", str(tmp_path / "out"))
    assert_user_error(proc, "bad.yaml:5:", "did you mean 'eyeriss'")
    assert not (tmp_path / "out").exists()
    assert run("sweep", str(config), "-j", "0").returncode == 2


def test_estimating_never_imports_torch():
    code = ("import sys, joulecut; code = joulecut.main(['estimate', 'examples/models/tiny_resnet.onnx', '--hw', 'eyeriss', "
            "'--format', 'json', '-q']); assert code == 0; assert 'torch' not in sys.modules, 'torch was imported'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
