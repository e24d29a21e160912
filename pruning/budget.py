"""Energy budgets: ``40%`` of the dense model's estimated energy, or an absolute energy
(``2.5mJ``, ``800uJ``, ``1.2e6pJ``, ``3nJ``, ``0.1J``). A budget always carries a unit."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass


class BudgetError(ValueError):
    """A budget that is malformed or cannot be met (a user error: the CLI exits with 3)."""


_UNITS_PJ = {"pJ": 1.0, "nJ": 1e3, "uJ": 1e6, "µJ": 1e6, "mJ": 1e9, "J": 1e12}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(%|pJ|nJ|uJ|µJ|mJ|J)\s*$")


@dataclass(frozen=True)
class Budget:
    """Either ``fraction`` of the dense energy (0 < fraction < 1) or ``energy_pj``."""

    fraction: float | None = None
    energy_pj: float | None = None
    text: str = ""

    def __post_init__(self) -> None:
        if (self.fraction is None) == (self.energy_pj is None):
            raise BudgetError("a budget is either a fraction of the dense energy or an energy, not both")
        if self.fraction is not None and not 0.0 < self.fraction < 1.0:
            raise BudgetError(f"a budget fraction must be in (0%, 100%), got {self.fraction * 100:g}%")
        if self.energy_pj is not None and not (self.energy_pj > 0 and math.isfinite(self.energy_pj)):
            raise BudgetError(f"a budget energy must be positive, got {self.energy_pj:g} pJ")

    def target_pj(self, dense_pj: float) -> float:
        """The energy to reach, in pJ, for a model whose dense estimate is ``dense_pj``."""
        return self.fraction * dense_pj if self.fraction is not None else float(self.energy_pj)

    def __str__(self) -> str:
        return self.text or (f"{self.fraction * 100:g}%" if self.fraction is not None else f"{self.energy_pj:g}pJ")


def parse_budget(value: str | float | Budget) -> Budget:
    """``"40%"`` -> Budget(fraction=0.4); ``"2.5mJ"`` -> Budget(energy_pj=2.5e9). A float is a
    fraction of the dense energy (0 < x < 1). Raises BudgetError for a missing or unknown unit,
    a fraction >= 100 % and a value <= 0."""
    if isinstance(value, Budget):
        return value
    if isinstance(value, bool):
        raise BudgetError(f"budget must be like '40%' or '2.5mJ', got {value!r}")
    if isinstance(value, (int, float)):
        return Budget(fraction=float(value), text=f"{float(value) * 100:g}%")
    if not isinstance(value, str):
        raise BudgetError(f"budget must be like '40%' or '2.5mJ', got {value!r}")
    match = _PATTERN.match(value)
    if not match:
        stripped = value.strip()
        if re.fullmatch(r"[-+]?[0-9.]+(?:[eE][-+]?[0-9]+)?", stripped):
            raise BudgetError(f"budget {value!r} needs a unit: a percentage of the dense energy ('40%') or an energy (pJ, nJ, uJ, mJ, J)")
        if stripped.startswith("-"):
            raise BudgetError(f"budget must be positive, got {value!r}")
        raise BudgetError(f"budget must be like '40%', '2.5mJ', '800uJ' or '1.2e6pJ', got {value!r}")
    number, unit = float(match.group(1)), match.group(2)
    if unit == "%":
        if number >= 100:
            raise BudgetError(f"budget must be below 100% of the dense energy, got {value.strip()}")
        if number <= 0:
            raise BudgetError(f"budget must be above 0%, got {value.strip()}")
        return Budget(fraction=number / 100.0, text=value.strip())
    if number <= 0:
        raise BudgetError(f"budget must be positive, got {value.strip()}")
    return Budget(energy_pj=number * _UNITS_PJ[unit], text=value.strip())
