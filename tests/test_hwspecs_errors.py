"""Every kind of bad spec gives its exact message at its exact line, all problems at once."""
from __future__ import annotations

import pytest

from hwspecs import (
    Dataflow,
    Operand,
    OperandSparsity,
    SparseFormat,
    SparsityAction,
    SpecError,
    load_spec_text,
)

# Line numbers below refer to this text (line 1 is "name: tiny").
TINY = """\
name: tiny
description: a test spec
source: hand-written for tests
technology_nm: 45
clock_hz: 1.0e9
word_bits: 16
mac_pj: {8: 0.25, 16: 1.0}
pe_array: {rows: 2, cols: 3, noc_pj: 0.5}
dataflows: [ws, os]
levels:
  - name: RF
    per_pe: true
    capacity_bytes: 64
    width_bits: 16
    read_pj: 0.5
    write_pj: 0.5
    operands: [weights, outputs]
  - name: GLB
    capacity_bytes: 1024
    width_bits: 64
    read_pj: 10.0
    write_pj: 12.0
    operands: [weights, inputs, outputs]
  - name: DRAM
    capacity_bytes: null
    width_bits: 64
    read_pj: 1000.0
    write_pj: 1000.0
    operands: [weights, inputs, outputs]
"""


def edit(old: str, new: str, text: str = TINY) -> str:
    """TINY with the one occurrence of ``old`` replaced (fails loudly if not exactly one)."""
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times"
    return text.replace(old, new)


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec_text(text, "tiny.yaml")
    return [str(p) for p in info.value.problems]


def test_tiny_is_valid_and_maps_one_to_one():
    spec = load_spec_text(TINY, "tiny.yaml")
    assert spec.mac_pj == ((8, 0.25), (16, 1.0))
    assert spec.mac_energy_pj(12) == 1.0  # narrowest MAC at least 12 bits wide: 16
    assert spec.clock_hz == 1e9 and spec.word_bits == 16 and spec.technology_nm == 45
    assert (spec.pe_array.rows, spec.pe_array.cols, spec.pe_array.noc_pj) == (2, 3, 0.5)
    assert spec.dataflows == (Dataflow.WEIGHT_STATIONARY, Dataflow.OUTPUT_STATIONARY)
    rf, glb, dram = spec.levels
    assert (rf.name, rf.per_pe, rf.capacity_bytes, rf.width_bits) == ("RF", True, 64, 16)
    assert rf.operands == frozenset({Operand.WEIGHTS, Operand.OUTPUTS})
    assert (glb.per_pe, glb.read_pj, glb.write_pj) == (False, 10.0, 12.0)
    assert dram.capacity_bytes is None and dram.bandwidth_bytes_per_cycle is None
    assert spec.alu_pj is None and spec.leakage_mw == 0.0 and spec.sparsity == ()
    assert spec.path is None
    hash(spec)  # frozen and hashable, so estimates can be cached on it


def test_wrong_types():
    text = edit("rows: 2", "rows: two", edit("width_bits: 16", "width_bits: 16.0", edit("per_pe: true", "per_pe: maybe")))
    assert problems(text) == [
        "tiny.yaml:8: pe_array.rows: must be an integer, got 'two'",
        "tiny.yaml:12: levels[0].per_pe: must be true or false, got 'maybe'",
        "tiny.yaml:14: levels[0].width_bits: must be an integer, got 16.0",
    ]


def test_boolean_is_not_an_integer_and_null_only_where_allowed():
    assert problems(edit("rows: 2", "rows: true")) == ["tiny.yaml:8: pe_array.rows: must be an integer, got true"]
    assert problems(edit("width_bits: 16", "width_bits: null")) == [
        "tiny.yaml:14: levels[0].width_bits: must be an integer, got null"
    ]
    assert problems(edit("name: tiny", "name: ~")) == ["tiny.yaml:1: name: must be a string, got null"]


