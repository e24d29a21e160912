"""Load a hardware spec from YAML into a frozen ``HardwareSpec`` (schema: hwspecs/SCHEMA.md).

Every problem of a file is reported at once in one ``SpecError``, each as
``FILE:LINE: key.path: must be X, got Y``.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode

from hwspecs.checks import check_dataflows, check_levels, check_mac_width
from hwspecs.errors import SpecError, SpecProblem
from hwspecs.spec import (
    Dataflow,
    HardwareSpec,
    MemoryLevel,
    Operand,
    OperandSparsity,
    PEArray,
    SparseFormat,
    SparsityAction,
)
from hwspecs.yamlnodes import INVALID, Problems, Section, got, join, merged_pairs, read_number, scalar, sequence

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"

# Every key the loader accepts, per section (SCHEMA.md documents each; a test keeps them in step).
TOP_KEYS = (
    "name", "description", "source", "technology_nm", "clock_hz", "word_bits", "mac_pj",
    "alu_pj", "leakage_mw", "pe_array", "dataflows", "levels", "sparsity",
)
TOP_REQUIRED = (
    "name", "description", "source", "technology_nm", "clock_hz", "word_bits", "mac_pj",
    "pe_array", "dataflows", "levels",
)
PE_ARRAY_KEYS = ("rows", "cols", "noc_pj")
PE_ARRAY_REQUIRED = ("rows", "cols")
LEVEL_KEYS = (
    "name", "per_pe", "capacity_bytes", "width_bits", "read_pj", "write_pj", "operands",
    "bandwidth_bytes_per_cycle",
)
LEVEL_REQUIRED = ("name", "capacity_bytes", "width_bits", "read_pj", "write_pj", "operands")
SPARSITY_KEYS = tuple(op.value for op in Operand)
OPERAND_SPARSITY_KEYS = ("action", "format", "index_bits")
ACCEPTED_KEYS: dict[str, tuple[str, ...]] = {
    "": TOP_KEYS,
    "pe_array": PE_ARRAY_KEYS,
    "levels[]": LEVEL_KEYS,
    "sparsity": SPARSITY_KEYS,
    "sparsity.<operand>": OPERAND_SPARSITY_KEYS,
}
_INDEXED_FORMATS = (SparseFormat.RLE, SparseFormat.CSR)


def builtin_names() -> list[str]:
    """Names of the built-in specs (the stems of hwspecs/builtin/*.yaml), sorted."""
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def builtin_path(name: str) -> Path:
    """The YAML file of built-in spec ``name``; SpecError (with a did-you-mean) if unknown."""
    names = builtin_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        raise SpecError([SpecProblem(name, None, "", f"unknown built-in hardware spec; {hint}"
                                     f"built-in specs: {', '.join(names)} (or give a path to a .yaml file)")])
    return BUILTIN_DIR / f"{name}.yaml"


def load_spec(name_or_path: str | os.PathLike[str]) -> HardwareSpec:
    """A built-in spec by name (see ``builtin_names()``) or a spec from a YAML file.

    A string without a path separator and without a .yaml/.yml suffix is a built-in name,
    unless a file of that name exists. The returned spec's ``path`` is the file it was read
    from. Raises SpecError (unknown name, unreadable file, or every problem of the file)."""
    if isinstance(name_or_path, str) and not _looks_like_path(name_or_path) and not Path(name_or_path).is_file():
        path = builtin_path(name_or_path)
    else:
        path = Path(name_or_path)
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([SpecProblem(file, None, "", "no such file")]) from None
    except IsADirectoryError:
        raise SpecError([SpecProblem(file, None, "", "is a directory, not a YAML file")]) from None
    except UnicodeDecodeError as exc:
        raise SpecError([SpecProblem(file, None, "", f"is not UTF-8 text ({exc.reason} at byte {exc.start})")]) from None
    except OSError as exc:
        raise SpecError([SpecProblem(file, None, "", f"cannot be read: {exc.strerror}")]) from None
    return dataclasses.replace(load_spec_text(text, file), path=file)


def load_spec_text(text: str, file: str = "<string>") -> HardwareSpec:
    """A spec from YAML text; ``file`` names it in error messages. Raises SpecError."""
    problems = Problems(file)
    root = _compose(text, problems)
    spec = _parse(root, problems) if root is not None else INVALID
    if problems:
        # Stable sort: file order, and for one line the order the checks found them.
        raise SpecError(sorted(problems.items, key=lambda p: p.line or 0))
    return spec


def _looks_like_path(text: str) -> bool:
    return os.sep in text or "/" in text or text.endswith((".yaml", ".yml"))


def _compose(text: str, problems: Problems) -> Node | None:
    """The root node of a single-document YAML text; None after recording why not."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        context = exc.context or ""
        if exc.context and exc.context_mark and mark and exc.context_mark.line != mark.line:
            context += f" (from line {exc.context_mark.line + 1})"
        detail = f"{context}: {exc.problem}" if context and exc.problem else (exc.problem or context)
        problems.add(mark.line + 1 if mark else None, "", f"invalid YAML: {detail}")
        return None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow; it has no Mark
        line = text[: exc.position].count("\n") + 1 if isinstance(exc.position, int) else None
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        problems.add(line, "", f"invalid YAML: control character #x{code:04x} is not allowed")
        return None
    except yaml.YAMLError as exc:
        problems.add(None, "", f"invalid YAML: {exc}")
        return None
    if root is None:
        problems.add(1, "", "file is empty; expected a hardware spec (a mapping with name, levels, ...)")
        return None
    if not isinstance(root, MappingNode):
        problems.add(root, "", f"top level must be a mapping of spec keys (name, levels, ...), got {got(root)}")
        return None
    return root


def _parse(root: Node, problems: Problems) -> HardwareSpec | Any:
    top = Section(root, "", problems, TOP_KEYS, TOP_REQUIRED)
    values = {
        "name": top.string("name"),
        "description": top.string("description"),
        "source": top.string("source"),
        "technology_nm": top.integer("technology_nm"),
        "clock_hz": top.number("clock_hz", positive=True),
        "word_bits": top.integer("word_bits"),
        "mac_pj": _mac_pj(top.values["mac_pj"], problems) if top.has("mac_pj") else INVALID,
        "alu_pj": top.number("alu_pj", default=None, nullable=True),
        "leakage_mw": top.number("leakage_mw", default=0.0),
        "pe_array": _pe_array(top.values["pe_array"], problems) if top.has("pe_array") else INVALID,
        "dataflows": top.enum_list("dataflows", Dataflow),
        "levels": INVALID,
        "sparsity": _sparsity(top.values["sparsity"], problems) if top.has("sparsity") else (),
    }
    level_sections = _levels(top.values["levels"], problems) if top.has("levels") else INVALID
    if level_sections is not INVALID:
        check_levels(level_sections, top.keys["levels"], problems)
        values["levels"] = tuple(level for level, _ in level_sections)
    if values["mac_pj"] is not INVALID and values["word_bits"] is not INVALID:
        check_mac_width(values["mac_pj"], values["word_bits"], top.keys["mac_pj"], problems)
    if values["dataflows"] is not INVALID and values["levels"] is not INVALID:
        check_dataflows(values["dataflows"], top.values["dataflows"].value, values["levels"], problems)
    if problems or any(v is INVALID for v in values.values()):
        return INVALID
    return HardwareSpec(**values)


def _mac_pj(node: Node, problems: Problems) -> tuple[tuple[int, float], ...] | Any:
    """{bits: pJ per MAC} as (bits, pJ) pairs in ascending bits."""
    if not isinstance(node, MappingNode):
        problems.add(node, "mac_pj", f"must be a mapping of bit width to pJ per MAC, e.g. {{16: 1.0}}, got {got(node)}")
        return INVALID
    pairs = merged_pairs(node, "mac_pj", problems)
    if not pairs:
        problems.add(node, "mac_pj", "must have at least one bit width, got an empty mapping")
        return INVALID
    result: dict[int, float] = {}
    ok = True
    for key, value in pairs:
        path = join("mac_pj", str(key.value) if isinstance(key, ScalarNode) else "?")
        bits = scalar(key) if isinstance(key, ScalarNode) else None
        if not isinstance(bits, int) or isinstance(bits, bool) or bits < 1:
            problems.add(key, path, f"key must be a bit width (an integer >= 1), got {got(key)}")
            ok = False
            continue
        pj = read_number(value, path, problems)
        if pj is INVALID:
            ok = False
        else:
            result[bits] = pj
    return tuple(sorted(result.items())) if ok else INVALID


def _pe_array(node: Node, problems: Problems) -> PEArray | Any:
    section = Section(node, "pe_array", problems, PE_ARRAY_KEYS, PE_ARRAY_REQUIRED)
    if not section.ok:
        return INVALID
    rows, cols = section.integer("rows"), section.integer("cols")
    noc_pj = section.number("noc_pj", default=0.0)
    if INVALID in (rows, cols, noc_pj):
        return INVALID
    return PEArray(rows=rows, cols=cols, noc_pj=noc_pj)


def _levels(node: Node, problems: Problems) -> list[tuple[MemoryLevel, Section]] | Any:
    """Every level, parsed; INVALID if any level has a problem (cross-checks need them all)."""
    items = sequence(node, "levels", problems)
    if items is INVALID:
        return INVALID
    parsed = [_level(item, f"levels[{i}]", problems) for i, item in enumerate(items)]
    if any(level is INVALID for level, _ in parsed):
        return INVALID
    return parsed


def _level(node: Node, path: str, problems: Problems) -> tuple[MemoryLevel | Any, Section]:
    section = Section(node, path, problems, LEVEL_KEYS, LEVEL_REQUIRED, what="a mapping (one memory level)")
    if not section.ok:
        return INVALID, section
    values = {
        "name": section.string("name"),
        "per_pe": section.boolean("per_pe", default=False),
        "capacity_bytes": section.integer("capacity_bytes", nullable=True),
        "width_bits": section.integer("width_bits"),
        "read_pj": section.number("read_pj"),
        "write_pj": section.number("write_pj"),
        "operands": section.enum_list("operands", Operand),
        "bandwidth_bytes_per_cycle": section.number("bandwidth_bytes_per_cycle", positive=True, default=None, nullable=True),
    }
    if any(v is INVALID for v in values.values()):
        return INVALID, section
    values["operands"] = frozenset(values["operands"])
    return MemoryLevel(**values), section


def _sparsity(node: Node, problems: Problems) -> tuple[tuple[Operand, OperandSparsity], ...] | Any:
    section = Section(node, "sparsity", problems, SPARSITY_KEYS)
    if not section.ok:
        return INVALID
    result: list[tuple[Operand, OperandSparsity]] = []
    ok = True
    for operand in Operand:
        if section.has(operand.value):
            sparsity = _operand_sparsity(section.values[operand.value], join("sparsity", operand.value), problems)
            if sparsity is INVALID:
                ok = False
            else:
                result.append((operand, sparsity))
    return tuple(result) if ok else INVALID


def _operand_sparsity(node: Node, path: str, problems: Problems) -> OperandSparsity | Any:
    section = Section(node, path, problems, OPERAND_SPARSITY_KEYS)
    if not section.ok:
        return INVALID
    action = section.enum("action", SparsityAction, default=SparsityAction.NONE)
    fmt = section.enum("format", SparseFormat, default=SparseFormat.NONE)
    index_bits = section.integer("index_bits", minimum=0, default=0)
    if INVALID in (action, fmt, index_bits):
        return INVALID
    where, index_path = section.where("index_bits"), join(path, "index_bits")
    if fmt in _INDEXED_FORMATS and index_bits < 1:
        problems.add(where, index_path, f"must be >= 1 for format '{fmt.value}', got {index_bits}")
        return INVALID
    if fmt not in _INDEXED_FORMATS and index_bits != 0:
        problems.add(where, index_path, f"must be 0 for format '{fmt.value}' (only rle and csr store indices), got {index_bits}")
        return INVALID
    return OperandSparsity(action=action, format=fmt, index_bits=index_bits)
