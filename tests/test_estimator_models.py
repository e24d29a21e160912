"""Models built with torch and exported import without unknown ops and estimate on every built-in spec."""
from __future__ import annotations

import pytest

from energy import OpKind, estimate, load_model
from hwspecs import builtin_names, load_spec
from models import DigitsCNN, MobileNetTiny, ResNetTiny, TransformerBlock, export_onnx

MODELS = {"resnet": ResNetTiny, "mobilenet": MobileNetTiny, "transformer": TransformerBlock, "digits": DigitsCNN}


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    out = {}
    folder = tmp_path_factory.mktemp("exported")
    for name, cls in MODELS.items():
        module = cls()
        path = export_onnx(module, cls.example_input(1), folder / f"{name}.onnx")
        out[name] = load_model(path)
    return out


@pytest.mark.parametrize("spec_name", builtin_names())
@pytest.mark.parametrize("model_name", list(MODELS))
def test_estimates_on_every_builtin_spec(imported, model_name, spec_name):
    result = imported[model_name]
    assert result.warnings == ()
    report = estimate(result.graph, load_spec(spec_name))
    assert report.total_energy_pj > 0
    assert report.total_macs == result.graph.total_macs
    for layer in report.layers:
        if layer.macs:
            assert layer.energy_pj >= layer.compute_pj > 0
            assert layer.mapping is not None


def test_kinds_the_models_exercise(imported):
    kinds = {name: {l.op for l in r.graph} for name, r in imported.items()}
    assert OpKind.MATMUL in kinds["transformer"]  # attention: activation x activation
    assert OpKind.GEMM in kinds["transformer"]
    groups = [l.dims.G for l in imported["mobilenet"].graph.mac_layers()]
    assert max(groups) > 1  # depthwise convolutions
    assert any(l.onnx_op == "Add" for l in imported["resnet"].graph)  # residuals
