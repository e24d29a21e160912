"""Writes a ResNet (He et al. 2016; BatchNorm folded into the convs, as exporters do) as ONNX
with seeded random weights, using only numpy and onnx.helper. Defaults: ResNet-50, 53 convs +
1 Gemm, ~4.1 GMACs; blocks=(2, 2, 2, 2), bottleneck=False gives ResNet-18 (~1.8 GMACs)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build(batch: int = 1, seed: int = 0, blocks: tuple[int, ...] = (3, 4, 6, 3), bottleneck: bool = True) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    counter = {"n": 0}

    def name(prefix: str) -> str:
        counter["n"] += 1
        return f"{prefix}_{counter['n']}"

    def conv(x: str, cin: int, cout: int, k: int, stride: int = 1, relu: bool = True) -> str:
        n = name("conv")
        w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))).astype(np.float32)
        inits.append(numpy_helper.from_array(w, n + ".weight"))
        inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), n + ".bias"))
        pad = k // 2
        nodes.append(helper.make_node("Conv", [x, n + ".weight", n + ".bias"], [n + "_out"], name=n,
                                      kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4))
        if not relu:
            return n + "_out"
        r = name("relu")
        nodes.append(helper.make_node("Relu", [n + "_out"], [r + "_out"], name=r))
        return r + "_out"

    x = conv("input", 3, 64, 7, 2)
    p = name("maxpool")
    nodes.append(helper.make_node("MaxPool", [x], [p + "_out"], name=p, kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4))
    x, cin = p + "_out", 64
    expansion = 4 if bottleneck else 1
    for width, n_blocks, stride in zip((64, 128, 256, 512), blocks, (1, 2, 2, 2)):
        for b in range(n_blocks):
            s = stride if b == 0 else 1
            if bottleneck:
                y = conv(x, cin, width, 1)
                y = conv(y, width, width, 3, s)
                y = conv(y, width, width * 4, 1, relu=False)
            else:
                y = conv(x, cin, width, 3, s)
                y = conv(y, width, width, 3, relu=False)
            needs_projection = b == 0 and (s != 1 or cin != width * expansion)
            shortcut = conv(x, cin, width * expansion, 1, s, relu=False) if needs_projection else x
            a = name("add")
            nodes.append(helper.make_node("Add", [y, shortcut], [a + "_out"], name=a))
            r = name("relu")
            nodes.append(helper.make_node("Relu", [a + "_out"], [r + "_out"], name=r))
            x, cin = r + "_out", width * expansion
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"], name="avgpool"))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"))
    fc = (rng.standard_normal((1000, cin)) * 0.01).astype(np.float32)
    inits += [numpy_helper.from_array(fc, "fc.weight"), numpy_helper.from_array(np.zeros(1000, np.float32), "fc.bias")]
    nodes.append(helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(nodes, "resnet50" if bottleneck else "resnet18",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 224, 224])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 1000])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="joulecut-bench")


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "resnet50.onnx")
    onnx.save(build(), out)
    print(out)
