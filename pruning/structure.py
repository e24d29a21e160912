"""Channel groups of an OnnxModule: which output channels must be pruned together.

Every Conv/Gemm output opens a *channel space*. Ops that act per channel (activations, pools,
BatchNormalization, a depthwise conv) pass their input's space through; a residual Add (or Sub,
Mul, Div of two activations) joins its inputs' spaces into one; Concat on axis 1 lays spaces
side by side; Flatten stretches each channel over H*W features of the next Linear. A *group*
is a set of joined spaces: removing channel j of a group removes filter j of every producer,
entry j of every per-channel op, and the matching input slice of every consumer.

A group is frozen (never pruned) when it reaches a graph output, comes from a graph input, or
meets an op whose channel handling is not tracked here (Transpose, Softmax, a per-channel
constant, a grouped non-depthwise conv, ...).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from pruning.onnx_torch import OnnxModule

PER_CHANNEL_OPS = frozenset({
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "HardSwish", "HardSigmoid", "Gelu", "Erf", "Exp",
    "Sqrt", "Neg", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Identity", "Dropout",
})
BINARY_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Pow"})


@dataclass(frozen=True)
class Segment:
    """``length`` channels of ``space`` along axis 1; each channel spans ``inner`` consecutive
    features (1 for N x C x H x W tensors, H*W after a Flatten)."""

    space: int
    length: int
    inner: int = 1


Layout = tuple[Segment, ...]


@dataclass
class ChannelGroup:
    """Joined channel spaces pruned as one: ``size`` channels."""

    id: int
    size: int
    producers: list[str] = field(default_factory=list)  # Conv/Gemm nodes whose output channels these are
    channelwise: list[str] = field(default_factory=list)  # BN, depthwise convs sliced along
    consumers: list[str] = field(default_factory=list)  # nodes whose input channels shrink


class Structure:
    """The channel layout of every tensor and the channel groups of one OnnxModule."""

    def __init__(self, module: OnnxModule, example: torch.Tensor | tuple[torch.Tensor, ...]):
        example = (example,) if isinstance(example, torch.Tensor) else tuple(example)
        was_training = module.training
        module.eval()
        with torch.no_grad():
            tensors = module.tensors(*example)
        module.train(was_training)
        self.module = module
        self.layouts: dict[str, Layout] = {}
        self._parent: list[int] = []
        self._size: list[int] = []
        self._frozen: set[int] = set()
        self._producer: dict[int, str] = {}  # space -> node
        self._channelwise: dict[str, str] = {}  # node -> its input tensor (sliced by that layout)
        self._consumer: dict[str, str] = {}  # node -> its input tensor
        for name in module.input_names:
            self.layouts[name] = self._fresh(tensors[name], frozen=True)
        for step in module.steps:
            self._visit(step, tensors)
        for name in module.output_names:
            self._freeze(self.layouts.get(name, ()))
        self.groups = self._collect()

    # --- union-find ------------------------------------------------------------------------
    def _new(self, size: int, frozen: bool = False) -> int:
        self._parent.append(len(self._parent))
        self._size.append(size)
        if frozen:
            self._frozen.add(len(self._parent) - 1)
        return len(self._parent) - 1

    def find(self, space: int) -> int:
        while self._parent[space] != space:
            self._parent[space] = self._parent[self._parent[space]]
            space = self._parent[space]
        return space

    def _union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        self._parent[rb] = ra
        if rb in self._frozen or self._size[ra] != self._size[rb]:
            self._frozen.add(ra)

    def _freeze(self, layout: Layout) -> None:
        for seg in layout:
            self._frozen.add(self.find(seg.space))

    def is_frozen(self, space: int) -> bool:
        return self.find(space) in self._frozen

    # --- graph walk --------------------------------------------------------------------------
    def _fresh(self, tensor: torch.Tensor, frozen: bool) -> Layout:
        size = tensor.shape[1] if tensor.dim() > 1 else 1
        return (Segment(self._new(size, frozen), size),)

    def _visit(self, step, tensors: dict[str, torch.Tensor]) -> None:
        module = self.module
        op = step.op
        ins = [self.layouts.get(t) for t in step.inputs]
        out_t = tensors.get(step.outputs[0]) if step.outputs else None
        if step.name in module._key:
            layer = module.layer(step.name)
            x_layout = ins[0]
            if isinstance(layer, nn.Conv2d) and layer.groups > 1:
                if layer.groups == layer.in_channels == layer.out_channels and x_layout is not None:
                    self._channelwise[step.name] = step.inputs[0]
                    self.layouts[step.outputs[0]] = x_layout
                    return
                self._freeze(x_layout or ())
                self.layouts[step.outputs[0]] = self._fresh(out_t, frozen=True)
                return
            if isinstance(layer, nn.BatchNorm2d):
                self._channelwise[step.name] = step.inputs[0]
                self.layouts[step.outputs[0]] = x_layout
                return
            if x_layout is not None:
                self._consumer[step.name] = step.inputs[0]
            layout = self._fresh(out_t, frozen=False)
            self._producer[layout[0].space] = step.name
            if out_t is not None and out_t.dim() != 2 and isinstance(layer, nn.Linear):
                self._freeze(layout)  # a Linear over a non-2-D tensor: its features are not axis 1
                self._freeze(x_layout or ())
            self.layouts[step.outputs[0]] = layout
            return
        tracked = [(t, lay) for t, lay in zip(step.inputs, ins) if lay is not None]
        if not tracked:
            return  # shape/constant computations
        if op in PER_CHANNEL_OPS:
            self.layouts[step.outputs[0]] = ins[0]
            for extra in step.outputs[1:]:
                self.layouts[extra] = ins[0]
            return
        if op in BINARY_OPS:
            if len(tracked) == 2:
                a, b = ins[0], ins[1]
                if len(a) == len(b) and all(sa.length == sb.length and sa.inner == sb.inner for sa, sb in zip(a, b)) \
                        and tensors[step.inputs[0]].shape == tensors[step.inputs[1]].shape:
                    for sa, sb in zip(a, b):
                        self._union(sa.space, sb.space)
                    self.layouts[step.outputs[0]] = a
                    return
            else:
                other = [t for t in step.inputs if self.layouts.get(t) is None]
                if all(tensors[t].numel() == 1 for t in other):
                    self.layouts[step.outputs[0]] = tracked[0][1]
                    return
        axis = int(step.attrs.get("axis", 0))
        if op == "Concat" and out_t is not None and axis % out_t.dim() == 1 and len(tracked) == len(step.inputs):
            self.layouts[step.outputs[0]] = tuple(seg for lay in ins for seg in lay)
            return
        flatten = (op == "Flatten" and int(step.attrs.get("axis", 1)) == 1) or step.flatten_reshape
        if flatten:
            x = tensors[step.inputs[0]]
            spread = int(torch.tensor(x.shape[2:]).prod()) if x.dim() > 2 else 1
            self.layouts[step.outputs[0]] = tuple(Segment(s.space, s.length, s.inner * spread) for s in ins[0])
            return
        for _, lay in tracked:  # anything else: channel handling unknown, never prune through it
            self._freeze(lay)
        if out_t is not None:
            for t in step.outputs:
                if t in tensors:
                    self.layouts[t] = self._fresh(tensors[t], frozen=True)

    def _collect(self) -> dict[int, ChannelGroup]:
        groups: dict[int, ChannelGroup] = {}
        for space, node in self._producer.items():
            root = self.find(space)
            if root in self._frozen:
                continue
            group = groups.setdefault(root, ChannelGroup(root, self._size[root]))
            group.producers.append(node)
        for node, tensor in self._channelwise.items():
            for seg in self.layouts[tensor]:
                if self.find(seg.space) in groups and node not in groups[self.find(seg.space)].channelwise:
                    groups[self.find(seg.space)].channelwise.append(node)
        for node, tensor in self._consumer.items():
            for seg in self.layouts[tensor]:
                if self.find(seg.space) in groups and node not in groups[self.find(seg.space)].consumers:
                    groups[self.find(seg.space)].consumers.append(node)
        return dict(sorted(groups.items()))

    # --- index maths -------------------------------------------------------------------------
    def indices(self, layout: Layout, keep: dict[int, torch.Tensor]) -> torch.Tensor:
        """Kept feature indices along axis 1 of a tensor with ``layout``, given kept channel
        indices per group (groups absent from ``keep`` keep everything)."""
        parts, offset = [], 0
        for seg in layout:
            kept = keep.get(self.find(seg.space))
            kept = torch.arange(seg.length) if kept is None else kept
            parts.append((offset + kept[:, None] * seg.inner + torch.arange(seg.inner)[None, :]).reshape(-1))
            offset += seg.length * seg.inner
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)

    def width(self, layout: Layout) -> int:
        return sum(seg.length * seg.inner for seg in layout)

    def group_of_output(self, node: str) -> int | None:
        """The (unfrozen) group of a producer node's output channels, or None."""
        for space, producer in self._producer.items():
            if producer == node:
                root = self.find(space)
                return root if root in self.groups else None
        return None

    def input_layout(self, node: str) -> Layout | None:
        tensor = self._consumer.get(node) or self._channelwise.get(node)
        return self.layouts.get(tensor) if tensor else None
