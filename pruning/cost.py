"""The estimator as the pruning cost function.

A proposal is costed by editing a copy of the IR graph (weight densities, or channel counts)
and re-estimating it — never by exporting ONNX. Pruning never changes the graph's topology,
so each layer's energy depends only on the layer itself: with the default estimator, layer
energies are memoised per (frozen, hashable) Layer via ``energy.estimate_layer`` and a
proposal only pays for the layers it changed. The memo is checked once against a full
``energy.estimate`` of the base graph; on any mismatch every proposal is estimated in full.
A changed layer is searched only in the dataflow its unpruned version chose (the same seeded
search the full estimate runs for that dataflow); that can only over-estimate a proposal, and
``exact_pj`` gives the full estimate the final result reports, so a budget met by the cost
model is met by the full estimate too.
"""
from __future__ import annotations

import math
from typing import Callable

from energy.ir import Graph, Layer
from hwspecs.spec import HardwareSpec, Operand, SparseFormat, SparsityAction

EstimateFn = Callable[[Graph, HardwareSpec], object]  # returns an EnergyReport-like object


def _default_estimate(graph: Graph, spec: HardwareSpec):
    from energy import estimate

    return estimate(graph, spec)


class EnergyModel:
    """Energy of the base IR ``graph`` on ``spec`` under pruning edits.

    ``estimate_fn(graph, spec)`` defaults to ``energy.estimate``; it must return an object with
    ``total_energy_pj`` and ``layers`` (each with ``name`` and ``energy_pj``).
    """

    def __init__(self, graph: Graph, spec: HardwareSpec, estimate_fn: EstimateFn | None = None):
        self.graph = graph
        self.spec = spec
        self._estimate = estimate_fn or _default_estimate
        self._reports: dict[tuple, object] = {}
        self._layer_pj: dict[Layer, float] = {}
        self._fused: dict[str, bool] | None = None  # None: estimate every proposal in full
        self._dataflow: dict[str, object] = {}  # layer name -> the dataflow its unpruned version maps best to
        self.calls = 0
        if estimate_fn is None:
            self._fused = self._fused_flags()

    def _fused_flags(self) -> dict[str, bool] | None:
        """Which elementwise layers the estimator fuses into their producer (pruning keeps the
        topology, so the base graph's flags hold for every proposal). Memoises the base graph's
        layer energies and each MAC layer's dataflow, and checks that a non-MAC layer estimated
        on its own gives what the full estimate gave it (None if not: estimate in full)."""
        from energy import estimate_layer
        from energy.estimator import fused_into_producer

        base = self.report(self.graph)
        self._dataflow = {le.name: le.mapping.dataflow for le in base.layers if getattr(le, "mapping", None) is not None}
        fused = {layer.name: fused_into_producer(layer, self.graph) for layer in self.graph if not layer.is_mac}
        for layer, le in zip(self.graph, base.layers):
            if not layer.is_mac:
                alone = float(estimate_layer(layer, self.spec, fused=fused[layer.name]).energy_pj)
                if not math.isclose(alone, float(le.energy_pj), rel_tol=1e-9, abs_tol=1e-9):
                    return None
            self._layer_pj[layer] = float(le.energy_pj)
        return fused

    def report(self, graph: Graph):
        """The full estimator report of ``graph`` (cached)."""
        key = tuple((l.name, l.dims, l.weight_density, l.input_density, l.input_elements, l.output_elements) for l in graph)
        if key not in self._reports:
            self.calls += 1
            self._reports[key] = self._estimate(graph, self.spec)
        return self._reports[key]

    def _layer_energy(self, layer: Layer) -> float:
        if layer not in self._layer_pj:
            from energy import estimate_layer

            # A pruned layer is searched only in the dataflow its unpruned version chose (a third of
            # the work on a 3-dataflow spec). That can only over-estimate a proposal; the result's
            # final energies come from full estimates (exact_pj), so a met budget stays met.
            fused = False if layer.is_mac else self._fused[layer.name]
            dataflow = self._dataflow.get(layer.name) if layer.is_mac else None
            self._layer_pj[layer] = float(estimate_layer(layer, self.spec, fused=fused, dataflow=dataflow).energy_pj)
        return self._layer_pj[layer]

    def per_layer_pj(self, graph: Graph) -> dict[str, float]:
        """Energy (pJ) of each layer of ``graph``, in graph order."""
        if self._fused is not None:
            return {layer.name: self._layer_energy(layer) for layer in graph}
        return {le.name: float(le.energy_pj) for le in self.report(graph).layers}

    def total_pj(self, graph: Graph) -> float:
        if self._fused is not None:
            return float(sum(self.per_layer_pj(graph).values()))
        return float(self.report(graph).total_energy_pj)

    def exact_per_layer_pj(self, graph: Graph) -> dict[str, float]:
        """Per-layer energy from a full estimate (every dataflow the spec supports)."""
        return {le.name: float(le.energy_pj) for le in self.report(graph).layers}

    def exact_pj(self, graph: Graph) -> float:
        return float(self.report(graph).total_energy_pj)

    def with_densities(self, densities: dict[str, float]) -> Graph:
        return self.graph.with_densities(weight=densities) if densities else self.graph

    @property
    def exploits_weight_sparsity(self) -> bool:
        """Whether zero weights can save energy on this spec (gated, skipped or compressed)."""
        sparsity = self.spec.operand_sparsity(Operand.WEIGHTS)
        return sparsity.action is not SparsityAction.NONE or sparsity.format is not SparseFormat.NONE
