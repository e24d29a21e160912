"""prune() end to end on a small digits CNN: budgets met by the estimator's own numbers, the
accuracy limit respected, masks kept, errors raised before any training."""
from __future__ import annotations

import dataclasses
import json
import time
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from energy import estimate, load_model
from energy.errors import DataError, JoulecutWarning
from hwspecs import load_spec
from hwspecs.spec import Operand, SparsityAction
from pruning.api import PruningResult, prune
from pruning.budget import BudgetError
from pruning.export import verify_onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "digits"))
import digits  # noqa: E402

torch.set_num_threads(1)
FAST = {"finetune_epochs": 1, "short_epochs": 0.15, "calib_size": 256}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A DigitsCNN trained for a few epochs on clean digits, as ONNX, with its data."""
    out = tmp_path_factory.mktemp("digits")
    (x, y), (xt, yt) = digits.make_dataset("clean", seed=0)
    model = digits.train_cnn(x, y, epochs=8, seed=0, lr=4e-3)
    from pruning.export import export_onnx

    path = export_onnx(model, torch.from_numpy(x[:1]), out / "digits_cnn.onnx")
    return {"path": path, "x": x, "y": y, "xt": xt, "yt": yt, "model": model, "dir": out}


@pytest.fixture(scope="module")
def eyeriss():
    return load_spec("eyeriss")


@pytest.fixture(scope="module")
def weight_skip_spec(eyeriss):
    """A spec on which zero weights save energy (the eyeriss preset skips them, as Yang et al. assume)."""
    assert eyeriss.operand_sparsity(Operand.WEIGHTS).action is SparsityAction.SKIP
    return eyeriss


@pytest.fixture(scope="module")
def dense_weights_spec(eyeriss):
    """Eyeriss without any zero-weight support: weight sparsity saves nothing there."""
    return dataclasses.replace(eyeriss, name="eyeriss-dense-weights",
                               sparsity=tuple((op, sp) for op, sp in eyeriss.sparsity if op is not Operand.WEIGHTS))


@pytest.fixture(scope="module")
def budget_result(trained, eyeriss):
    return prune(trained["path"], eyeriss, budget="30%", method="budget", granularity="channel",
                 train=(trained["x"], trained["y"]), seed=0, method_options={"initial_step": 0.2}, **FAST)


def test_budget_method_meets_budget_and_exports(budget_result, trained, tmp_path, eyeriss):
    r = budget_result
    assert r.target_pj == pytest.approx(0.3 * r.energy_before_pj)
    assert r.energy_after_pj <= r.target_pj
    assert r.accuracy_before > 0.95 and r.accuracy_after > 0.85
    out = r.save(tmp_path / "pruned.onnx", source=trained["path"])
    onnx.checker.check_model(str(out), full_check=True)
    assert verify_onnx(out, r.module, torch.from_numpy(trained["xt"][:32])) <= 1e-4
    # the estimate of the exported file is the energy the pruner reported
    assert estimate(load_model(out, batch=1).graph, eyeriss).total_energy_pj == pytest.approx(r.energy_after_pj, rel=1e-9)
    assert out.stat().st_size < trained["path"].stat().st_size
    assert [n.name for n in onnx.load(str(out)).graph.node] == [n.name for n in onnx.load(str(trained["path"])).graph.node]
    assert sum(r.layer_energy_after_pj.values()) == pytest.approx(r.energy_after_pj)
    assert any(p.kept < p.total for p in r.plan)


def test_result_reports(budget_result):
    data = json.loads(budget_result.to_json())
    assert data["method"] == "budget" and data["granularity"] == "channel" and data["seed"] == 0
    assert data["energy_ratio"] == pytest.approx(budget_result.energy_after_pj / budget_result.energy_before_pj)
    assert data["history"][0]["event"] == "dense" and data["history"][-1]["event"] == "final fine-tune"
    md = budget_result.to_markdown()
    assert "| /conv2/Conv |" in md and "30%" in md
    with pytest.raises(dataclasses.FrozenInstanceError):
        budget_result.seed = 3  # type: ignore[misc]


def test_result_says_where_the_time_went(budget_result):
    times = dict(budget_result.time_s)
    assert list(times) == ["fine-tuning", "estimation", "proposals", "evaluation", "other"]
    # budget fine-tunes every proposal, estimates every probe and restores by least squares
    assert all(times[k] > 0 for k in ("fine-tuning", "estimation", "proposals", "evaluation"))
    assert times["other"] >= 0
    assert sum(times.values()) == pytest.approx(budget_result.wall_time_s, rel=1e-6)
    assert json.loads(budget_result.to_json())["time_s"] == pytest.approx(times)
    assert "- time: fine-tuning " in budget_result.to_markdown()


def test_phase_clock_counts_nested_phases_once():
    from pruning.methods import PhaseClock

    clock = PhaseClock()
    with clock.phase("outer"):
        with clock.phase("inner"):
            time.sleep(0.01)
    assert set(clock.seconds) == {"outer"} and clock.seconds["outer"] >= 0.01
    assert clock.timed("x", lambda a, b=1: a + b)(2, b=3) == 5 and "x" in clock.seconds


def test_energy_aware_respects_accuracy_limit(trained, eyeriss):
    r = prune(trained["path"], eyeriss, budget=None, method="energy-aware", granularity="channel",
              train=(trained["x"], trained["y"]), allowed_drop=0.02, seed=1, method_options={"max_passes": 1}, **FAST)
    prunes = [h for h in r.history if "prune" in h["event"]]
    assert prunes, "nothing was pruned"
    assert all(h["accuracy"] >= r.accuracy_before - 0.02 - 1e-12 for h in prunes)
    assert r.energy_after_pj < r.energy_before_pj
    # the first unit touched is the one with the highest estimated energy
    energies = {}
    for p in r.plan:
        energies[p.unit] = sum(r.layer_energy_before_pj[n] for n in p.layers)
    assert prunes[0]["unit"] == max(energies, key=energies.get)


def test_energy_aware_and_magnitude_meet_a_budget(trained, eyeriss):
    for method in ("energy-aware", "magnitude"):
        r = prune(trained["path"], eyeriss, budget="40%", method=method, granularity="channel",
                  train=(trained["x"], trained["y"]), seed=0, **FAST)
        assert r.energy_after_pj <= 0.4 * r.energy_before_pj, method
        assert r.accuracy_after > 0.5, method


def test_weight_granularity_keeps_masks(trained, weight_skip_spec, tmp_path):
    r = prune(trained["model"], weight_skip_spec, budget="60%", method="magnitude", granularity="weight",
              train=(trained["x"], trained["y"]), seed=0, **FAST)
    out = r.save(tmp_path / "sparse.onnx")
    # the importer measures the exported zeros: same densities, same energy as the pruner's IR edit
    assert estimate(load_model(out, batch=1).graph, weight_skip_spec).total_energy_pj == pytest.approx(r.energy_after_pj, rel=1e-9)
    assert r.energy_after_pj <= 0.6 * r.energy_before_pj
    for p in r.plan:
        w = r.module.layer(p.unit).weight
        assert int((w != 0).sum()) <= p.kept  # masked weights stayed zero through fine-tuning
    assert sum(p.total - p.kept for p in r.plan) > 0
    densities = {l.name: l.weight_density for l in r.graph.mac_layers()}
    for p in r.plan:
        assert densities[p.unit] == pytest.approx(p.kept / p.total, abs=1e-6)


def test_block_granularity_prunes_whole_blocks(trained, weight_skip_spec):
    r = prune(trained["path"], weight_skip_spec, budget="60%", method="budget", granularity="block",
              train=(trained["x"], trained["y"]), seed=0, method_options={"initial_step": 0.25}, **FAST)
    assert r.energy_after_pj <= 0.6 * r.energy_before_pj
    pruned = [p for p in r.plan if p.kept < p.total]
    assert pruned
    for p in pruned:
        w = r.module.layer(p.unit).weight.detach()
        w = w.reshape(w.shape[0], -1)
        rows, cols = (w.shape[0] // 4) * 4, (w.shape[1] // 4) * 4  # full 4x4 tiles only
        tiles = (w[:rows, :cols] == 0).reshape(rows // 4, 4, cols // 4, 4).permute(0, 2, 1, 3).reshape(-1, 16).sum(dim=1)
        assert set(tiles.tolist()) <= {0, 16}, p.unit
        assert (tiles == 16).any(), p.unit


def _never(module):
    raise AssertionError("evaluated: training started before the budget was checked")


def test_unreachable_budgets_fail_before_training(trained, eyeriss, dense_weights_spec):
    data = (trained["x"], trained["y"])
    with pytest.raises(BudgetError, match="neither gates nor skips zero weights"):
        prune(trained["path"], dense_weights_spec, budget="50%", granularity="weight", train=data, evaluate_fn=_never)
    with pytest.raises(BudgetError, match="cannot be met"):
        prune(trained["path"], eyeriss, budget="1%", granularity="weight", train=data, evaluate_fn=_never)
    with pytest.raises(BudgetError, match=r"cannot be met.*% of the dense"):
        prune(trained["path"], eyeriss, budget="1%", granularity="channel", train=data, evaluate_fn=_never)
    with pytest.raises(BudgetError, match="cannot be met"):
        prune(trained["path"], eyeriss, budget="1pJ", method="budget", train=data, evaluate_fn=_never)
    with pytest.raises(BudgetError, match="needs a budget"):
        prune(trained["path"], eyeriss, method="budget", train=data, evaluate_fn=_never)


def test_bad_arguments(trained, eyeriss):
    data = (trained["x"], trained["y"])
    with pytest.raises(ValueError, match="method must be one of"):
        prune(trained["path"], eyeriss, budget="50%", method="random", train=data)
    with pytest.raises(ValueError, match="granularity must be one of"):
        prune(trained["path"], eyeriss, budget="50%", granularity="filter", train=data)
    with pytest.raises(DataError, match=r"\(N, 1, 8, 8\)"):
        prune(trained["path"], eyeriss, budget="50%", train=(trained["x"][:, :, :7], trained["y"]))
    with pytest.raises(DataError, match=r"labels must be in \[0, 9\]"):
        prune(trained["path"], eyeriss, budget="50%", train=(trained["x"], trained["y"] + 5))
    with pytest.raises(ValueError, match="method_options"):
        prune(trained["path"], eyeriss, budget="50%", method="budget", train=data, method_options={"stepp": 1})
    with pytest.raises(DataError, match="training data"):
        prune(trained["path"], eyeriss, budget="50%")


def test_progress_callback_and_no_printing(trained, eyeriss, capsys):
    messages = []
    prune(trained["path"], eyeriss, budget="50%", method="magnitude", train=(trained["x"], trained["y"]),
          progress=messages.append, finetune_epochs=0.2)
    assert any("magnitude" in m for m in messages)
    assert capsys.readouterr().out == ""


def test_few_validation_samples_warn(trained, eyeriss):
    """40 samples: the seeded 20% split leaves 8 validation images, 12.5 points each (allowed drop 1 point)."""
    data = (trained["x"][:40], trained["y"][:40])
    with pytest.warns(JoulecutWarning, match=r"only 8 validation sample\(s\): one sample is 12 points, more than the allowed drop of 1;"):
        prune(trained["path"], eyeriss, budget="50%", method="magnitude", train=data, finetune_epochs=0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", JoulecutWarning)  # enough data, or the user's own evaluation: silent
        prune(trained["path"], eyeriss, budget="50%", method="magnitude", train=(trained["x"], trained["y"]),
              finetune_epochs=0.2)
        prune(trained["path"], eyeriss, budget="50%", method="magnitude", train=data, finetune_epochs=0.2,
              evaluate_fn=lambda module: 1.0)


@pytest.mark.parametrize("net", ["ResNetTiny", "MobileNetTiny"])
def test_coupled_channel_groups_prune_end_to_end(net, eyeriss, tmp_path):
    """Residual Adds and depthwise convs: pruned together, exported, re-estimated to the same energy."""
    import models

    cls = getattr(models, net)
    torch.manual_seed(0)
    teacher = cls().eval()
    x = torch.randn(96, *cls.example_input(1).shape[1:], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = teacher(x).argmax(dim=1)  # the dense model's own labels: accuracy starts at 1
    r = prune(teacher, eyeriss, budget="60%", method="budget", granularity="channel", train=(x, y), val=(x, y),
              seed=0, finetune_epochs=0.2, short_epochs=0.1, calib_size=64, method_options={"initial_step": 0.25})
    assert r.accuracy_before == 1.0 and r.energy_after_pj <= 0.6 * r.energy_before_pj
    out = r.save(tmp_path / "pruned.onnx")
    assert verify_onnx(out, r.module, x[:8]) <= 1e-4
    assert estimate(load_model(out, batch=1).graph, eyeriss).total_energy_pj == pytest.approx(r.energy_after_pj, rel=1e-9)
    coupled = [p for p in r.plan if "+" in p.unit or len(p.layers) > 2]
    assert coupled  # groups spanning several layers exist in these nets
