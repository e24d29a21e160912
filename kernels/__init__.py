"""Cython sparse and hashed kernels and a small ONNX graph runner. Imports nothing of joulecut."""
