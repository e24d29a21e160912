"""Least-squares restoration vs numpy.linalg.lstsq, and that it never does worse than plain
magnitude pruning on the calibration data."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pruning.blocks import layer_magnitude_mask
from pruning.lsq import patches, restore_layer


def _reference_rows(X: np.ndarray, Y: np.ndarray, mask: np.ndarray, bias: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per output channel k: numpy lstsq on the kept columns (plus a ones column for the bias)."""
    W = np.zeros(mask.shape)
    b = np.zeros(mask.shape[0])
    for k in range(mask.shape[0]):
        cols = np.nonzero(mask[k])[0]
        A = X[:, cols]
        if bias:
            A = np.concatenate([A, np.ones((len(X), 1))], axis=1)
        sol = np.linalg.lstsq(A, Y[:, k], rcond=None)[0]
        W[k, cols] = sol[: len(cols)]
        if bias:
            b[k] = sol[-1]
    return W, b


def test_linear_matches_numpy_lstsq():
    torch.manual_seed(0)
    original = nn.Linear(6, 3)
    x = torch.randn(40, 6)
    y = original(x).detach()
    layer = nn.Linear(6, 3)
    layer.load_state_dict(original.state_dict())
    mask = torch.tensor([[1, 0, 1, 1, 0, 0], [0, 1, 1, 0, 1, 1], [1, 1, 0, 0, 0, 1]], dtype=torch.bool)
    y_noisy = y + 0.3 * torch.randn_like(y)  # not exactly representable: a real fit
    restore_layer(layer, x, y_noisy, mask)
    W, b = _reference_rows(x.double().numpy(), y_noisy.double().numpy(), mask.numpy(), bias=True)
    np.testing.assert_allclose(layer.weight.detach().numpy(), W, atol=1e-5)
    np.testing.assert_allclose(layer.bias.detach().numpy(), b, atol=1e-5)
    assert torch.all(layer.weight[~mask] == 0)


def _im2col_by_hand(x: np.ndarray, k: int, pad: int) -> np.ndarray:
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    rows = []
    for i in range(n):
        for p in range(h + 2 * pad - k + 1):
            for q in range(w + 2 * pad - k + 1):
                rows.append(xp[i, :, p:p + k, q:q + k].reshape(-1))
    return np.array(rows)


def test_conv_im2col_and_fit_match_numpy():
    torch.manual_seed(1)
    conv = nn.Conv2d(2, 4, 3, padding=1, bias=False)
    x = torch.randn(3, 2, 5, 5)
    X = patches(conv, x).numpy()
    np.testing.assert_allclose(X, _im2col_by_hand(x.numpy(), 3, 1), atol=1e-6)
    y = conv(x).detach() + 0.1 * torch.randn(3, 4, 5, 5)
    mask = layer_magnitude_mask(conv.weight, 0.5)
    restore_layer(conv, x, y, mask)
    Y = y.numpy().transpose(0, 2, 3, 1).reshape(-1, 4)
    W, _ = _reference_rows(X.astype(np.float64), Y.astype(np.float64), mask.reshape(4, -1).numpy(), bias=False)
    np.testing.assert_allclose(conv.weight.detach().reshape(4, -1).numpy(), W, atol=1e-5)


def test_depthwise_conv_fits_each_group_on_its_own_channel():
    torch.manual_seed(2)
    conv = nn.Conv2d(3, 3, 3, padding=1, groups=3)
    x = torch.randn(4, 3, 6, 6)
    y = conv(x).detach() + 0.05 * torch.randn(4, 3, 6, 6)
    mask = layer_magnitude_mask(conv.weight, 0.6)
    restore_layer(conv, x, y, mask)
    X = patches(nn.Conv2d(1, 1, 3, padding=1), x.reshape(12, 1, 6, 6)).numpy().reshape(4, 3, 36, 9)
    for k in range(3):
        Xk = X[:, k].reshape(-1, 9).astype(np.float64)
        Yk = y[:, k].reshape(-1, 1).numpy().astype(np.float64)
        W, b = _reference_rows(Xk, Yk, mask[k].reshape(1, -1).numpy(), bias=True)
        np.testing.assert_allclose(conv.weight[k].detach().reshape(-1).numpy(), W[0], atol=1e-4)
        assert conv.bias[k].item() == pytest.approx(b[0], abs=1e-4)


@pytest.mark.parametrize("density", [0.2, 0.5, 0.8])
def test_restored_error_not_worse_than_magnitude(density):
    torch.manual_seed(3)
    conv = nn.Conv2d(8, 16, 3, padding=1)
    x = torch.relu(torch.randn(16, 8, 6, 6))
    y = conv(x).detach()
    mask = layer_magnitude_mask(conv.weight, density)
    with torch.no_grad():
        conv.weight.mul_(mask)
    with torch.no_grad():
        magnitude_err = float(((conv(x) - y) ** 2).mean())
    restored_err = restore_layer(conv, x, y, mask)
    assert restored_err <= magnitude_err
    assert restored_err < 0.8 * magnitude_err  # and it actually helps
    assert int((conv.weight != 0).sum()) <= int(mask.sum())


