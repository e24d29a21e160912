"""Errors of the sweep: a bad config (every problem with file:line) and a bad output folder."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConfigProblem:
    """One problem of a sweep config: ``FILE:LINE: key.path: message``."""

    file: str
    line: int | None
    key_path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.key_path}: {self.message}" if self.key_path else f"{where}: {self.message}"


class SweepConfigError(ValueError):
    """An invalid sweep config (a user error: the CLI exits with 3). ``problems`` lists every
    problem found, each naming the file, line and key path."""

    def __init__(self, problems: list[ConfigProblem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class SweepOutputError(ValueError):
    """The output folder cannot be used: it holds results of an earlier sweep and ``resume``
    was not asked for, or it is not a folder (a user error: the CLI exits with 3)."""


class SweepBackendError(RuntimeError):
    """The asked-for backend cannot run: Ray is not installed or cannot be reached."""
