"""Budget strings: units, limits, clear errors."""
from __future__ import annotations

import pytest

from pruning.budget import Budget, BudgetError, parse_budget


@pytest.mark.parametrize("text,fraction,energy", [
    ("40%", 0.4, None), (" 2.5 % ", 0.025, None), ("2.5mJ", None, 2.5e9), ("800uJ", None, 8e8),
    ("800µJ", None, 8e8), ("1.2e6pJ", None, 1.2e6), ("3nJ", None, 3e3), ("0.5J", None, 5e11),
])
def test_parse(text, fraction, energy):
    b = parse_budget(text)
    assert b.fraction == (pytest.approx(fraction) if fraction is not None else None)
    assert b.energy_pj == (pytest.approx(energy) if energy is not None else None)


def test_target():
    assert parse_budget("25%").target_pj(8e6) == pytest.approx(2e6)
    assert parse_budget("2uJ").target_pj(8e6) == pytest.approx(2e6)
    assert parse_budget(0.1).target_pj(1000.0) == pytest.approx(100.0)
    assert str(parse_budget("40%")) == "40%"


@pytest.mark.parametrize("text,message", [
    ("40", "needs a unit"), ("2.5", "needs a unit"), ("100%", "below 100%"), ("150%", "below 100%"),
    ("0%", "above 0%"), ("0mJ", "positive"), ("-3mJ", "positive"), ("3 kWh", "like '40%'"), ("", "like '40%'"),
])
def test_bad_budgets(text, message):
    with pytest.raises(BudgetError, match=message):
        parse_budget(text)


def test_bad_types_and_fractions():
    with pytest.raises(BudgetError):
        parse_budget(1.5)
    with pytest.raises(BudgetError):
        parse_budget(True)
    with pytest.raises(BudgetError):
        Budget(fraction=0.5, energy_pj=3.0)
    assert isinstance(BudgetError("x"), ValueError)


def test_package_exports_resolve():
    import pruning

    for name in pruning.__all__:
        assert getattr(pruning, name) is not None
    assert pruning.parse_budget("40%").fraction == 0.4
    with pytest.raises(AttributeError):
        pruning.nonexistent  # noqa: B018
