"""The estimator as the pruning cost function.

A proposal is costed by editing a copy of the IR graph (weight densities, or channel counts)
and re-estimating it — never by exporting ONNX. Reports are cached per edited graph.
"""
from __future__ import annotations

from typing import Callable

from energy.ir import Graph
from hwspecs.spec import HardwareSpec, Operand, SparsityAction

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
        self._cache: dict[tuple, object] = {}
        self.calls = 0

    def report(self, graph: Graph):
        key = tuple((l.name, l.dims, l.weight_density, l.input_density, l.input_elements, l.output_elements) for l in graph)
        if key not in self._cache:
            self.calls += 1
            self._cache[key] = self._estimate(graph, self.spec)
        return self._cache[key]

    def total_pj(self, graph: Graph) -> float:
        return float(self.report(graph).total_energy_pj)

    def per_layer_pj(self, graph: Graph) -> dict[str, float]:
        return {le.name: float(le.energy_pj) for le in self.report(graph).layers}

    def with_densities(self, densities: dict[str, float]) -> Graph:
        return self.graph.with_densities(weight=densities) if densities else self.graph

    @property
    def exploits_weight_sparsity(self) -> bool:
        """Whether zero weights save energy on this spec (gated or skipped)."""
        return self.spec.operand_sparsity(Operand.WEIGHTS).action is not SparsityAction.NONE or \
            self.spec.operand_sparsity(Operand.WEIGHTS).format.value != "none"
