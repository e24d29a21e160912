"""Typed reads from a composed YAML node tree, collecting every problem with its line.

The loader composes the file (``yaml.compose``) instead of loading it, so every value keeps
the line it was written on. The readers here turn nodes into Python values, and on bad input
record a ``SpecProblem`` ("FILE:LINE: key.path: must be X, got Y") and return ``INVALID``
instead of raising, so one run reports every problem of a file.
"""
from __future__ import annotations

import difflib
import math
from enum import Enum
from typing import Any, Sequence, TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from hwspecs.errors import SpecProblem


class _Invalid:
    """Sentinel for a value that failed its check (its problem is already recorded)."""

    def __repr__(self) -> str:
        return "INVALID"


INVALID: Any = _Invalid()
_MISSING: Any = object()

_NULL = "tag:yaml.org,2002:null"
_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_STR = "tag:yaml.org,2002:str"

E = TypeVar("E", bound=Enum)


def line_of(node: Node) -> int:
    """1-based line a node starts on."""
    return node.start_mark.line + 1


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """'; did you mean 'x'?' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def scalar(node: ScalarNode) -> Any:
    """The Python value of a scalar under YAML 1.1 rules (int, float, bool, None or str).

    Scalars with other tags (timestamps, custom ``!tags``) come back as their text."""
    if node.tag in (_NULL, _BOOL, _INT, _FLOAT):
        try:
            # A fresh constructor each time: it caches every node it builds.
            return yaml.constructor.SafeConstructor().construct_object(node)
        except (ValueError, yaml.YAMLError):  # e.g. "!!int abc": the type checks report it
            return node.value
    return node.value


def got(node: Node) -> str:
    """How a value is shown after 'got': 'text' for strings, the literal otherwise."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "an empty list" if not node.value else "a list"
    if node.tag == _NULL:
        return "null"
    if node.tag in (_BOOL, _INT, _FLOAT):
        return node.value
    return repr(node.value)


class Problems:
    """Every problem found in one file, in the order found."""

    def __init__(self, file: str):
        self.file = file
        self.items: list[SpecProblem] = []

    def add(self, where: Node | int | None, key_path: str, message: str) -> None:
        line = line_of(where) if isinstance(where, Node) else where
        self.items.append(SpecProblem(self.file, line, key_path, message))

    def __bool__(self) -> bool:
        return bool(self.items)


def sequence(node: Node, path: str, problems: Problems, *, non_empty: bool = True) -> list[Node] | Any:
    """The items of a YAML list, or INVALID."""
    if not isinstance(node, SequenceNode):
        problems.add(node, path, f"must be a list, got {got(node)}")
        return INVALID
    if non_empty and not node.value:
        problems.add(node, path, "must be a non-empty list, got an empty list")
        return INVALID
    return list(node.value)


def enum_value(node: Node, path: str, problems: Problems, enum_cls: type[E]) -> E | Any:
    """An enum member from its string value (the YAML spelling), or INVALID."""
    names = [m.value for m in enum_cls]
    text = node.value if isinstance(node, ScalarNode) and node.tag == _STR else None
    if text in names:
        return enum_cls(text)
    hint = did_you_mean(text, names) if text is not None else ""
    problems.add(node, path, f"must be one of {', '.join(names)}, got {got(node)}{hint}")
    return INVALID


def enum_list(node: Node, path: str, problems: Problems, enum_cls: type[E]) -> tuple[E, ...] | Any:
    """A non-empty list of distinct enum members, or INVALID."""
    items = sequence(node, path, problems)
    if items is INVALID:
        return INVALID
    values: list[E] = []
    first_index: dict[E, int] = {}
    ok = True
    for i, item in enumerate(items):
        value = enum_value(item, f"{path}[{i}]", problems, enum_cls)
        if value is INVALID:
            ok = False
        elif value in first_index:
            problems.add(item, f"{path}[{i}]", f"duplicate '{value.value}' (also {path}[{first_index[value]}])")
            ok = False
        else:
            first_index[value] = i
            values.append(value)
    return tuple(values) if ok else INVALID


