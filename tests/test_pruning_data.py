"""pruning.data: .npz loading, shape/label checks, reproducible split."""
from __future__ import annotations

import numpy as np
import pytest

from energy.errors import DataError
from pruning.data import check_data, load_npz, split


def test_load_npz_round_trip(tmp_path):
    x = np.arange(24, dtype=np.float64).reshape(4, 1, 2, 3)
    y = np.array([0, 1, 2, 1])
    np.savez(tmp_path / "d.npz", x=x, y=y)
    gx, gy = load_npz(tmp_path / "d.npz")
    assert gx.dtype == np.float32 and gy.dtype == np.int64
    np.testing.assert_array_equal(gx, x.astype(np.float32))
    np.testing.assert_array_equal(gy, y)


def test_load_npz_missing_key_names_file_and_key(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 3)), labels=np.zeros(2))
    with pytest.raises(DataError) as info:
        load_npz(tmp_path / "d.npz")
    assert "d.npz" in str(info.value) and "'y'" in str(info.value) and "labels" in str(info.value)


def test_load_npz_bad_dtype_and_file(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 3)), y=np.array([0.5, 1.0]))
    with pytest.raises(DataError, match="integer class labels"):
        load_npz(tmp_path / "d.npz")
    np.savez(tmp_path / "s.npz", x=np.array([["a", "b"]]), y=np.array([0]))
    with pytest.raises(DataError, match="numeric"):
        load_npz(tmp_path / "s.npz")
    (tmp_path / "junk.npz").write_bytes(b"nope")
    with pytest.raises(DataError, match="junk.npz"):
        load_npz(tmp_path / "junk.npz")
    with pytest.raises(DataError, match="no such"):
        load_npz(tmp_path / "absent.npz")
    np.savez(tmp_path / "n.npz", x=np.zeros((3, 2)), y=np.zeros(2, dtype=int))
    with pytest.raises(DataError, match=r"x \(3, 2\)"):
        load_npz(tmp_path / "n.npz")


def test_check_data():
    x = np.zeros((5, 1, 8, 8), np.float32)
    y = np.array([0, 1, 9, 3, 4])
    check_data(x, y, (None, 1, 8, 8), 10)
    check_data(x, y, (1, 1, 8, 8), 10)  # the model's batch dim does not constrain N
    with pytest.raises(DataError, match=r"\(N, 1, 8, 8\).*\(5, 1, 7, 8\)"):
        check_data(np.zeros((5, 1, 7, 8)), y, (None, 1, 8, 8), 10)
    with pytest.raises(DataError, match=r"\(N, 1, 8, 8\)"):
        check_data(np.zeros((5, 64)), y, (None, 1, 8, 8), 10)
    with pytest.raises(DataError, match=r"\[0, 8\].*\[0, 9\]"):
        check_data(x, y, (None, 1, 8, 8), 9)
    with pytest.raises(DataError, match="one label per input"):
        check_data(x, y[:4], (None, 1, 8, 8), 10)


def test_split_reproducible_and_disjoint():
    x = np.arange(100, dtype=np.float32).reshape(50, 2)
    y = np.arange(50)
    (xt, yt), (xv, yv) = split(x, y, 0.2, seed=3)
    (xt2, _), (xv2, _) = split(x, y, 0.2, seed=3)
    assert len(yv) == 10 and len(yt) == 40
    np.testing.assert_array_equal(xv, xv2)
    np.testing.assert_array_equal(xt, xt2)
    assert sorted(np.concatenate([yt, yv]).tolist()) == list(range(50))
    np.testing.assert_array_equal(xt[:, 0], 2 * yt)  # rows stay paired with labels
    (_, _), (_, yv3) = split(x, y, 0.2, seed=4)
    assert not np.array_equal(yv, yv3)
    with pytest.raises(ValueError):
        split(x, y, 1.0, seed=0)


def test_as_tensors_accepts_arrays_and_loaders():
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from pruning.train import accuracy, as_tensors

    x = np.arange(12, dtype=np.float64).reshape(6, 2)
    y = np.array([0, 1, 0, 1, 1, 0])
    tx, ty = as_tensors((x, y))
    assert tx.dtype == torch.float32 and ty.dtype == torch.int64 and tx.shape == (6, 2)
    loader = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=4)
    lx, ly = as_tensors(loader)
    assert torch.equal(lx, tx) and torch.equal(ly, ty)

    class Pick(torch.nn.Module):  # predicts class 1 when the first feature exceeds 5
        def forward(self, inp):
            return torch.stack([5 - inp[:, 0], inp[:, 0] - 5], dim=1)

    # predictions: 0 0 0 1 1 1 (features 0, 2, 4, 6, 8, 10) vs labels 0 1 0 1 1 0 -> 4 of 6
    assert accuracy(Pick(), tx, ty, batch_size=4) == pytest.approx(4 / 6)
