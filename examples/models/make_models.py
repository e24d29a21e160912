"""Write the example models (numpy + onnx.helper only, seeded, byte-for-byte reproducible).

    python examples/models/make_models.py [--out DIR]

- ``tiny_resnet.onnx``: a residual CNN on 3x32x32 (stem conv, an identity block, a strided
  block with a 1x1 projection, global average pool, fc to 10), BatchNormalization kept as
  nodes, He-initialised weights; 8,831,296 MACs at batch 1.
- ``tiny_mlp.onnx``: Gemm 64 -> 256 -> 256 -> 10 with ReLUs; 84,480 MACs at batch 1.

Both have a static batch of 1, input ``x`` and output ``y``, and every node named.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # fixed (not onnx.IR_VERSION) so the bytes do not depend on the onnx release


class _Builder:
    """Collects nodes and initializers; weights come from one seeded RandomState (its stream
    is frozen across numpy releases, unlike Generator's)."""

    def __init__(self, seed: int):
        self.rng = np.random.RandomState(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def tensor(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        output = f"{name}_out"
        self.nodes.append(helper.make_node(op, inputs, [output], name=name, **attrs))
        return output

    def conv(self, x: str, name: str, cin: int, cout: int, k: int, stride: int = 1) -> str:
        fan_in = cin * k * k
        w = self.rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / fan_in)  # He init
        pad = k // 2
        return self.node("Conv", [x, self.tensor(f"{name}.weight", w)], name, kernel_shape=[k, k],
                         strides=[stride, stride], pads=[pad] * 4)

    def bn(self, x: str, name: str, c: int) -> str:
        params = [
            self.tensor(f"{name}.scale", 1.0 + 0.1 * self.rng.standard_normal(c)),
            self.tensor(f"{name}.bias", 0.1 * self.rng.standard_normal(c)),
            self.tensor(f"{name}.mean", 0.1 * self.rng.standard_normal(c)),
            self.tensor(f"{name}.var", 1.0 + 0.1 * self.rng.random_sample(c)),
        ]
        return self.node("BatchNormalization", [x] + params, name, epsilon=1e-5)

    def gemm(self, x: str, name: str, fin: int, fout: int) -> str:
        w = self.rng.standard_normal((fout, fin)) * np.sqrt(2.0 / fin)
        return self.node("Gemm", [x, self.tensor(f"{name}.weight", w), self.tensor(f"{name}.bias", np.zeros(fout))],
                         name, transB=1)

    def model(self, name: str, x_shape: list[int], y: str, y_shape: list[int], doc: str) -> onnx.ModelProto:
        self.nodes.append(helper.make_node("Identity", [y], ["y"], name="output"))
        graph = helper.make_graph(self.nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], self.initializers)
        graph.doc_string = doc
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                                  producer_name="joulecut examples/models/make_models.py")
        onnx.checker.check_model(model)
        return model


def _block(b: _Builder, x: str, name: str, cin: int, cout: int, stride: int) -> str:
    y = b.node("Relu", [b.bn(b.conv(x, f"{name}/conv1", cin, cout, 3, stride), f"{name}/bn1", cout)], f"{name}/relu1")
    y = b.bn(b.conv(y, f"{name}/conv2", cout, cout, 3), f"{name}/bn2", cout)
    shortcut = x
    if stride != 1 or cin != cout:
        shortcut = b.bn(b.conv(x, f"{name}/proj", cin, cout, 1, stride), f"{name}/proj_bn", cout)
    return b.node("Relu", [b.node("Add", [y, shortcut], f"{name}/add")], f"{name}/relu2")


def tiny_resnet() -> onnx.ModelProto:
    """MACs: stem 16*3*9*1024 = 442368; block1 2*16*16*9*1024 = 4718592; block2 32*16*9*256 = 1179648
    + 32*32*9*256 = 2359296 + projection 32*16*256 = 131072; fc 320. Total 8831296."""
    b = _Builder(seed=0)
    x = b.node("Relu", [b.bn(b.conv("x", "stem/conv", 3, 16, 3), "stem/bn", 16)], "stem/relu")
    x = _block(b, x, "block1", 16, 16, 1)
    x = _block(b, x, "block2", 16, 32, 2)
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x], "pool")], "flatten")
    y = b.gemm(x, "fc", 32, 10)
    return b.model("tiny_resnet", [1, 3, 32, 32], y, [1, 10], "A small residual CNN for the joulecut examples.")


def tiny_mlp() -> onnx.ModelProto:
    """MACs: 64*256 + 256*256 + 256*10 = 16384 + 65536 + 2560 = 84480."""
    b = _Builder(seed=1)
    x = b.node("Relu", [b.gemm("x", "fc1", 64, 256)], "relu1")
    x = b.node("Relu", [b.gemm(x, "fc2", 256, 256)], "relu2")
    y = b.gemm(x, "fc3", 256, 10)
    return b.model("tiny_mlp", [1, 64], y, [1, 10], "A 3-layer MLP for the joulecut examples.")


MODELS = {"tiny_resnet.onnx": tiny_resnet, "tiny_mlp.onnx": tiny_mlp}


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_models(out_dir: str | os.PathLike) -> list[Path]:
    """Write every example model into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for filename, build in MODELS.items():
        path = out / filename
        _write_atomic(path, build().SerializeToString())
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent), help="output folder (default: next to this script)")
    args = parser.parse_args(argv)
    for path in write_models(args.out):
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
