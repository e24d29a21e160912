"""Atomic files of a sweep's output folder: one JSON per finished cell, and the tables."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Iterable

from energy.io import write_atomic
from sweep.cells import CellResult

CELLS_DIR = "cells"


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename."""
    return write_atomic(path, data)


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


class CellStore:
    """The ``cells/`` folder: ``<slug>.json`` per finished (or failed) cell."""

    def __init__(self, out: Path):
        self.dir = Path(out) / CELLS_DIR

    def path(self, slug: str) -> Path:
        return self.dir / f"{slug}.json"

    def save(self, result: CellResult) -> Path:
        return atomic_write_text(self.path(result.slug), json.dumps(result.to_dict(), indent=1) + "\n")

    def load(self, slug: str) -> CellResult | None:
        """The stored result of a cell, or None if there is none (or it cannot be read)."""
        path = self.path(slug)
        try:
            return CellResult.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def count(self) -> int:
        return len(list(self.dir.glob("*.json"))) if self.dir.is_dir() else 0


def results_csv(results: Iterable[CellResult]) -> str:
    """The results table as CSV: one row per cell, level energies as ``<level>_pj`` columns."""
    rows = [r.row() for r in results]
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns and c != "error"]
    columns.append("error")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def timings_csv(results: Iterable[CellResult]) -> str:
    """Per-cell phase times (s), the prune phase split as pruning.api.TIME_PHASES, and the
    validation's measured run times of the pruned model (median s over the test set): not part
    of the results table, which is deterministic."""
    from pruning.api import TIME_PHASES
    from sweep.cells import PHASES

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    measured = ("kernels", "kernels_dense", "onnxruntime")
    parts = [*PHASES, "total", *[f"prune.{p}" for p in TIME_PHASES]]
    writer.writerow(["key", *[f"{p.replace('-', '_').replace('.', '_')}_s" for p in parts], *[f"run_{m}_s" for m in measured]])
    for r in results:
        writer.writerow([r.key, *[f"{r.timings_s.get(p, 0.0):.4f}" for p in parts],
                         *[f"{r.measured_s[m]:.6f}" if m in r.measured_s else "" for m in measured]])
    return buffer.getvalue()


def results_json(results: Iterable[CellResult]) -> str:
    return json.dumps([r.to_dict(timings=False) for r in results], indent=1) + "\n"
