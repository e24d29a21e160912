"""examples/models: the generator is deterministic, the committed files are its output, and
both models import."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from energy.importer import load_model
from energy.ir import OpKind

MODELS_DIR = Path(__file__).resolve().parent.parent / "examples" / "models"


@pytest.fixture(scope="module")
def make_models():
    spec = importlib.util.spec_from_file_location("make_models", MODELS_DIR / "make_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def regenerated(make_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("examples")
    make_models.write_models(out)
    return out


@pytest.mark.parametrize("name", ["tiny_resnet.onnx", "tiny_mlp.onnx"])
def test_committed_files_equal_the_generator_output(regenerated, name):
    committed = (MODELS_DIR / name).read_bytes()
    assert (regenerated / name).read_bytes() == committed
    assert len(committed) < 1_000_000


def test_tiny_resnet_imports():
    result = load_model(MODELS_DIR / "tiny_resnet.onnx", strict=True)
    graph = result.graph
    assert result.warnings == () and graph.name == "tiny_resnet"
    # 442368 + 4718592 + 1179648 + 2359296 + 131072 + 320 (arithmetic in make_models.tiny_resnet)
    assert graph.total_macs == 8831296
    assert sum(l.op is OpKind.CONV for l in graph) == 6
    assert sum(l.onnx_op == "BatchNormalization" for l in graph) == 6  # stem 1, block1 2, block2 2 + projection 1
    assert all(l.weight_density == 1.0 for l in graph.mac_layers())  # random normal weights: no zeros


def test_tiny_mlp_imports():
    result = load_model(MODELS_DIR / "tiny_mlp.onnx", strict=True)
    # 64*256 + 256*256 + 256*10 = 84480
    assert result.graph.total_macs == 84480
    assert [(l.dims.N, l.dims.C, l.dims.M) for l in result.graph.mac_layers()] == [(1, 64, 256), (1, 256, 256), (1, 256, 10)]


def test_main_writes_into_out(make_models, tmp_path, capsys):
    assert make_models.main(["--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny_mlp.onnx", "tiny_resnet.onnx"]
    assert "wrote" in capsys.readouterr().out
