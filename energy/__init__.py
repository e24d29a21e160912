"""ONNX importer, graph IR and dataflow energy estimator. Never imports torch.

    from energy import load_model, estimate
    report = estimate(load_model("model.onnx").graph, "eyeriss")
    print(report.table())
"""
from __future__ import annotations

from energy.errors import DataError, ModelError, OptionError
from energy.estimator import estimate, estimate_layer, estimate_mapping
from energy.ir import MAC_KINDS, Graph, Layer, LoopDims, OpKind
from energy.mapper import Mapping
from energy.report import EnergyReport, LayerEnergy, OperandAccess, ReportDiff, format_energy


def load_model(model, **options):
    """Import an ONNX model (path or ModelProto) into the IR: see ``energy.importer.load_model``."""
    from energy.importer import load_model as _load

    return _load(model, **options)


__all__ = [
    "DataError", "EnergyReport", "Graph", "Layer", "LayerEnergy", "LoopDims", "MAC_KINDS", "Mapping",
    "ModelError", "OpKind", "OptionError", "OperandAccess", "ReportDiff", "estimate", "estimate_layer", "estimate_mapping", "format_energy",
    "load_model",
]
