"""Turn an energy budget into a number of nonzero weights for sparse training.

The estimator is the cost function: the uniform weight density at which the model's estimated
energy meets the budget (bisection over density; energy never rises as density falls), times
the number of prunable weights."""
from __future__ import annotations

from energy import estimate
from energy.ir import Graph
from hwspecs.spec import HardwareSpec
from pruning.budget import Budget, BudgetError


def density_for_energy(graph: Graph, spec: HardwareSpec, budget: Budget, *, tolerance: float = 1e-3) -> float:
    """The largest uniform weight density (to ``tolerance``) whose estimate meets ``budget``.

    Raises BudgetError when even density 0 misses it (the spec does not reward weight sparsity,
    or the activations alone cost more than the budget)."""
    weighted = [l.name for l in graph.mac_layers() if l.weight is not None]

    def energy(density: float) -> float:
        return estimate(graph.with_densities(weight={n: density for n in weighted}), spec).total_energy_pj

    dense = energy(1.0)
    target = budget.target_pj(dense)
    if target >= dense:
        return 1.0
    floor = energy(0.0)
    if floor > target:
        raise BudgetError(f"budget {budget} ({target:.4g} pJ) is below the model's energy with every weight zero on "
                          f"{spec.name} ({floor:.4g} pJ): sparse weights cannot meet it")
    lo, hi = 0.0, 1.0
    while hi - lo > tolerance:
        mid = (lo + hi) / 2
        if energy(mid) <= target:
            lo = mid
        else:
            hi = mid
    return lo
