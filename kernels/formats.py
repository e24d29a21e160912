"""Validated sparse weight containers: CSR and block-sparse (BSR) matrices, float32 or int8.

Every constructor checks the whole structure (dtypes, lengths, monotonic indptr, index ranges)
and stores read-only copies, so the C kernels in ``sparse_gemm`` can trust these arrays without
re-checking them on each call.
"""
from __future__ import annotations

import numpy as np

from kernels._checks import array

_INT32_MAX = np.iinfo(np.int32).max


def _as_float32_dense(w: object, name: str = "w") -> np.ndarray:
    """A 2-D float32 copy-free view (or cast) of a dense real matrix; TypeError/ValueError otherwise."""
    if not isinstance(w, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(w).__name__}")
    if w.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got {w.ndim}-D with shape {w.shape}")
    if not (np.issubdtype(w.dtype, np.floating) or np.issubdtype(w.dtype, np.integer)):
        raise TypeError(f"{name} must have a real numeric dtype, got {w.dtype}")
    return np.asarray(w, dtype=np.float32)


def _check_shape(shape: object) -> tuple[int, int]:
    if not isinstance(shape, tuple | list) or len(shape) != 2:
        raise ValueError(f"shape must be a pair (rows, cols), got {shape!r}")
    rows, cols = shape
    for v in (rows, cols):
        if not isinstance(v, int | np.integer) or isinstance(v, bool) or v < 0:
            raise ValueError(f"shape must hold non-negative integers, got {shape!r}")
    if rows > _INT32_MAX or cols > _INT32_MAX:
        raise ValueError(f"shape {shape!r} exceeds the int32 index range")
    return int(rows), int(cols)


def _check_index_array(a: object, name: str) -> np.ndarray:
    return array(a, name, np.int32, 1)


def _check_indptr(indptr: np.ndarray, n_units: int, nnz: int, unit: str) -> None:
    if indptr.shape[0] != n_units + 1:
        raise ValueError(f"indptr must have {n_units + 1} entries ({unit}s + 1), got {indptr.shape[0]}")
    if indptr[0] != 0:
        raise ValueError(f"indptr must start at 0, got {indptr[0]}")
    if indptr[-1] != nnz:
        raise ValueError(f"indptr must end at the number of stored entries {nnz}, got {indptr[-1]}")
    if n_units and np.any(np.diff(indptr) < 0):
        bad = int(np.argmax(np.diff(indptr) < 0))
        raise ValueError(f"indptr must be non-decreasing, but indptr[{bad + 1}] < indptr[{bad}]")


def _check_indices(indices: np.ndarray, bound: int, what: str) -> None:
    if indices.size and (indices.min() < 0 or indices.max() >= bound):
        bad = int(np.flatnonzero((indices < 0) | (indices >= bound))[0])
        raise ValueError(f"indices[{bad}] = {indices[bad]} is outside [0, {bound}) ({what})")


VALUE_DTYPES = (np.dtype(np.float32), np.dtype(np.int8))


def _check_values(data: object) -> np.ndarray:
    if not isinstance(data, np.ndarray):
        raise TypeError(f"data must be a numpy.ndarray of float32 or int8, got {type(data).__name__}")
    if data.dtype not in VALUE_DTYPES:
        raise TypeError(f"data must have dtype float32 or int8, got {data.dtype} "
                        "(use .astype(np.float32); int8 must be quantised by the caller)")
    return data


def _dense_values(w: object, dtype: object) -> np.ndarray:
    """The dense matrix in the storage dtype: float32 by default, int8 when w is int8 or
    dtype=np.int8 is asked for (then w must already be int8: no silent rounding)."""
    if dtype is None:
        dtype = np.int8 if isinstance(w, np.ndarray) and w.dtype == np.int8 else np.float32
    dtype = np.dtype(dtype)
    if dtype == np.int8:
        if not isinstance(w, np.ndarray) or w.dtype != np.int8:
            raise TypeError("an int8 matrix needs an int8 dense input (quantise it first), got "
                            f"{getattr(w, 'dtype', type(w).__name__)}")
        if w.ndim != 2:
            raise ValueError(f"w must be 2-D, got {w.ndim}-D with shape {w.shape}")
        return w
    if dtype != np.float32:
        raise TypeError(f"dtype must be float32 or int8, got {dtype}")
    return _as_float32_dense(w)


def _accumulator(dtype: np.dtype) -> type:
    """to_dense() sums duplicates in the kernels' accumulator type: float32, or int32 for int8."""
    return np.int32 if dtype == np.int8 else np.float32


def _frozen(a: np.ndarray, dtype: type) -> np.ndarray:
    out = np.array(a, dtype=dtype, order="C", copy=True)
    out.setflags(write=False)
    return out


