"""Run a sweep's cells on a process pool (default), in this process (``jobs=1``) or on Ray.

Each finished cell is written atomically to ``<output>/cells/<slug>.json`` as it finishes; a
re-run with ``resume=True`` reuses every stored cell whose fingerprint (key, seed, input file
contents, options, joulecut's own source code) still matches and computes only the rest. A failed cell is stored and
reported, the others go on; failed cells are computed again on resume.
"""
from __future__ import annotations

import importlib.util
import multiprocessing
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from sweep.cells import PHASES, CellJob, CellResult, file_digest, fingerprint, run_cell
from sweep.config import SweepConfig, load_config
from sweep.errors import SweepBackendError, SweepOutputError
from sweep.models import prepare_models
from sweep.store import CellStore, atomic_write_text, results_csv, results_json, timings_csv

CellFn = Callable[[CellJob], CellResult]


@dataclass(frozen=True)
class SweepResult:
    """The cells' results in config order, what this call computed and reused, and its times (s)."""

    config: SweepConfig
    output: Path
    results: tuple[CellResult, ...]
    computed: tuple[str, ...]
    reused: tuple[str, ...]
    backend: str
    jobs: int
    prepare_s: float
    wall_s: float
    report: object | None = None  # sweep.report.ReportData when a report was written

    @property
    def failed(self) -> tuple[CellResult, ...]:
        return tuple(r for r in self.results if not r.ok)

    def summary(self) -> str:
        """A few lines for a terminal: counts, time, where the report is, each failed cell."""
        ok = len(self.results) - len(self.failed)
        lines = [f"{len(self.results)} cells: {ok} ok, {len(self.failed)} failed "
                 f"(computed {len(self.computed)}, reused {len(self.reused)}) in {self.wall_s:.1f} s "
                 f"on {self.backend} ({self.jobs} worker{'s' if self.jobs != 1 else ''})",
                 f"table: {self.output / 'results.csv'}"]
        if self.report is not None:
            lines.append(f"report: {self.report.path}")
        lines += [f"failed: {r.key}: {r.error}" for r in self.failed]
        return "\n".join(lines)

    def phase_totals_s(self) -> dict[str, float]:
        """Seconds per phase summed over the cells computed in this call (``total`` too)."""
        computed = set(self.computed)
        totals = {p: 0.0 for p in (*PHASES, "total")}
        for r in self.results:
            if r.key in computed:
                for p in totals:
                    totals[p] += r.timings_s.get(p, 0.0)
        return totals

    def orchestration_s(self) -> float:
        """Wall time not spent inside cells, preparing models or writing the report: the
        sweep's own overhead (worker start-up, scheduling, idle workers at the end), as
        wall - prepare - report - (sum of cell times) / workers."""
        report_s = getattr(self.report, "wall_s", 0.0) if self.report is not None else 0.0
        return self.wall_s - self.prepare_s - report_s - self.phase_totals_s()["total"] / max(1, self.jobs)


def default_output(config: SweepConfig) -> Path:
    """Where a sweep writes when neither the caller nor the config names a folder:
    ``<config folder>/<config stem>_sweep``."""
    file = Path(config.file)
    return file.resolve().parent / f"{file.stem}_sweep"


def _failed(job: CellJob, exc: BaseException) -> CellResult:
    c = job.cell
    return CellResult(model=c.model, device=c.device, budget=c.budget, method=c.method, granularity=c.granularity,
                      seed=c.seed, fingerprint=job.fingerprint, status="failed",
                      error=f"{type(exc).__name__}: {exc} (the cell function raised)")


def _serial(pending: list[CellJob], cell_fn: CellFn) -> Iterator[CellResult]:
    for job in pending:
        try:
            result = cell_fn(job)
        except Exception as exc:  # noqa: BLE001 - as in the pool: report the cell, go on
            result = _failed(job, exc)
        yield result