def test_negative_energy():
    assert problems(edit("read_pj: 10.0", "read_pj: -1")) == ["tiny.yaml:21: levels[1].read_pj: must be >= 0, got -1.0"]
    assert problems(edit("{8: 0.25, 16: 1.0}", "{8: 0.25, 16: -2.5}")) == [
        "tiny.yaml:7: mac_pj.16: must be >= 0, got -2.5"
    ]


def test_numbers_written_as_yaml_strings():
    # YAML 1.1 reads 2e9 (no dot) as a string; unquoted, it is accepted as a number.
    assert load_spec_text(edit("clock_hz: 1.0e9", "clock_hz: 2e9")).clock_hz == 2e9
    assert problems(edit("clock_hz: 1.0e9", "clock_hz: '1.0e9'")) == ["tiny.yaml:5: clock_hz: must be a number, got '1.0e9'"]
    assert problems(edit("clock_hz: 1.0e9", "clock_hz: fast")) == ["tiny.yaml:5: clock_hz: must be a number, got 'fast'"]
    assert problems(edit("clock_hz: 1.0e9", "clock_hz: .inf")) == ["tiny.yaml:5: clock_hz: must be a finite number, got .inf"]
    assert problems(edit("clock_hz: 1.0e9", "clock_hz: 0")) == ["tiny.yaml:5: clock_hz: must be > 0, got 0.0"]


def test_level_with_no_operands():
    assert problems(edit("operands: [weights, outputs]", "operands: []")) == [
        "tiny.yaml:17: levels[0].operands: must be a non-empty list, got an empty list"
    ]


def test_bad_and_repeated_names_in_lists():
    assert problems(edit("operands: [weights, outputs]", "operands: [weights, weights]")) == [
        "tiny.yaml:17: levels[0].operands[1]: duplicate 'weights' (also levels[0].operands[0])"
    ]
    assert problems(edit("dataflows: [ws, os]", "dataflows: [ws, oss]")) == [
        "tiny.yaml:9: dataflows[1]: must be one of ws, os, rs, nlr, got 'oss'; did you mean 'os'?"
    ]


def test_unknown_key_with_did_you_mean():
    assert problems(edit("read_pj: 10.0", "red_pj: 10.0")) == [
        "tiny.yaml:18: levels[1].read_pj: required key missing",
        "tiny.yaml:21: levels[1].red_pj: unknown key 'red_pj'; did you mean 'read_pj'?",
    ]


def test_unknown_key_without_close_match_lists_allowed_keys():
    assert problems(edit("{rows: 2, cols: 3, noc_pj: 0.5}", "{rows: 2, cols: 3, frobnicate: 1}")) == [
        "tiny.yaml:8: pe_array.frobnicate: unknown key 'frobnicate'; allowed keys: rows, cols, noc_pj"
    ]


def test_keys_are_case_sensitive():
    assert problems(edit("word_bits: 16", "Word_bits: 16")) == [
        "tiny.yaml:1: word_bits: required key missing",
        "tiny.yaml:6: Word_bits: unknown key 'Word_bits'; did you mean 'word_bits'?",
    ]


def test_missing_key_reported_at_parent_mapping():
    assert problems(edit("clock_hz: 1.0e9\n", "")) == ["tiny.yaml:1: clock_hz: required key missing"]
    assert problems(edit("{rows: 2, cols: 3, noc_pj: 0.5}", "{rows: 2, noc_pj: 0.5}")) == [
        "tiny.yaml:8: pe_array.cols: required key missing"
    ]
    # A level's missing key: at the line its mapping starts ("- name: GLB").
    assert problems(edit("    width_bits: 64\n    read_pj: 10.0", "    read_pj: 10.0")) == [
        "tiny.yaml:18: levels[1].width_bits: required key missing"
    ]


