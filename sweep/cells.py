"""One cell of a sweep: estimate, prune (with fine-tuning), export, validate; timed per phase.

``run_cell(job)`` runs in a worker (a process of the pool, a Ray task, or the caller's process)
and never raises for an ordinary error: a failed cell comes back as a result with ``status``
``failed`` and the error, so the other cells go on. KeyboardInterrupt is not caught.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from sweep.config import Cell

PHASES = ("load", "estimate", "prune", "export", "validate")
VALIDATE_SAMPLES = 64  # inputs compared between onnxruntime and torch
KERNEL_REPEATS = 3  # timed runs of the test set on the kernels (medians)


@dataclass(frozen=True)
class CellJob:
    """Everything a worker needs for one cell (picklable; paths absolute)."""

    cell: Cell
    onnx_path: str
    train_path: str
    test_path: str
    spec: str
    prune_options: tuple[tuple[str, Any], ...]
    validate: bool
    out_dir: str
    fingerprint: str


@dataclass(frozen=True)
class CellResult:
    """What a cell produced. Energies in pJ per inference (batch 1), accuracies in [0, 1] on the
    model's test set in onnxruntime; ``levels_pj`` / ``dense_levels_pj`` are the energy by memory
    level (and ``MAC`` for compute) after / before pruning. With validation, ``max_abs_diff`` is
    onnxruntime vs torch on the pruned model and ``kernel_rel_error`` joulecut's kernels vs
    onnxruntime (pruning.validate). ``timings_s``: seconds per phase; ``measured_s``: median
    whole-model times of the pruned model on the kernels, dense on the kernels, and onnxruntime
    (neither enters comparisons or the results table: they are not deterministic)."""

    model: str
    device: str
    budget: str
    method: str
    granularity: str
    seed: int
    fingerprint: str
    status: str  # "ok" or "failed"
    error: str = ""
    dense_energy_pj: float | None = None
    energy_pj: float | None = None
    target_pj: float | None = None
    dense_accuracy: float | None = None
    accuracy: float | None = None
    samples_trained: int = 0
    onnx_bytes: int | None = None
    onnx: str = ""
    max_abs_diff: float | None = None
    kernel_rel_error: float | None = None
    dense_levels_pj: dict[str, float] = field(default_factory=dict)
    levels_pj: dict[str, float] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict, compare=False)
    measured_s: dict[str, float] = field(default_factory=dict, compare=False)

    @property
    def cell(self) -> Cell:
        return Cell(self.model, self.device, self.budget, self.method, self.granularity, self.seed)

    @property
    def key(self) -> str:
        return self.cell.key

    @property
    def slug(self) -> str:
        return self.cell.slug

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def energy_ratio(self) -> float | None:
        if self.energy_pj is None or not self.dense_energy_pj:
            return None
        return self.energy_pj / self.dense_energy_pj

    def to_dict(self, timings: bool = True) -> dict:
        d = asdict(self)
        d["key"] = self.key
        if not timings:
            d.pop("timings_s")
            d.pop("measured_s")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CellResult":
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in names})

    def row(self) -> dict[str, Any]:
        """One row of the results table (deterministic: no times)."""
        row = {
            "key": self.key, "model": self.model, "device": self.device, "budget": self.budget,
            "method": self.method, "granularity": self.granularity, "seed": self.seed, "status": self.status,
            "dense_energy_pj": self.dense_energy_pj, "energy_pj": self.energy_pj,
            "energy_ratio": None if self.energy_ratio is None else round(self.energy_ratio, 6),
            "target_pj": self.target_pj, "dense_accuracy": self.dense_accuracy, "accuracy": self.accuracy,
            "samples_trained": self.samples_trained, "onnx_bytes": self.onnx_bytes,
            "max_abs_diff": None if self.max_abs_diff is None else float(f"{self.max_abs_diff:.2e}"),
            "kernel_rel_error": None if self.kernel_rel_error is None else float(f"{self.kernel_rel_error:.2e}"),
        }
        row.update({f"dense_{k}_pj": v for k, v in self.dense_levels_pj.items()})
        row.update({f"{k}_pj": v for k, v in self.levels_pj.items()})
        row["error"] = self.error
        return row


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


CODE_PACKAGES = ("energy", "hwspecs", "pruning", "kernels", "sweep")
_CODE_SUFFIXES = (".py", ".pyx", ".h", ".yaml")


@lru_cache(maxsize=1)
def code_digest() -> str:
    """A hash of joulecut's own source (the packages a cell runs, built-in specs included), so
    that a stored cell is recomputed after the code that produced it changed."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for package in CODE_PACKAGES:
        for path in sorted((root / package).rglob("*")):
            if path.suffix in _CODE_SUFFIXES and path.is_file():
                h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def fingerprint(cell: Cell, digests: dict[str, str], prune_options, validate: bool) -> str:
    """A hash of everything that decides a cell's result (its key, seed, the input files'
    contents, the options, joulecut's own code); a stored result is reused only if this
    matches. A dense cell neither prunes nor compares torch with onnxruntime, so those options
    do not enter it."""
    if cell.is_dense:
        prune_options, validate = (), False
    payload = json.dumps({"cell": asdict(cell), "files": digests, "prune": [list(kv) for kv in prune_options],
                          "validate": validate, "code": code_digest()}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@contextmanager
def _timed(timings: dict[str, float], phase: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[phase] = timings.get(phase, 0.0) + time.perf_counter() - start


def _accuracy(path: str | Path, x, y) -> float:
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})[0]
    return float((logits.argmax(axis=1) == y).mean())


