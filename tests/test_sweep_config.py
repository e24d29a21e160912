"""Sweep config validation: every bad input is a SweepConfigError naming file, line and key."""
from __future__ import annotations

from pathlib import Path

import pytest

from sweep import SweepConfigError, cell_seed, load_config, parse_config

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def files(tmp_path: Path) -> Path:
    for name in ("m.onnx", "train.npz", "test.npz"):
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def _config(tmp_path: Path, text: str):
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


GOOD = """\
seed: 3
models:
  - {name: m, onnx: m.onnx, train: train.npz, test: test.npz}
devices: [eyeriss, mobile-cpu]
budgets: [100%, 50%, 25%]
methods: [budget, magnitude]
granularities: [channel]
prune: {finetune_epochs: 0.5}
"""


def _error(tmp_path: Path, text: str) -> SweepConfigError:
    with pytest.raises(SweepConfigError) as info:
        load_config(_config(tmp_path, text))
    return info.value


def test_cells_of_a_valid_config(files: Path):
    config = load_config(_config(files, GOOD))
    cells = config.cells()
    # per model x device: one dense cell, then 2 budgets x 2 methods x 1 granularity
    assert len(cells) == 2 * (1 + 2 * 2)
    assert [c.key for c in cells[:5]] == [
        "m/eyeriss/100%", "m/eyeriss/50%/budget/channel", "m/eyeriss/50%/magnitude/channel",
        "m/eyeriss/25%/budget/channel", "m/eyeriss/25%/magnitude/channel"]
    assert cells[0].method == "dense" and cells[0].granularity == "-"
    assert all(c.seed == cell_seed(3, c.key) for c in cells)
    assert len({c.seed for c in cells}) == len(cells)
    assert len({c.slug for c in cells}) == len(cells)
    assert config.model("m").onnx_path == files / "m.onnx"
    assert config.prune_options == (("finetune_epochs", 0.5),)
    assert config.validate is True and config.output is None
    # the seed of a cell depends on the config seed and the key only
    assert cell_seed(3, "m/eyeriss/100%") == cell_seed(3, "m/eyeriss/100%") != cell_seed(4, "m/eyeriss/100%")


def test_yaml_syntax_error_has_file_and_line(files: Path):
    err = _error(files, "seed: 0\nmodels: [\n  - a\ndevices: [eyeriss]\n")
    assert len(err.problems) == 1
    p = err.problems[0]
    assert p.file.endswith("sweep.yaml") and p.line == 3
    assert "invalid YAML" in str(err) and f"{p.file}:3: invalid YAML: while parsing a flow node: expected the node content" in str(err)


def test_unknown_keys_get_did_you_mean_and_line(files: Path):
    err = _error(files, GOOD.replace("budgets:", "budget:") + "prune_opts: 1\n")
    text = str(err)
    assert "sweep.yaml:5: budget: unknown key 'budget'; did you mean 'budgets'?" in text
    assert "missing required key 'budgets'" in text
    assert "sweep.yaml:9: prune_opts: unknown key 'prune_opts'; did you mean 'prune'?" in text


def test_unknown_spec_name_did_you_mean(files: Path):
    err = _error(files, GOOD.replace("[eyeriss, mobile-cpu]", "[eyeriss, mobile-cpus]"))
    assert len(err.problems) == 1
    p = err.problems[0]
    assert (p.line, p.key_path) == (4, "devices[1]")
    assert "unknown hardware spec 'mobile-cpus'; did you mean 'mobile-cpu'?" in p.message


def test_missing_model_file(files: Path):
    (files / "m.onnx").unlink()
    err = _error(files, GOOD)
    assert [(p.line, p.key_path) for p in err.problems] == [(3, "models[0].onnx")]
    assert f"no such file: {files / 'm.onnx'}" in str(err)


def test_duplicate_cells(files: Path):
    text = GOOD.replace("[100%, 50%, 25%]", "[100%, 50%, dense, 50.0%]").replace(
        "[budget, magnitude]", "[budget, budget]")
    text = text.replace("  - {name: m,", "  - {name: m, onnx: m.onnx, train: train.npz, test: test.npz}\n  - {name: m,")
    err = _error(files, text)
    messages = {p.key_path: (p.line, p.message) for p in err.problems}
    assert set(messages) == {"budgets[2]", "budgets[3]", "methods[1]", "models[1]"}
    assert "duplicate budget '100%' (same as budgets[0] on line 6)" in messages["budgets[2]"][1]
    assert "duplicate budget '50.0%' (same as budgets[1] on line 6)" in messages["budgets[3]"][1]
    assert "duplicate model 'm'" in messages["models[1]"][1] and messages["models[1]"][0] == 4
    assert "duplicate method 'budget'" in messages["methods[1]"][1]


