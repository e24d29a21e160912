"""Sample data for pruning: load an .npz file, check it fits the model, split it.

An .npz data file holds ``x`` (float inputs, batch first, e.g. N x C x H x W) and ``y``
(integer class labels, shape N).
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

from energy.errors import DataError


def load_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read ``x`` (as float32) and ``y`` (as int64) from an .npz file. DataError names the file
    and the missing key or bad dtype."""
    path = Path(path)
    if not path.is_file():
        raise DataError("no such data file", file=str(path))
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("x", "y") if k not in data.files]
            if missing:
                raise DataError(f"missing key(s) {missing}; an .npz data file must hold 'x' and 'y', found {sorted(data.files)}", file=str(path))
            x, y = data["x"], data["y"]
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read as .npz: {exc}", file=str(path)) from exc
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise DataError(f"'x' must be numeric, got dtype {x.dtype}", file=str(path))
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and y.size and np.all(np.mod(y, 1) == 0):
            y = y.astype(np.int64)
        else:
            raise DataError(f"'y' must hold integer class labels, got dtype {y.dtype}", file=str(path))
    if y.ndim != 1 or x.ndim < 2 or len(x) != len(y):
        raise DataError(f"'x' must be N x ... and 'y' N labels, got x {x.shape} and y {y.shape}", file=str(path))
    if not np.all(np.isfinite(x)):
        raise DataError("'x' contains NaN or infinite values", file=str(path))
    return x.astype(np.float32), y.astype(np.int64)


def check_data(
    x: np.ndarray,
    y: np.ndarray,
    input_shape: Sequence[int | None],
    num_classes: int,
    file: str | None = None,
) -> None:
    """Raise DataError unless ``x`` matches the model input (``input_shape`` with the batch dim
    first; None or non-positive entries match anything) and every label is in
    [0, num_classes)."""
    shape = tuple(input_shape)
    if x.ndim != len(shape):
        raise DataError(f"inputs must have shape {_fmt(shape)} (model input), got {tuple(x.shape)}", file=file)
    for axis, (want, got) in enumerate(zip(shape, x.shape)):
        if axis > 0 and want is not None and want > 0 and want != got:
            raise DataError(f"inputs must have shape {_fmt(shape)} (model input), got {tuple(x.shape)}", file=file)
    if len(y) != len(x):
        raise DataError(f"need one label per input: {len(x)} inputs, {len(y)} labels", file=file)
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"labels must be in [0, {num_classes - 1}] (the model has {num_classes} outputs), got range [{y.min()}, {y.max()}]", file=file)


def _fmt(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("N" if i == 0 else ("?" if d is None or d <= 0 else str(d)) for i, d in enumerate(shape)) + ")"


def split(x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A reproducible shuffled split: ``((x_train, y_train), (x_val, y_val))``."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n = len(x)
    n_val = int(round(n * val_fraction))
    if n_val < 1 or n_val >= n:
        raise DataError(f"cannot split {n} samples with val_fraction {val_fraction}: both parts need at least one sample")
    order = np.random.default_rng(seed).permutation(n)
    val, train = order[:n_val], order[n_val:]
    return (x[train], y[train]), (x[val], y[val])
