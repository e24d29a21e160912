"""pruning.hashed: Gemm/MatMul -> SLIDE hashed layers, their ONNX nodes and the kernel runner.

References: NumPy dense products (x W^T + b) restricted to the active sets, kernels.slide
rebuilt from the exported initializers, and the torch module itself for the runner."""
from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import nn

from energy.errors import DataError, ModelError, OptionError
from kernels.runner import GraphRunner
from kernels.slide import HashedLinear
from pruning.hashed import (DOMAIN, OP_TYPE, HashedLinearModule, export_hashed, finetune_sparse,
                            prune_hashed, to_hashed, verify_hashed)
from pruning.onnx_torch import onnx_to_torch
from tests.models import export_onnx, onnx_model

torch.set_num_threads(1)


def mlp_model(n_in: int = 32, hidden: int = 256, n_out: int = 10, seed: int = 0) -> onnx.ModelProto:
    """Gemm(transB) -> Relu -> Gemm with seeded random weights; nodes fc1, relu, fc2."""
    rng = np.random.default_rng(seed)
    inits = {
        "w1": (rng.standard_normal((hidden, n_in)) / np.sqrt(n_in)).astype(np.float32),
        "b1": (0.1 * rng.standard_normal(hidden)).astype(np.float32),
        "w2": (rng.standard_normal((hidden, n_out)) / np.sqrt(hidden)).astype(np.float32),
        "b2": np.zeros(n_out, np.float32),
    }
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2")]
    return onnx_model(nodes, {"x": ["N", n_in]}, {"y": ["N", n_out]}, inits)


def inputs(n: int, n_in: int = 32, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, n_in)).astype(np.float32)


@pytest.fixture(scope="module")
def small():
    """fc1 (32 -> 256) hashed at 10 %, no fine-tuning."""
    return to_hashed(mlp_model(), ["fc1"], inputs(200), target_active_fraction=0.1, seed=3)


