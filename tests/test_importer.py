"""load_model: files, symbolic dims, names, graph structure, unknown ops and every bad-input error."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from energy.errors import ModelError
from energy.importer import ImportResult, load_model
from energy.ir import OpKind
from models import onnx_model


def conv_relu(batch_dim=1, name="g") -> onnx.ModelProto:
    """x[batch,3,8,8] -conv1(4x3x3x3, pad 1)-> c -relu-> y"""
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    w = np.ones((4, 3, 3, 3), np.float32)
    return onnx_model(nodes, {"x": (batch_dim, 3, 8, 8)}, {"y": (batch_dim, 4, 8, 8)}, {"W": w}, name=name)


def save(model: onnx.ModelProto, path) -> str:
    onnx.save(model, str(path))
    return str(path)


# --- files and results --------------------------------------------------------------------------
def test_load_from_path_and_proto_agree(tmp_path):
    path = save(conv_relu(), tmp_path / "cr.onnx")
    from_file, from_proto = load_model(path), load_model(conv_relu())
    assert isinstance(from_file, ImportResult) and from_file.warnings == ()
    assert [l.name for l in from_file.graph] == [l.name for l in from_proto.graph] == ["conv1", "relu"]
    # 1*4*3*8*8*3*3 = 6912 MACs
    assert from_file.graph.total_macs == from_proto.graph.total_macs == 6912
    assert from_file.file == path


def test_graph_name_inputs_outputs_and_edges(tmp_path):
    result = load_model(save(conv_relu(name="net"), tmp_path / "m.onnx"))
    graph = result.graph
    assert graph.name == "net" and graph.inputs == ("x",) and graph.outputs == ("y",)
    assert list(graph.dag.edges(data="tensor")) == [("conv1", "relu", "c")]


def test_initializer_listed_as_input_is_not_a_graph_input():
    model = conv_relu()
    model.graph.input.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, [4, 3, 3, 3]))
    result = load_model(model)
    assert result.graph.inputs == ("x",)
    assert result.graph["conv1"].inputs == ("x",) and result.graph["conv1"].weight == "W"


def test_external_data_is_loaded(tmp_path):
    model = conv_relu()
    model.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(np.zeros((4, 3, 3, 3), np.float32), "W"))
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.data", size_threshold=0)
    assert (tmp_path / "ext.data").stat().st_size == 4 * 3 * 3 * 3 * 4
    assert load_model(tmp_path / "ext.onnx").graph["conv1"].weight_density == 0.0  # read from the external file


def test_missing_external_data_file(tmp_path):
    onnx.save(conv_relu(), str(tmp_path / "ext.onnx"), save_as_external_data=True, location="ext.data", size_threshold=0)
    (tmp_path / "ext.data").unlink()
    with pytest.raises(ModelError, match="cannot read the model") as info:
        load_model(tmp_path / "ext.onnx")
    assert str(info.value).startswith(str(tmp_path / "ext.onnx"))


def test_input_model_is_not_modified():
    model = conv_relu(batch_dim="N")
    before = model.SerializeToString()
    load_model(model, batch=2)
    assert model.SerializeToString() == before


def test_result_model_is_shape_inferred():
    result = load_model(conv_relu(batch_dim="N"), batch=2)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in result.model.graph.value_info}
    assert shapes["c"] == [2, 4, 8, 8]


# --- layer names --------------------------------------------------------------------------------
def test_empty_and_duplicate_names_get_op_type_and_index():
    nodes = [helper.make_node("Relu", ["x"], ["a"], name=""),
             helper.make_node("Relu", ["a"], ["b"], name="r"),
             helper.make_node("Relu", ["b"], ["c"], name="r"),  # duplicate
             helper.make_node("Relu", ["c"], ["y"], name="Relu_0")]  # collides with a generated name
    result = load_model(onnx_model(nodes, {"x": (2, 2)}, {"y": (2, 2)}))
    names = [l.name for l in result.graph]
    assert names == ["Relu_0_1", "r", "Relu_2", "Relu_0"]
    assert dict(result.layer_nodes) == {"Relu_0_1": 0, "r": 1, "Relu_2": 2, "Relu_0": 3}


# --- symbolic dims ------------------------------------------------------------------------------
def test_symbolic_batch_resolved_by_batch():
    result = load_model(conv_relu(batch_dim="batch"), batch=4)
    conv = result.graph["conv1"]
    assert conv.dims.N == 4 and conv.macs == 4 * 6912
    assert result.graph["relu"].output_elements == 4 * 4 * 8 * 8


def test_zero_first_dim_counts_as_symbolic():
    assert load_model(conv_relu(batch_dim=0), batch=3).graph["conv1"].dims.N == 3


def test_symbolic_batch_resolved_by_input_shapes():
    result = load_model(conv_relu(batch_dim="batch"), input_shapes={"x": (2, 3, 8, 8)})
    assert result.graph["conv1"].dims.N == 2


def test_input_shapes_wins_over_batch():
    assert load_model(conv_relu(batch_dim="batch"), batch=8, input_shapes={"x": (2, 3, 8, 8)}).graph["conv1"].dims.N == 2


def test_static_batch_with_batch_option_warns():
    result = load_model(conv_relu(batch_dim=1), batch=4)
    assert result.graph["conv1"].dims.N == 1
    assert any("static batch of 1" in w for w in result.warnings)


def test_unresolved_symbolic_dim_error_text(tmp_path):
    path = save(conv_relu(batch_dim="batch"), tmp_path / "sym.onnx")
    with pytest.raises(ModelError) as info:
        load_model(path)
    assert str(info.value) == (f"{path}: input 'x' dim 0 ('batch') is symbolic: "
                               "pass --batch N or --input-shape x=1x3x8x8")


def test_symbolic_non_batch_dim_needs_input_shapes():
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="r")]
    model = onnx_model(nodes, {"x": ("b", "seq", 16)}, {"y": ("b", "seq", 16)})
    with pytest.raises(ModelError, match=r"dim 1 \('seq'\) is symbolic"):
        load_model(model, batch=1)
    assert load_model(model, input_shapes={"x": (1, 7, 16)}).graph["r"].output_elements == 7 * 16


@pytest.mark.parametrize("shapes, match", [
    ({"z": (1, 3, 8, 8)}, "input_shapes names 'z', but the model's inputs are: x"),
    ({"x": (1, 3, 8)}, "has rank 4"),
    ({"x": (1, 5, 8, 8)}, "dim 1 = 5, but the model fixes it to 3"),
])
def test_bad_input_shapes(shapes, match):
    with pytest.raises(ModelError, match=match):
        load_model(conv_relu(batch_dim="b"), input_shapes=shapes)


def test_bad_batch():
    with pytest.raises(ModelError, match="batch must be a positive integer, got 0"):
        load_model(conv_relu(batch_dim="b"), batch=0)


# --- bad files ----------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="no such file") as info:
        load_model(tmp_path / "nope.onnx")
    assert str(tmp_path / "nope.onnx") in str(info.value)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(ModelError, match="file is empty") as info:
        load_model(path)
    assert str(info.value).startswith(str(path))


def test_truncated_protobuf(tmp_path):
    data = conv_relu().SerializeToString()
    path = tmp_path / "half.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated") as info:
        load_model(path)
    assert str(info.value).startswith(str(path))


def test_garbage_file(tmp_path):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"\x89PNG\r\n\x1a\n not a model at all \xff\xfe")
    with pytest.raises(ModelError) as info:
        load_model(path)
    assert str(info.value).startswith(str(path))


def test_valid_protobuf_that_is_not_a_model(tmp_path):
    path = tmp_path / "tensor.onnx"  # a TensorProto parses as an (empty) ModelProto
    path.write_bytes(onnx.numpy_helper.from_array(np.zeros(3, np.float32)).SerializeToString())
    with pytest.raises(ModelError, match="no ONNX graph"):
        load_model(path)


def test_mismatched_matmul_dims(tmp_path):
    nodes = [helper.make_node("MatMul", ["a", "B"], ["y"], name="mm")]
    path = save(onnx_model(nodes, {"a": (2, 3)}, {"y": (2, 5)}, {"B": np.ones((4, 5), np.float32)}), tmp_path / "mm.onnx")
    with pytest.raises(ModelError, match="shapes cannot be inferred: Incompatible dimensions") as info:
        load_model(path)
    assert info.value.node == "mm" and str(info.value).startswith(f"{path}: node 'mm': ")


def test_reshape_to_a_runtime_shape_leaves_dims_unknown(tmp_path):
    # Reshape(x, s) with s a graph input: the shape of r is unknown, and the Relu after it is costed
    nodes = [helper.make_node("Reshape", ["x", "s"], ["r"], name="reshape"),
             helper.make_node("Relu", ["r"], ["y"], name="relu")]
    model = onnx_model(nodes, {"x": (2, 6), "s": (2,)}, {"y": (None, None)}, input_types={"s": TensorProto.INT64})
    path = save(model, tmp_path / "reshape.onnx")
    with pytest.raises(ModelError, match="tensor 'r' \\(produced by node 'reshape'\\) has no static shape") as info:
        load_model(path)
    assert info.value.node == "relu" and str(info.value).startswith(f"{path}: node 'relu'")


def test_missing_weight(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "W_missing"], ["y"], name="conv1")]
    path = save(onnx_model(nodes, {"x": (1, 3, 8, 8)}, {"y": (1, 4, 6, 6)}), tmp_path / "now.onnx")
    with pytest.raises(ModelError) as info:
        load_model(path)
    assert str(info.value) == (f"{path}: node 'conv1': the weight 'W_missing' is neither an initializer, "
                               "a graph input nor an output of an earlier node")


def test_weight_as_graph_input_is_allowed():
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"], name="conv1")]
    result = load_model(onnx_model(nodes, {"x": (1, 3, 8, 8), "W": (4, 3, 3, 3)}, {"y": (1, 4, 6, 6)}))
    layer = result.graph["conv1"]
    # 4*3*6*6*3*3 = 3888 MACs, density unknown -> 1.0, and said so
    assert layer.macs == 3888 and layer.weight == "W" and layer.weight_density == 1.0
    assert result.warnings == ("weight 'W' of node 'conv1': it is not a constant, density assumed 1.0",)
    assert result.graph.inputs == ("x", "W")


def test_sparse_initializer_weight():
    # a 4x3x3x3 weight stored sparse with 27 of 108 values nonzero -> density 0.25
    dense = np.zeros((4, 3, 3, 3), np.float32)
    dense[1] = 2.0
    flat = np.flatnonzero(dense)
    sparse = helper.make_sparse_tensor(onnx.numpy_helper.from_array(dense.reshape(-1)[flat], "W"),
                                       onnx.numpy_helper.from_array(flat.astype(np.int64), "W_idx"), [4, 3, 3, 3])
    model = conv_relu()
    del model.graph.initializer[:]
    model.graph.sparse_initializer.append(sparse)
    layer = load_model(model).graph["conv1"]
    assert layer.weight == "W" and layer.weight_density == 0.25 and layer.inputs == ("x",)


def test_invalid_model_fails_the_checker(tmp_path):
    model = conv_relu()
    model.graph.node[0].attribute.append(helper.make_attribute("bogus", 1))
    with pytest.raises(ModelError, match="is not a valid ONNX model") as info:
        load_model(save(model, tmp_path / "bad.onnx"))
    assert str(tmp_path / "bad.onnx") in str(info.value)


# --- unknown ops --------------------------------------------------------------------------------
def custom_op_model(with_shape: bool = True) -> onnx.ModelProto:
    """x[1,4,6] -conv-> c -my.ops.Swish-> s -relu-> y, the custom op's output shape in value_info."""
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
             helper.make_node("Swish", ["c"], ["s"], name="swish1", domain="my.ops"),
             helper.make_node("Relu", ["s"], ["y"], name="relu")]
    info = [helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 2, 4])] if with_shape else []
    return onnx_model(nodes, {"x": (1, 4, 6)}, {"y": (1, 2, 4)}, {"W": np.ones((2, 4, 3), np.float32)},
                      value_info=info, extra_opsets={"my.ops": 1})


