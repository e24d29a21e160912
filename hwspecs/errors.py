"""SpecError: every problem of a hardware spec at once, each as FILE:LINE: key.path: message."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SpecProblem:
    file: str
    line: int | None
    key_path: str
    message: str  # "must be X, got Y" (with "; did you mean 'z'?" for unknown keys)

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.key_path}: {self.message}" if self.key_path else f"{where}: {self.message}"


class SpecError(ValueError):
    """An invalid hardware spec; ``problems`` lists every problem found, not only the first."""

    def __init__(self, problems: list[SpecProblem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))
