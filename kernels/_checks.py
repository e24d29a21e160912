"""Argument checks the kernels share: a bad array is a TypeError or ValueError naming the
argument, raised before any C code reads it."""
from __future__ import annotations

import numpy as np


def array(a: object, name: str, dtype, ndim: int | None = None, layout: str = "") -> np.ndarray:
    """``a`` itself if it is a numpy.ndarray of ``dtype`` (one dtype or a tuple of them) with
    ``ndim`` dimensions; ``layout`` (e.g. "[N, C, H, W]") only words the error."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    dtypes = tuple(np.dtype(d) for d in (dtype if isinstance(dtype, tuple) else (dtype,)))
    if a.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype {' or '.join(d.name for d in dtypes)}, got {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D{' ' + layout if layout else ''}, got shape {a.shape}")
    return a


def matrix(a: object, name: str, dtype=np.float32, rows: int | None = None, cols: int | None = None,
           layout: str = "") -> np.ndarray:
    """``a`` as a C-contiguous 2-D array of ``dtype`` (copied only when it is not), with
    ``rows`` rows and ``cols`` columns where given. A wrong dtype is an error, not a cast."""
    a = array(a, name, dtype, 2, layout)
    if rows is not None and a.shape[0] != rows:
        raise ValueError(f"{name} must have {rows} rows, got shape {a.shape}")
    if cols is not None and a.shape[1] != cols:
        raise ValueError(f"{name} must have {cols} columns, got shape {a.shape}")
    return np.ascontiguousarray(a)
