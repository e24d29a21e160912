from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pruning.dsr import (
    DynamicSparseTrainer,
    StaticSparseTrainer,
    first_and_last_layers,
    proportional_allocation,
    train_sparse,
)

torch.set_num_threads(1)


def _hand_model():
    """Layer "0": 4x4 with 8 active weights; layer "2": 2x4 with 4 active weights.

    With H = 0.1: layer 0 loses 2 (0.01, 0.02) and keeps 6; layer 2 loses 1 (0.05), keeps 3.
    K = 3 pruned, survivors 6 : 3, so regrowth is 3 * 6/9 = 2 and 3 * 3/9 = 1.
    """
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    w0 = torch.zeros(4, 4)
    w0[0] = torch.tensor([0.01, 0.02, 0.5, 0.6])
    w0[1] = torch.tensor([0.7, 0.8, 0.9, 1.0])
    m0 = torch.zeros(4, 4, dtype=torch.bool)
    m0[:2] = True
    w2 = torch.tensor([[0.05, 1.0, 0.0, 0.0], [1.1, 1.2, 0.0, 0.0]])
    m2 = torch.tensor([[True, True, False, False], [True, True, False, False]])
    with torch.no_grad():
        net[0].weight.copy_(w0)
        net[2].weight.copy_(w2)
    return net, {"0": m0, "2": m2}


def _dsr(net, masks, fraction, **kw):
    return DynamicSparseTrainer(
        net, initial_masks=masks, prune_fraction_per_cycle=fraction, initial_threshold=0.1,
        reallocate_every=1, seed=3, **kw,
    )


def test_regrowth_proportional_to_surviving_weights_hand_computed():
    net, masks = _hand_model()
    before = {n: m.clone() for n, m in masks.items()}
    t = _dsr(net, masks, fraction=0.25)  # N_p = round(0.25 * 12) = 3
    assert t.nonzero_budget == 12 and t.target_pruned == 3
    c = t.reallocate()
    assert c.pruned_per_layer == {"0": 2, "2": 1}
    assert c.regrown_per_layer == {"0": 2, "2": 1}
    assert c.pruned == c.regrown == 3
    assert c.nonzeros_per_layer == {"0": 8, "2": 4}
    # the survivors are untouched, the pruned small weights are gone unless regrown (then 0)
    w0 = net[0].weight.detach()
    assert torch.equal(w0[0, 2:], torch.tensor([0.5, 0.6]))
    assert torch.equal(w0[1], torch.tensor([0.7, 0.8, 0.9, 1.0]))
    assert w0[0, 0] == 0 and w0[0, 1] == 0 and net[2].weight[0, 0] == 0
    # regrown weights are exactly zero-initialised: active entries with value 0
    for name, layer in (("0", net[0]), ("2", net[2])):
        m = t.masks[name]
        assert int((m & (layer.weight == 0)).sum()) == c.regrown_per_layer[name]
        assert torch.all(layer.weight[~m] == 0)
    assert not torch.equal(t.masks["0"], before["0"]) or not torch.equal(t.masks["2"], before["2"])
    # K = 3 is inside [0.9, 1.1] x N_p: threshold unchanged
    assert c.threshold == c.next_threshold == 0.1 == t.threshold


@pytest.mark.parametrize("fraction, expected", [(0.25, 0.1), (1 / 12, 0.05), (0.5, 0.2)])
def test_threshold_moves_so_pruned_count_approaches_target(fraction, expected):
    # K = 3 every time: N_p = 3 keeps H, N_p = 1 (pruned too many) halves it, N_p = 6 doubles it
    net, masks = _hand_model()
    t = _dsr(net, masks, fraction=fraction)
    c = t.reallocate()
    assert c.pruned == 3
    assert c.next_threshold == pytest.approx(expected)


def test_proportional_allocation_rounding_and_caps():
    assert proportional_allocation(3, [6, 3], [10, 10]) == [2, 1]
    assert proportional_allocation(4, [6, 3], [10, 10]) == [3, 1]  # 2.67, 1.33: largest remainder
    assert proportional_allocation(5, [1, 1], [10, 10]) == [3, 2]  # tie: lower index
    assert proportional_allocation(6, [8, 1, 1], [2, 10, 10]) == [2, 2, 2]  # overflow re-split
    assert proportional_allocation(2, [0, 0], [1, 3]) == [1, 1]  # no survivors: by free space
    with pytest.raises(ValueError, match="caps must sum"):
        proportional_allocation(5, [1, 1], [2, 2])


