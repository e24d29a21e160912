"""Errors for bad user input: they name the file and the node (or key) at fault."""
from __future__ import annotations


class ModelError(ValueError):
    """A model joulecut cannot read or cost: malformed ONNX, unresolvable shapes, unknown op
    under --strict, missing weight. ``file`` and ``node`` say where."""

    def __init__(self, message: str, file: str | None = None, node: str | None = None):
        self.file = file
        self.node = node
        self.reason = message
        where = ": ".join(x for x in (file, f"node '{node}'" if node else None) if x)
        super().__init__(f"{where}: {message}" if where else message)


class DataError(ValueError):
    """Sample data that does not fit the model (wrong shape, dtype, labels out of range)."""

    def __init__(self, message: str, file: str | None = None):
        self.file = file
        super().__init__(f"{file}: {message}" if file else message)


class OptionError(ValueError):
    """An option that does not fit the model or hardware (e.g. a dataflow the spec lacks)."""


class JoulecutWarning(UserWarning):
    """A result is usable but doubtful (e.g. judged on very few samples); the command line
    prints it as its own warning."""