def node_of(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


# --- choosing K and L -------------------------------------------------------------------------
@pytest.mark.parametrize("family,target", [("simhash", 0.05), ("simhash", 0.1), ("dwta", 0.05)])
def test_active_fraction_reaches_target_on_calibration_data(family, target):
    calib = inputs(300)
    r = to_hashed(mlp_model(), ["fc1"], calib, target_active_fraction=target, family=family)
    info = r.layers["fc1"]
    assert 0.8 * target <= info.active_fraction <= 1.25 * target
    # recount from scratch: the layer's input is the model input here
    w1 = numpy_helper.to_array(next(t for t in mlp_model().graph.initializer if t.name == "w1"))
    layer = HashedLinear(w1, None, family=family, K=info.K, L=info.L, seed=0)
    sizes = [len(s) for s in layer.active_sets(calib)]
    assert np.mean(sizes) / 256 == pytest.approx(info.active_fraction, abs=1e-12)
    assert 0 < info.recall <= 1 and info.k_recall == 10
    assert (info.K, info.L) in {(c[0], c[1]) for c in info.candidates}


def test_torch_module_is_dense_product_on_the_active_sets(small):
    x = inputs(64, seed=7)
    h = small.module.layer("fc1")
    assert isinstance(h, HashedLinearModule)
    with torch.no_grad():
        y = h(torch.from_numpy(x)).numpy()
    w, b = h.weight.detach().numpy(), h.bias.detach().numpy()
    dense = x.astype(np.float64) @ w.T.astype(np.float64) + b
    indptr, ids = h.active(x)
    mask = np.zeros_like(y, dtype=bool)
    mask[np.repeat(np.arange(len(x)), np.diff(indptr)), ids] = True
    np.testing.assert_allclose(y[mask], dense[mask], atol=1e-5)
    assert np.all(y[~mask] == 0)  # inactive outputs are exactly 0 (no bias)
    assert 0 < mask.mean() < 0.5


# --- the ONNX node -----------------------------------------------------------------------------
def test_exported_node_attributes_and_initializers(small, tmp_path):
    path = export_hashed(small, tmp_path / "h.onnx")
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert (DOMAIN, 1) in {(o.domain, o.version) for o in model.opset_import}
    node = node_of(model, "fc1")
    assert (node.domain, node.op_type) == (DOMAIN, OP_TYPE) == ("joulecut", "HashedLinear")
    assert list(node.input) == ["x", "fc1.weight", "fc1.bias", "fc1.bucket_offsets", "fc1.bucket_ids"]
    assert list(node.output) == ["h"]
    a = attrs(node)
    info, h = small.layers["fc1"], small.module.layer("fc1")
    assert (a["K"], a["L"], a["seed"]) == (info.K, info.L, 3)
    assert a["family"] == b"simhash" and a["mode"] == b"batched"
    assert a["active_fraction"] == pytest.approx(info.active_fraction, rel=1e-6)
    assert a["density"] == pytest.approx(1 / 3, rel=1e-6)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    np.testing.assert_array_equal(inits["fc1.weight"], h.weight.detach().numpy())
    assert inits["fc1.weight"].shape == (256, 32) and inits["fc1.bias"].shape == (256,)
    assert inits["fc1.bucket_offsets"].dtype == np.int32 and inits["fc1.bucket_ids"].dtype == np.int32
    # the stored tables are those kernels.slide builds from W + seed
    rebuilt = HashedLinear(inits["fc1.weight"], inits["fc1.bias"], K=info.K, L=info.L, seed=3)
    np.testing.assert_array_equal(inits["fc1.bucket_offsets"], rebuilt.tables.offsets)
    np.testing.assert_array_equal(inits["fc1.bucket_ids"], rebuilt.tables.ids)
    assert inits["fc1.bucket_ids"].shape == (info.L, 256)
    assert "w1" not in inits and "b1" not in inits  # replaced, not left behind
    assert node_of(model, "fc2").op_type == "Gemm" and node_of(model, "fc2").domain == ""
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("mode", ["batched", "per-sample"])
def test_runner_matches_torch_and_selects_the_same_sets(mode, tmp_path):
    calib = inputs(200)
    r = to_hashed(mlp_model(), ["fc1"], calib, target_active_fraction=0.08, mode=mode)
    path = export_hashed(r, tmp_path / "h.onnx")
    x = inputs(50, seed=11)
    assert verify_hashed(path, r.module, x) <= 1e-4
    runner = GraphRunner(path)
    runner.run({"x": x})
    kernel_layer = runner.packed["fc1"][1][0]
    h = r.module.layer("fc1")
    indptr, ids = h.active(x)
    mine = [np.sort(ids[indptr[b]:indptr[b + 1]]) for b in range(len(x))]
    theirs = kernel_layer.active_sets(x)
    assert all(np.array_equal(m, t) for m, t in zip(mine, theirs))
    run = next(l for l in runner.last_run if l.name == "fc1")
    assert run.format == "hashed"
    assert run.macs_executed == int(indptr[-1]) * 32 and run.dense_macs == 50 * 256 * 32


def test_matmul_layer_with_leading_dims_and_dwta(tmp_path):
    rng = np.random.default_rng(4)
    w = rng.standard_normal((16, 128)).astype(np.float32)  # MatMul weight [in, out]
    model = onnx_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="proj")],
                       {"x": [2, 5, 16]}, {"y": [2, 5, 128]}, {"w": w})
    x = rng.standard_normal((40, 5, 16)).astype(np.float32)
    r = to_hashed(model, ["proj"], x, target_active_fraction=0.1, family="dwta", seed=1)
    a = attrs(node_of(r.onnx, "proj"))
    assert a["family"] == b"dwta" and a["bin_size"] == 8 and "density" not in a
    inits = {t.name: numpy_helper.to_array(t) for t in r.onnx.graph.initializer}
    np.testing.assert_array_equal(inits["proj.weight"], w.T)
    np.testing.assert_array_equal(inits["proj.bias"], np.zeros(128, np.float32))
    xv = x[:2]
    y = GraphRunner(export_hashed(r, tmp_path / "p.onnx")).run({"x": xv})[0]
    assert y.shape == (2, 5, 128)
    with torch.no_grad():
        np.testing.assert_allclose(y, r.module(torch.from_numpy(xv)).numpy(), atol=1e-4)
    dense = xv @ w
    nz = y != 0
    np.testing.assert_allclose(y[nz], dense[nz], atol=1e-4)


def test_runner_rejects_tables_that_do_not_match_the_weights(small):
    model = onnx.ModelProto()
    model.CopyFrom(small.onnx)
    for t in model.graph.initializer:
        if t.name == "fc1.weight":
            w = numpy_helper.to_array(t).copy()
            w[0] = -w[0]  # the stored tables no longer fit W
            t.CopyFrom(numpy_helper.from_array(w, t.name))
    with pytest.raises(ValueError, match="node 'fc1'.*bucket tables"):
        GraphRunner(model)


