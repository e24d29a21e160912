"""EnergyReport: per-layer energy, access counts and mappings, with JSON/CSV/table/plot output.

The JSON keys (``model``, ``hardware``, ``total_energy_pj``, ``total_macs``, ``total_cycles``,
``layers`` with ``name``, ``op``, ``macs``, ``effective_macs``, ``energy_pj``, ``compute_pj``,
``levels`` = {level: {operand: {reads, writes, energy_pj}}}, ``cycles``, ``mapping``) are a
stable interface other tools rely on.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from energy.mapper import Mapping

COMPUTE = "MAC"  # the name under which compute energy shows up next to the memory levels


@dataclass(frozen=True)
class OperandAccess:
    reads: int
    writes: int
    energy_pj: float


@dataclass(frozen=True)
class LayerEnergy:
    """Energy of one layer. ``levels`` maps level name -> operand name -> accesses (in words of
    that level's width; the pseudo-level ``array`` counts words over the PE array network)."""

    name: str
    op: str  # ONNX op type
    kind: str  # energy.ir.OpKind value
    macs: int
    effective_macs: float
    compute_pj: float
    levels: dict[str, dict[str, OperandAccess]]
    static_pj: float
    energy_pj: float
    cycles: float
    utilization: float  # fraction of PEs busy
    mapping: Mapping | None = None
    weight_density: float = 1.0
    input_density: float = 1.0
    bits: dict[str, int] = field(default_factory=dict)
    note: str = ""

    def level_energy_pj(self) -> dict[str, float]:
        return {name: sum(a.energy_pj for a in ops.values()) for name, ops in self.levels.items()}

    @property
    def dominant(self) -> str:
        """The largest single component: a memory level or ``MAC``."""
        parts = {COMPUTE: self.compute_pj, **self.level_energy_pj()}
        if not any(parts.values()):
            return "-"
        return max(parts, key=lambda k: parts[k])

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "op": self.op,
            "kind": self.kind,
            "macs": self.macs,
            "effective_macs": self.effective_macs,
            "energy_pj": self.energy_pj,
            "compute_pj": self.compute_pj,
            "static_pj": self.static_pj,
            "levels": {
                lv: {op: {"reads": a.reads, "writes": a.writes, "energy_pj": a.energy_pj} for op, a in ops.items()}
                for lv, ops in self.levels.items()
            },
            "cycles": self.cycles,
            "utilization": self.utilization,
            "weight_density": self.weight_density,
            "input_density": self.input_density,
            "bits": dict(self.bits),
            "mapping": self.mapping.to_dict() if self.mapping else None,
            "note": self.note,
        }


def format_energy(pj: float) -> str:
    """pJ in the unit that keeps 3-4 significant digits readable (pJ, nJ, uJ, mJ, J)."""
    for unit, scale in (("J", 1e12), ("mJ", 1e9), ("uJ", 1e6), ("nJ", 1e3)):
        if abs(pj) >= scale:
            return f"{pj / scale:.3f} {unit}"
    return f"{pj:.1f} pJ"


def _format_count(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> str:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule] + [line(r) for r in rows])


