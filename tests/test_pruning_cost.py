"""The estimator as the pruning cost function (pruning.cost.EnergyModel): per-layer memoised
energies add up to the full estimate, and a proposal is never under-estimated, so a budget the
cost model says is met is met by a full estimate of the pruned model too."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from energy import estimate, load_model
from hwspecs import load_spec
from pruning.cost import EnergyModel

MODEL = Path(__file__).resolve().parent.parent / "examples" / "models" / "tiny_resnet.onnx"


@pytest.fixture(scope="module")
def graph():
    return load_model(MODEL).graph


@pytest.mark.parametrize("spec_name", ["eyeriss", "mobile-cpu"])
def test_base_graph_costs_what_the_full_estimate_says(graph, spec_name):
    spec = load_spec(spec_name)
    model = EnergyModel(graph, spec)
    full = estimate(graph, spec)
    assert model.total_pj(graph) == pytest.approx(full.total_energy_pj, rel=1e-12)
    assert model.per_layer_pj(graph) == pytest.approx({le.name: le.energy_pj for le in full.layers}, rel=1e-12)
    # BatchNorm and ReLU right after their producer are applied as it writes; the residual Add
    # reads two tensors, and pooling/reshapes are never fused.
    unfused = {"block1/add", "block2/add", "pool", "flatten", "output"}
    assert model._fused == {layer.name: layer.name not in unfused for layer in graph if not layer.is_mac}


def _narrower(graph, fraction: float):
    """Every conv keeps ``fraction`` of its output channels (only the layers' own bounds change)."""
    changed = []
    for layer in graph.mac_layers():
        d = layer.dims
        if d.G == 1 and d.M > 2:
            changed.append(layer.replace(dims=dataclasses.replace(d, M=max(1, round(d.M * fraction)))))
    return graph.with_layers(changed)


@pytest.mark.parametrize("spec_name", ["eyeriss", "edge-tpu-int8"])
@pytest.mark.parametrize("fraction", [0.75, 0.4])
def test_a_proposal_is_never_under_estimated(graph, spec_name, fraction):
    spec = load_spec(spec_name)
    model = EnergyModel(graph, spec)
    narrower = _narrower(graph, fraction)
    sparser = model.with_densities({layer.name: fraction for layer in graph.mac_layers()})
    for edited, saves in ((narrower, True), (sparser, model.exploits_weight_sparsity)):
        exact = model.exact_pj(edited)
        assert exact == pytest.approx(estimate(edited, spec).total_energy_pj, rel=1e-12)
        assert model.total_pj(edited) >= exact * (1 - 1e-12)
        assert (model.total_pj(edited) < model.total_pj(graph)) == saves