def _data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    return x, y


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))


def test_budget_exact_after_every_reallocation_and_layers_move():
    net = _mlp()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    t = DynamicSparseTrainer(net, sparsity=0.8, prune_fraction_per_cycle=0.2, reallocate_every=2,
                             initial_threshold=1e-3, seed=1, optimizer=opt)
    total = 10 * 32 + 32 * 32 + 32 * 3
    assert t.nonzero_budget == round(0.2 * total)
    x, y = _data()
    for _ in range(40):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        t.step()
        assert sum(int(m.sum()) for m in t.masks.values()) == t.nonzero_budget
        for name, m in t.masks.items():
            w = dict(net.named_modules())[name].weight
            assert torch.all(w[~m] == 0)
    assert len(t.history) == 20
    assert all(c.pruned == c.regrown for c in t.history)
    assert sum(c.pruned for c in t.history) > 0
    first = t.history[0]
    assert first.next_threshold == 2e-3  # nothing near 1e-3 at init: pruned < 0.9 N_p, H doubles
    dens = t.density_per_layer()
    assert len(set(round(d, 6) for d in dens.values())) > 1  # budget moved between layers
    assert sum(t.nonzeros_per_layer().values()) == t.nonzero_budget


def test_optimizer_state_reset_at_regrown_positions():
    net, masks = _hand_model()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    opt.state[net[0].weight]["momentum_buffer"] = torch.ones(4, 4)
    opt.state[net[2].weight]["momentum_buffer"] = torch.ones(2, 4)
    before = {n: m.clone() for n, m in masks.items()}
    t = _dsr(net, masks, fraction=0.25, optimizer=opt)
    # masked-out positions were reset at construction, active ones kept
    buf0 = opt.state[net[0].weight]["momentum_buffer"]
    assert torch.equal(buf0, before["0"].float())
    t.reallocate()
    after = t.masks["0"]
    regrown = after & ~before["0"]
    pruned_pos = before["0"] & ~after
    assert int(regrown.sum()) >= 1
    assert torch.all(buf0[regrown] == 0) and torch.all(buf0[pruned_pos] == 0)
    assert torch.all(buf0[0, 2:] == 1)  # survivors keep their momentum