def _with_batch(path: Path, batch: int, out: Path) -> Path:
    """A copy of ONNX ``path`` whose symbolic batch dims are ``batch`` (pruning.validate imports
    the model without a batch option, so a symbolic batch would stop it)."""
    import onnx

    model = onnx.load(str(path))
    inits = {t.name for t in model.graph.initializer}
    for value in [*(i for i in model.graph.input if i.name not in inits), *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch
    onnx.save(model, str(out))
    return out


def run_cell(job: CellJob) -> CellResult:
    """Run one cell (see module doc). Sets torch to one thread in this process."""
    started = time.perf_counter()
    timings: dict[str, float] = {}
    cell = job.cell
    base = dict(model=cell.model, device=cell.device, budget=cell.budget, method=cell.method,
                granularity=cell.granularity, seed=cell.seed, fingerprint=job.fingerprint)
    try:
        values = _run(job, timings)
        status, error = "ok", ""
    except Exception as exc:  # noqa: BLE001 - a failed cell is reported, the sweep goes on
        values, status = {}, "failed"
        last = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        where = f" (at {Path(last.filename).name}:{last.lineno})" if last else ""
        error = f"{type(exc).__name__}: {exc}{where}"
    timings["total"] = time.perf_counter() - started
    return CellResult(**base, status=status, error=error, timings_s=timings, **values)


def _run(job: CellJob, timings: dict[str, float]) -> dict[str, Any]:
    import torch

    from energy import estimate, load_model
    from hwspecs import load_spec
    from pruning.data import load_npz

    torch.set_num_threads(1)
    cell = job.cell
    with _timed(timings, "load"):
        spec = load_spec(job.spec)
        x_test, y_test = load_npz(job.test_path)
    with _timed(timings, "estimate"):
        dense = estimate(load_model(job.onnx_path, batch=1).graph, spec)
    values: dict[str, Any] = {"dense_energy_pj": float(dense.total_energy_pj),
                              "dense_levels_pj": {k: float(v) for k, v in dense.level_totals_pj().items()}}
    with _timed(timings, "validate"):
        values["dense_accuracy"] = _accuracy(job.onnx_path, x_test, y_test)
    if cell.is_dense:
        values.update(energy_pj=values["dense_energy_pj"], levels_pj=dict(values["dense_levels_pj"]),
                      accuracy=values["dense_accuracy"], onnx_bytes=Path(job.onnx_path).stat().st_size)
        return values

    from pruning.api import prune
    from pruning.export import verify_onnx

    with _timed(timings, "load"):
        x, y = load_npz(job.train_path)
    with _timed(timings, "prune"):
        result = prune(job.onnx_path, spec, budget=cell.budget, method=cell.method, granularity=cell.granularity,
                       train=(x, y), seed=cell.seed, **dict(job.prune_options))
    timings.update({f"prune.{phase}": s for phase, s in result.time_s.items()})
    with _timed(timings, "export"):
        out = Path(job.out_dir) / "onnx" / f"{cell.slug}.onnx"
        path = result.save(out, source=job.onnx_path)
    with _timed(timings, "estimate"):
        pruned = estimate(load_model(path, batch=1).graph, spec)
    with _timed(timings, "validate"):
        values["accuracy"] = _accuracy(path, x_test, y_test)
        if job.validate:
            from pruning.validate import validate

            values["max_abs_diff"] = verify_onnx(path, result.module, torch.from_numpy(x_test[:VALIDATE_SAMPLES]))
            with tempfile.TemporaryDirectory() as tmp:
                static = _with_batch(path, len(x_test), Path(tmp) / path.name)
                check = validate(static, spec, data=job.test_path, repeats=KERNEL_REPEATS, threads=1, seed=cell.seed)
            values["kernel_rel_error"] = float(check.max_rel_error)
            values["measured_s"] = {"kernels": check.kernel_s, "kernels_dense": check.dense_s,
                                    "onnxruntime": check.onnxruntime_s}
    values.update(energy_pj=float(pruned.total_energy_pj), target_pj=result.target_pj,
                  levels_pj={k: float(v) for k, v in pruned.level_totals_pj().items()},
                  samples_trained=int(result.samples_trained), onnx_bytes=path.stat().st_size,
                  onnx=str(Path("onnx") / path.name))
    return values