def test_unknown_op_strict_is_an_error(tmp_path):
    path = save(custom_op_model(), tmp_path / "custom.onnx")
    with pytest.raises(ModelError, match="unknown op 'my.ops.Swish'") as info:
        load_model(path, strict=True)
    assert info.value.node == "swish1" and str(info.value).startswith(f"{path}: node 'swish1': ")


def test_unknown_op_without_strict_is_a_warning_and_data_movement():
    result = load_model(custom_op_model())
    assert result.warnings == ("unknown op 'my.ops.Swish' at node 'swish1': costed as data movement of its input and output elements",)
    layer = result.graph["swish1"]
    # c and s are both 1*2*4 = 8 elements
    assert (layer.op, layer.onnx_op, layer.input_elements, layer.output_elements, layer.ops_per_element) == (
        OpKind.DATA_MOVEMENT, "Swish", 8, 8, 0.0)
    assert result.graph["relu"].input_elements == 8


def test_unknown_op_without_a_shape_for_its_output():
    with pytest.raises(ModelError, match="cannot give its output 's' a static shape") as info:
        load_model(custom_op_model(with_shape=False))
    assert info.value.node == "swish1"


def test_made_up_op_in_the_onnx_domain(tmp_path):
    nodes = [helper.make_node("Frobnicate", ["x"], ["y"], name="f")]
    path = save(onnx_model(nodes, {"x": (2,)}, {"y": (2,)}), tmp_path / "f.onnx")
    with pytest.raises(ModelError, match="'Frobnicate' is not an ONNX op") as info:
        load_model(path)
    assert str(info.value).startswith(f"{path}: node 'f': ")