@dataclass(frozen=True)
class EnergyReport:
    model: str
    hardware: str
    layers: tuple[LayerEnergy, ...]
    objective: str = "energy"
    assumptions: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def total_energy_pj(self) -> float:
        return sum(l.energy_pj for l in self.layers)

    @property
    def total_macs(self) -> int:
        return sum(l.macs for l in self.layers)

    @property
    def total_effective_macs(self) -> float:
        return sum(l.effective_macs for l in self.layers)

    @property
    def total_cycles(self) -> float:
        return sum(l.cycles for l in self.layers)

    def layer(self, name: str) -> LayerEnergy:
        for l in self.layers:
            if l.name == name:
                return l
        raise KeyError(name)

    def level_totals_pj(self) -> dict[str, float]:
        totals: dict[str, float] = {COMPUTE: 0.0}
        for l in self.layers:
            totals[COMPUTE] += l.compute_pj
            for name, pj in l.level_energy_pj().items():
                totals[name] = totals.get(name, 0.0) + pj
        return totals

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "hardware": self.hardware,
            "objective": self.objective,
            "total_energy_pj": self.total_energy_pj,
            "total_macs": self.total_macs,
            "total_effective_macs": self.total_effective_macs,
            "total_cycles": self.total_cycles,
            "level_totals_pj": self.level_totals_pj(),
            "assumptions": list(self.assumptions),
            "warnings": list(self.warnings),
            "layers": [l.to_dict() for l in self.layers],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_csv(self) -> str:
        """One row per layer; level energies as ``<level>_pj`` columns."""
        level_names = list(self.level_totals_pj())
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["name", "op", "macs", "effective_macs", "energy_pj", "compute_pj", "static_pj", "cycles", "dominant"]
                        + [f"{n}_pj" for n in level_names if n != COMPUTE] + ["mapping"])
        for l in self.layers:
            per_level = l.level_energy_pj()
            writer.writerow([l.name, l.op, l.macs, f"{l.effective_macs:.6g}", f"{l.energy_pj:.6g}", f"{l.compute_pj:.6g}",
                             f"{l.static_pj:.6g}", f"{l.cycles:.6g}", l.dominant]
                            + [f"{per_level.get(n, 0.0):.6g}" for n in level_names if n != COMPUTE]
                            + [l.mapping.describe() if l.mapping else ""])
        return buf.getvalue()

    def table(self, include_zero: bool = False) -> str:
        """The per-layer table the CLI prints: MACs, energy, share, dominant level."""
        total = self.total_energy_pj or 1.0
        rows = [
            [l.name, l.op, _format_count(l.macs), format_energy(l.energy_pj), f"{100 * l.energy_pj / total:.1f}%", l.dominant]
            for l in self.layers
            if include_zero or l.energy_pj > 0
        ]
        body = _table(["layer", "op", "MACs", "energy", "share", "dominant"], rows, right={2, 3, 4})
        levels = ", ".join(f"{n} {100 * pj / total:.1f}%" for n, pj in self.level_totals_pj().items() if pj > 0)
        skipped = sum(1 for l in self.layers if l.energy_pj == 0)
        foot = [
            "",
            f"model {self.model} on {self.hardware}: {format_energy(self.total_energy_pj)}, "
            f"{_format_count(self.total_macs)} MACs ({_format_count(self.total_effective_macs)} effective), "
            f"{_format_count(self.total_cycles)} cycles",
            f"by level: {levels}",
        ]
        if skipped and not include_zero:
            foot.append(f"({skipped} zero-cost layers not shown)")
        return body + "\n" + "\n".join(foot)

    def explain(self, name: str) -> str:
        """Every number of one layer: per level and operand, accesses x pJ per access."""
        l = self.layer(name)
        lines = [f"layer {l.name} ({l.op}): {format_energy(l.energy_pj)}"]
        lines.append(f"  MACs {l.macs} dense, {l.effective_macs:.6g} effective "
                     f"(weight density {l.weight_density:.3f}, input density {l.input_density:.3f}); bits {l.bits}")
        lines.append(f"  compute {l.compute_pj:.6g} pJ")
        for level, ops in l.levels.items():
            for op, a in ops.items():
                lines.append(f"  {level:>8s} {op:<8s} reads {a.reads:>12d}  writes {a.writes:>12d}  -> {a.energy_pj:.6g} pJ")
        if l.static_pj:
            lines.append(f"  static (leakage x latency) {l.static_pj:.6g} pJ")
        lines.append(f"  cycles {l.cycles:.6g}, PE utilisation {100 * l.utilization:.1f}%")
        if l.mapping:
            lines.append(f"  mapping {l.mapping.describe()}")
        if l.note:
            lines.append(f"  note: {l.note}")
        return "\n".join(lines)

    def diff(self, other: "EnergyReport") -> "ReportDiff":
        return ReportDiff(self, other)

    def plot(self, path: str | os.PathLike) -> Path:
        """A stacked bar chart per layer by memory level (and MAC), saved as PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from energy.io import write_atomic

        layers = [l for l in self.layers if l.energy_pj > 0]
        components = list(self.level_totals_pj())
        fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(layers) + 2), 4.5))
        bottom = [0.0] * len(layers)
        for comp in components:
            values = [(l.compute_pj if comp == COMPUTE else l.level_energy_pj().get(comp, 0.0)) / 1e6 for l in layers]
            ax.bar(range(len(layers)), values, bottom=bottom, label=comp)
            bottom = [b + v for b, v in zip(bottom, values)]
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels([l.name for l in layers], rotation=75, ha="right", fontsize=7)
        ax.set_ylabel("energy (uJ)")
        ax.set_title(f"{self.model} on {self.hardware}: {format_energy(self.total_energy_pj)}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        return write_atomic(path, buf.getvalue())


@dataclass(frozen=True)
class ReportDiff:
    """Two reports of (usually) the same model side by side, per layer name."""

    a: EnergyReport
    b: EnergyReport

    def table(self) -> str:
        names = [l.name for l in self.a.layers]
        names += [l.name for l in self.b.layers if l.name not in set(names)]
        a = {l.name: l for l in self.a.layers}
        b = {l.name: l for l in self.b.layers}
        rows = []
        for n in names:
            ea, eb = a[n].energy_pj if n in a else 0.0, b[n].energy_pj if n in b else 0.0
            if ea == 0 and eb == 0:
                continue
            ratio = f"{eb / ea:.3f}x" if ea else "new"
            rows.append([n, _format_count(a[n].macs) if n in a else "-", format_energy(ea) if n in a else "-",
                         _format_count(b[n].macs) if n in b else "-", format_energy(eb) if n in b else "-", ratio])
        ta, tb = self.a.total_energy_pj, self.b.total_energy_pj
        rows.append(["TOTAL", _format_count(self.a.total_macs), format_energy(ta), _format_count(self.b.total_macs),
                     format_energy(tb), f"{tb / ta:.3f}x" if ta else "-"])
        return (f"A = {self.a.model}, B = {self.b.model}, hardware {self.a.hardware}\n"
                + _table(["layer", "A MACs", "A energy", "B MACs", "B energy", "B/A"], rows, right={1, 2, 3, 4, 5}))
