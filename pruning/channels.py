"""Channel pruning: remove whole channel groups physically, and mirror it in the energy IR.

``keep`` maps a group id of a :class:`~pruning.structure.Structure` to the sorted indices of
the channels to keep. :func:`remove_channels` swaps each affected Conv/Linear/BatchNorm for a
smaller one; :func:`ir_with_channels` edits the IR graph (Conv M and C, depthwise G, Gemm M and
C, element counts of the ops in between) so the estimator can cost a proposal without any
ONNX export.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from energy.ir import Graph, Layer
from pruning.onnx_torch import BatchNorm, OnnxModule
from pruning.structure import ChannelGroup, Structure


def round_channels(n: float, multiple: int, size: int) -> int:
    """``n`` rounded up to a multiple of ``multiple``, at least ``multiple`` and at most ``size``."""
    if multiple < 1:
        raise ValueError(f"channel multiple must be >= 1, got {multiple}")
    rounded = int(-(-int(round(n)) // multiple) * multiple) if n > 0 else multiple
    return max(1, min(size, max(multiple, rounded)))


def channel_scores(module: OnnxModule, group: ChannelGroup) -> torch.Tensor:
    """Importance of each channel of ``group``: the L1 norm of its filter in every producer,
    each producer's norms divided by their mean so layers of different scale weigh alike."""
    score = torch.zeros(group.size, dtype=torch.float64)
    for node in group.producers:
        w = module.layer(node).weight.detach().reshape(group.size, -1).abs().sum(dim=1).double()
        score += w / w.mean().clamp_min(1e-12)
    return score


def top_channels(module: OnnxModule, group: ChannelGroup, count: int) -> torch.Tensor:
    """Sorted indices of the ``count`` highest-scoring channels of ``group``."""
    order = torch.sort(channel_scores(module, group), descending=True, stable=True).indices
    return torch.sort(order[:count]).values


def _index(w: torch.Tensor, dim: int, idx: torch.Tensor | None) -> torch.Tensor:
    return w if idx is None else w.index_select(dim, idx)


def remove_channels(module: OnnxModule, structure: Structure, keep: dict[int, torch.Tensor]) -> None:
    """Prune ``module`` in place: every producer, per-channel op and consumer of the groups in
    ``keep`` gets a smaller layer holding the kept rows/columns of its old weights."""
    keep = {g: idx.to(torch.long) for g, idx in keep.items() if len(idx) < structure.groups[g].size}
    if not keep:
        return
    for node, layer in list(module.node_modules.items()):
        out_group = structure.group_of_output(node)
        out_idx = keep.get(out_group) if out_group is not None else None
        layout = structure.input_layout(node)
        in_idx = structure.indices(layout, keep) if layout is not None else None
        if in_idx is not None and len(in_idx) == structure.width(layout):
            in_idx = None
        if out_idx is None and in_idx is None:
            continue
        module.set_layer(node, _shrunk(layer, out_idx, in_idx))


def _shrunk(layer: nn.Module, out_idx: torch.Tensor | None, in_idx: torch.Tensor | None) -> nn.Module:
    with torch.no_grad():
        if isinstance(layer, BatchNorm):
            idx = in_idx
            new = BatchNorm(len(idx), eps=layer.eps, momentum=layer.momentum)
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(new, name).data = getattr(layer, name).detach().index_select(0, idx).clone()
            new.num_batches_tracked.data = layer.num_batches_tracked.clone()
            return new.train(layer.training)
        if isinstance(layer, nn.Conv2d) and layer.groups > 1:  # depthwise: one index set
            idx = in_idx
            new = nn.Conv2d(len(idx), len(idx), layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                            groups=len(idx), bias=layer.bias is not None)
            new.weight.data = layer.weight.detach().index_select(0, idx).clone()
            if layer.bias is not None:
                new.bias.data = layer.bias.detach().index_select(0, idx).clone()
            return new.train(layer.training)
        w = _index(_index(layer.weight.detach(), 0, out_idx), 1, in_idx).clone()
        b = _index(layer.bias.detach(), 0, out_idx).clone() if layer.bias is not None else None
        if isinstance(layer, nn.Conv2d):
            new = nn.Conv2d(w.shape[1], w.shape[0], layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                            bias=b is not None)
        else:
            new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
        new.weight.data = w
        if b is not None:
            new.bias.data = b
        return new.train(layer.training)


def ir_with_channels(graph: Graph, structure: Structure, counts: dict[int, int]) -> Graph:
    """The IR ``graph`` (of the model ``structure`` was built on) with group ``g`` cut to
    ``counts[g]`` channels. MAC layers get new loop bounds; other layers scale their element
    counts with the width of the tensors they touch."""
    def width(tensor: str) -> tuple[int, int] | None:
        layout = structure.layouts.get(tensor)
        if layout is None:
            return None
        full = structure.width(layout)
        new = sum(counts.get(structure.find(s.space), s.length) * s.inner for s in layout)
        return new, full

    changed: list[Layer] = []
    for layer in graph:
        if not layer.inputs and not layer.outputs:
            continue
        ins = [w for w in (width(t) for t in layer.inputs) if w is not None]
        outs = [w for w in (width(t) for t in layer.outputs) if w is not None]
        if all(n == f for n, f in ins + outs):
            continue
        if layer.dims is not None:
            d = layer.dims
            in_new, in_full = ins[0] if ins else (d.C * d.G, d.C * d.G)
            out_new, out_full = outs[0] if outs else (d.M * d.G, d.M * d.G)
            if d.G > 1 and d.M == 1 and d.C == 1:  # depthwise
                dims = dataclasses.replace(d, G=out_new, H=d.H, W=d.W)
            else:
                dims = dataclasses.replace(d, M=out_new // d.G, C=in_new // d.G)
            changed.append(layer.replace(dims=dims,
                                         input_elements=int(round(layer.input_elements * in_new / in_full)),
                                         output_elements=int(round(layer.output_elements * out_new / out_full))))
        else:
            in_frac = sum(n for n, _ in ins) / max(1, sum(f for _, f in ins)) if ins else 1.0
            out_frac = sum(n for n, _ in outs) / max(1, sum(f for _, f in outs)) if outs else in_frac
            changed.append(layer.replace(input_elements=int(round(layer.input_elements * in_frac)),
                                         output_elements=int(round(layer.output_elements * out_frac))))
    return graph.with_layers(changed) if changed else graph
