"""Sweeps: models x hardware specs x budgets x methods x granularities, each cell estimated,
pruned, exported and validated; one results table and a report with plots.

    from sweep import load_config, run_sweep
    result = run_sweep("examples/sweep/default.yaml", jobs=2, resume=True)
    print(result.output / "report.md")
"""
from __future__ import annotations

from sweep.cells import CellJob, CellResult, run_cell
from sweep.config import Cell, Device, ModelSource, SweepConfig, cell_seed, load_config, parse_config
from sweep.errors import ConfigProblem, SweepBackendError, SweepConfigError, SweepOutputError
from sweep.runner import SweepResult, run_sweep

__all__ = [
    "Cell", "CellJob", "CellResult", "ConfigProblem", "Device", "ModelSource", "SweepBackendError",
    "SweepConfig", "SweepConfigError", "SweepOutputError", "SweepResult", "cell_seed", "load_config",
    "parse_config", "run_cell", "run_sweep",
]
