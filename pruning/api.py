"""prune(): prune a model to an energy budget on a hardware spec, and the result it returns.

    from pruning.api import prune
    result = prune("model.onnx", "eyeriss", budget="40%", train=(x, y), granularity="channel")
    result.save("pruned.onnx")
    print(result.to_markdown())
"""
from __future__ import annotations

import inspect
import sys
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping

import onnx
import torch
from torch import nn

from energy.errors import DataError, JoulecutWarning, ModelError
from energy.ir import Graph
from hwspecs.spec import HardwareSpec
from pruning import methods
from pruning.budget import Budget, BudgetError, parse_budget
from pruning.cost import EnergyModel, EstimateFn
from pruning.data import check_data
from pruning.export import export_onnx, to_onnx_model
from pruning.onnx_torch import OnnxModule
from pruning.train import accuracy, as_tensors
from pruning.units import ChannelUnits, PruneState, WeightUnits

GRANULARITIES = ("weight", "channel", "block")
# Where a run's wall time goes (PruningResult.time_s): fine-tuning, the energy cost model,
# making proposals (copies, masks, least-squares restoration), accuracy evaluation, the rest.
TIME_PHASES = ("fine-tuning", "estimation", "proposals", "evaluation", "other")


@dataclass(frozen=True)
class LayerPlan:
    """What was removed from one unit (a layer, or a channel group) and why."""

    unit: str
    layers: tuple[str, ...]
    kind: str
    kept: int
    total: int
    removed: str
    reason: str


@dataclass(frozen=True)
class PruningResult:
    """A pruned model and how it got there. Energies in pJ (per inference at the IR's batch),
    accuracies in [0, 1]."""

    module: OnnxModule
    method: str
    granularity: str
    hardware: str
    budget: str | None
    target_pj: float | None
    energy_before_pj: float
    energy_after_pj: float
    layer_energy_before_pj: Mapping[str, float]
    layer_energy_after_pj: Mapping[str, float]
    accuracy_before: float
    accuracy_after: float
    plan: tuple[LayerPlan, ...]
    history: tuple[Mapping, ...]
    seed: int
    wall_time_s: float
    samples_trained: int
    graph: Graph = field(repr=False, compare=False)
    example_input: torch.Tensor = field(repr=False, compare=False)
    time_s: Mapping[str, float] = field(default_factory=dict, compare=False)  # seconds per phase, "other" included

    @property
    def energy_ratio(self) -> float:
        """energy after / energy before."""
        return self.energy_after_pj / self.energy_before_pj

    def to_onnx(self) -> onnx.ModelProto:
        return to_onnx_model(self.module, self.example_input)

    def save(self, path: str | Path, source: str | Path | None = None) -> Path:
        """Export the pruned model to ``path`` (see pruning.export.export_onnx)."""
        return export_onnx(self.module, self.example_input, path, source=source)

    def to_dict(self) -> dict:
        return {
            "method": self.method, "granularity": self.granularity, "hardware": self.hardware,
            "budget": self.budget, "target_pj": self.target_pj,
            "energy_before_pj": self.energy_before_pj, "energy_after_pj": self.energy_after_pj,
            "energy_ratio": self.energy_ratio,
            "layer_energy_before_pj": dict(self.layer_energy_before_pj),
            "layer_energy_after_pj": dict(self.layer_energy_after_pj),
            "accuracy_before": self.accuracy_before, "accuracy_after": self.accuracy_after,
            "plan": [dict(p.__dict__, layers=list(p.layers)) for p in self.plan],
            "history": [dict(h) for h in self.history],
            "seed": self.seed, "wall_time_s": self.wall_time_s, "samples_trained": self.samples_trained,
            "time_s": dict(self.time_s),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_markdown(self) -> str:
        lines = [
            f"## Pruning: {self.method}, {self.granularity} granularity, on {self.hardware}",
            "",
            f"- budget: {self.budget or 'none (accuracy-limited)'}" + (f" = {self.target_pj:.4g} pJ" if self.target_pj else ""),
            f"- energy: {self.energy_before_pj:.4g} pJ -> {self.energy_after_pj:.4g} pJ ({100 * self.energy_ratio:.1f}% of dense)",
            f"- accuracy: {self.accuracy_before:.4f} -> {self.accuracy_after:.4f}",
            f"- seed {self.seed}, {self.wall_time_s:.1f} s, {self.samples_trained} samples of fine-tuning",
        ]
        if self.time_s and self.wall_time_s > 0:
            lines.append("- time: " + ", ".join(f"{name} {s:.1f} s ({100 * s / self.wall_time_s:.0f}%)"
                                                for name, s in self.time_s.items()))
        lines += [
            "",
            "| unit | kept | removed | reason |",
            "|---|---|---|---|",
        ]
        lines += [f"| {p.unit} | {p.kept}/{p.total} | {p.removed} | {p.reason} |" for p in self.plan]
        lines += ["", "| layer | energy before (pJ) | energy after (pJ) |", "|---|---|---|"]
        for name, before in self.layer_energy_before_pj.items():
            lines.append(f"| {name} | {before:.4g} | {self.layer_energy_after_pj.get(name, 0.0):.4g} |")
        return "\n".join(lines) + "\n"


def _to_module(model, example: torch.Tensor) -> tuple[onnx.ModelProto, OnnxModule]:
    if isinstance(model, OnnxModule):
        return model.source, model
    if isinstance(model, nn.Module):
        module = OnnxModule(to_onnx_model(model, example))
        return module.source, module
    if isinstance(model, onnx.ModelProto):
        module = OnnxModule(model)
        return module.source, module
    path = Path(model)
    if not path.is_file():
        raise ModelError("no such ONNX file", file=str(path))
    from pruning.onnx_torch import onnx_to_torch

    module = onnx_to_torch(path)
    return module.source, module


def _input_shape(proto: onnx.ModelProto) -> tuple[int | None, ...]:
    inits = {t.name for t in proto.graph.initializer}
    first = next(i for i in proto.graph.input if i.name not in inits)
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in first.type.tensor_type.shape.dim)