def test_full_support_recovers_the_layer_exactly():
    torch.manual_seed(4)
    original = nn.Conv2d(3, 5, 3)
    x = torch.randn(8, 3, 7, 7)
    y = original(x).detach()
    layer = nn.Conv2d(3, 5, 3)  # different random init
    restore_layer(layer, x, y)
    np.testing.assert_allclose(layer.weight.detach().numpy(), original.weight.detach().numpy(), atol=1e-4)


def test_bad_inputs():
    with pytest.raises(TypeError, match="Conv2d or Linear"):
        restore_layer(nn.BatchNorm2d(3), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4))
    layer = nn.Linear(4, 2)
    with pytest.raises(ValueError, match="same samples"):
        restore_layer(layer, torch.randn(5, 4), torch.randn(6, 2))


def test_shared_support_is_one_solve_and_matches_numpy():
    """No mask (every channel keeps every weight, as after channel pruning): same as lstsq."""
    torch.manual_seed(5)
    layer = nn.Linear(7, 4)
    x = torch.randn(60, 7)
    y = torch.randn(60, 4)
    restore_layer(layer, x, y)
    W, b = _reference_rows(x.double().numpy(), y.double().numpy(), np.ones((4, 7), bool), bias=True)
    np.testing.assert_allclose(layer.weight.detach().numpy(), W, atol=1e-5)
    np.testing.assert_allclose(layer.bias.detach().numpy(), b, atol=1e-5)


def test_many_rows_fit_on_the_seeded_subset():
    """Rows beyond the cap: the fit is lstsq on exactly the documented random subset, and a
    noise-free target is still recovered exactly."""
    from pruning import lsq

    torch.manual_seed(6)
    n = 3 * lsq.MIN_ROWS
    x = torch.randn(n, 5)
    y = torch.randn(n, 2)
    rows = lsq._row_subset(n, 6)
    assert rows is not None and len(rows) == lsq.MIN_ROWS and len(set(rows.tolist())) == lsq.MIN_ROWS
    layer = nn.Linear(5, 2)
    restore_layer(layer, x, y)
    W, b = _reference_rows(x[rows].double().numpy(), y[rows].double().numpy(), np.ones((2, 5), bool), bias=True)
    np.testing.assert_allclose(layer.weight.detach().numpy(), W, atol=1e-5)
    np.testing.assert_allclose(layer.bias.detach().numpy(), b, atol=1e-5)
    original = nn.Linear(5, 2)
    restore_layer(layer, x, original(x).detach())
    np.testing.assert_allclose(layer.weight.detach().numpy(), original.weight.detach().numpy(), atol=1e-5)
    assert lsq._row_subset(lsq.MIN_ROWS, 6) is None


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0)),
    dict(kernel_size=3, dilation=2, padding=2, groups=2),
    dict(kernel_size=1, stride=2),
])
def test_patches_of_chosen_rows_equal_those_rows_of_the_unfolded_matrix(kwargs):
    torch.manual_seed(7)
    conv = nn.Conv2d(4, 6, **kwargs)
    x = torch.randn(3, 4, 9, 7)
    full = patches(conv, x)
    rows = torch.tensor([0, 5, len(full) - 1, 17, 17, len(full) // 2])
    np.testing.assert_array_equal(patches(conv, x, rows).numpy(), full[rows].numpy())
    linear = nn.Linear(7, 2)
    picked = torch.tensor([3, 0, 107])
    np.testing.assert_array_equal(patches(linear, x, picked).numpy(), x.reshape(-1, 7)[picked].numpy())


def test_restoration_of_a_conv_with_subsampled_rows_is_lstsq_on_those_rows():
    """More rows than the cap: the fit equals lstsq on the documented subset of im2col rows."""
    from pruning import lsq

    torch.manual_seed(8)
    conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
    x = torch.randn(80, 2, 8, 8)  # 5120 rows > MIN_ROWS for 18 unknowns
    y = torch.randn(80, 3, 8, 8)
    full = patches(conv, x)
    rows = lsq._row_subset(len(full), 18)
    assert rows is not None
    restore_layer(conv, x, y)
    Y = y.permute(0, 2, 3, 1).reshape(-1, 3)
    W, _ = _reference_rows(full[rows].double().numpy(), Y[rows].double().numpy(), np.ones((3, 18), bool), bias=False)
    np.testing.assert_allclose(conv.weight.detach().reshape(3, -1).numpy(), W, atol=1e-5)


def test_restoration_without_the_error_pass_fits_the_same_weights():
    torch.manual_seed(9)
    x = torch.relu(torch.randn(10, 4, 6, 6))
    original = nn.Conv2d(4, 6, 3, padding=1)
    y = original(x).detach()
    mask = layer_magnitude_mask(original.weight, 0.5)
    a, b = nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(4, 6, 3, padding=1)
    assert isinstance(restore_layer(a, x, y, mask), float)
    assert restore_layer(b, x, y, mask, error=False) is None
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