class CSRMatrix:
    """Compressed sparse rows, float32 or int8 values, int32 indices; duplicates in a row are summed.

    Work: one sparse-times-dense product with N columns executes ``nnz * N`` multiply-adds.
    """

    __slots__ = ("indptr", "indices", "data", "shape")

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray,
                 shape: tuple[int, int]) -> None:
        rows, cols = _check_shape(shape)
        indptr = _check_index_array(indptr, "indptr")
        indices = _check_index_array(indices, "indices")
        data = _check_values(data)
        if data.ndim != 1:
            raise ValueError(f"data must be 1-D, got shape {data.shape}")
        if indices.shape[0] != data.shape[0]:
            raise ValueError(f"indices and data must have the same length, got {indices.shape[0]} "
                             f"and {data.shape[0]}")
        _check_indptr(indptr, rows, data.shape[0], "row")
        _check_indices(indices, cols, f"{cols} columns")
        self.indptr = _frozen(indptr, np.int32)
        self.indices = _frozen(indices, np.int32)
        self.data = _frozen(data, data.dtype)
        self.shape = (rows, cols)

    @classmethod
    def from_dense(cls, w: np.ndarray, dtype: object = None) -> CSRMatrix:
        """Store the nonzero entries of a dense 2-D matrix: int8 stays int8, anything else is
        cast to float32 (``dtype`` may insist on either)."""
        w = _dense_values(w, dtype)
        if np.count_nonzero(w) > _INT32_MAX:
            raise ValueError("too many nonzeros for int32 indices")
        rows, cols = np.nonzero(w)
        counts = np.bincount(rows, minlength=w.shape[0])
        indptr = np.zeros(w.shape[0] + 1, dtype=np.int32)
        np.cumsum(counts, out=indptr[1:])
        return cls(indptr, cols.astype(np.int32), w[rows, cols], w.shape)

    @property
    def nnz(self) -> int:
        """Stored entries (explicit zeros included)."""
        return int(self.data.shape[0])

    @property
    def density(self) -> float:
        """nnz / (rows * cols); 0.0 for an empty matrix."""
        size = self.shape[0] * self.shape[1]
        return self.nnz / size if size else 0.0

    def macs(self, n_cols: int) -> int:
        """Multiply-adds one product with an ``[cols, n_cols]`` matrix executes: nnz * n_cols."""
        return self.nnz * int(n_cols)

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    def to_dense(self) -> np.ndarray:
        """Dense [rows, cols]: float32, or int32 for int8 values (duplicates summed exactly)."""
        out = np.zeros(self.shape, dtype=_accumulator(self.dtype))
        rows = np.repeat(np.arange(self.shape[0]), np.diff(self.indptr))
        np.add.at(out, (rows, self.indices), self.data)
        return out

    def row_slice(self, start: int, stop: int) -> CSRMatrix:
        """Rows [start, stop) as a new CSRMatrix (used to split a grouped convolution)."""
        if not 0 <= start <= stop <= self.shape[0]:
            raise ValueError(f"row range [{start}, {stop}) is outside [0, {self.shape[0]}]")
        lo, hi = int(self.indptr[start]), int(self.indptr[stop])
        return CSRMatrix(self.indptr[start:stop + 1] - np.int32(lo), self.indices[lo:hi],
                         self.data[lo:hi], (stop - start, self.shape[1]))

    def __repr__(self) -> str:
        return (f"CSRMatrix(shape={self.shape}, dtype={self.dtype}, nnz={self.nnz}, "
                f"density={self.density:.4f})")


