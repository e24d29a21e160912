"""What a pruning method prunes, per granularity: a *unit* is one layer (weight and block
granularity: a mask on its weights) or one channel group (channel granularity: filters removed
physically). Every unit has a *level*, the kept fraction in (0, 1]; methods only move levels
down. The same interface costs a proposal in the IR (``graph``) and applies it to the model
(``apply``), with least-squares restoration of the layers whose inputs or weights changed.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from energy.ir import Graph
from pruning.blocks import block_mask, layer_magnitude_mask
from pruning.channels import channel_scores, ir_with_channels, remove_channels, round_channels, top_channels
from pruning.cost import EnergyModel
from pruning.lsq import restore_layer
from pruning.onnx_torch import OnnxModule
from pruning.structure import Structure


@dataclass
class PruneState:
    """A model being pruned: the module, its weight masks (node -> bool) and, for channel
    pruning, the original indices of the channels each group keeps."""

    module: OnnxModule
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    kept: dict[int, torch.Tensor] = field(default_factory=dict)

    def copy(self) -> "PruneState":
        """A deep copy that shares the (read-only) source ONNX model."""
        return copy.deepcopy(self, memo={id(self.module.source): self.module.source})


class Units:
    """Shared machinery: least-squares restoration against the dense model's outputs."""

    kind = ""

    def __init__(self, base: OnnxModule, energy: EnergyModel, calib: torch.Tensor):
        self.energy = energy
        self.calib = calib
        base.eval()
        with torch.no_grad():
            tensors = base.tensors(calib)
        self._io = {s.name: (s.inputs[0], s.outputs[0]) for s in base.steps if s.name in base._key}
        self._targets = {node: tensors[out] for node, (_, out) in self._io.items()
                         if isinstance(base.layer(node), (nn.Conv2d, nn.Linear))}

    def restore(self, state: PruneState, nodes: list[str]) -> None:
        """Refit ``nodes`` (Conv/Linear) by least squares: inputs from the current model,
        targets the dense model's outputs on the calibration data."""
        nodes = [n for n in nodes if n in self._targets]
        if not nodes:
            return
        state.module.eval()
        with torch.no_grad():  # the pass stops at the last input the refits need
            tensors = state.module.tensors(self.calib, until={self._io[n][0] for n in nodes})
        for node in nodes:
            layer = state.module.layer(node)
            target = self._targets[node]
            out_idx = self.kept_outputs(state, node)
            if out_idx is not None:
                target = target.index_select(1, out_idx)
            restore_layer(layer, tensors[self._io[node][0]], target, state.masks.get(node), error=False)

    def kept_outputs(self, state: PruneState, node: str) -> torch.Tensor | None:
        return None

    def ir_layers(self, unit) -> list[str]:
        raise NotImplementedError

    def measured_graph(self, state: PruneState) -> Graph:
        """``graph(state)`` with every Conv/Linear layer's weight density measured from the
        module (what the importer will find in the exported file: least squares can leave exact
        zeros on dead inputs)."""
        graph = self.graph(state)
        densities = {}
        for node, layer in state.module.node_modules.items():
            if isinstance(layer, (nn.Conv2d, nn.Linear)) and node in graph:
                w = layer.weight.detach()
                densities[node] = int(torch.count_nonzero(w)) / w.numel()
        return graph.with_densities(weight=densities)

    def level_energy(self, state: PruneState) -> dict:
        """Energy (pJ) of each unit's layers in the current model, for ordering."""
        per_layer = self.energy.per_layer_pj(self.graph(state))
        return {u: sum(per_layer.get(n, 0.0) for n in self.ir_layers(u)) for u in self.units()}