def _pool(pending: list[CellJob], cell_fn: CellFn, jobs: int) -> Iterator[CellResult]:
    # spawn: a forked child of a process that has started torch's threads can deadlock.
    executor = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))
    futures = {executor.submit(cell_fn, job): job for job in pending}
    try:
        remaining = set(futures)
        while remaining:
            done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=lambda f: pending.index(futures[f])):
                try:
                    yield future.result()
                except Exception as exc:  # noqa: BLE001 - e.g. BrokenProcessPool: report the cell
                    yield _failed(futures[future], exc)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _call(cell_fn: CellFn, job: CellJob) -> CellResult:
    return cell_fn(job)


def _ray(pending: list[CellJob], cell_fn: CellFn, address: str, jobs: int) -> Iterator[CellResult]:
    import ray

    started = False
    if not ray.is_initialized():
        try:
            if address == "local":
                ray.init(num_cpus=jobs, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
        except Exception as exc:  # noqa: BLE001 - ray raises ConnectionError, RuntimeError, ...
            raise SweepBackendError(f"cannot start or reach Ray at {address!r}: {exc}") from exc
        started = True
    refs: dict = {}
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(_call)
        refs = {task.remote(cell_fn, job): job for job in pending}
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            job = refs.pop(done[0])
            try:
                yield ray.get(done[0])
            except Exception as exc:  # noqa: BLE001 - a task that died: report the cell
                yield _failed(job, exc)
    finally:
        for ref in refs:
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()


def _digests(config: SweepConfig, models) -> tuple[dict, dict]:
    model_digests = {name: {k: file_digest(getattr(f, f"{k}_path")) for k in ("onnx", "train", "test")}
                     for name, f in models.items()}
    device_digests = {d.label: (file_digest(d.spec) if Path(d.spec).is_file() else d.spec) for d in config.devices}
    return model_digests, device_digests


def _longest_first(pending: list[CellJob]) -> list[CellJob]:
    """The cells in the order parallel workers should start them: the smallest budgets (the
    most pruning steps) first, dense cells (no pruning) last, so that no worker is left with a
    long cell while the others idle at the end. Results still land in config order."""
    from pruning.budget import parse_budget

    def expected_work(job: CellJob) -> tuple[bool, float]:
        if job.cell.is_dense:
            return (True, 0.0)
        fraction = parse_budget(job.cell.budget).fraction
        return (False, 0.5 if fraction is None else fraction)

    return sorted(pending, key=expected_work)  # stable: config order among equals


def _check_backend(ray: str | None, jobs: int | None) -> None:
    if jobs is not None and (not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1):
        raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}")
    if ray is not None:
        if not isinstance(ray, str) or not ray.strip():
            raise ValueError(f"ray must be 'local' or a Ray address like 'ray://host:10001', got {ray!r}")
        if importlib.util.find_spec("ray") is None:
            raise SweepBackendError("Ray is not installed: pip install 'joulecut[ray]' (or run without --ray)")