def merged_pairs(node: MappingNode, path: str, problems: Problems) -> list[tuple[Node, Node]]:
    """The (key, value) pairs of a mapping, with ``<<: *anchor`` merges applied.

    A key written twice in the same mapping is a problem; a key given explicitly next to a
    merge overrides the merged value, as YAML specifies."""
    seen: dict[str, int] = {}
    for key, _ in node.value:
        if isinstance(key, ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
            if key.value in seen:
                problems.add(key, join(path, key.value), f"duplicate key (first given on line {seen[key.value]})")
            else:
                seen[key.value] = line_of(key)
    try:
        yaml.constructor.SafeConstructor().flatten_mapping(node)
    except yaml.MarkedYAMLError as exc:
        problems.add(exc.problem_mark.line + 1 if exc.problem_mark else node, path, f"invalid merge: {exc.problem}")
    last: dict[str, tuple[Node, Node]] = {}
    others: list[tuple[Node, Node]] = []
    for key, value in node.value:
        if isinstance(key, ScalarNode):
            last[key.value] = (key, value)  # later pairs (explicit keys) override merged ones
        else:
            others.append((key, value))
    return list(last.values()) + others


class Section:
    """One YAML mapping checked against its allowed and required keys, with typed getters.

    Construction records non-mapping values, duplicate, unknown (with a did-you-mean) and
    missing required keys. Each getter returns the value, the default when the key is
    absent, or INVALID after recording why."""

    def __init__(
        self,
        node: Node,
        path: str,
        problems: Problems,
        allowed: Sequence[str],
        required: Sequence[str] = (),
        what: str = "a mapping",
    ):
        self.node = node
        self.path = path
        self.problems = problems
        self.values: dict[str, Node] = {}
        self.keys: dict[str, Node] = {}
        self.ok = isinstance(node, MappingNode)
        if not self.ok:
            problems.add(node, path, f"must be {what}, got {got(node)}")
            return
        for key, value in merged_pairs(node, path, problems):
            if not isinstance(key, ScalarNode):
                problems.add(key, path, f"keys must be names, got {got(key)}")
                continue
            name = key.value
            if name not in allowed:
                hint = did_you_mean(name, allowed) or f"; allowed keys: {', '.join(allowed)}"
                problems.add(key, join(path, name), f"unknown key '{name}'{hint}")
                continue
            self.keys[name] = key
            self.values[name] = value
        for name in required:
            if name not in self.values:
                problems.add(node, join(path, name), "required key missing")

    def has(self, key: str) -> bool:
        return key in self.values

    def where(self, key: str | None = None) -> Node:
        """The node to report a problem about ``key`` at (the mapping when it is absent)."""
        return self.values.get(key, self.node) if key else self.node

    def _get(self, key: str, default: Any) -> tuple[Node | None, Any]:
        if key in self.values:
            return self.values[key], None
        return None, (INVALID if default is _MISSING else default)

    def integer(self, key: str, *, minimum: int = 1, default: Any = _MISSING, nullable: bool = False) -> Any:
        """An int >= ``minimum`` (booleans and floats are rejected), None if ``nullable``."""
        node, fallback = self._get(key, default)
        if node is None:
            return fallback
        path = join(self.path, key)
        value = scalar(node) if isinstance(node, ScalarNode) else INVALID
        if value is None and nullable:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            extra = " or null" if nullable else ""
            self.problems.add(node, path, f"must be an integer{extra}, got {got(node)}")
            return INVALID
        if value < minimum:
            self.problems.add(node, path, f"must be >= {minimum}, got {value}")
            return INVALID
        return value

    def number(
        self, key: str, *, positive: bool = False, default: Any = _MISSING, nullable: bool = False
    ) -> Any:
        """A finite float >= 0 (> 0 if ``positive``), None if ``nullable``.

        Unquoted scalars that Python's float() reads are numbers too, so ``200e6`` (a string
        under YAML 1.1, which wants a dot: ``200.0e6``) means 2e8. Quoted strings are not."""
        node, fallback = self._get(key, default)
        if node is None:
            return fallback
        return read_number(node, join(self.path, key), self.problems, positive=positive, nullable=nullable)

    def string(self, key: str, *, default: Any = _MISSING) -> Any:
        """A non-empty string; any non-null scalar is taken as the text written."""
        node, fallback = self._get(key, default)
        if node is None:
            return fallback
        path = join(self.path, key)
        if not isinstance(node, ScalarNode) or node.tag == _NULL:
            self.problems.add(node, path, f"must be a string, got {got(node)}")
            return INVALID
        if not node.value.strip():
            self.problems.add(node, path, "must be a non-empty string, got ''")
            return INVALID
        return node.value

    def boolean(self, key: str, *, default: Any = _MISSING) -> Any:
        node, fallback = self._get(key, default)
        if node is None:
            return fallback
        if isinstance(node, ScalarNode) and node.tag == _BOOL:
            return scalar(node)
        self.problems.add(node, join(self.path, key), f"must be true or false, got {got(node)}")
        return INVALID

    def enum(self, key: str, enum_cls: type[E], *, default: Any = _MISSING) -> Any:
        node, fallback = self._get(key, default)
        if node is None:
            return fallback
        return enum_value(node, join(self.path, key), self.problems, enum_cls)

    def enum_list(self, key: str, enum_cls: type[E]) -> Any:
        node, fallback = self._get(key, _MISSING)
        if node is None:
            return fallback
        return enum_list(node, join(self.path, key), self.problems, enum_cls)


def read_number(node: Node, path: str, problems: Problems, *, positive: bool = False, nullable: bool = False) -> Any:
    """See ``Section.number``; also used for the values of ``mac_pj``."""
    value: Any = INVALID
    if isinstance(node, ScalarNode):
        raw = scalar(node)
        if raw is None and nullable:
            return None
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            value = float(raw)
        elif isinstance(raw, str) and node.style is None:  # plain, unquoted
            try:
                value = float(raw)
            except ValueError:
                pass
    if value is INVALID:
        extra = " or null" if nullable else ""
        problems.add(node, path, f"must be a number{extra}, got {got(node)}")
        return INVALID
    if not math.isfinite(value):
        problems.add(node, path, f"must be a finite number, got {got(node)}")
        return INVALID
    if positive and value <= 0:
        problems.add(node, path, f"must be > 0, got {value!r}")
        return INVALID
    if value < 0:
        problems.add(node, path, f"must be >= 0, got {value!r}")
        return INVALID
    return value
