"""Cython sparse and hashed kernels and a small ONNX graph runner. Imports nothing of joulecut."""
from __future__ import annotations

# Sparse weight x dense activation kernels (formats, packed-panel products, convolutions).
from kernels.conv import CompactWeight, compact_channels, conv2d_dense, conv2d_sparse, dense_gemm
from kernels.formats import BSRMatrix, CSRMatrix
from kernels.sparse_gemm import PANEL_WIDTH, spmm, spmm_im2col

__all__ = [
    "BSRMatrix",
    "CSRMatrix",
    "CompactWeight",
    "PANEL_WIDTH",
    "compact_channels",
    "conv2d_dense",
    "conv2d_sparse",
    "dense_gemm",
    "spmm",
    "spmm_im2col",
]