def run_sweep(
    config: SweepConfig | str | Path,
    output: str | Path | None = None,
    *,
    jobs: int | None = None,
    ray: str | None = None,
    resume: bool = False,
    progress: bool | None = None,
    on_cell: Callable[[CellResult], None] | None = None,
    cell_fn: CellFn = run_cell,
    report: bool = True,
) -> SweepResult:
    """Run every cell of ``config`` (a SweepConfig or a YAML path) into ``output`` (default:
    the config's ``output``, else ``<config folder>/<config stem>_sweep``) and write
    ``results.csv``, ``results.json``, ``timings.csv`` and, with ``report``, ``report.md`` with
    its plots and ``plots.json``.

    ``jobs``: worker processes (default: one per CPU, at most one per pending cell; 1 runs the
    cells in this process). ``ray``: ``'local'`` (starts and stops a local Ray with ``jobs``
    CPUs) or a cluster address; an already initialised Ray is used as it is (and left running).
    With several machines the output folder must be shared. ``progress``: a bar over cells
    (default: when stderr is a terminal). ``on_cell(result)`` is called after each cell is
    stored. ``cell_fn`` replaces the cell runner (it must be picklable for a pool or Ray).

    Raises SweepConfigError (bad config), SweepOutputError (``output`` not a folder, or
    holding an earlier sweep's cells without ``resume``), SweepBackendError (Ray missing or
    unreachable), ModelError / DataError (a model or data file that does not load), ValueError
    (bad ``jobs`` or ``ray``) — all before any cell runs. KeyboardInterrupt propagates; every
    cell finished before it is already stored.
    """
    started = time.perf_counter()
    if not isinstance(config, SweepConfig):
        config = load_config(config)
    _check_backend(ray, jobs)
    out = Path(output) if output is not None else (config.output or default_output(config))
    if out.exists() and not out.is_dir():
        raise SweepOutputError(f"{out}: output must be a folder, and this is a file")
    store = CellStore(out)
    if store.count() and not resume:
        raise SweepOutputError(f"{out}: already holds {store.count()} cell results of a sweep; resume it "
                               "(resume=True, --resume) or choose another output folder")
    models = prepare_models(config.models, out, config.seed)
    model_digests, device_digests = _digests(config, models)
    options = config.prune_options
    all_jobs = []
    for cell in config.cells():
        files, device = models[cell.model], config.device(cell.device)
        digest = fingerprint(cell, {**model_digests[cell.model], "spec": device_digests[cell.device]}, options, config.validate)
        all_jobs.append(CellJob(cell=cell, onnx_path=str(files.onnx_path), train_path=str(files.train_path),
                                test_path=str(files.test_path), spec=device.spec, prune_options=options,
                                validate=config.validate, out_dir=str(out), fingerprint=digest))
    done: dict[str, CellResult] = {}
    pending = []
    for job in all_jobs:
        stored = store.load(job.cell.slug) if resume else None
        if stored is not None and stored.ok and stored.fingerprint == job.fingerprint:
            done[job.cell.key] = stored
        else:
            pending.append(job)
    reused = tuple(done)
    workers = 1 if not pending else (jobs or min(os.cpu_count() or 1, len(pending)))
    prepare_s = time.perf_counter() - started
    if ray is not None:
        backend, stream = "ray", _ray(_longest_first(pending), cell_fn, ray.strip(), workers)
    elif workers == 1:
        backend, stream = "serial", _serial(pending, cell_fn)
    else:
        backend, stream = "pool", _pool(_longest_first(pending), cell_fn, workers)

    show = sys.stderr.isatty() if progress is None else progress
    bar = None
    if show:
        try:
            from tqdm import tqdm
        except ImportError:  # tqdm is in the `all` extra; without it, no bar
            tqdm = None
    if show and tqdm is not None:
        bar = tqdm(total=len(all_jobs), initial=len(done), unit="cell", desc="sweep", file=sys.stderr)
    computed = []
    try:
        with closing(stream):
            for result in stream:
                store.save(result)
                done[result.key] = result
                computed.append(result.key)
                if bar is not None:
                    bar.update(1)
                    if not result.ok:
                        bar.write(f"failed: {result.key}: {result.error}")
                if on_cell is not None:
                    on_cell(result)
    finally:
        if bar is not None:
            bar.close()
    results = tuple(done[job.cell.key] for job in all_jobs)
    atomic_write_text(out / "results.csv", results_csv(results))
    atomic_write_text(out / "results.json", results_json(results))
    atomic_write_text(out / "timings.csv", timings_csv(results))
    summary = SweepResult(config=config, output=out, results=results, computed=tuple(computed), reused=reused,
                          backend=backend, jobs=workers, prepare_s=prepare_s, wall_s=0.0)
    data = None
    if report:
        from sweep.report import write_report

        data = write_report(summary)
    return SweepResult(**{**summary.__dict__, "report": data, "wall_s": time.perf_counter() - started})
