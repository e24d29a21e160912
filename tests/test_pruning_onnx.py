"""ONNX <-> torch round trips: outputs equal to onnxruntime, names kept, bad input -> ModelError."""
from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, TensorProto
from torch import nn

from energy.errors import ModelError
from pruning.export import export_onnx, verify_onnx
from pruning.onnx_torch import onnx_to_torch

torch.set_num_threads(2)


class ResidualCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.c1 = nn.Conv2d(8, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.c2 = nn.Conv2d(16, 16, 1, stride=2)
        self.fc = nn.Linear(16 * 2 * 2, 10)

    def forward(self, x):
        y = torch.relu(self.bn(self.stem(x)))
        y = y + torch.nn.functional.leaky_relu(self.dw(torch.nn.functional.relu6(self.c1(y))), 0.1)
        y = torch.nn.functional.max_pool2d(y, 2)
        y = torch.nn.functional.hardswish(self.c2(torch.cat([torch.relu(y), y], dim=1)))
        return self.fc(y.reshape(y.shape[0], -1))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(20, 32)
        self.b = nn.Linear(32, 16)
        self.c = nn.Linear(16, 5)

    def forward(self, x):
        h = torch.nn.functional.gelu(self.a(x))
        h = torch.sigmoid(self.b(h)) * torch.tanh(self.b(h))
        return torch.softmax(self.c(h), dim=-1)


def _export(module: nn.Module, x: torch.Tensor, dynamo: bool = False) -> onnx.ModelProto:
    module.eval()
    buffer = io.BytesIO()
    if dynamo:
        prog = torch.onnx.export(module, (x,), dynamo=True, external_data=False)
        return prog.model_proto
    torch.onnx.export(module, (x,), buffer, dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    return onnx.load_from_string(buffer.getvalue())


def _randomise_bn(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)


def _ort(model: onnx.ModelProto | str, x: np.ndarray) -> np.ndarray:
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("make,shape", [(ResidualCNN, (4, 3, 8, 8)), (MLP, (6, 20))])
def test_round_trip_matches_onnxruntime(tmp_path, make, shape):
    torch.manual_seed(0)
    net = make()
    _randomise_bn(net)
    x = torch.randn(*shape)
    model = _export(net, x)
    module = onnx_to_torch(model).eval()
    with torch.no_grad():
        got = module(x).numpy()
    ref = _ort(model, x.numpy())
    assert np.max(np.abs(got - ref)) <= 1e-5
    out = export_onnx(module, x, tmp_path / "rt.onnx")
    onnx.checker.check_model(str(out), full_check=True)
    back = onnx.load(str(out))
    assert [n.name for n in back.graph.node] == [n.name for n in model.graph.node]
    assert np.max(np.abs(_ort(str(out), x.numpy()) - ref)) <= 1e-5
    assert verify_onnx(out, module, x) <= 1e-5
    # a different batch size still runs (dynamic batch kept)
    x2 = torch.randn(1, *shape[1:])
    assert verify_onnx(out, module, x2) <= 1e-5


def test_dynamo_export_round_trip(tmp_path):
    torch.manual_seed(1)
    net = ResidualCNN().eval()
    _randomise_bn(net)
    x = torch.randn(1, 3, 8, 8)
    model = _export(net, x, dynamo=True)
    module = onnx_to_torch(model).eval()
    with torch.no_grad():
        assert np.max(np.abs(module(x).numpy() - net(x).numpy())) <= 1e-5
    out = export_onnx(module, x, tmp_path / "dyn.onnx")
    assert verify_onnx(out, module, x) <= 1e-5


def test_modules_are_named_after_nodes():
    net = MLP()
    model = _export(net, torch.randn(2, 20))
    module = onnx_to_torch(model)
    gemms = [n.name for n in model.graph.node if n.op_type in ("Gemm", "MatMul")]
    assert list(module.node_modules) == gemms
    first = module.layer(gemms[0])
    assert isinstance(first, nn.Linear)
    assert torch.equal(first.weight, net.a.weight)


def test_tensors_until_stops_after_the_wanted_tensors():
    net = MLP()
    x = torch.randn(4, 20)
    module = onnx_to_torch(_export(net, x)).eval()
    with torch.no_grad():
        everything = module.tensors(x)
        first_out = module.steps[0].outputs[0]
        partial = module.tensors(x, until={first_out})
    assert torch.equal(partial[first_out], everything[first_out])
    assert module.output_names[0] not in partial and module.output_names[0] in everything


def test_generic_module_export_and_verify(tmp_path):
    torch.manual_seed(0)
    net = MLP()
    x = torch.randn(3, 20)
    out = export_onnx(net, x, tmp_path / "mlp.onnx")
    assert verify_onnx(out, net, x) <= 1e-5


def test_export_refuses_to_overwrite_input(tmp_path):
    path = tmp_path / "m.onnx"
    x = torch.randn(2, 20)
    onnx.save(_export(MLP(), x), str(path))
    module = onnx_to_torch(path)
    with pytest.raises(ModelError, match="overwrite"):
        export_onnx(module, x, path)
    assert export_onnx(module, x, tmp_path / "other.onnx").exists()


def test_verify_raises_on_mismatch(tmp_path):
    net = MLP()
    x = torch.randn(2, 20)
    out = export_onnx(net, x, tmp_path / "m.onnx")
    with torch.no_grad():
        net.c.weight.mul_(2.0)
    with pytest.raises(ModelError, match="differs"):
        verify_onnx(out, net, x)


def test_unsupported_op_names_node_and_op():
    node = helper.make_node("NonZero", ["x"], ["y"], name="my_nz")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    with pytest.raises(ModelError) as info:
        onnx_to_torch(helper.make_model(graph))
    assert info.value.node == "my_nz" and "NonZero" in str(info.value)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(ModelError, match="no such"):
        onnx_to_torch(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="bad.onnx"):
        onnx_to_torch(bad)


def test_shared_initializers_are_unshared_on_export(tmp_path):
    """Exporters deduplicate equal initializers; once one user changes, each needs its own copy."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(4, 2, 1, 1)).astype(np.float32)
    w2 = rng.normal(size=(4, 4, 1, 1)).astype(np.float32)
    bias = np.zeros(4, np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1", "b"], ["h"], name="c1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2", "b"], ["y"], name="c2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 3, 3])],
                              [onnx.numpy_helper.from_array(a, n) for n, a in (("w1", w1), ("w2", w2), ("b", bias))])
    module = onnx_to_torch(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])).eval()
    with torch.no_grad():
        module.layer("c2").bias.fill_(0.5)
    x = torch.randn(2, 2, 3, 3)
    out = export_onnx(module, x, tmp_path / "m.onnx")
    assert verify_onnx(out, module, x) <= 1e-6
    inputs = {n.name: list(n.input) for n in onnx.load(str(out)).graph.node}
    assert inputs["c1"][2] != inputs["c2"][2]


@pytest.mark.parametrize("shape,kernel", [((3, 4, 8, 8), (2, 2)), ((2, 3, 9, 7), (2, 2)), ((2, 3, 9, 9), (3, 3)),
                                          ((2, 2, 6, 8), (3, 2)), ((1, 1, 1, 1), (1, 1))])
def test_tiled_max_pool_equals_torch_max_pool(shape, kernel):
    from pruning.onnx_torch import _tiled, _tiled_max_pool

    torch.manual_seed(10)
    x = torch.relu(torch.randn(shape))  # ReLU zeros: many ties
    x[0, 0, 0, 0] = float("nan")
    expected = torch.nn.functional.max_pool2d(x, kernel, kernel)
    got = _tiled_max_pool(x, kernel)
    assert got.shape == expected.shape and got.is_contiguous()
    assert torch.equal(torch.isnan(got), torch.isnan(expected))
    assert torch.equal(torch.nan_to_num(got), torch.nan_to_num(expected))
    assert _tiled(x, kernel, kernel, (0, 0), (1, 1), False)
    assert not _tiled(x.requires_grad_(), kernel, kernel, (0, 0), (1, 1), False)  # training keeps max_pool2d
    assert not _tiled(x.detach(), kernel, tuple(k + 1 for k in kernel), (0, 0), (1, 1), False)  # overlapping
