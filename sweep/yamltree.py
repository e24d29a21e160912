"""Read YAML into plain Python values while keeping the line of every key path.

``read_yaml(text, file)`` returns ``(value, lines)`` where ``lines`` maps key paths such as
``models[1].onnx`` to 1-based line numbers. YAML syntax errors and duplicate keys become a
:class:`~sweep.errors.SweepConfigError` naming the file and line.
"""
from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from sweep.errors import ConfigProblem, SweepConfigError


def _line(node: Node) -> int:
    return node.start_mark.line + 1


def _scalar(node: ScalarNode) -> Any:
    if node.tag.startswith("tag:yaml.org,2002:") and node.tag.rsplit(":", 1)[1] in ("null", "bool", "int", "float"):
        try:
            return yaml.constructor.SafeConstructor().construct_object(node)
        except (ValueError, yaml.YAMLError):
            return node.value
    return node.value


def _convert(node: Node, path: str, lines: dict[str, int], problems: list[ConfigProblem], file: str) -> Any:
    lines.setdefault(path, _line(node))
    if isinstance(node, ScalarNode):
        return _scalar(node)
    if isinstance(node, SequenceNode):
        return [_convert(item, f"{path}[{i}]", lines, problems, file) for i, item in enumerate(node.value)]
    if isinstance(node, MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node) if isinstance(key_node, ScalarNode) else str(key_node.value)
            child = f"{path}.{key}" if path else str(key)
            if key in out:
                problems.append(ConfigProblem(file, _line(key_node), child, f"duplicate key (first on line {lines[child]})"))
                continue
            lines[child] = _line(key_node)
            out[key] = _convert(value_node, child, lines, problems, file)
        return out
    return None


def read_yaml(text: str, file: str) -> tuple[Any, dict[str, int]]:
    """Plain values and ``{key path: line}`` of one YAML document. Raises SweepConfigError."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        message = ": ".join(x for x in (exc.context, exc.problem) if x) or str(exc)
        raise SweepConfigError([ConfigProblem(file, line, "", f"invalid YAML: {message}")]) from None
    except yaml.YAMLError as exc:
        raise SweepConfigError([ConfigProblem(file, None, "", f"invalid YAML: {exc}")]) from None
    if root is None:
        return None, {}
    lines: dict[str, int] = {}
    problems: list[ConfigProblem] = []
    value = _convert(root, "", lines, problems, file)
    if problems:
        raise SweepConfigError(problems)
    return value, lines
