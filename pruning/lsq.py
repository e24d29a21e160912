"""Closed-form least-squares restoration of a pruned layer's output (Yang et al. 2017).

For each output channel k with kept weight support S_k (and the bias, if the layer has one):

    w_kS, b_k = argmin || X_S w + b - y_k ||^2

where the rows of X are the layer's inputs on calibration data (im2col patches for a conv, so
one row per sample and output position) and y_k is the ORIGINAL (unpruned) layer's output for
channel k on the same data. Pruned weights stay exactly zero. The solve uses the normal
equations on a float64 Gram matrix with a tiny ridge (1e-10 of its mean diagonal) so that
rank-deficient inputs (dead ReLUs) stay well defined; with fewer than two rows per feature the
ridge is 1e-2 of the mean diagonal instead (few calibration samples for a wide Linear layer).

A conv's im2col has far more rows than the fit needs (1024 digits give 65,536 rows for 145
unknowns), and the float64 Gram matrix costs rows x features^2: rows beyond
``ROWS_PER_UNKNOWN`` per unknown (and at least ``MIN_ROWS``) are a fixed random subset, and
only those rows' windows are gathered from the input (the rest is never unfolded).
Output channels that keep the same support (all of them after channel pruning) share one solve
with many right-hand sides; channels with supports of equal size are solved as one batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_ROWS_PER_CHUNK = 65536
ROWS_PER_UNKNOWN = 32  # the fit's error barely moves beyond this; the Gram matrix's cost grows with it
MIN_ROWS = 4096
_BATCH_BYTES = 1 << 28  # at most 256 MB of stacked per-channel systems per batched solve


def patches(layer: nn.Module, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """The input matrix X of ``layer`` for input ``x``: [rows, features], features ordered like
    ``layer.weight.reshape(out, -1)`` (one group's columns for a grouped conv: see
    :func:`restore_layer`). Conv2d: im2col rows (sample x output position); Linear: ``x``.
    ``rows``: only these rows of X (gathered straight from ``x``, without unfolding the rest)."""
    if isinstance(layer, nn.Conv2d):
        if rows is not None:
            return _conv_rows(layer, x, rows)
        cols = F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])  # [N*L, C*R*S]
    if isinstance(layer, nn.Linear):
        flat = x.reshape(-1, x.shape[-1])
        return flat if rows is None else flat[rows]
    raise TypeError(f"least-squares restoration needs a Conv2d or Linear layer, got {type(layer).__name__}")


def _conv_output_hw(layer: nn.Conv2d, x: torch.Tensor) -> tuple[int, int]:
    """(P, Q): the conv's output height and width on input ``x`` (numeric padding)."""
    if isinstance(layer.padding, str):
        raise TypeError("least-squares restoration needs numeric Conv2d padding")
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = layer.kernel_size, layer.stride, layer.dilation, layer.padding
    return (x.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (x.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1


def _conv_rows(layer: nn.Conv2d, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Rows ``rows`` of the im2col matrix of ``x``: row n * P * Q + p * Q + q is the window of
    sample n under output pixel (p, q), features in (channel, kernel row, kernel col) order."""
    out_h, out_w = _conv_output_hw(layer, x)
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = layer.kernel_size, layer.stride, layer.dilation, layer.padding
    padded = F.pad(x, (pw, pw, ph, ph))
    n, pos = rows // (out_h * out_w), rows % (out_h * out_w)
    top = (pos // out_w) * sh
    left = (pos % out_w) * sw
    ii = top[:, None, None] + dh * torch.arange(kh)[None, :, None]  # (rows, kh, 1)
    jj = left[:, None, None] + dw * torch.arange(kw)[None, None, :]  # (rows, 1, kw)
    windows = padded.permute(0, 2, 3, 1)[n[:, None, None], ii, jj]  # (rows, kh, kw, C)
    return windows.permute(0, 3, 1, 2).reshape(len(rows), -1)


def _targets(layer: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """Original outputs as [rows, out_channels], rows ordered like :func:`patches`."""
    if isinstance(layer, nn.Conv2d):
        return y.reshape(y.shape[0], y.shape[1], -1).transpose(1, 2).reshape(-1, y.shape[1])
    return y.reshape(-1, y.shape[-1])


def _n_rows(layer: nn.Module, x: torch.Tensor) -> int:
    """Rows of ``patches(layer, x)``, without building it."""
    if isinstance(layer, nn.Conv2d) and not isinstance(layer.padding, str):
        out_h, out_w = _conv_output_hw(layer, x)
        return x.shape[0] * out_h * out_w
    if isinstance(layer, nn.Linear):
        return x.numel() // x.shape[-1]
    return patches(layer, x).shape[0]  # raises the error for other layers


def _row_subset(n_rows: int, n_unknowns: int) -> torch.Tensor | None:
    """Indices of the rows to fit on (a seeded random subset, sorted), or None for all."""
    cap = max(MIN_ROWS, ROWS_PER_UNKNOWN * n_unknowns)
    if n_rows <= cap:
        return None
    generator = torch.Generator().manual_seed(0)
    return torch.sort(torch.randperm(n_rows, generator=generator)[:cap]).values


def _solve_channels(gram: torch.Tensor, rhs: torch.Tensor, supports: list[torch.Tensor], ridge: float) -> list[torch.Tensor]:
    """Per column j of ``rhs``: argmin over x on ``supports[j]`` of the normal equations
    (gram + ridge I) x = rhs[:, j]. Identical supports share one solve; supports of one size
    are solved as a batch."""
    out: list[torch.Tensor | None] = [None] * len(supports)
    by_size: dict[int, list[int]] = {}
    for j, support in enumerate(supports):
        if len(support):
            by_size.setdefault(len(support), []).append(j)
        else:
            out[j] = support.to(torch.float64)
    for size, cols in by_size.items():
        eye = ridge * torch.eye(size, dtype=torch.float64)
        first = supports[cols[0]]
        if all(torch.equal(supports[j], first) for j in cols[1:]):
            sol = torch.linalg.solve(gram[first][:, first] + eye, rhs[first][:, cols])
            for i, j in enumerate(cols):
                out[j] = sol[:, i]
            continue
        per_batch = max(1, _BATCH_BYTES // (8 * size * size))
        for start in range(0, len(cols), per_batch):
            chunk = cols[start:start + per_batch]
            idx = torch.stack([supports[j] for j in chunk])  # (n, size)
            A = gram[idx[:, :, None], idx[:, None, :]] + eye
            b = rhs[idx, torch.tensor(chunk)[:, None]]
            sol = torch.linalg.solve(A, b.unsqueeze(-1)).squeeze(-1)
            for i, j in enumerate(chunk):
                out[j] = sol[i]
    return out


def restore_layer(
    layer: nn.Module,
    inputs: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    error: bool = True,
) -> float | None:
    """Refit ``layer``'s kept weights (and bias) in place so its output on ``inputs`` is as close
    as possible, in least squares, to ``target`` (the original layer's output on the same
    data). ``mask`` (bool, weight's shape) is the kept support; None keeps every weight.
    Returns the mean squared output error after the fit (on all of ``inputs``), or None with
    ``error=False`` (which saves running the layer on all of them)."""
    weight = layer.weight
    out_channels = weight.shape[0]
    mask2d = (torch.ones_like(weight, dtype=torch.bool) if mask is None else mask.to(torch.bool)).reshape(out_channels, -1)
    if mask2d.shape[0] != out_channels or mask2d.numel() != weight.numel():
        raise ValueError(f"mask must have the weight's shape {tuple(weight.shape)}, got {tuple(mask.shape)}")
    groups = getattr(layer, "groups", 1)
    has_bias = layer.bias is not None
    with torch.no_grad():
        Y = _targets(layer, target.detach())
        n_rows = _n_rows(layer, inputs)
        if n_rows != Y.shape[0]:
            raise ValueError(f"inputs give {n_rows} rows but target {Y.shape[0]}: they must come from the same samples")
        per_group_in = weight[0].numel()
        per_group_out = out_channels // groups
        rows = _row_subset(n_rows, per_group_in + int(has_bias))
        X = patches(layer, inputs.detach(), rows).double()
        Y = (Y if rows is None else Y[rows]).double()
        w2d = weight.detach().reshape(out_channels, -1).double().clone()
        bias = layer.bias.detach().double().clone() if has_bias else None
        bias_column = torch.tensor([per_group_in])
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
            channels = range(g * per_group_out, (g + 1) * per_group_out)
            supports = [torch.nonzero(mask2d[k]).reshape(-1) for k in channels]
            if has_bias:
                supports = [torch.cat([s, bias_column]) for s in supports]
            for k, support, sol in zip(channels, supports, _solve_channels(gram, rhs, supports, ridge)):
                row = torch.zeros(w2d.shape[1] + 1, dtype=torch.float64)
                row[support] = sol
                w2d[k] = row[:-1]
                if has_bias:
                    bias[k] = row[per_group_in]
        layer.weight.copy_(w2d.reshape(weight.shape).to(weight.dtype))
        if has_bias:
            layer.bias.copy_(bias.to(layer.bias.dtype))
        if not error:
            return None
        pred = layer(inputs.detach())
        return float(((pred - target.detach()) ** 2).mean())
