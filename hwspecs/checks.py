"""Cross-field checks of a hardware spec: rules no single key can break on its own.

Each check runs on values that already passed their own field checks, and records one
problem per broken rule at the line of the key that breaks it.
"""
from __future__ import annotations

from typing import Sequence

from yaml.nodes import Node

from hwspecs.spec import Dataflow, MemoryLevel, Operand
from hwspecs.yamlnodes import Problems, Section


def check_levels(levels: Sequence[tuple[MemoryLevel, Section]], levels_node: Node, problems: Problems) -> None:
    """Names unique; per-PE levels contiguous at the inside and bounded; unbounded levels
    only outermost; bounded capacities non-decreasing outward; every operand held."""
    first_by_name: dict[str, int] = {}
    for i, (level, section) in enumerate(levels):
        if level.name in first_by_name:
            j = first_by_name[level.name]
            problems.add(section.where("name"), f"levels[{i}].name", f"duplicate level name '{level.name}' (also levels[{j}])")
        else:
            first_by_name[level.name] = i

    last_shared: int | None = None
    for i, (level, section) in enumerate(levels):
        if not level.per_pe:
            if last_shared is None:
                last_shared = i
            continue
        if last_shared is not None:
            inner = levels[last_shared][0].name
            problems.add(
                section.where("per_pe"),
                f"levels[{i}].per_pe",
                f"per-PE levels must come first (innermost), but shared levels[{last_shared}] '{inner}' is inside this one",
            )
        if level.capacity_bytes is None:
            problems.add(section.where("capacity_bytes"), f"levels[{i}].capacity_bytes", "must be an integer >= 1 for a per-PE level, got null")

    for i, (level, section) in enumerate(levels):
        if level.capacity_bytes is not None or level.per_pe:
            continue
        bounded_outside = [j for j in range(i + 1, len(levels)) if levels[j][0].capacity_bytes is not None]
        if bounded_outside:
            j = bounded_outside[0]
            problems.add(
                section.where("capacity_bytes"),
                f"levels[{i}].capacity_bytes",
                f"may be null (unbounded) only when every level outside it is too, "
                f"but levels[{j}] '{levels[j][0].name}' is bounded",
            )

    inner: int | None = None  # index of the nearest bounded level inside
    for i, (level, section) in enumerate(levels):
        if level.capacity_bytes is None:
            continue
        if inner is not None and level.capacity_bytes < levels[inner][0].capacity_bytes:
            prev = levels[inner][0]
            problems.add(
                section.where("capacity_bytes"),
                f"levels[{i}].capacity_bytes",
                f"must be >= {prev.capacity_bytes}, the capacity of levels[{inner}] '{prev.name}' inside it "
                f"(capacities grow outward), got {level.capacity_bytes}",
            )
        inner = i

    for operand in Operand:
        if not any(level.holds(operand) for level, _ in levels):
            problems.add(levels_node, "levels", f"no level holds {operand.value} (every operand needs a backing store)")


def check_mac_width(mac_pj: tuple[tuple[int, float], ...], word_bits: int, mac_node: Node, problems: Problems) -> None:
    """A float model runs at word_bits, so some MAC must be at least that wide."""
    if not any(bits >= word_bits for bits, _ in mac_pj):
        widths = ", ".join(str(bits) for bits, _ in mac_pj)
        problems.add(mac_node, "mac_pj", f"must have a MAC at least word_bits ({word_bits}) wide, got widths {widths}")


# What each dataflow keeps inside a PE: the operands one per-PE level must hold.
_STATIONARY: dict[Dataflow, frozenset[Operand]] = {
    Dataflow.WEIGHT_STATIONARY: frozenset({Operand.WEIGHTS}),
    Dataflow.OUTPUT_STATIONARY: frozenset({Operand.OUTPUTS}),
    Dataflow.ROW_STATIONARY: frozenset(Operand),
}


def dataflow_unsupported(dataflow: Dataflow, levels: Sequence[MemoryLevel]) -> str | None:
    """Why the array cannot run ``dataflow`` (None when it can).

    ws needs a per-PE level holding weights, os one holding outputs, rs one holding all three
    operands; nlr keeps nothing in the PEs, so it needs no per-PE level at all."""
    per_pe = [(i, lv) for i, lv in enumerate(levels) if lv.per_pe]
    if dataflow is Dataflow.NO_LOCAL_REUSE:
        if per_pe:
            i, lv = per_pe[0]
            return f"'nlr' needs no per-PE level, but levels[{i}] '{lv.name}' is per-PE"
        return None
    needed = _STATIONARY[dataflow]
    if any(needed <= lv.operands for _, lv in per_pe):
        return None
    what = ", ".join(op.value for op in Operand if op in needed)
    qualifier = "all of " if len(needed) > 1 else ""
    return f"'{dataflow.value}' needs a per-PE level holding {qualifier}{what}" + (
        "" if per_pe else "; this spec has no per-PE level"
    )


def check_dataflows(
    dataflows: Sequence[Dataflow], item_nodes: Sequence[Node], levels: Sequence[MemoryLevel], problems: Problems
) -> None:
    for i, (dataflow, node) in enumerate(zip(dataflows, item_nodes)):
        reason = dataflow_unsupported(dataflow, levels)
        if reason:
            problems.add(node, f"dataflows[{i}]", reason)
