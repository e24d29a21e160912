"""The importer's graph IR: named loop dimensions, never positional tuples.

Every MAC layer (Conv, ConvTranspose, Gemm, MatMul, QLinear*) is described by one loop nest

    for n, g, m, c, p, q, r, s:  O[n,g,m,p,q] += W[g,m,c,r,s] * I[n,g,c, p*stride+r*dil, q*stride+s*dil]

with N batch, G groups, M output channels per group, C input channels per group, P x Q output
rows x cols, R x S kernel rows x cols. A Gemm (x[B,K] @ W[K,F]) is N=B, M=F, C=K, the rest 1.
Other ops are costed by the elements they read and write.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum
from typing import Iterable, Iterator

import networkx as nx


class OpKind(Enum):
    CONV = "conv"  # Conv, QLinearConv (grouped, depthwise, dilated, strided)
    CONV_TRANSPOSE = "conv_transpose"
    GEMM = "gemm"  # Gemm / MatMul with a constant weight operand
    MATMUL = "matmul"  # activation x activation (attention scores, context)
    POOL = "pool"  # MaxPool, AveragePool, Global*Pool
    ELEMENTWISE = "elementwise"  # activations, Add, Mul, BatchNormalization, Quantize/Dequantize ...
    NORM = "norm"  # LayerNormalization, Softmax (a few ops per element plus a reduction)
    DATA_MOVEMENT = "data_movement"  # Concat, Split, Transpose, Gather, Slice, and unknown ops
    SHAPE = "shape"  # Reshape, Flatten, Squeeze, Identity, Shape ...: zero cost
    HASHED = "hashed"  # joulecut.HashedLinear: an LSH-selected fully connected layer (SLIDE)
    REUSE = "reuse"  # joulecut.ReuseConv: a Conv computing one product per cluster of similar inputs


MAC_KINDS = frozenset({OpKind.CONV, OpKind.CONV_TRANSPOSE, OpKind.GEMM, OpKind.MATMUL, OpKind.HASHED, OpKind.REUSE})


@dataclass(frozen=True)
class LoopDims:
    """Loop bounds of a MAC layer (see module docstring). H, W are the input rows and cols
    including padding, so the input window of the whole layer is H x W."""

    N: int = 1
    G: int = 1
    M: int = 1
    C: int = 1
    P: int = 1
    Q: int = 1
    R: int = 1
    S: int = 1
    stride_h: int = 1
    stride_w: int = 1
    dilation_h: int = 1
    dilation_w: int = 1
    H: int = 0  # 0: derived as (P-1)*stride_h + (R-1)*dilation_h + 1
    W: int = 0

    def __post_init__(self) -> None:
        for name in ("N", "G", "M", "C", "P", "Q", "R", "S", "stride_h", "stride_w", "dilation_h", "dilation_w"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"LoopDims.{name} must be a positive int, got {value!r}")
        if self.H == 0:
            object.__setattr__(self, "H", (self.P - 1) * self.stride_h + (self.R - 1) * self.dilation_h + 1)
        if self.W == 0:
            object.__setattr__(self, "W", (self.Q - 1) * self.stride_w + (self.S - 1) * self.dilation_w + 1)

    @property
    def macs(self) -> int:
        return self.N * self.G * self.M * self.C * self.P * self.Q * self.R * self.S

    @property
    def weight_elements(self) -> int:
        return self.G * self.M * self.C * self.R * self.S

    @property
    def input_elements(self) -> int:
        return self.N * self.G * self.C * self.H * self.W

    @property
    def output_elements(self) -> int:
        return self.N * self.G * self.M * self.P * self.Q


@dataclass(frozen=True)
class Layer:
    """One node of the IR.

    Densities are fractions of nonzero values in [0, 1]: ``weight_density`` is measured from the
    initializer, ``input_density`` is assumed (1.0) or measured from sample data. Bit widths of
    None mean "the hardware's word width". For non-MAC ops ``dims`` is None and the cost comes from
    ``input_elements``, ``output_elements`` and ``ops_per_element``.
    """

    name: str
    op: OpKind
    onnx_op: str
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    dims: LoopDims | None = None
    weight: str | None = None  # initializer name of the weight operand (None for act x act)
    weight_density: float = 1.0
    input_density: float = 1.0
    weight_bits: int | None = None
    input_bits: int | None = None
    output_bits: int | None = None
    input_elements: int = 0
    output_elements: int = 0
    ops_per_element: float = 0.0
    # Hashed layers only: hash bits per table, tables, mean fraction of outputs active per sample.
    hash_bits: int = 0
    hash_tables: int = 0
    active_fraction: float = 1.0
    batched: bool = True  # each active weight row loaded once for all samples that chose it
    # Deep-reuse convs only: clusters per input sub-vector (measured), hashes per sub-vector.
    cluster_ratio: float = 1.0
    reuse_hashes: int = 0

    def __post_init__(self) -> None:
        for name in ("weight_density", "input_density", "active_fraction", "cluster_ratio"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"layer {self.name}: {name} must be in [0, 1], got {value}")
        if self.op in MAC_KINDS and self.dims is None:
            raise ValueError(f"layer {self.name}: a {self.op.value} layer needs dims")
        if self.dims is not None:
            object.__setattr__(self, "input_elements", self.input_elements or self.dims.input_elements)
            object.__setattr__(self, "output_elements", self.output_elements or self.dims.output_elements)

    @property
    def is_mac(self) -> bool:
        return self.op in MAC_KINDS

    @property
    def macs(self) -> int:
        """Dense MACs (multiply-accumulates); 0 for non-MAC ops."""
        return self.dims.macs if self.dims is not None else 0

    def replace(self, **changes: object) -> "Layer":
        return dataclasses.replace(self, **changes)


class Graph:
    """A model as a DAG of layers (networkx.DiGraph, nodes are layer names, an edge for each
    tensor passed from one layer to another). Iteration is in topological order.

    Graphs are treated as values: ``with_layer`` / ``with_densities`` return edited copies, so
    pruning can re-estimate a proposal without touching the original or re-exporting ONNX.
    """

    def __init__(self, name: str, layers: Iterable[Layer], inputs: tuple[str, ...] = (), outputs: tuple[str, ...] = ()):
        self.name = name
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self._layers: dict[str, Layer] = {}
        for layer in layers:
            if layer.name in self._layers:
                raise ValueError(f"duplicate layer name {layer.name!r}")
            self._layers[layer.name] = layer
        self.dag = nx.DiGraph()
        producer: dict[str, str] = {}
        for layer in self._layers.values():
            self.dag.add_node(layer.name)
            for t in layer.outputs:
                producer[t] = layer.name
        for layer in self._layers.values():
            for t in layer.inputs:
                if t in producer and producer[t] != layer.name:
                    self.dag.add_edge(producer[t], layer.name, tensor=t)
        self._order = list(nx.lexicographical_topological_sort(self.dag, key=list(self._layers).index))

    def __iter__(self) -> Iterator[Layer]:
        return (self._layers[n] for n in self._order)

    def __len__(self) -> int:
        return len(self._layers)

    def __getitem__(self, name: str) -> Layer:
        return self._layers[name]

    def __contains__(self, name: object) -> bool:
        return name in self._layers

    @property
    def layers(self) -> list[Layer]:
        return list(self)

    def mac_layers(self) -> list[Layer]:
        return [layer for layer in self if layer.is_mac]

    @property
    def total_macs(self) -> int:
        return sum(layer.macs for layer in self)

    def with_layer(self, layer: Layer) -> "Graph":
        """A copy with the layer of the same name replaced."""
        if layer.name not in self._layers:
            raise KeyError(layer.name)
        return Graph(self.name, [layer if l.name == layer.name else l for l in self], self.inputs, self.outputs)

    def with_layers(self, changed: Iterable[Layer]) -> "Graph":
        new = {layer.name: layer for layer in changed}
        unknown = set(new) - set(self._layers)
        if unknown:
            raise KeyError(", ".join(sorted(unknown)))
        return Graph(self.name, [new.get(l.name, l) for l in self], self.inputs, self.outputs)

    def with_densities(self, weight: dict[str, float] | None = None, inputs: dict[str, float] | None = None) -> "Graph":
        """A copy with weight and/or input densities of the named layers changed."""
        changed = []
        for name in set(weight or {}) | set(inputs or {}):
            layer = self[name]
            changed.append(
                layer.replace(
                    weight_density=(weight or {}).get(name, layer.weight_density),
                    input_density=(inputs or {}).get(name, layer.input_density),
                )
            )
        return self.with_layers(changed)
