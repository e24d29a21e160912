"""Energy-aware pruning, pruning to an energy budget, sparse training and ONNX export.

    from pruning import prune, parse_budget, export_onnx
    result = prune("model.onnx", "eyeriss", budget="40%", train=(x, y))
    result.save("pruned.onnx", source="model.onnx")

Names are imported on first use, so ``import pruning`` stays cheap.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "prune": "pruning.api", "PruningResult": "pruning.api", "LayerPlan": "pruning.api",
    "GRANULARITIES": "pruning.api", "METHODS": "pruning.methods",
    "Budget": "pruning.budget", "BudgetError": "pruning.budget", "parse_budget": "pruning.budget",
    "OnnxModule": "pruning.onnx_torch", "onnx_to_torch": "pruning.onnx_torch",
    "export_onnx": "pruning.export", "verify_onnx": "pruning.export",
    "load_npz": "pruning.data", "check_data": "pruning.data", "split": "pruning.data",
    "restore_layer": "pruning.lsq",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pruning' has no attribute {name!r}")
