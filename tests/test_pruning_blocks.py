from __future__ import annotations

import pytest
import torch
from torch import nn

from pruning.blocks import (
    MaskedWeights,
    apply_masks,
    block_mask,
    global_magnitude_masks,
    layer_magnitude_mask,
    prunable_layers,
)

torch.set_num_threads(1)


def _hand_matrix() -> torch.Tensor:
    # 4x4 matrix made of four 2x2 blocks with L2 norms: TL=2, TR=4, BL=1, BR=3 (hand-checked:
    # a 2x2 block of all v has norm 2|v|).
    return torch.tensor(
        [
            [1.0, 1.0, 2.0, -2.0],
            [1.0, -1.0, 2.0, 2.0],
            [0.5, 0.5, 1.5, 1.5],
            [-0.5, 0.5, 1.5, -1.5],
        ]
    )


def test_block_mask_keeps_exact_largest_blocks():
    w = _hand_matrix()
    m = block_mask(w, (2, 2), 0.5)
    expected = torch.tensor(
        [[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.bool
    )  # TR (4) and BR (3)
    assert torch.equal(m, expected)
    m1 = block_mask(w, (2, 2), 0.25)
    assert torch.equal(m1, torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]],
                                        dtype=torch.bool))
    m3 = block_mask(w, (2, 2), 0.75)  # TR, BR, TL
    assert torch.equal(m3, ~torch.tensor([[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]],
                                         dtype=torch.bool))
    assert block_mask(w, (2, 2), 0.0).sum() == 0
    assert block_mask(w, (2, 2), 1.0).all()


def test_block_mask_uses_l2_not_l1():
    # block A = [3, 0] (L1 3, L2 3); block B = [2, 2] (L1 4, L2 2.83): L2 keeps A.
    w = torch.tensor([[3.0, 0.0, 2.0, 2.0]])
    assert torch.equal(block_mask(w, (1, 2), 0.5), torch.tensor([[True, True, False, False]]))


def test_block_mask_partial_edge_blocks():
    # 3x3 with 2x2 blocks: blocks TL(2x2) TR(2x1) BL(1x2) BR(1x1)
    w = torch.tensor([[0.1, 0.1, 5.0], [0.1, 0.1, 5.0], [0.2, 0.2, 9.0]])
    # norms: TL 0.2, TR sqrt(50)=7.07, BL 0.283, BR 9. Target 3/9*9=3 elems: BR(1)+TR(2)=3.
    m = block_mask(w, (2, 2), 3 / 9)
    assert torch.equal(m, torch.tensor([[0, 0, 1], [0, 0, 1], [0, 0, 1]], dtype=torch.bool))


@pytest.mark.parametrize("density", [0.1, 0.33, 0.5, 0.8])
def test_block_mask_density_within_one_block(density):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 8, 3, 3, generator=g)  # conv: 2-D view 16 x 72
    m = block_mask(w, (4, 4), density)
    assert m.shape == w.shape
    assert abs(int(m.sum()) - density * w.numel()) <= 16
    # mask is constant over each 4x4 block of the [16, 72] view
    v = m.reshape(16, 72).reshape(4, 4, 18, 4).permute(0, 2, 1, 3).reshape(72, 16).float()
    assert torch.all((v.sum(1) == 0) | (v.sum(1) == 16))


def test_block_mask_rejects_bad_input():
    with pytest.raises(ValueError, match="density must be in"):
        block_mask(torch.ones(2, 2), (1, 1), 1.5)
    with pytest.raises(ValueError, match="block must be a pair"):
        block_mask(torch.ones(2, 2), (0, 1), 0.5)
    with pytest.raises(ValueError, match="at least 2 dims"):
        block_mask(torch.ones(4), (1, 1), 0.5)


def test_layer_magnitude_mask_exact():
    w = torch.tensor([[0.1, -3.0, 0.5], [2.0, -0.2, 1.0]])
    m = layer_magnitude_mask(w, 0.5)
    assert torch.equal(m, torch.tensor([[False, True, False], [True, False, True]]))


def _two_layer() -> nn.Sequential:
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 3))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 5.0], [0.2, 3.0]]))
        net[2].weight.copy_(torch.tensor([[4.0, 0.1], [0.3, 2.0], [6.0, 0.4]]))
    return net


def test_global_magnitude_masks_one_threshold_across_layers():
    net = _two_layer()
    assert list(prunable_layers(net)) == ["0", "2"]
    masks = global_magnitude_masks(net, 0.5)  # 10 weights -> keep 5: 6, 5, 4, 3, 2
    assert torch.equal(masks["0"], torch.tensor([[False, True], [False, True]]))
    assert torch.equal(masks["2"], torch.tensor([[True, False], [False, True], [True, False]]))
    only = global_magnitude_masks(net, 0.5, layers=["2"])  # 6 weights -> keep 3: 6, 4, 2
    assert list(only) == ["2"] and int(only["2"].sum()) == 3
    with pytest.raises(ValueError, match="unknown"):
        global_magnitude_masks(net, 0.5, layers=["nope"])


def test_masks_survive_optimizer_steps_with_momentum_and_weight_decay():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    masks = global_magnitude_masks(net, 0.3)
    keeper = MaskedWeights(net, masks)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,))
    before = {n: prunable_layers(net)[n].weight.detach().clone() for n in masks}
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        for n, layer in prunable_layers(net).items():
            assert torch.all(layer.weight.grad[~masks[n]] == 0)  # gradient is masked
        opt.step()
        keeper.reapply()
    for n, layer in prunable_layers(net).items():
        assert torch.all(layer.weight[~masks[n]] == 0)
        assert not torch.equal(layer.weight[masks[n]], before[n][masks[n]])  # kept ones train
    keeper.remove()


def test_apply_masks_and_shape_check():
    net = _two_layer()
    apply_masks(net, {"0": torch.tensor([[True, False], [False, True]])})
    assert torch.equal(net[0].weight, torch.tensor([[1.0, 0.0], [0.0, 3.0]]))
    with pytest.raises(ValueError, match=r"weight's shape \(2, 2\), got \(3,\)"):
        apply_masks(net, {"0": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="torch.bool"):
        apply_masks(net, {"0": torch.ones(2, 2)})
