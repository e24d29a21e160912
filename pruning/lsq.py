"""Closed-form least-squares restoration of a pruned layer's output (Yang et al. 2017).

For each output channel k with kept weight support S_k (and the bias, if the layer has one):

    w_kS, b_k = argmin || X_S w + b - y_k ||^2

where the rows of X are the layer's inputs on calibration data (im2col patches for a conv, so
one row per sample and output position) and y_k is the ORIGINAL (unpruned) layer's output for
channel k on the same data. Pruned weights stay exactly zero. The solve uses the normal
equations on a float64 Gram matrix with a tiny ridge (1e-10 of its mean diagonal) so that
rank-deficient inputs (dead ReLUs) stay well defined; with fewer than two rows per feature the
ridge is 1e-2 of the mean diagonal instead (few calibration samples for a wide Linear layer).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_ROWS_PER_CHUNK = 65536


def patches(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input matrix X of ``layer`` for input ``x``: [rows, features], features ordered like
    ``layer.weight.reshape(out, -1)`` (one group's columns for a grouped conv: see
    :func:`restore_layer`). Conv2d: im2col rows (sample x output position); Linear: ``x``."""
    if isinstance(layer, nn.Conv2d):
        cols = F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])  # [N*L, C*R*S]
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    raise TypeError(f"least-squares restoration needs a Conv2d or Linear layer, got {type(layer).__name__}")


def _targets(layer: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """Original outputs as [rows, out_channels], rows ordered like :func:`patches`."""
    if isinstance(layer, nn.Conv2d):
        return y.reshape(y.shape[0], y.shape[1], -1).transpose(1, 2).reshape(-1, y.shape[1])
    return y.reshape(-1, y.shape[-1])


def restore_layer(
    layer: nn.Module,
    inputs: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> float:
    """Refit ``layer``'s kept weights (and bias) in place so its output on ``inputs`` is as close
    as possible, in least squares, to ``target`` (the original layer's output on the same
    data). ``mask`` (bool, weight's shape) is the kept support; None keeps every weight.
    Returns the mean squared output error after the fit."""
    weight = layer.weight
    out_channels = weight.shape[0]
    mask2d = (torch.ones_like(weight, dtype=torch.bool) if mask is None else mask.to(torch.bool)).reshape(out_channels, -1)
    if mask2d.shape[0] != out_channels or mask2d.numel() != weight.numel():
        raise ValueError(f"mask must have the weight's shape {tuple(weight.shape)}, got {tuple(mask.shape)}")
    groups = getattr(layer, "groups", 1)
    has_bias = layer.bias is not None
    with torch.no_grad():
        X = patches(layer, inputs.detach()).double()
        Y = _targets(layer, target.detach()).double()
        if X.shape[0] != Y.shape[0]:
            raise ValueError(f"inputs give {X.shape[0]} rows but target {Y.shape[0]}: they must come from the same samples")
        per_group_in = X.shape[1] // groups
        per_group_out = out_channels // groups
        w2d = weight.detach().reshape(out_channels, -1).double().clone()
        bias = layer.bias.detach().double().clone() if has_bias else None
        for g in range(groups):
            Xg = X[:, g * per_group_in:(g + 1) * per_group_in]
            if has_bias:
                Xg = torch.cat([Xg, torch.ones(Xg.shape[0], 1, dtype=Xg.dtype)], dim=1)
            gram = torch.zeros(Xg.shape[1], Xg.shape[1], dtype=torch.float64)
            rhs = torch.zeros(Xg.shape[1], per_group_out, dtype=torch.float64)
            Yg = Y[:, g * per_group_out:(g + 1) * per_group_out]
            for start in range(0, Xg.shape[0], _ROWS_PER_CHUNK):
                xs, ys = Xg[start:start + _ROWS_PER_CHUNK], Yg[start:start + _ROWS_PER_CHUNK]
                gram += xs.T @ xs
                rhs += xs.T @ ys
            # a tiny ridge when the fit is well posed; a real one when there are fewer rows than
            # features (a Linear layer fitted on a small calibration set would otherwise overfit)
            scale = 1e-10 if Xg.shape[0] >= 2 * Xg.shape[1] else 1e-2
            ridge = scale * float(gram.diagonal().mean().clamp_min(1e-30))
            for j in range(per_group_out):
                k = g * per_group_out + j
                support = torch.nonzero(mask2d[k]).reshape(-1)
                if has_bias:
                    support = torch.cat([support, torch.tensor([per_group_in])])
                row = torch.zeros(w2d.shape[1] + 1, dtype=torch.float64)
                if len(support):
                    A = gram[support][:, support] + ridge * torch.eye(len(support), dtype=torch.float64)
                    row[support] = torch.linalg.solve(A, rhs[support, j])
                w2d[k] = row[:-1]
                if has_bias:
                    bias[k] = row[per_group_in]
        layer.weight.copy_(w2d.reshape(weight.shape).to(weight.dtype))
        if has_bias:
            layer.bias.copy_(bias.to(layer.bias.dtype))
        pred = layer(inputs.detach())
        return float(((pred - target.detach()) ** 2).mean())
