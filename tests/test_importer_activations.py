"""energy.activations: measured input densities from onnxruntime runs, and .npz loading."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from energy.activations import load_npz_inputs, measure_input_densities, with_measured_densities
from energy.errors import DataError
from energy.importer import load_model
from models import onnx_model


def relu_conv_model(batch=1):
    """x[b,2,4,4] -relu-> r -conv(1x1, 3 out)-> c -gemm-> y"""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "W"], ["c"], name="conv"),
             helper.make_node("Flatten", ["c"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "B"], ["y"], name="fc")]
    inits = {"W": np.ones((3, 2, 1, 1), np.float32), "B": np.ones((48, 5), np.float32)}
    return load_model(onnx_model(nodes, {"x": (batch, 2, 4, 4)}, {"y": (batch, 5)}, inits))


def test_densities_of_conv_input_and_fc_input():
    result = relu_conv_model()
    x = np.ones((1, 2, 4, 4), np.float32)
    x[0, 0] = -1.0  # channel 0 goes to zero through the Relu: 16 of 32 values
    x[0, 1, 0, 0] = 0.0  # one more zero: 15 of 32 nonzero
    densities = measure_input_densities(result, {"x": x})
    # conv reads relu's output: 15/32; the 1x1 conv of ones sums both channels, so
    # c[:, :, 0, 0] = 0 + 0 = 0 and all other 15 pixels are 1 in each of 3 channels: 45/48
    assert densities == {"conv": 15 / 32, "fc": 45 / 48}


def test_density_of_a_graph_input_and_the_batch_average():
    # conv straight on x; two samples with 1/4 and 3/4 nonzero -> (8 + 24) / 64 = 0.5
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"], name="conv")]
    result = load_model(onnx_model(nodes, {"x": ("b", 2, 4, 4)}, {"y": ("b", 3, 4, 4)},
                                   {"W": np.ones((3, 2, 1, 1), np.float32)}), batch=2)
    x = np.zeros((2, 2, 4, 4), np.float32)
    x[0].reshape(-1)[:8] = 1
    x[1].reshape(-1)[:24] = 1
    assert measure_input_densities(result, {"x": x}) == {"conv": 0.5}


def test_data_larger_than_the_model_batch_runs_in_batches():
    result = relu_conv_model(batch=1)
    x = np.ones((3, 2, 4, 4), np.float32)
    x[0] = -1  # first sample: all zero after the Relu -> 64 / 96 nonzero overall
    assert measure_input_densities(result, {"x": x})["conv"] == 64 / 96


def test_with_measured_densities_returns_an_edited_copy():
    result = relu_conv_model()
    x = -np.ones((1, 2, 4, 4), np.float32)
    x[0, 0, 0, 0] = 1.0  # 1 of 32 nonzero after the Relu
    graph = with_measured_densities(result, {"x": x})
    assert graph["conv"].input_density == 1 / 32
    assert result.graph["conv"].input_density == 1.0


def test_quantized_input_counts_zero_point_as_zero():
    # QLinearConv reading uint8 x with zero point 128: values equal to 128 are zeros
    inits = {"xs": np.float32(0.1), "xz": np.uint8(128), "W": np.ones((1, 1, 1, 1), np.int8), "ws": np.float32(1),
             "wz": np.int8(0), "ys": np.float32(1), "yz": np.uint8(0)}
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "W", "ws", "wz", "ys", "yz"], ["y"], name="qc")
    result = load_model(onnx_model([node], {"x": (1, 1, 2, 2)}, {"y": None}, inits, input_types={"x": TensorProto.UINT8}))
    x = np.array([128, 128, 128, 3], np.uint8).reshape(1, 1, 2, 2)
    assert measure_input_densities(result, {"x": x}) == {"qc": 0.25}


@pytest.mark.parametrize("inputs, match", [
    ({"x": np.ones((1, 2, 4, 5), np.float32)}, r"input 'x' expects shape \[1, 2, 4, 4\].*got \[1, 2, 4, 5\]"),
    ({"x": np.ones((2, 4, 4), np.float32)}, r"expects shape \[1, 2, 4, 4\].*got \[2, 4, 4\]"),
    ({"x": np.ones((1, 2, 4, 4), np.int64)}, "input 'x' must be float32 data, got int64"),
    ({"z": np.ones((1, 2, 4, 4), np.float32)}, "data for unknown input 'z'; the model's inputs are: x"),
    ({}, "no data for input 'x'"),
])
def test_data_that_does_not_fit(inputs, match):
    with pytest.raises(DataError, match=match):
        measure_input_densities(relu_conv_model(), inputs)


def test_float64_data_is_cast():
    assert measure_input_densities(relu_conv_model(), {"x": np.ones((1, 2, 4, 4))})["conv"] == 1.0


def test_load_npz_inputs(tmp_path):
    result = relu_conv_model()
    x = np.arange(32, dtype=np.float32).reshape(1, 2, 4, 4)
    np.savez(tmp_path / "by_x.npz", x=x, y=np.zeros(1))
    np.savez(tmp_path / "other.npz", images=x)
    loaded = load_npz_inputs(tmp_path / "by_x.npz", result)
    assert list(loaded) == ["x"] and np.array_equal(loaded["x"], x)
    assert list(load_npz_inputs(tmp_path / "by_x.npz", result.model)) == ["x"]
    with pytest.raises(DataError, match="no array 'x' for the model's input; the file has: images") as info:
        load_npz_inputs(tmp_path / "other.npz", result)
    assert str(info.value).startswith(str(tmp_path / "other.npz"))


def test_load_npz_by_input_name_and_bad_file(tmp_path):
    nodes = [helper.make_node("Add", ["a", "b"], ["y"], name="add")]
    result = load_model(onnx_model(nodes, {"a": (2,), "b": (2,)}, {"y": (2,)}))
    np.savez(tmp_path / "ab.npz", a=np.ones(2, np.float32), b=np.zeros(2, np.float32))
    assert sorted(load_npz_inputs(tmp_path / "ab.npz", result)) == ["a", "b"]
    np.savez(tmp_path / "a.npz", a=np.ones(2, np.float32))
    with pytest.raises(DataError, match="no array 'b'"):
        load_npz_inputs(tmp_path / "a.npz", result)
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(DataError, match="cannot read sample data"):
        load_npz_inputs(tmp_path / "junk.npz", result)
