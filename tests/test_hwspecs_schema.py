"""SCHEMA.md stays in step with the loader; any negative energy anywhere is rejected by path."""
from __future__ import annotations

import copy
import re

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import pytest

from hwspecs import Dataflow, Operand, SparseFormat, SparsityAction, SpecError, builtin_path, load_spec_text
from hwspecs.loader import ACCEPTED_KEYS

SCHEMA = (builtin_path("eyeriss").parent.parent / "SCHEMA.md").read_text()
# Inline `code` outside the fenced blocks: the tables that document each key.
DOCUMENTED = set(re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", SCHEMA, flags=re.S)))


@pytest.mark.parametrize("section", sorted(ACCEPTED_KEYS))
def test_schema_documents_every_accepted_key(section):
    missing = [key for key in ACCEPTED_KEYS[section] if key not in DOCUMENTED]
    assert missing == [], f"SCHEMA.md does not mention {missing} (section {section or 'top level'})"


@pytest.mark.parametrize("enum_cls", [Dataflow, Operand, SparsityAction, SparseFormat])
def test_schema_documents_every_enum_value(enum_cls):
    assert [m.value for m in enum_cls if m.value not in DOCUMENTED] == []


def test_schema_example_loads():
    example = SCHEMA.split("## Full example")[1].split("```yaml\n")[1].split("```")[0]
    spec = load_spec_text(example, "SCHEMA.md")
    assert spec.level("GLB").read_pj == 6.0 and spec.mac_energy_pj(16) == 1.0


BASE = yaml.safe_load(builtin_path("eyeriss").read_text())

# (key path as the loader reports it, how to set it in the parsed dict)
ENERGY_PATHS = [
    ("mac_pj.16", ("mac_pj", 16)),
    ("alu_pj", ("alu_pj",)),
    ("leakage_mw", ("leakage_mw",)),
    ("pe_array.noc_pj", ("pe_array", "noc_pj")),
] + [
    (f"levels[{i}].{key}", ("levels", i, key)) for i in range(len(BASE["levels"])) for key in ("read_pj", "write_pj")
]


@settings(max_examples=60, deadline=None)
@given(
    where=st.sampled_from(ENERGY_PATHS),
    value=st.floats(max_value=-1e-9, min_value=-1e12, allow_nan=False) | st.integers(-10**6, -1),
)
def test_any_negative_energy_is_rejected_with_its_key_path(where, value):
    key_path, keys = where
    data = copy.deepcopy(BASE)
    target = data
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = value
    with pytest.raises(SpecError) as info:
        load_spec_text(yaml.safe_dump(data), "neg.yaml")
    assert [(p.key_path, p.message) for p in info.value.problems] == [(key_path, f"must be >= 0, got {float(value)!r}")]