def test_duplicate_device_file_and_name(files: Path):
    spec = REPO / "hwspecs" / "builtin" / "eyeriss.yaml"
    config = load_config(_config(files, GOOD.replace("[eyeriss, mobile-cpu]", f"[{spec}, mobile-cpu]")))
    assert [d.label for d in config.devices] == ["eyeriss", "mobile-cpu"]
    assert config.devices[0].spec == str(spec)
    err = _error(files, GOOD.replace("[eyeriss, mobile-cpu]", f"[eyeriss, {spec}]"))
    assert [p.key_path for p in err.problems] == ["devices[1]"] and "duplicate device 'eyeriss'" in str(err)


def test_wrong_types_all_reported_with_lines(files: Path):
    text = (GOOD.replace("seed: 3", "seed: abc").replace("[100%, 50%, 25%]", "[100%, 50, 2.5kJ]")
            .replace("{finetune_epochs: 0.5}", "{finetune_epochs: fast, finetune_epoch: 1}")
            + "validate: 3\n")
    err = _error(files, text)
    got = {p.key_path: (p.line, p.message) for p in err.problems}
    assert got["seed"] == (1, "must be an integer >= 0, got 'abc'")
    assert got["budgets[1]"][0] == 5 and "needs a unit" in got["budgets[1]"][1]
    assert got["budgets[2]"][0] == 5 and "must be like" in got["budgets[2]"][1]
    assert got["prune.finetune_epochs"] == (8, "must be a number, got 'fast'")
    assert got["prune.finetune_epoch"][0] == 8 and "did you mean 'finetune_epochs'?" in got["prune.finetune_epoch"][1]
    assert got["validate"] == (9, "must be true or false, got 3")


def test_bad_methods_granularities_and_shapes(files: Path):
    text = GOOD.replace("[budget, magnitude]", "[energy_aware]").replace("[channel]", "[chanel]")
    err = _error(files, text)
    got = {p.key_path: p.message for p in err.problems}
    assert "did you mean 'energy-aware'?" in got["methods[0]"]
    assert "did you mean 'channel'?" in got["granularities[0]"]
    err = _error(files, "models: 3\ndevices: {a: 1}\nbudgets: []\n")
    got = {p.key_path: (p.line, p.message) for p in err.problems}
    assert got["models"] == (1, "must be a non-empty list of models, got 3")
    assert got["devices"][0] == 2 and "non-empty list" in got["devices"][1]
    assert got["budgets"][0] == 3
    with pytest.raises(SweepConfigError, match="must be a mapping"):
        parse_config("- 1\n- 2\n", "x.yaml")


def test_example_model_options(files: Path):
    text = GOOD.replace("  - {name: m, onnx: m.onnx, train: train.npz, test: test.npz}",
                        "  - {example: digits, epochs: 2}\n  - {example: digts}\n  - {example: digits, name: d2, epochs: 0}")
    err = _error(files, text)
    got = {p.key_path: p.message for p in err.problems}
    assert "unknown example 'digts'; did you mean 'digits'?" in got["models[1].example"]
    assert got["models[2].epochs"] == "must be a positive integer, got 0"
    config = load_config(_config(files, text.replace("  - {example: digts}\n", "").replace("epochs: 0", "epochs: 1")))
    assert [m.name for m in config.models] == ["digits", "d2"]
    assert dict(config.models[0].example_options)["epochs"] == 2


def test_missing_config_and_duplicate_yaml_key(tmp_path: Path):
    with pytest.raises(SweepConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")
    err = _error(tmp_path, "seed: 1\nseed: 2\n")
    assert (err.problems[0].line, err.problems[0].message) == (2, "duplicate key (first on line 1)")


def test_default_config_is_valid():
    config = load_config(REPO / "examples" / "sweep" / "default.yaml")
    assert [d.label for d in config.devices] == ["eyeriss", "mobile-cpu"]
    assert config.budgets == ("100%", "50%", "25%")
    assert config.output == REPO / "examples" / "sweep" / "report"
    assert len(config.cells()) == 6
