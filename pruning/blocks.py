"""Weight masks: block-structured and unstructured (magnitude), and keeping them applied.

A *mask* is a ``torch.bool`` tensor with the shape of a layer's weight; ``True`` keeps the
weight, ``False`` forces it to zero. Masks for a model are a ``dict`` keyed by the layer's
qualified module name (as in ``model.named_modules()``), e.g. ``{"0": ..., "head.fc": ...}``.

Prunable layers are ``nn.Linear`` and every ``nn.Conv1d/2d/3d`` (and transposed convs): the
weight of any of these is viewed as a 2-D matrix ``[weight.shape[0], rest]``, i.e. Linear
``[out, in]`` and Conv2d ``[out, in/groups * kh * kw]``. Biases are never masked.

Keeping masks applied during fine-tuning (:class:`MaskedWeights`) uses *both*:

- a gradient hook on each masked weight that multiplies the gradient by the mask, so masked
  entries never receive gradient (optimizer statistics such as Adam's moments stay clean), and
- :meth:`MaskedWeights.reapply`, to be called after every ``optimizer.step()``, which zeroes
  masked entries again (needed because weight decay and left-over momentum still move them).

This keeps the module a plain ``nn.Module`` (no ``torch.nn.utils.parametrize`` rewrite of the
state dict), so ONNX export and ``state_dict`` keys are unchanged.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

__all__ = [
    "MaskedWeights",
    "apply_masks",
    "block_mask",
    "global_magnitude_masks",
    "layer_magnitude_mask",
    "prunable_layers",
]


def prunable_layers(model: nn.Module, layers: Iterable[str] | None = None) -> dict[str, nn.Module]:
    """The model's Linear and Conv layers by qualified name, in ``named_modules`` order.

    ``layers`` restricts the result to those names; an unknown name raises ``ValueError``
    listing the prunable names that exist.
    """
    found = {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) and m.weight is not None
    }
    if layers is None:
        return found
    wanted = list(layers)
    unknown = [n for n in wanted if n not in found]
    if unknown:
        raise ValueError(
            f"layers must name Linear/Conv modules of the model (one of {sorted(found)}), "
            f"got unknown {unknown}"
        )
    return {n: found[n] for n in found if n in set(wanted)}


def _check_density(density: float) -> float:
    if isinstance(density, bool) or not isinstance(density, (int, float)):
        raise ValueError(f"density must be a number in [0, 1], got {density!r}")
    if not 0.0 <= float(density) <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")
    return float(density)


def _as_matrix(weight: torch.Tensor) -> torch.Tensor:
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() < 2:
        raise ValueError(
            f"weight must have at least 2 dims (Linear [out, in] or Conv [out, in, k...]), "
            f"got shape {tuple(weight.shape)}"
        )
    return weight.detach().reshape(weight.shape[0], -1)


def block_mask(weight: torch.Tensor, block: tuple[int, int], density: float) -> torch.Tensor:
    """Keep the blocks of ``weight`` with the largest L2 (Frobenius) norm.

    The weight is viewed as ``[out, rest]`` (Linear ``[out, in]``, Conv ``[out, in*kh*kw]``)
    and tiled into ``block = (rows, cols)`` blocks starting at the top-left corner. When a dim
    is not a multiple of the block, the last row/column of blocks is a *partial* edge block
    (fewer elements); it competes on its own L2 norm like any other block.

    Blocks are taken in decreasing norm (ties: lower block index first, row-major) and the
    kept prefix is the one whose element count is closest to ``density * weight.numel()``
    (ties: the smaller). With full blocks that is ``round(density * n_blocks)`` blocks, so the
    achieved density is exact to within one block.

    Returns a bool mask with ``weight``'s shape.
    """
    density = _check_density(density)
    if (
        not isinstance(block, (tuple, list))
        or len(block) != 2
        or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in block)
    ):
        raise ValueError(f"block must be a pair of positive ints (rows, cols), got {block!r}")
    mat = _as_matrix(weight).float()
    rows, cols = mat.shape
    br, bc = block
    nbr, nbc = -(-rows // br), -(-cols // bc)  # ceil division: partial edge blocks included
    padded = torch.zeros(nbr * br, nbc * bc, dtype=mat.dtype)
    padded[:rows, :cols] = mat
    tiles = padded.reshape(nbr, br, nbc, bc).permute(0, 2, 1, 3)  # [nbr, nbc, br, bc]
    scores = tiles.pow(2).sum(dim=(2, 3)).sqrt().reshape(-1)
    # elements per block (edge blocks are smaller)
    row_sizes = torch.full((nbr,), br)
    row_sizes[-1] = rows - (nbr - 1) * br
    col_sizes = torch.full((nbc,), bc)
    col_sizes[-1] = cols - (nbc - 1) * bc
    sizes = (row_sizes[:, None] * col_sizes[None, :]).reshape(-1)

    order = torch.sort(scores, descending=True, stable=True).indices
    cum = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(sizes[order], 0)])
    target = density * rows * cols
    n_keep = int(torch.argmin((cum.double() - target).abs()))  # first minimum = smaller prefix
    keep_blocks = torch.zeros(nbr * nbc, dtype=torch.bool)
    keep_blocks[order[:n_keep]] = True
    full = keep_blocks.reshape(nbr, nbc).repeat_interleave(br, 0).repeat_interleave(bc, 1)
    return full[:rows, :cols].reshape(weight.shape).clone()


def layer_magnitude_mask(weight: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``round(density * numel)`` entries of largest ``|w|`` (ties: lower index)."""
    density = _check_density(density)
    flat = _as_matrix(weight).reshape(-1).abs().float()
    k = round(density * flat.numel())
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    mask[torch.sort(flat, descending=True, stable=True).indices[:k]] = True
    return mask.reshape(weight.shape)