def _progress(progress) -> Callable[[str], None]:
    if progress is None or progress is False:
        return lambda message: None
    if progress is True:
        from tqdm import tqdm

        return lambda message: tqdm.write(message, file=sys.stderr)
    return progress


def prune(
    model: nn.Module | onnx.ModelProto | str | Path,
    spec: HardwareSpec | str | Path,
    *,
    budget: str | float | Budget | None = None,
    method: str = "energy-aware",
    granularity: str = "channel",
    train=None,
    val=None,
    calib=None,
    evaluate_fn: Callable[[nn.Module], float] | None = None,
    seed: int = 0,
    allowed_drop: float = 0.01,
    finetune_epochs: float = 3.0,
    short_epochs: float = 0.3,
    channel_multiple: int = 1,
    block: tuple[int, int] = (4, 4),
    magnitude_mode: str = "global",
    restore: bool = True,
    calib_size: int = 1024,
    val_fraction: float = 0.2,
    batch: int = 1,
    progress: Callable[[str], None] | bool | None = None,
    estimate_fn: EstimateFn | None = None,
    method_options: Mapping[str, object] | None = None,
) -> PruningResult:
    """Prune ``model`` so its estimated energy on ``spec`` meets ``budget``.

    ``model``: an ONNX path or ModelProto, an OnnxModule, or any nn.Module (exported first).
    ``train``/``val``/``calib``: (x, y) arrays or an iterable of (x, y) batches; ``val`` defaults
    to a seeded ``val_fraction`` split of ``train``, ``calib`` (least-squares data) to the first
    ``calib_size`` training inputs. ``evaluate_fn(module) -> accuracy`` replaces top-1 accuracy
    on ``val``. ``budget``: '40%', '2.5mJ', a fraction, or None (energy-aware only: prune as far
    as ``allowed_drop`` allows). ``progress``: a callable taking a message, or True for tqdm.
    ``method_options``: extra keywords of the method (pruning.methods): energy-aware ``step``
    (relative level step, 0.2) and ``max_passes`` (4); budget ``initial_step`` (fraction of the
    dense energy, 0.1) and ``decay`` (0.9).

    Raises BudgetError (before any training) when the budget is malformed or below the energy
    of the model with every prunable unit at its minimum; ModelError / DataError for a model or
    data that does not fit; ValueError for an unknown method or granularity.
    """
    started = time.perf_counter()
    if method not in methods.METHODS:
        raise ValueError(f"method must be one of {', '.join(methods.METHODS)}, got {method!r}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
    parsed = parse_budget(budget) if budget is not None else None
    if parsed is None and method != "energy-aware":
        raise BudgetError(f"method {method!r} needs a budget (e.g. '40%' or '2.5mJ')")
    if train is None:
        raise DataError("prune needs training data (x, y) for calibration and fine-tuning")
    torch.manual_seed(seed)
    train_x, train_y = as_tensors(train)
    if val is None:
        from pruning.data import split

        (tx, ty), (vx, vy) = split(train_x.numpy(), train_y.numpy(), val_fraction, seed)
        train_x, train_y, val_x, val_y = map(torch.from_numpy, (tx, ty, vx, vy))
    else:
        val_x, val_y = as_tensors(val)
    calib_x = as_tensors(calib)[0] if calib is not None else train_x[:calib_size]
    example = train_x[:1]

    proto, module = _to_module(model, example)
    module = module.eval()
    shape = _input_shape(proto)
    where = module.file and f"data for {module.file}"
    for x_, y_ in ((train_x, train_y), (val_x, val_y)):  # shapes first: a wrong shape must not reach torch
        check_data(x_.numpy(), y_.numpy(), shape, int(y_.max()) + 1 if len(y_) else 1, file=where)
    with torch.no_grad():
        out = module(example)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ModelError("prune needs a classifier with one N x classes output", file=module.file)
    for x_, y_ in ((train_x, train_y), (val_x, val_y)):
        check_data(x_.numpy(), y_.numpy(), shape, out.shape[1], file=where)

    hw = spec
    if not isinstance(spec, HardwareSpec):
        from hwspecs import load_spec

        hw = load_spec(spec)
    from energy import load_model

    graph = load_model(proto, batch=batch).graph
    energy = EnergyModel(graph, hw, estimate_fn)
    base_state = PruneState(module)
    if granularity == "channel":
        units = ChannelUnits(module, energy, calib_x, example, multiple=channel_multiple)
        units.start(base_state)
    else:
        units = WeightUnits(module, energy, calib_x, block=block if granularity == "block" else None)
    state = base_state.copy()
    dense_pj = energy.total_pj(graph)
    target = parsed.target_pj(dense_pj) if parsed else None
    if not units.units():
        raise BudgetError(f"nothing to prune at {granularity} granularity in this model")
    if target is not None:
        floor_pj = energy.total_pj(units.graph(state, {u: units.min_level(u) for u in units.units()}))
        if target < floor_pj:
            hint = ""
            if granularity != "channel" and abs(floor_pj - dense_pj) <= 1e-9 * dense_pj:
                hint = f"; {hw.name} neither gates nor skips zero weights, so {granularity} sparsity saves no energy there (try channel granularity)"
            raise BudgetError(
                f"budget {parsed} = {target:.4g} pJ cannot be met on {hw.name}: even with every prunable "
                f"{'channel group' if granularity == 'channel' else 'layer'} at its minimum the model needs {floor_pj:.4g} pJ "
                f"({100 * floor_pj / dense_pj:.1f}% of the dense {dense_pj:.4g} pJ){hint}")

    if evaluate_fn is None and len(val_y) * allowed_drop < 1:  # one sample outweighs the allowed drop
        warnings.warn(f"accuracy is judged on only {len(val_y)} validation sample(s): one sample is "
                      f"{100 / max(len(val_y), 1):.2g} points, more than the allowed drop of {100 * allowed_drop:.2g}; "
                      f"pruning decisions and the reported accuracy will be noisy (give more data or a separate "
                      f"validation set)", JoulecutWarning, stacklevel=2)

    clock = methods.PhaseClock()
    evaluate = clock.timed("evaluation", evaluate_fn or (lambda m: accuracy(m, val_x, val_y)))
    ctx = methods.Context(units=units, evaluate=evaluate, train_x=train_x, train_y=train_y, seed=seed,
                          finetune_epochs=finetune_epochs, short_epochs=short_epochs, allowed_drop=allowed_drop,
                          restore=restore, report=_progress(progress), clock=clock)
    accuracy_before = evaluate(state.module)
    ctx.log(state, "dense", accuracy=accuracy_before)
    options = dict(method_options or {})
    function = {"magnitude": methods.magnitude, "energy-aware": methods.energy_aware, "budget": methods.budget}[method]
    allowed = [p for p in inspect.signature(function).parameters if p not in ("ctx", "state", "target_pj", "mode")]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"method_options for {method!r} must be among {allowed}, got {unknown}")
    if method == "magnitude":
        state = methods.magnitude(ctx, state, target, mode=magnitude_mode, **options)
    elif method == "energy-aware":
        state = methods.energy_aware(ctx, state, target, **options)
    else:
        state = methods.budget(ctx, state, target, **options)

    final_graph = units.measured_graph(state)
    reason = {"magnitude": f"{magnitude_mode} magnitude threshold meeting the budget",
              "energy-aware": "energy-ordered magnitude steps with least-squares restoration",
              "budget": "NetAdapt step: the most accurate proposal meeting the step's target"}[method]
    plan = []
    for u in units.units():
        d = units.describe(state, u)
        why = reason if d["kept"] < d["total"] else "kept: pruning it cost too much accuracy or was not needed"
        plan.append(LayerPlan(str(d["unit"]), tuple(d["layers"]), d["kind"], d["kept"], d["total"], d["removed"], why))
    state.module.eval()
    accuracy_after = evaluate(state.module)
    with clock.phase("estimation"):  # the result's energies: full estimates, every dataflow
        after_pj = energy.exact_pj(final_graph)
        before_layers, after_layers = energy.exact_per_layer_pj(graph), energy.exact_per_layer_pj(final_graph)
    wall = time.perf_counter() - started
    phases = {name: clock.seconds.get(name, 0.0) for name in TIME_PHASES[:-1]}
    phases["other"] = max(0.0, wall - sum(phases.values()))  # checks, ONNX -> torch, unit setup
    return PruningResult(
        module=state.module, method=method, granularity=granularity, hardware=hw.name,
        budget=str(parsed) if parsed else None, target_pj=target,
        energy_before_pj=dense_pj, energy_after_pj=after_pj,
        layer_energy_before_pj=MappingProxyType(before_layers), layer_energy_after_pj=MappingProxyType(after_layers),
        accuracy_before=accuracy_before, accuracy_after=accuracy_after,
        plan=tuple(plan), history=tuple(MappingProxyType(h) for h in ctx.history), seed=seed,
        wall_time_s=wall, samples_trained=ctx.samples_trained, time_s=MappingProxyType(phases),
        graph=final_graph, example_input=example,
    )
