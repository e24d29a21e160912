"""validate(): run a (pruned) model on joulecut's kernels and hold the estimate against measurement.

Per weight layer it reports the MACs the estimator counts for weight sparsity (dense MACs x
weight density, what a zero-skipping datapath executes) next to the MACs the kernels executed
(equal for CSR; block and channel formats also execute the zeros they store), the estimated
energy, the measured time on the kernels and with every layer dense, and the speed-up. Across
layers it gives the Spearman rank correlation between estimated energy saving and measured time
saving, both against the dense execution of the same shapes.
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass

import numpy as np
import onnx

from energy import OpKind, estimate, load_model
from energy.errors import DataError
from kernels.runner import GraphRunner

OUTPUT_RTOL = 1e-4


class ValidationError(RuntimeError):
    """The kernels' outputs do not match onnxruntime's: a kernel bug, not a user error."""


@dataclass(frozen=True)
class LayerValidation:
    name: str
    op: str
    format: str
    estimated_macs: int  # dense MACs x weight density
    executed_macs: int
    estimated_energy_pj: float
    dense_energy_pj: float  # the same layer with dense weights
    kernel_s: float
    dense_s: float

    @property
    def speedup(self) -> float:
        return self.dense_s / self.kernel_s if self.kernel_s > 0 else float("inf")


@dataclass(frozen=True)
class ValidationReport:
    model: str
    hardware: str
    layers: tuple[LayerValidation, ...]
    max_rel_error: float | None  # kernels vs onnxruntime, relative to max |reference output|; None: not runnable there
    kernel_s: float
    dense_s: float
    onnxruntime_s: float | None
    rank_correlation: float | None  # None with fewer than 3 weight layers or no spread
    load_average: tuple[float, float, float]

    def table(self) -> str:
        head = ["layer", "format", "est MACs", "run MACs", "match", "est energy", "kernel ms", "dense ms", "speed-up"]
        rows = []
        for l in self.layers:
            if l.estimated_macs == l.executed_macs:
                match = "yes"
            elif l.format == "hashed":
                match = "~ (active sets vary)"
            elif l.format == "reuse":
                match = "~ (clusters vary)"
            else:
                match = "stores zeros" if l.executed_macs > l.estimated_macs else "NO"
            rows.append([l.name, l.format, str(l.estimated_macs), str(l.executed_macs), match,
                         f"{l.estimated_energy_pj / 1e6:.3f} uJ", f"{l.kernel_s * 1e3:.3f}", f"{l.dense_s * 1e3:.3f}",
                         f"{l.speedup:.2f}x"])
        widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head] + rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        rc = (f"{self.rank_correlation:.3f}" if self.rank_correlation is not None
              else "n/a (fewer than 3 weight layers, or no spread in one of the savings)")
        if self.max_rel_error is None:
            checked = "outputs vs onnxruntime: not checked (onnxruntime cannot run joulecut's custom ops)"
            ort_time = ""
        else:
            checked = f"outputs vs onnxruntime: max relative error {self.max_rel_error:.2e} (limit {OUTPUT_RTOL:g})"
            ort_time = f", onnxruntime {self.onnxruntime_s * 1e3:.3f} ms ({self.onnxruntime_s / self.kernel_s:.2f}x)"
        lines += [
            "",
            checked,
            f"whole model: kernels {self.kernel_s * 1e3:.3f} ms, all-dense {self.dense_s * 1e3:.3f} ms "
            f"({self.dense_s / self.kernel_s:.2f}x){ort_time}",
            f"rank correlation (estimated energy saving vs measured time saving, per layer): {rc}",
            f"load average {self.load_average[0]:.2f} {self.load_average[1]:.2f} {self.load_average[2]:.2f} "
            "(times are medians; the machine may be shared)",
        ]
        return "\n".join(lines)


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None when undefined."""
    if len(a) < 3:
        return None

    def ranks(v: list[float]) -> np.ndarray:
        v = np.asarray(v, dtype=float)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=float)
        for value in np.unique(v):
            tie = v == value
            r[tie] = r[tie].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def _inputs(result, data: str | os.PathLike | None, seed: int) -> dict[str, np.ndarray]:
    """One inference's inputs: the first batch of ``data`` (the model's static batch size, or up
    to 64 samples where the batch is symbolic), else seeded random inputs."""
    if data is not None:
        from energy.activations import load_npz_inputs

        feeds = load_npz_inputs(data, result)
        batch = {i.name: i.type.tensor_type.shape.dim[0].dim_value if i.type.tensor_type.shape.dim else 0
                 for i in result.model.graph.input}
        return {k: v[: batch.get(k) or 64] if v.ndim else v for k, v in feeds.items()}
    feeds = {}
    rng = np.random.default_rng(seed)
    inits = {t.name for t in result.model.graph.initializer}
    for inp in result.model.graph.input:
        if inp.name in inits:
            continue
        shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        if any(s <= 0 for s in shape):
            raise DataError(f"input '{inp.name}' has no static shape; pass --data or --batch")
        feeds[inp.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _interleaved_times(runners: dict[str, GraphRunner], feeds: dict, repeats: int, session=None
                       ) -> tuple[dict[str, float], dict[str, dict[str, float]], float | None]:
    """Median whole-model and per-layer seconds of each runner (and of onnxruntime's ``session``),
    timed in rounds that call each once in turn after one warm-up call each: a shared machine's
    drift and each side's cold first call hit every side alike, not whichever is timed first."""
    calls = {name: runner.run for name, runner in runners.items()}
    if session is not None:
        calls["onnxruntime"] = lambda f: session.run(None, f)
    for call in calls.values():
        call(feeds)
    totals = {k: [] for k in calls}
    per_layer = {k: {} for k in runners}
    for _ in range(repeats):
        for name, call in calls.items():
            t = time.perf_counter()
            call(feeds)
            elapsed = time.perf_counter() - t
            if name in runners:  # the runners' own step times leave out the Python call around them
                elapsed = sum(l.seconds for l in runners[name].last_run)
                for l in runners[name].last_run:
                    per_layer[name].setdefault(l.name, []).append(l.seconds)
            totals[name].append(elapsed)
    medians = {k: statistics.median(v) for k, v in totals.items()}
    layers = {k: {n: statistics.median(v) for n, v in d.items()} for k, d in per_layer.items()}
    return medians, layers, medians.get("onnxruntime")


def validate(model: str | os.PathLike, spec, *, data: str | os.PathLike | None = None, repeats: int = 15,
             threads: int = 1, seed: int = 0, batch: int = 1) -> ValidationReport:
    """Run ``model`` on the kernels and on onnxruntime and compare with the estimate on ``spec``.
    ``batch`` fixes a symbolic batch dimension (one inference = one batch)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads, user_api="blas"):  # BLAS threads beside OpenMP ones thrash
        return _validate(model, spec, data, repeats, threads, seed, batch)


def _validate(model, spec, data, repeats: int, threads: int, seed: int, batch: int) -> ValidationReport:
    import onnxruntime as ort

    result = load_model(model, batch=batch)
    feeds = _inputs(result, data, seed)
    proto = onnx.load(os.fspath(model))
    kernels, dense = GraphRunner(proto, mode="auto", threads=threads), GraphRunner(proto, mode="dense", threads=threads)
    got = kernels.run(feeds)
    executed = {l.name: (l.format, l.macs_executed) for l in kernels.last_run if l.dense_macs}
    error, session = None, None  # no onnxruntime for a graph with joulecut's own nodes
    if not any(n.domain == "joulecut" for n in proto.graph.node):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        reference = session.run(None, feeds)
        scale = max(float(np.abs(r).max()) for r in reference) or 1.0
        error = max(float(np.abs(g - r).max()) for g, r in zip(got, reference)) / scale
        if error > OUTPUT_RTOL:
            raise ValidationError(f"kernel outputs differ from onnxruntime: max relative error {error:.2e}")
    totals, layers, ort_time = _interleaved_times({"kernels": kernels, "dense": dense}, feeds, repeats, session)
    kernel_total, kernel_layer = totals["kernels"], layers["kernels"]
    dense_total, dense_layer = totals["dense"], layers["dense"]

    report = estimate(result.graph, spec)
    dense_graph = result.graph.with_densities(weight={l.name: 1.0 for l in result.graph.mac_layers()})
    dense_report = estimate(dense_graph, spec)
    rows = []
    for layer in result.graph.mac_layers():
        if layer.name not in executed:
            continue
        fmt, run_macs = executed[layer.name]
        if layer.op is OpKind.HASHED:  # the estimate's active-set MACs, from the calibration active fraction
            d = layer.dims
            estimated = report.layer(layer.name).effective_macs - d.N * layer.hash_tables * layer.hash_bits * d.C
        elif layer.op is OpKind.REUSE:  # hashing + cluster ratio x MACs, the ratio from calibration inputs
            estimated = report.layer(layer.name).effective_macs
        else:
            estimated = layer.macs * layer.weight_density
        rows.append(LayerValidation(
            name=layer.name, op=layer.onnx_op, format=fmt,
            estimated_macs=int(round(estimated)), executed_macs=run_macs,
            estimated_energy_pj=report.layer(layer.name).energy_pj,
            dense_energy_pj=dense_report.layer(layer.name).energy_pj,
            kernel_s=kernel_layer[layer.name], dense_s=dense_layer[layer.name]))
    energy_saving = [1 - r.estimated_energy_pj / r.dense_energy_pj for r in rows]
    time_saving = [1 - r.kernel_s / r.dense_s for r in rows]
    return ValidationReport(
        model=result.graph.name, hardware=report.hardware, layers=tuple(rows), max_rel_error=error,
        kernel_s=kernel_total, dense_s=dense_total, onnxruntime_s=ort_time,
        rank_correlation=spearman(energy_saving, time_saving), load_average=os.getloadavg())