def global_magnitude_masks(
    module: nn.Module, density: float, layers: Iterable[str] | None = None
) -> dict[str, torch.Tensor]:
    """One global magnitude threshold over the chosen layers' weights.

    Keeps the ``round(density * N)`` weights of largest ``|w|`` among all ``N`` weights of
    ``layers`` (default: every Linear/Conv layer), so layers end up with different densities.
    Ties are broken by layer order, then index. Returns ``{layer name: bool mask}``.
    """
    density = _check_density(density)
    chosen = prunable_layers(module, layers)
    if not chosen:
        raise ValueError("module must contain at least one Linear or Conv layer, got none")
    flats = [m.weight.detach().abs().reshape(-1).float() for m in chosen.values()]
    allw = torch.cat(flats)
    k = round(density * allw.numel())
    keep = torch.zeros(allw.numel(), dtype=torch.bool)
    keep[torch.sort(allw, descending=True, stable=True).indices[:k]] = True
    masks, start = {}, 0
    for (name, m), f in zip(chosen.items(), flats):
        masks[name] = keep[start : start + f.numel()].reshape(m.weight.shape).clone()
        start += f.numel()
    return masks


def _check_masks(module: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[str, nn.Module]:
    layers = prunable_layers(module)
    for name, mask in masks.items():
        if name not in layers:
            raise ValueError(
                f"mask names must be Linear/Conv modules (one of {sorted(layers)}), got {name!r}"
            )
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise ValueError(f"mask {name!r} must be a torch.bool tensor, got {mask!r:.60}")
        if mask.shape != layers[name].weight.shape:
            raise ValueError(
                f"mask {name!r} must have the weight's shape {tuple(layers[name].weight.shape)}, "
                f"got {tuple(mask.shape)}"
            )
    return {n: layers[n] for n in masks}


def apply_masks(module: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero, in place, every weight entry whose mask is ``False``."""
    for name, layer in _check_masks(module, masks).items():
        with torch.no_grad():
            layer.weight.mul_(masks[name].to(layer.weight.device, layer.weight.dtype))


class MaskedWeights:
    """Keep masked weights at zero while a model trains.

    ``MaskedWeights(model, masks)`` zeroes masked entries now, registers a gradient hook per
    layer (gradient x mask) and keeps a reference to each mask: changing a mask *in place*
    (``keeper.masks[name].copy_(new)``) takes effect for both. Call :meth:`reapply` after every
    ``optimizer.step()``; :meth:`remove` detaches the hooks.
    """

    def __init__(self, module: nn.Module, masks: Mapping[str, torch.Tensor]):
        self._layers = _check_masks(module, masks)
        self.masks: dict[str, torch.Tensor] = {
            n: masks[n].to(self._layers[n].weight.device) for n in masks
        }
        self._handles = [
            layer.weight.register_hook(self._grad_hook(name))
            for name, layer in self._layers.items()
        ]
        self.reapply()

    def _grad_hook(self, name: str):
        def hook(grad: torch.Tensor) -> torch.Tensor:
            return grad * self.masks[name].to(grad.dtype)

        return hook

    def reapply(self) -> None:
        """Zero every masked weight entry again (call after ``optimizer.step()``)."""
        with torch.no_grad():
            for name, layer in self._layers.items():
                layer.weight.mul_(self.masks[name].to(layer.weight.dtype))

    def remove(self) -> None:
        """Remove the gradient hooks; the weights keep their current values."""
        for h in self._handles:
            h.remove()
        self._handles = []