# --- sparse-update fine-tuning -------------------------------------------------------------------
def test_finetune_moves_only_rows_of_active_neurons():
    r = to_hashed(mlp_model(), ["fc1"], inputs(200), target_active_fraction=0.05)
    module, h = r.module, r.module.layer("fc1")
    x = torch.from_numpy(inputs(16, seed=5))
    y = torch.arange(16) % 10
    before_w, before_b = h.weight.detach().clone(), h.bias.detach().clone()
    fc2_before = module.layer("fc2").weight.detach().clone()
    _, ids = h.active(x.numpy())
    active = np.zeros(256, dtype=bool)
    active[ids] = True
    finetune_sparse(module, [h], x, y, epochs=1, batch_size=16, lr=1e-2, rehash_every=1)
    moved = (h.weight.detach() != before_w).any(dim=1).numpy() | (h.bias.detach() != before_b).numpy()
    assert moved.any() and not moved[~active].any()
    assert not torch.equal(module.layer("fc2").weight.detach(), fc2_before)  # dense layers train as usual
    # tables were rebuilt from the trained weights
    fresh = HashedLinear(h.weight.detach().numpy().copy(), h.bias.detach().numpy().copy(), K=h.K, L=h.L, seed=h.seed)
    np.testing.assert_array_equal(fresh.tables.ids, h.slide.tables.ids)