class WeightUnits(Units):
    """One unit per Conv/Linear layer; a level is the layer's weight density. ``block`` set:
    block masks (pruning.blocks.block_mask), else unstructured magnitude masks."""

    def __init__(self, base: OnnxModule, energy: EnergyModel, calib: torch.Tensor, *,
                 block: tuple[int, int] | None = None, min_density: float = 0.02):
        super().__init__(base, energy, calib)
        self.kind = "block" if block else "weight"
        self.block = block
        self.min_density = min_density
        self._units = [n for n, m in base.node_modules.items()
                       if isinstance(m, (nn.Conv2d, nn.Linear)) and n in energy.graph]
        self._numel = {n: base.layer(n).weight.numel() for n in self._units}

    def units(self) -> list[str]:
        return list(self._units)

    def name(self, unit: str) -> str:
        return unit

    def ir_layers(self, unit: str) -> list[str]:
        return [unit]

    def level(self, state: PruneState, unit: str) -> float:
        mask = state.masks.get(unit)
        return 1.0 if mask is None else int(mask.sum()) / mask.numel()

    def min_level(self, unit: str) -> float:
        return self.min_density

    def snap(self, unit: str, level: float) -> float:
        """The nearest density a mask can have (whole weights), within [min_density, 1]."""
        n = self._numel[unit]
        return max(math.ceil(self.min_density * n), min(n, round(level * n))) / n

    def graph(self, state: PruneState, override: dict | None = None) -> Graph:
        levels = {u: self.level(state, u) for u in self._units if u in state.masks}
        levels.update(override or {})
        return self.energy.with_densities(levels)

    def scores(self, state: PruneState, unit: str) -> torch.Tensor:
        return state.module.layer(unit).weight.detach().abs().reshape(-1)

    def apply(self, state: PruneState, unit: str, level: float, restore: bool) -> None:
        level = self.snap(unit, level)
        if level >= self.level(state, unit):
            return
        weight = state.module.layer(unit).weight
        mask = block_mask(weight, self.block, level) if self.block else layer_magnitude_mask(weight, level)
        old = state.masks.get(unit)
        state.masks[unit] = mask if old is None else (mask & old)
        with torch.no_grad():
            weight.mul_(state.masks[unit].to(weight.dtype))
        if restore:
            self.restore(state, [unit])

    def qualified_masks(self, state: PruneState) -> dict[str, torch.Tensor]:
        return {state.module.qualified_name(n): m for n, m in state.masks.items()}

    def describe(self, state: PruneState, unit: str) -> dict:
        mask = state.masks.get(unit)
        total = state.module.layer(unit).weight.numel()
        kept = total if mask is None else int(mask.sum())
        return {"unit": unit, "layers": [unit], "kind": self.kind, "kept": kept, "total": total,
                "removed": f"{total - kept} of {total} weights" + (f" in {self.block[0]}x{self.block[1]} blocks" if self.block else "")}


class ChannelUnits(Units):
    """One unit per channel group (pruning.structure); a level is the kept channel fraction,
    rounded so the kept count is a multiple of ``multiple``."""

    kind = "channel"

    def __init__(self, base: OnnxModule, energy: EnergyModel, calib: torch.Tensor, example: torch.Tensor, *,
                 multiple: int = 1):
        super().__init__(base, energy, calib)
        self.example = example
        self.multiple = multiple
        self.structure = Structure(base, example)
        self.sizes = {g: grp.size for g, grp in self.structure.groups.items()}
        self._units = [g for g, grp in self.structure.groups.items() if grp.size > min(multiple, grp.size)
                       and all(p in energy.graph for p in grp.producers)]

    def start(self, state: PruneState) -> None:
        state.kept = {g: torch.arange(n) for g, n in self.sizes.items()}

    def units(self) -> list[int]:
        return list(self._units)

    def name(self, unit: int) -> str:
        return "+".join(self.structure.groups[unit].producers)

    def ir_layers(self, unit: int) -> list[str]:
        grp = self.structure.groups[unit]
        return list(dict.fromkeys(grp.producers + grp.channelwise + grp.consumers))

    def count(self, unit: int, level: float) -> int:
        return round_channels(level * self.sizes[unit], self.multiple, self.sizes[unit])

    def level(self, state: PruneState, unit: int) -> float:
        return len(state.kept[unit]) / self.sizes[unit]

    def min_level(self, unit: int) -> float:
        return self.count(unit, 0.0) / self.sizes[unit]

    def snap(self, unit: int, level: float) -> float:
        return self.count(unit, level) / self.sizes[unit]

    def graph(self, state: PruneState, override: dict | None = None) -> Graph:
        counts = {g: len(k) for g, k in state.kept.items()}
        for g, level in (override or {}).items():
            counts[g] = self.count(g, level)
        return ir_with_channels(self.energy.graph, self.structure, counts)

    def scores(self, state: PruneState, unit: int) -> torch.Tensor:
        current = Structure(state.module, self.example)
        return channel_scores(state.module, current.groups[unit])

    def kept_outputs(self, state: PruneState, node: str) -> torch.Tensor | None:
        group = self.structure.group_of_output(node)
        return state.kept[group] if group is not None else None

    def apply(self, state: PruneState, unit: int, level: float, restore: bool) -> None:
        self.apply_counts(state, {unit: self.count(unit, level)}, restore)

    def apply_counts(self, state: PruneState, counts: dict[int, int], restore: bool) -> None:
        current = Structure(state.module, self.example)
        keep = {}
        for g, n in counts.items():
            if n < len(state.kept[g]):
                keep[g] = top_channels(state.module, current.groups[g], n)
        if not keep:
            return
        remove_channels(state.module, current, keep)
        for g, idx in keep.items():
            state.kept[g] = state.kept[g][idx]
        if restore:
            consumers = [n for g in keep for n in current.groups[g].consumers]
            self.restore(state, list(dict.fromkeys(consumers)))

    def qualified_masks(self, state: PruneState) -> dict[str, torch.Tensor]:
        return {}

    def describe(self, state: PruneState, unit: int) -> dict:
        size = self.sizes[unit]
        kept = len(state.kept[unit])
        return {"unit": self.name(unit), "layers": self.ir_layers(unit), "kind": "channel", "kept": kept, "total": size,
                "removed": f"{size - kept} of {size} output channels of {', '.join(self.structure.groups[unit].producers)}"}
