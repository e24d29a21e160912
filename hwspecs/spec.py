"""The frozen hardware description every estimate is computed against.

Units are in the field names: ``_pj`` picojoules, ``_bytes`` bytes, ``_bits`` bits,
``_hz`` hertz, ``_mw`` milliwatts, ``_per_cycle`` per clock cycle.
The YAML schema that produces these objects is documented in ``hwspecs/SCHEMA.md``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Operand(Enum):
    """The three tensors a MAC layer touches."""

    WEIGHTS = "weights"
    INPUTS = "inputs"
    OUTPUTS = "outputs"


class Dataflow(Enum):
    """Which operand stays in the PEs and which loop dimensions go spatial."""

    WEIGHT_STATIONARY = "ws"
    OUTPUT_STATIONARY = "os"
    ROW_STATIONARY = "rs"
    NO_LOCAL_REUSE = "nlr"


class SparsityAction(Enum):
    """What the datapath does with a zero operand."""

    NONE = "none"  # multiplies it like any other value
    GATE = "gate"  # spends no MAC/read energy on it, but still spends the cycle
    SKIP = "skip"  # spends neither energy nor the cycle


class SparseFormat(Enum):
    """How an operand is stored and moved above the innermost level."""

    NONE = "none"  # dense: bits per value
    BITMASK = "bitmask"  # density * bits + 1 mask bit per value
    RLE = "rle"  # density * (bits + index_bits)
    CSR = "csr"  # density * (bits + index_bits)


@dataclass(frozen=True)
class MemoryLevel:
    """One level of the memory hierarchy (innermost levels first in ``HardwareSpec.levels``).

    ``capacity_bytes`` is per PE when ``per_pe`` is true, else for the whole chip;
    None means unbounded (off-chip DRAM or flash). Energies are per access of ``width_bits``.
    """

    name: str
    capacity_bytes: int | None
    width_bits: int
    read_pj: float
    write_pj: float
    operands: frozenset[Operand]
    per_pe: bool = False
    bandwidth_bytes_per_cycle: float | None = None  # None: never the bottleneck

    def holds(self, operand: Operand) -> bool:
        return operand in self.operands


@dataclass(frozen=True)
class PEArray:
    """A rows x cols grid of MAC units; ``noc_pj`` is spent per word delivered to (or
    collected from) one PE over the array network (Eyeriss' "inter-PE" cost)."""

    rows: int
    cols: int
    noc_pj: float = 0.0

    @property
    def num_pes(self) -> int:
        return self.rows * self.cols


@dataclass(frozen=True)
class OperandSparsity:
    action: SparsityAction = SparsityAction.NONE
    format: SparseFormat = SparseFormat.NONE
    index_bits: int = 0

    def stored_bits_per_value(self, bits: int, density: float) -> float:
        """Average bits moved per (dense) value at levels above the innermost."""
        if self.format is SparseFormat.NONE:
            return float(bits)
        if self.format is SparseFormat.BITMASK:
            return density * bits + 1.0
        return density * (bits + self.index_bits)


@dataclass(frozen=True)
class HardwareSpec:
    """A device: MAC energy per bit width, memory levels (innermost first), PE array,
    supported dataflows and sparsity support. Hashable, so estimates can be cached on it."""

    name: str
    description: str
    source: str
    technology_nm: int
    clock_hz: float
    word_bits: int
    mac_pj: tuple[tuple[int, float], ...]  # (operand bits, pJ per MAC), ascending bits
    levels: tuple[MemoryLevel, ...]
    pe_array: PEArray
    dataflows: tuple[Dataflow, ...]
    sparsity: tuple[tuple[Operand, OperandSparsity], ...] = ()
    alu_pj: float | None = None  # per elementwise op (pooling, add, activation); None: the MAC cost
    leakage_mw: float = 0.0
    path: str | None = field(default=None, compare=False)  # file it was loaded from

    def mac_energy_pj(self, bits: int) -> float:
        """pJ per MAC at ``bits``: the narrowest MAC the spec has that is at least that wide.

        Raises ValueError when the spec has no MAC that wide."""
        for width, pj in self.mac_pj:
            if width >= bits:
                return pj
        widths = ", ".join(str(w) for w, _ in self.mac_pj)
        raise ValueError(f"hardware '{self.name}' has no MAC for {bits}-bit operands (it has {widths})")

    def alu_energy_pj(self, bits: int) -> float:
        return self.alu_pj if self.alu_pj is not None else self.mac_energy_pj(bits)

    def operand_sparsity(self, operand: Operand) -> OperandSparsity:
        for op, sp in self.sparsity:
            if op is operand:
                return sp
        return OperandSparsity()

    def level(self, name: str) -> MemoryLevel:
        for lv in self.levels:
            if lv.name == name:
                return lv
        raise KeyError(name)

    @property
    def num_per_pe_levels(self) -> int:
        """Per-PE levels come first; the array's fan-out sits right above them."""
        return sum(1 for lv in self.levels if lv.per_pe)
