"""The shared torch models export and import cleanly; MACs equal the hand-computed totals
(the arithmetic is in each model's docstring in tests/models.py)."""
from __future__ import annotations

import pytest

from energy.importer import load_model
from energy.ir import OpKind
from models import TORCH_MODELS, DigitsCNN, MobileNetTiny, ResNetTiny, TransformerBlock, export_onnx


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each model exported once per session: class -> path."""
    root = tmp_path_factory.mktemp("torch_models")
    return {cls: export_onnx(cls(), cls.example_input(), root / f"{cls.__name__}.onnx") for cls in TORCH_MODELS}


@pytest.mark.parametrize("cls", TORCH_MODELS, ids=[c.__name__ for c in TORCH_MODELS])
def test_imports_without_warnings_and_macs_match(exported, cls):
    result = load_model(exported[cls], strict=True)
    assert result.warnings == ()
    assert result.graph.total_macs == cls.ANALYTIC_MACS


def test_hand_totals():
    # the class constants are the sums written out in the docstrings
    assert ResNetTiny.ANALYTIC_MACS == 8831296
    assert MobileNetTiny.ANALYTIC_MACS == 428672
    assert TransformerBlock.ANALYTIC_MACS == 147456
    assert DigitsCNN.ANALYTIC_MACS == 456704


def test_resnet_structure(exported):
    graph = load_model(exported[ResNetTiny]).graph
    convs = [l for l in graph if l.op is OpKind.CONV]
    assert len(convs) == 6  # stem, 2 in block1, 2 + projection in block2
    projection = next(l for l in convs if l.dims.R == 1)
    assert (projection.dims.stride_h, projection.dims.C, projection.dims.M, projection.dims.P) == (2, 16, 32, 16)
    adds = [l for l in graph if l.onnx_op == "Add"]
    assert len(adds) == 2 and all(len(l.inputs) == 2 for l in adds)  # residual joins: two activations
    assert [l.op for l in graph if l.onnx_op == "Gemm"] == [OpKind.GEMM]


def test_mobilenet_depthwise_layers(exported):
    graph = load_model(exported[MobileNetTiny]).graph
    depthwise = [l for l in graph if l.op is OpKind.CONV and l.dims.G > 1]
    assert [(l.dims.G, l.dims.C, l.dims.M) for l in depthwise] == [(16, 1, 1), (32, 1, 1)]
    assert {l.onnx_op for l in graph if l.op is OpKind.ELEMENTWISE} == {"Clip", "HardSwish"}


def test_transformer_has_activation_by_activation_matmuls(exported):
    graph = load_model(exported[TransformerBlock]).graph
    act = [l for l in graph if l.op is OpKind.MATMUL]
    # Q @ K^T and softmax @ V, both 2 heads of 16x16x16
    assert [(l.dims.G, l.dims.N, l.dims.C, l.dims.M, l.weight) for l in act] == [(2, 16, 16, 16, None)] * 2
    gemms = [l for l in graph if l.op is OpKind.GEMM]
    assert len(gemms) == 6 and all(l.dims.N == 16 for l in gemms)  # q k v out ff1 ff2, N = batch 1 * seq 16
    assert {l.onnx_op for l in graph if l.op is OpKind.NORM} == {"Softmax", "LayerNormalization"}


def test_dynamic_batch_export_resolved_by_batch(tmp_path):
    path = export_onnx(DigitsCNN(), DigitsCNN.example_input(2), tmp_path / "dyn.onnx", dynamic_batch=True)
    result = load_model(path, batch=4)
    assert result.graph.total_macs == 4 * DigitsCNN.ANALYTIC_MACS