# --- a wide MLP on digits --------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_mlp(tmp_path_factory):
    """64 -> 1024 -> 10 trained for 6 epochs on sklearn's digits (about 97 % test accuracy)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 1024), nn.ReLU(), nn.Linear(1024, 10))
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    xt, yt = torch.from_numpy(x[:1300]), torch.from_numpy(y[:1300])
    for _ in range(6):
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 128):
            idx = perm[i:i + 128]
            opt.zero_grad()
            F.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
    path = export_onnx(net, torch.zeros(1, 64), tmp_path_factory.mktemp("digits") / "mlp.onnx", dynamic_batch=True)
    return path, (x[:1300], y[:1300]), (x[1300:], y[1300:])


# Measured (hash seeds 0, 1, 2; dense 97.2 %): 10 % active 95.8 / 96.2 / 96.4 %, 5 % active
# 95.4 / 93.6 / 94.6 %. The margins below leave about 1.5 points for platform noise.
@pytest.mark.parametrize("target,margin", [(0.1, 0.03), (0.05, 0.05)])
def test_wide_digits_mlp_keeps_accuracy(digits_mlp, target, margin, tmp_path):
    src, (xtr, ytr), (xte, yte) = digits_mlp
    r = to_hashed(src, ["/0/Gemm"], xtr[:300], target_active_fraction=target, train=(xtr, ytr), eval=(xte, yte),
                  finetune_epochs=3, seed=0)
    info = r.layers["/0/Gemm"]
    assert r.accuracy_before >= 0.95
    assert 0.8 * target <= info.active_fraction <= 1.25 * target
    assert r.accuracy_after >= r.accuracy_before - margin
    assert r.accuracy_after > r.accuracy_hashed  # fine-tuning recovers part of the loss
    out = export_hashed(r, tmp_path / "mlp_hashed.onnx")
    assert verify_hashed(out, r.module, xte) <= 1e-4
    runner = GraphRunner(out)
    pred = runner.run({runner.inputs[0]: xte})[0].argmax(axis=1)
    assert abs((pred == yte).mean() - r.accuracy_after) <= 1 / len(yte) + 1e-12


# --- errors ----------------------------------------------------------------------------------
def test_unknown_layer_name_is_an_option_error_with_a_hint():
    with pytest.raises(OptionError, match=r"unknown layer 'fc_1'.*did you mean 'fc1'"):
        to_hashed(mlp_model(), ["fc_1"], inputs(20))


def test_non_gemm_layers_are_model_errors_naming_the_node():
    with pytest.raises(ModelError, match=r"node 'relu'.*Gemm or MatMul.*got Relu"):
        to_hashed(mlp_model(), ["relu"], inputs(20))
    two = onnx_model([helper.make_node("Transpose", ["x"], ["t"], name="t"),
                      helper.make_node("MatMul", ["x", "t"], ["y"], name="mm")],
                     {"x": [4, 4]}, {"y": [4, 4]})
    with pytest.raises(ModelError, match=r"node 'mm'.*MatMul without a constant"):
        to_hashed(two, ["mm"], inputs(4, 4))


@pytest.mark.parametrize("target", [0, -0.1, 1.5, float("nan")])
def test_target_out_of_range_is_an_option_error(target):
    with pytest.raises(OptionError, match="target active fraction must be in \\(0, 1\\]"):
        to_hashed(mlp_model(), ["fc1"], inputs(20), target_active_fraction=target)


def test_other_bad_options_and_data():
    with pytest.raises(OptionError, match="hash family"):
        to_hashed(mlp_model(), ["fc1"], inputs(20), family="minhash")
    with pytest.raises(OptionError, match="mode"):
        to_hashed(mlp_model(), ["fc1"], inputs(20), mode="per_sample")
    with pytest.raises(OptionError, match="listed twice"):
        to_hashed(mlp_model(), ["fc1", "fc1"], inputs(20))
    with pytest.raises(DataError):
        to_hashed(mlp_model(), ["fc1"], inputs(20, n_in=31))
    with pytest.raises(DataError, match=r"training data .* labels in \[0, 9\]"):
        to_hashed(mlp_model(), ["fc1"], inputs(20), train=(inputs(8), np.arange(8) + 5))


def test_export_never_overwrites_the_input(tmp_path):
    src = tmp_path / "mlp.onnx"
    onnx.save(mlp_model(), str(src))
    r = to_hashed(src, ["fc1"], inputs(50), target_active_fraction=0.1)
    before = src.read_bytes()
    with pytest.raises(ModelError, match="refusing to overwrite"):
        export_hashed(r, src)
    assert src.read_bytes() == before


def test_prune_hashed_splits_checks_and_fine_tunes(tmp_path):
    src = tmp_path / "mlp.onnx"
    onnx.save(mlp_model(), str(src))
    x = inputs(240)
    y = np.random.default_rng(2).integers(0, 10, 240)
    r = prune_hashed(src, ["fc1"], (x, y), target_active_fraction=0.1, finetune_epochs=1, val_fraction=0.25)
    assert r.source == str(src) and len(r.history) == 1
    assert r.accuracy_before is not None and r.accuracy_after is not None
    assert 0.08 <= r.layers["fc1"].active_fraction <= 0.125
    with pytest.raises(DataError, match=r"labels must be in \[0, 9\]"):
        prune_hashed(src, ["fc1"], (x, y + 5))
    with pytest.raises(DataError, match="inputs must have shape"):
        prune_hashed(src, ["fc1"], (x[:, :30], y))
    with pytest.raises(OptionError, match="unknown layer"):
        prune_hashed(src, ["fc9"], (x, y))


def test_two_hashed_layers_in_a_chain_and_the_input_module_untouched():
    """fc2 hashes fc1's hashed output: torch and the runner compute that input in a different
    order, so this also checks that no projection of it sits within rounding of a sign flip."""
    rng = np.random.default_rng(0)
    inits = {"w1": (rng.standard_normal((32, 256)) / 6).astype(np.float32),
             "w2": (rng.standard_normal((256, 256)) / 16).astype(np.float32),
             "b2": np.zeros(256, np.float32), "w3": (rng.standard_normal((256, 10)) / 16).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["h2"], name="fc2"),
             helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
             helper.make_node("MatMul", ["r2", "w3"], ["y"], name="fc3")]
    source = onnx_to_torch(onnx_model(nodes, {"x": ["N", 32]}, {"y": ["N", 10]}, inits))
    x = rng.standard_normal((300, 32)).astype(np.float32)
    r = to_hashed(source, ["fc2", "fc1"], x[:200], target_active_fraction=0.1)
    assert list(r.layers) == ["fc1", "fc2"]  # graph order
    assert all(0.08 <= l.active_fraction <= 0.125 for l in r.layers.values())
    assert verify_hashed(r.onnx, r.module, x[200:]) <= 1e-4
    assert type(source.layer("fc1")) is nn.Linear and type(source.layer("fc2")) is nn.Linear


def test_target_one_keeps_every_neuron_active():
    x = inputs(100)
    r = to_hashed(mlp_model(), ["fc1"], x, target_active_fraction=1.0)
    assert r.layers["fc1"].active_fraction == 1.0
    xv = torch.from_numpy(inputs(20, seed=9))
    dense = onnx_to_torch(mlp_model())
    with torch.no_grad():
        np.testing.assert_allclose(r.module(xv).numpy(), dense(xv).numpy(), atol=1e-5)


def test_hashed_module_survives_deepcopy_and_torch_save(small, tmp_path):
    x = torch.from_numpy(inputs(30, seed=4))
    torch.save(small.module, tmp_path / "m.pt")
    copies = [copy.deepcopy(small.module), torch.load(tmp_path / "m.pt", weights_only=False)]
    with torch.no_grad():
        want = small.module(x)
        assert all(torch.equal(c(x), want) for c in copies)
