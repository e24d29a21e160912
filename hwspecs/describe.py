"""Human-readable text for hardware specs (``joulecut hw list`` and ``joulecut hw show``)."""
from __future__ import annotations

from hwspecs.loader import builtin_names, load_spec
from hwspecs.spec import HardwareSpec, MemoryLevel, Operand, SparseFormat, SparsityAction


def list_specs() -> list[tuple[str, str]]:
    """(name, one-line description) of every built-in spec, sorted by name."""
    return [(name, load_spec(name).description) for name in builtin_names()]


def describe_spec(spec: HardwareSpec) -> str:
    """A multi-line description: identity, array, dataflows, MAC energies, the memory levels
    innermost first (with read energy normalised to one ``word_bits`` word and to one MAC),
    and sparsity support."""
    mac_word = spec.mac_energy_pj(spec.word_bits)
    alu = "the MAC energy of the op's width" if spec.alu_pj is None else f"{_num(spec.alu_pj)} pJ per op"
    array = spec.pe_array
    lines = [
        f"{spec.name}: {spec.description}",
        f"source:     {spec.source}",
    ]
    if spec.path:
        lines.append(f"file:       {spec.path}")
    lines += [
        f"node:       {spec.technology_nm} nm",
        f"clock:      {_hertz(spec.clock_hz)}",
        f"word:       {spec.word_bits} bits (the width float models run at)",
        f"PE array:   {array.rows} x {array.cols} = {array.num_pes} PEs, "
        f"array network {_num(array.noc_pj)} pJ per word",
        f"dataflows:  {', '.join(df.value for df in spec.dataflows)}",
        f"MAC:        {', '.join(f'{bits}-bit {_num(pj)} pJ' for bits, pj in spec.mac_pj)}",
        f"ALU ops:    {alu}",
        f"leakage:    {_num(spec.leakage_mw)} mW",
        "",
        f"memory levels, innermost first (per word = one {spec.word_bits}-bit value; "
        f"x MAC = per word / {_num(mac_word)} pJ):",
    ]
    header = ("level", "scope", "capacity", "width", "read pJ", "write pJ", "read/word pJ", "x MAC",
              "operands", "bandwidth")
    rows = [_level_row(level, spec.word_bits, mac_word) for level in spec.levels]
    lines += _table(header, rows)
    lines.append("")
    lines.append("sparsity:")
    lines += [f"  {op.value}: {_sparsity(spec, op)}" for op in Operand]
    return "\n".join(lines)


def _level_row(level: MemoryLevel, word_bits: int, mac_word_pj: float) -> tuple[str, ...]:
    per_word = level.read_pj * word_bits / level.width_bits
    ratio = _num(per_word / mac_word_pj) if mac_word_pj > 0 else "-"
    bandwidth = "unlimited" if level.bandwidth_bytes_per_cycle is None else f"{_num(level.bandwidth_bytes_per_cycle)} B/cycle"
    return (
        level.name,
        "per PE" if level.per_pe else "shared",
        "unbounded" if level.capacity_bytes is None else _bytes(level.capacity_bytes),
        f"{level.width_bits} b",
        _num(level.read_pj),
        _num(level.write_pj),
        _num(per_word),
        ratio,
        ", ".join(op.value for op in Operand if level.holds(op)),
        bandwidth,
    )


def _sparsity(spec: HardwareSpec, operand: Operand) -> str:
    sp = spec.operand_sparsity(operand)
    action = {
        SparsityAction.NONE: "zeros are computed like any value",
        SparsityAction.GATE: "zeros gated (no energy, still a cycle)",
        SparsityAction.SKIP: "zeros skipped (no energy, no cycle)",
    }[sp.action]
    if sp.format is SparseFormat.NONE:
        stored = "stored dense"
    elif sp.format is SparseFormat.BITMASK:
        stored = "stored as bitmask (1 bit per value)"
    else:
        stored = f"stored as {sp.format.value} ({sp.index_bits} index bits per nonzero)"
    return f"{action}; {stored}"


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]


def _num(x: float) -> str:
    """Up to 4 significant digits, no trailing zeros: 1, 0.2077, 1950, 0.0625."""
    return f"{x:.4g}"


def _bytes(n: int) -> str:
    """Binary units, as the specs use them: 512 B, 108 kB (110592 B), 8 MB."""
    for unit, size in (("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= size:
            return f"{n / size:.4g} {unit}"
    return f"{n} B"


def _hertz(hz: float) -> str:
    for unit, size in (("GHz", 1e9), ("MHz", 1e6), ("kHz", 1e3)):
        if hz >= size:
            return f"{hz / size:.4g} {unit}"
    return f"{hz:.4g} Hz"