def test_static_baseline_keeps_its_mask_fixed():
    net = _mlp(1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    t = StaticSparseTrainer(net, sparsity=0.75, seed=5, optimizer=opt)
    start = t.masks
    sizes = t.layer_sizes()
    # uniform density: every layer gets its share of the budget (exactly 25% here)
    assert t.nonzeros_per_layer() == {n: s // 4 for n, s in sizes.items()}
    x, y = _data()
    for _ in range(10):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        t.step()
    assert t.history == []
    for n, m in t.masks.items():
        assert torch.equal(m, start[n])
        assert torch.all(dict(net.named_modules())[n].weight[~m] == 0)


def test_dense_layers_and_masks_reproducible_from_seed():
    net = _mlp()
    assert first_and_last_layers(net) == ("0", "4")
    t = StaticSparseTrainer(net, sparsity=0.5, dense_layers=first_and_last_layers(net), seed=0)
    assert list(t.masks) == ["2"]
    assert t.nonzero_budget == 512
    assert t.density_per_layer() == {"0": 1.0, "2": 0.5, "4": 1.0}
    t2 = StaticSparseTrainer(_mlp(), sparsity=0.5, dense_layers=("0", "4"), seed=0)
    assert torch.equal(t.masks["2"], t2.masks["2"])


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="exactly one of sparsity, nonzero_budget"):
        DynamicSparseTrainer(_mlp(), sparsity=0.5, nonzero_budget=10)
    with pytest.raises(ValueError, match=r"sparsity must be a float in \[0, 1\), got 1.2"):
        StaticSparseTrainer(_mlp(), sparsity=1.2)
    with pytest.raises(ValueError, match="between 1 and the 1440 weights"):
        StaticSparseTrainer(_mlp(), nonzero_budget=5000)
    with pytest.raises(ValueError, match="unknown"):
        StaticSparseTrainer(_mlp(), sparsity=0.5, dense_layers=["fc9"])
    with pytest.raises(ValueError, match="reallocate_every must be an int >= 1, got 0"):
        DynamicSparseTrainer(_mlp(), sparsity=0.5, reallocate_every=0)
    with pytest.raises(ValueError, match="method must be one of"):
        train_sparse(_mlp(), _data(), epochs=1, lr=0.1, sparsity=0.5, method="rigl")
    with pytest.raises(ValueError, match="method='dense' takes no sparsity"):
        train_sparse(_mlp(), _data(), epochs=1, lr=0.1, sparsity=0.5, method="dense")


@pytest.mark.parametrize("method", ["dsr", "static", "dense"])
def test_train_sparse_learns_and_respects_budget(method):
    x, y = _data(192)
    net = _mlp(2)
    with torch.no_grad():
        start_loss = float(nn.functional.cross_entropy(net(x), y))
    sparsity = None if method == "dense" else 0.7
    net, hist = train_sparse(net, (x.numpy(), y.numpy()), epochs=20, lr=0.2, sparsity=sparsity,
                             method=method, seed=0, batch_size=32, reallocate_every=10)
    with torch.no_grad():
        end_loss = float(nn.functional.cross_entropy(net(x), y))
    assert end_loss < 0.7 * start_loss
    assert hist.steps == 20 * 6 and len(hist.loss_per_epoch) == 20
    if method == "dense":
        assert hist.nonzero_budget is None and hist.cycles == ()
        return
    nonzero = sum(int((m.weight != 0).sum()) for m in net if isinstance(m, nn.Linear))
    assert nonzero <= hist.nonzero_budget == round(0.3 * 1440)
    assert sum(hist.nonzeros_per_layer.values()) == hist.nonzero_budget
    # 120 steps, reallocation every 10 up to step int(0.9 * 120) = 108: 10 cycles
    assert [c.step for c in hist.cycles] == ([10 * i for i in range(1, 11)] if method == "dsr" else [])
    assert (len(hist.cycles) == 10) if method == "dsr" else (hist.cycles == ())
    # hooks are removed: the returned model is a plain module
    assert all(not m.weight._backward_hooks for m in net if isinstance(m, nn.Linear))


def test_train_sparse_accepts_a_dataloader():
    x, y = _data(64)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    _, hist = train_sparse(_mlp(), loader, epochs=2, lr=0.05, sparsity=0.5, method="static")
    assert hist.steps == 8 and np.isfinite(hist.loss_per_epoch).all()


def test_scale_initial_weights_by_inverse_sqrt_density():
    plain, scaled = _mlp(4), _mlp(4)
    ref = {n: m.weight.detach().clone() for n, m in plain.named_modules() if isinstance(m, nn.Linear)}
    StaticSparseTrainer(plain, sparsity=0.75, seed=2)
    t = StaticSparseTrainer(scaled, sparsity=0.75, seed=2, scale_initial_weights=True)
    for name, m in scaled.named_modules():
        if isinstance(m, nn.Linear):
            mask = t.masks[name]
            # density 1/4 in every layer: kept weights doubled, the rest zero
            assert torch.allclose(m.weight[mask], 2 * ref[name][mask])
            assert torch.equal(dict(plain.named_modules())[name].weight[mask], ref[name][mask])
            assert torch.all(m.weight[~mask] == 0)


def test_conv_model_reallocation_cadence_and_stop_after():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 3))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    t = DynamicSparseTrainer(net, sparsity=0.6, reallocate_every=3, stop_after=9,
                             prune_fraction_per_cycle=0.2, initial_threshold=0.05, optimizer=opt)
    assert t.masks["0"].shape == (8, 1, 3, 3)
    x, y = torch.randn(16, 1, 6, 6), torch.randint(0, 3, (16,))
    for _ in range(14):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        t.step()
    assert [c.step for c in t.history] == [3, 6, 9]  # every 3 steps, none after step 9
    assert all(sum(c.nonzeros_per_layer.values()) == t.nonzero_budget for c in t.history)
    assert t.nonzero_budget == round(0.4 * (72 + 384))
    assert torch.all(net[0].weight[~t.masks["0"]] == 0)


def test_train_sparse_default_period_gives_about_20_cycles():
    x, y = _data(96)
    # 96 samples / batch 32 = 3 steps an epoch, 40 epochs = 120 steps: P = 6, cycles up to step 108
    _, hist = train_sparse(_mlp(), (x, y), epochs=40, lr=0.1, sparsity=0.5, batch_size=32)
    assert [c.step for c in hist.cycles] == [6 * i for i in range(1, 19)]