def test_yaml_syntax_error_has_its_line():
    assert problems(edit("description: a test spec", "description: a test: spec")) == [
        "tiny.yaml:2: invalid YAML: mapping values are not allowed here"
    ]
    assert problems(edit("dataflows: [ws, os]", "dataflows: [ws, os")) == [
        "tiny.yaml:10: invalid YAML: while parsing a flow sequence (from line 9): expected ',' or ']', but got ':'"
    ]


def test_control_character_has_its_line():
    assert problems(edit("source: hand-written for tests", "source: hand\x07written")) == [
        "tiny.yaml:3: invalid YAML: control character #x0007 is not allowed"
    ]


def test_empty_file_and_non_mapping_top_level():
    message = "tiny.yaml:1: file is empty; expected a hardware spec (a mapping with name, levels, ...)"
    assert problems("") == [message]
    assert problems("# nothing but a comment\n") == [message]
    assert problems("- name: tiny\n") == ["tiny.yaml:1: top level must be a mapping of spec keys (name, levels, ...), got a list"]


def test_duplicate_key():
    assert problems(TINY + "word_bits: 8\n") == ["tiny.yaml:30: word_bits: duplicate key (first given on line 6)"]


def test_capacities_shrinking_outward():
    assert problems(edit("capacity_bytes: 1024", "capacity_bytes: 32")) == [
        "tiny.yaml:19: levels[1].capacity_bytes: must be >= 64, the capacity of levels[0] 'RF' inside it "
        "(capacities grow outward), got 32"
    ]


def test_unbounded_level_inside_a_bounded_one():
    text = edit("capacity_bytes: 1024", "capacity_bytes: null", edit("capacity_bytes: null", "capacity_bytes: 4096"))
    assert problems(text) == [
        "tiny.yaml:19: levels[1].capacity_bytes: may be null (unbounded) only when every level outside it "
        "is too, but levels[2] 'DRAM' is bounded"
    ]


def test_outermost_level_may_be_bounded():
    # A microcontroller has no DRAM: its outermost levels (SRAM, flash) are bounded.
    spec = load_spec_text(edit("capacity_bytes: null", "capacity_bytes: 4096"))
    assert spec.levels[-1].capacity_bytes == 4096


def test_per_pe_levels_must_be_innermost_and_bounded():
    text = edit("  - name: GLB\n", "  - name: GLB\n    per_pe: true\n", edit("    per_pe: true\n", ""))
    # RF (lines 11-16) is now shared; GLB's per_pe is on line 18.
    assert problems(text) == [
        "tiny.yaml:18: levels[1].per_pe: per-PE levels must come first (innermost), "
        "but shared levels[0] 'RF' is inside this one"
    ]
    assert problems(edit("capacity_bytes: 64", "capacity_bytes: null")) == [
        "tiny.yaml:13: levels[0].capacity_bytes: must be an integer >= 1 for a per-PE level, got null"
    ]


def test_duplicate_level_names():
    assert problems(edit("name: DRAM", "name: GLB")) == [
        "tiny.yaml:24: levels[2].name: duplicate level name 'GLB' (also levels[1])"
    ]


def test_every_operand_needs_a_level():
    text = TINY.replace("operands: [weights, inputs, outputs]", "operands: [weights, outputs]")
    assert problems(text) == ["tiny.yaml:10: levels: no level holds inputs (every operand needs a backing store)"]


def test_dataflow_not_supported_by_the_array():
    assert problems(edit("dataflows: [ws, os]", "dataflows: [ws, os, rs, nlr]")) == [
        "tiny.yaml:9: dataflows[2]: 'rs' needs a per-PE level holding all of weights, inputs, outputs",
        "tiny.yaml:9: dataflows[3]: 'nlr' needs no per-PE level, but levels[0] 'RF' is per-PE",
    ]
    text = edit("operands: [weights, outputs]", "operands: [outputs]")
    assert problems(text) == ["tiny.yaml:9: dataflows[0]: 'ws' needs a per-PE level holding weights"]


