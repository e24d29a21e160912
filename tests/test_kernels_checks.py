"""kernels._checks: the argument checks every kernel runs before its C code."""
from __future__ import annotations

import numpy as np
import pytest

from kernels._checks import array, matrix


def test_array_accepts_and_returns_the_same_object():
    a = np.zeros((2, 3), np.float32)
    assert array(a, "a", np.float32, 2) is a
    b = np.zeros(4, np.int8)
    assert array(b, "b", (np.float32, np.int8)) is b


@pytest.mark.parametrize("value,dtype,ndim,error,message", [
    ([1.0], np.float32, None, TypeError, "a must be a numpy.ndarray, got list"),
    (np.zeros(3), np.float32, None, TypeError, "a must have dtype float32, got float64"),
    (np.zeros(3, np.int16), (np.float32, np.int8), None, TypeError, "a must have dtype float32 or int8, got int16"),
    (np.zeros(3, np.float32), np.float32, 2, ValueError, r"a must be 2-D \[rows, cols\], got shape \(3,\)"),
])
def test_array_errors_name_the_argument(value, dtype, ndim, error, message):
    with pytest.raises(error, match=message):
        array(value, "a", dtype, ndim, "[rows, cols]")


def test_matrix_checks_rows_and_cols_and_copies_only_when_needed():
    a = np.zeros((4, 6), np.float32)
    assert matrix(a, "m", rows=4, cols=6) is a
    view = a[:, ::2]
    out = matrix(view, "m", cols=3)
    assert out.flags.c_contiguous and out.shape == (4, 3) and out is not view
    with pytest.raises(ValueError, match="m must have 5 rows, got shape"):
        matrix(a, "m", rows=5)
    with pytest.raises(ValueError, match="m must have 7 columns, got shape"):
        matrix(a, "m", cols=7)
    with pytest.raises(ValueError, match="m must be 2-D"):
        matrix(np.zeros(3, np.float32), "m")