class BSRMatrix:
    """Block-sparse rows: only blocks of size ``block = (br, bc)`` holding a nonzero are stored.

    ``indptr`` runs over block rows (ceil(rows / br) + 1 entries), ``indices`` are block-column
    numbers, ``data`` is ``[n_blocks, br, bc]`` float32 or int8. When rows or cols are not multiples of
    the block, the last blocks overhang the matrix and their overhanging entries must be zero.

    Work: one product with N columns executes ``n_blocks * br * bc * N`` multiply-adds (every
    stored block entry, its zeros included) — that is what the kernel really computes.
    """

    __slots__ = ("indptr", "indices", "data", "shape", "block")

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray,
                 shape: tuple[int, int], block: tuple[int, int]) -> None:
        rows, cols = _check_shape(shape)
        br, bc = _check_block(block)
        indptr = _check_index_array(indptr, "indptr")
        indices = _check_index_array(indices, "indices")
        data = _check_values(data)
        if data.ndim != 3 or data.shape[1:] != (br, bc):
            raise ValueError(f"data must have shape (n_blocks, {br}, {bc}), got {data.shape}")
        if indices.shape[0] != data.shape[0]:
            raise ValueError(f"indices and data must have the same length, got {indices.shape[0]} "
                             f"and {data.shape[0]}")
        n_brows, n_bcols = -(-rows // br), -(-cols // bc)
        _check_indptr(indptr, n_brows, data.shape[0], "block row")
        _check_indices(indices, n_bcols, f"{n_bcols} block columns")
        # Entries that overhang the matrix would make to_dense() and the kernel disagree.
        if rows % br and data.shape[0]:
            last = slice(int(indptr[n_brows - 1]), int(indptr[n_brows]))
            if np.any(data[last, rows % br:, :]):
                raise ValueError("blocks of the last block row have nonzeros below the last row")
        if cols % bc and data.shape[0]:
            edge = indices == n_bcols - 1
            if np.any(data[edge][:, :, cols % bc:]):
                raise ValueError("blocks of the last block column have nonzeros past the last column")
        self.indptr = _frozen(indptr, np.int32)
        self.indices = _frozen(indices, np.int32)
        self.data = _frozen(data, data.dtype)
        self.shape = (rows, cols)
        self.block = (br, bc)

    @classmethod
    def from_dense(cls, w: np.ndarray, block: tuple[int, int] = (4, 1),
                   dtype: object = None) -> BSRMatrix:
        """Tile a dense 2-D matrix into blocks and keep those with a nonzero; int8 stays int8,
        anything else is cast to float32 (``dtype`` may insist on either)."""
        w = _dense_values(w, dtype)
        br, bc = _check_block(block)
        rows, cols = w.shape
        n_brows, n_bcols = -(-rows // br), -(-cols // bc)
        padded = np.zeros((n_brows * br, n_bcols * bc), dtype=w.dtype)
        padded[:rows, :cols] = w
        tiles = padded.reshape(n_brows, br, n_bcols, bc).transpose(0, 2, 1, 3)
        keep = np.any(tiles != 0, axis=(2, 3))
        brow, bcol = np.nonzero(keep)
        if brow.size > _INT32_MAX:
            raise ValueError("too many blocks for int32 indices")
        indptr = np.zeros(n_brows + 1, dtype=np.int32)
        np.cumsum(np.bincount(brow, minlength=n_brows), out=indptr[1:])
        return cls(indptr, bcol.astype(np.int32), tiles[brow, bcol], (rows, cols), (br, bc))

    @property
    def n_blocks(self) -> int:
        return int(self.data.shape[0])

    @property
    def nnz(self) -> int:
        """Nonzero values inside the stored blocks (not counting the blocks' explicit zeros)."""
        return int(np.count_nonzero(self.data))

    @property
    def stored(self) -> int:
        """Stored values, zeros inside blocks included: n_blocks * br * bc."""
        return int(self.data.size)

    @property
    def density(self) -> float:
        """nnz / (rows * cols); 0.0 for an empty matrix."""
        size = self.shape[0] * self.shape[1]
        return self.nnz / size if size else 0.0

    def macs(self, n_cols: int) -> int:
        """Multiply-adds one product with ``[cols, n_cols]`` executes: n_blocks * br * bc * n_cols."""
        return self.stored * int(n_cols)

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    def to_dense(self) -> np.ndarray:
        """Dense [rows, cols]: float32, or int32 for int8 values (duplicates summed exactly)."""
        br, bc = self.block
        rows, cols = self.shape
        n_brows, n_bcols = -(-rows // br), -(-cols // bc)
        tiles = np.zeros((n_brows, n_bcols, br, bc), dtype=_accumulator(self.dtype))
        brow = np.repeat(np.arange(n_brows), np.diff(self.indptr))
        np.add.at(tiles, (brow, self.indices), self.data)
        return tiles.transpose(0, 2, 1, 3).reshape(n_brows * br, n_bcols * bc)[:rows, :cols].copy()

    def row_slice(self, start: int, stop: int) -> BSRMatrix:
        """Rows [start, stop); both must fall on block-row boundaries (stop may be the last row)."""
        br = self.block[0]
        rows = self.shape[0]
        if not 0 <= start <= stop <= rows:
            raise ValueError(f"row range [{start}, {stop}) is outside [0, {rows}]")
        if start % br or (stop % br and stop != rows):
            raise ValueError(f"row range [{start}, {stop}) must be aligned to the block height {br}")
        b0, b1 = start // br, -(-stop // br)
        lo, hi = int(self.indptr[b0]), int(self.indptr[b1])
        return BSRMatrix(self.indptr[b0:b1 + 1] - np.int32(lo), self.indices[lo:hi],
                         self.data[lo:hi], (stop - start, self.shape[1]), self.block)

    def __repr__(self) -> str:
        return (f"BSRMatrix(shape={self.shape}, block={self.block}, dtype={self.dtype}, "
                f"n_blocks={self.n_blocks}, density={self.density:.4f})")


def _check_block(block: object) -> tuple[int, int]:
    if not isinstance(block, tuple | list) or len(block) != 2:
        raise ValueError(f"block must be a pair (rows, cols), got {block!r}")
    br, bc = block
    for v in (br, bc):
        if not isinstance(v, int | np.integer) or isinstance(v, bool) or not 1 <= v <= 64:
            raise ValueError(f"block sizes must be integers in [1, 64], got {block!r}")
    return int(br), int(bc)
