"""Channel groups and physical channel removal: removing channels equals zeroing them, the
IR edit equals the IR of the exported pruned model, exports are smaller and run in onnxruntime."""
from __future__ import annotations

import dataclasses
import io
import warnings

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from energy import load_model
from pruning.channels import ir_with_channels, remove_channels, round_channels
from pruning.export import export_onnx, verify_onnx
from pruning.onnx_torch import BatchNorm, onnx_to_torch
from pruning.structure import Structure
from models import DigitsCNN, MobileNetTiny, ResNetTiny

torch.set_num_threads(1)


class ConcatNet(nn.Module):
    """Two branches concatenated on channels, then a 1x1 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 1)
        self.c = nn.Conv2d(12, 6, 1)
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x):
        y = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x)) * 0.5], dim=1)
        return self.fc(torch.flatten(self.c(y), 1))

    @staticmethod
    def example_input(batch: int = 1) -> torch.Tensor:
        return torch.randn(batch, 3, 4, 4, generator=torch.Generator().manual_seed(0))


def _onnx(net: nn.Module, x: torch.Tensor) -> onnx.ModelProto:
    """TorchScript export without constant folding, so BatchNormalization nodes stay."""
    net.eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), buffer, dynamo=False, opset_version=17, do_constant_folding=False,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    return onnx.load_from_string(buffer.getvalue())


def test_groups_of_residual_and_depthwise_nets():
    res = onnx_to_torch(_onnx(ResNetTiny(), ResNetTiny.example_input()))
    groups = Structure(res, ResNetTiny.example_input()).groups.values()
    coupled = [g for g in groups if len(g.producers) == 2]
    assert {tuple(g.producers) for g in coupled} == {
        ("/stem/stem.0/Conv", "/block1/conv2/Conv"), ("/block2/conv2/Conv", "/block2/proj/proj.0/Conv")}
    assert all("/fc/Gemm" not in g.producers for g in groups)  # logits reach the output: frozen
    mob = onnx_to_torch(_onnx(MobileNetTiny(), MobileNetTiny.example_input()))
    stem = next(g for g in Structure(mob, MobileNetTiny.example_input()).groups.values() if g.producers == ["/stem/stem.0/Conv"])
    assert "/block1/block1.0/Conv" in stem.channelwise  # the depthwise conv follows its input's channels
    assert stem.consumers == ["/block1/block1.3/Conv"]


def _zeroed_reference(module, structure, keep):
    """The same model with the removed channels forced to exactly zero instead."""
    ref = onnx_to_torch(module.source).eval()
    with torch.no_grad():
        for g, kept in keep.items():
            drop = torch.tensor(sorted(set(range(structure.groups[g].size)) - set(kept.tolist())), dtype=torch.long)
            grp = structure.groups[g]
            for node in grp.producers:
                layer = ref.layer(node)
                layer.weight[drop] = 0
                if layer.bias is not None:
                    layer.bias[drop] = 0
            for node in grp.channelwise:
                layer = ref.layer(node)
                idx = structure.indices(structure.input_layout(node), {})
                pos = idx[drop] if isinstance(layer, BatchNorm) else drop
                if isinstance(layer, BatchNorm):
                    layer.weight[pos] = 0
                    layer.bias[pos] = 0
                elif layer.bias is not None:
                    layer.bias[pos] = 0
    return ref


@pytest.mark.parametrize("net", [ResNetTiny, MobileNetTiny, DigitsCNN, ConcatNet])
def test_removing_channels_equals_zeroing_them(tmp_path, net):
    torch.manual_seed(0)
    x = net.example_input(3)
    model = _onnx(net(), net.example_input(1))
    module = onnx_to_torch(model).eval()
    structure = Structure(module, x)
    assert structure.groups
    gen = torch.Generator().manual_seed(1)
    keep = {g: torch.sort(torch.randperm(grp.size, generator=gen)[: max(1, grp.size // 2)]).values
            for g, grp in structure.groups.items()}
    reference = _zeroed_reference(module, structure, keep)
    remove_channels(module, structure, keep)
    with torch.no_grad():
        np.testing.assert_allclose(module(x).numpy(), reference(x).numpy(), atol=1e-5)
    out = export_onnx(module, x, tmp_path / "pruned.onnx")
    assert verify_onnx(out, module, x) <= 1e-5
    assert out.stat().st_size < len(model.SerializeToString())  # physically smaller
    assert [n.name for n in onnx.load(str(out)).graph.node] == [n.name for n in module.source.graph.node]
    # the IR edit (no export) gives exactly the loop bounds of the exported model's IR
    counts = {g: len(k) for g, k in keep.items()}
    edited = ir_with_channels(load_model(module.source, batch=1).graph, structure, counts)
    exported = load_model(out, batch=1).graph
    for layer in exported:
        assert edited[layer.name].dims == layer.dims, layer.name
        assert edited[layer.name].output_elements == layer.output_elements, layer.name
        assert edited[layer.name].input_elements == layer.input_elements, layer.name


def test_concat_consumer_keeps_matching_slices():
    module = onnx_to_torch(_onnx(ConcatNet(), ConcatNet.example_input()))
    structure = Structure(module, ConcatNet.example_input())
    layout = structure.input_layout("/c/Conv")
    assert [s.length for s in layout] == [8, 4]
    ga, gb = (structure.find(s.space) for s in layout)
    idx = structure.indices(layout, {ga: torch.tensor([1, 5]), gb: torch.tensor([0, 3])})
    assert idx.tolist() == [1, 5, 8, 11]
    fc_layout = structure.input_layout("/fc/Gemm")
    assert fc_layout[0].inner == 16  # each channel of c spans 4x4 features after Flatten


def test_round_channels():
    assert round_channels(13, 8, 32) == 16
    assert round_channels(3, 8, 32) == 8
    assert round_channels(40, 8, 32) == 32
    assert round_channels(0, 1, 10) == 1
    assert round_channels(5.4, 1, 10) == 5
    with pytest.raises(ValueError):
        round_channels(5, 0, 10)
