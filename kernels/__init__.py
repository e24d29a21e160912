"""Cython sparse and hashed kernels and a small ONNX graph runner. Imports nothing of joulecut."""
from __future__ import annotations

# Sparse weight x dense activation kernels (formats, packed-panel products, convolutions).
from kernels.conv import CompactWeight, compact_channels, conv2d_dense, conv2d_sparse, dense_gemm
from kernels.direct_conv import direct_conv
from kernels.formats import BSRMatrix, CSRMatrix
from kernels.sparse_gemm import PANEL_WIDTH, SkinnyWeight, skinny_gemm, spmm, spmm_im2col

# Hashed (SLIDE) layers, adaptive deep reuse, and the ONNX graph runner.
from kernels.reuse import ReuseSchedule, ReuseStats, reuse_conv2d, reuse_matmul
from kernels.runner import GraphRunner, LayerRun, choose_format
from kernels.slide import HashedLinear, choose_k_l

__all__ = [
    "BSRMatrix",
    "CSRMatrix",
    "CompactWeight",
    "GraphRunner",
    "HashedLinear",
    "LayerRun",
    "PANEL_WIDTH",
    "ReuseSchedule",
    "ReuseStats",
    "SkinnyWeight",
    "choose_format",
    "choose_k_l",
    "compact_channels",
    "conv2d_dense",
    "conv2d_sparse",
    "dense_gemm",
    "direct_conv",
    "reuse_conv2d",
    "reuse_matmul",
    "skinny_gemm",
    "spmm",
    "spmm_im2col",
]