def test_nlr_without_per_pe_levels_is_valid():
    text = edit("dataflows: [ws, os]", "dataflows: [nlr]", edit("    per_pe: true\n", ""))
    assert load_spec_text(text).dataflows == (Dataflow.NO_LOCAL_REUSE,)


def test_mac_width_must_cover_word_bits():
    assert problems(edit("word_bits: 16", "word_bits: 32")) == [
        "tiny.yaml:7: mac_pj: must have a MAC at least word_bits (32) wide, got widths 8, 16"
    ]


def test_mac_pj_keys_are_bit_widths():
    assert problems(edit("{8: 0.25, 16: 1.0}", "{eight: 0.25, 16: 1.0}")) == [
        "tiny.yaml:7: mac_pj.eight: key must be a bit width (an integer >= 1), got 'eight'"
    ]
    assert problems(edit("{8: 0.25, 16: 1.0}", "{}")) == ["tiny.yaml:7: mac_pj: must have at least one bit width, got an empty mapping"]


def test_sparsity_round_trip_and_index_bits():
    spec = load_spec_text(TINY + "sparsity:\n  inputs: {action: skip, format: csr, index_bits: 4}\n")
    assert spec.operand_sparsity(Operand.INPUTS) == OperandSparsity(SparsityAction.SKIP, SparseFormat.CSR, 4)
    assert spec.operand_sparsity(Operand.WEIGHTS) == OperandSparsity()  # absent: dense, no skipping
    assert problems(TINY + "sparsity:\n  inputs: {action: gate, format: rle}\n") == [
        "tiny.yaml:31: sparsity.inputs.index_bits: must be >= 1 for format 'rle', got 0"
    ]
    assert problems(TINY + "sparsity:\n  weights:\n    format: bitmask\n    index_bits: 4\n") == [
        "tiny.yaml:33: sparsity.weights.index_bits: must be 0 for format 'bitmask' (only rle and csr store indices), got 4"
    ]
    assert problems(TINY + "sparsity:\n  input: {action: gate}\n") == [
        "tiny.yaml:31: sparsity.input: unknown key 'input'; did you mean 'inputs'?"
    ]


def test_multiple_problems_reported_together_in_line_order():
    text = edit("technology_nm: 45", "technology_nm: -7", edit("write_pj: 12.0", "write_pj: -3.5", edit("read_pj: 1000.0", "raed_pj: 1000.0")))
    with pytest.raises(SpecError) as info:
        load_spec_text(text, "tiny.yaml")
    expected = [
        "tiny.yaml:4: technology_nm: must be >= 1, got -7",
        "tiny.yaml:22: levels[1].write_pj: must be >= 0, got -3.5",
        "tiny.yaml:24: levels[2].read_pj: required key missing",
        "tiny.yaml:27: levels[2].raed_pj: unknown key 'raed_pj'; did you mean 'read_pj'?",
    ]
    assert [str(p) for p in info.value.problems] == expected
    assert str(info.value) == "\n".join(expected)
    assert [(p.file, p.line, p.key_path) for p in info.value.problems][0] == ("tiny.yaml", 4, "technology_nm")


def test_anchors_and_merge_keys():
    # GLB is written once with an anchor; L2 merges it and overrides three keys.
    text = edit(
        "  - name: DRAM\n",
        "  - <<: *glb\n    name: L2\n    capacity_bytes: 2048\n    read_pj: 20.0\n  - name: DRAM\n",
        edit("  - name: GLB\n", "  - &glb\n    name: GLB\n"),
    )
    l2 = load_spec_text(text).level("L2")
    assert (l2.capacity_bytes, l2.read_pj, l2.write_pj, l2.width_bits) == (2048, 20.0, 12.0, 64)
    # Overriding a merged key is fine; writing a key twice by hand is not.
    assert problems(edit("    name: L2\n", "    name: L2\n    name: L3\n", text)) == [
        "tiny.yaml:27: levels[2].name: duplicate key (first given on line 26)"
    ]
