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
    "DynamicSparseTrainer": "pruning.dsr", "StaticSparseTrainer": "pruning.dsr", "train_sparse": "pruning.dsr",
    "SparseTrainingHistory": "pruning.dsr", "ReallocationCycle": "pruning.dsr", "first_and_last_layers": "pruning.dsr",
    "block_mask": "pruning.blocks", "layer_magnitude_mask": "pruning.blocks", "global_magnitude_masks": "pruning.blocks",
    "apply_masks": "pruning.blocks", "MaskedWeights": "pruning.blocks", "prunable_layers": "pruning.blocks",
    "to_hashed": "pruning.hashed", "prune_hashed": "pruning.hashed", "export_hashed": "pruning.hashed",
    "HashedResult": "pruning.hashed", "to_reuse": "pruning.reuse", "ReuseResult": "pruning.reuse",
    "validate": "pruning.validate", "ValidationReport": "pruning.validate",
    "density_for_energy": "pruning.sparse_budget",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pruning' has no attribute {name!r}")
