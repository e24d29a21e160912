"""Built-in specs, load_spec by name and by path, describe_spec/list_specs."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from hwspecs import (
    Dataflow,
    Operand,
    SparseFormat,
    SparsityAction,
    SpecError,
    builtin_names,
    builtin_path,
    dataflow_unsupported,
    describe_spec,
    list_specs,
    load_spec,
)

BUILTINS = ["cortex-m", "edge-tpu-int8", "eyeriss", "eyeriss-65nm", "generic-45nm", "mobile-cpu"]
ALL = frozenset(Operand)


def test_builtin_names():
    assert builtin_names() == BUILTINS


@pytest.mark.parametrize("name", BUILTINS)
def test_every_builtin_loads_and_cites_a_source(name):
    spec = load_spec(name)
    assert spec.name == name  # name == file stem
    assert spec.path == str(builtin_path(name))
    assert len(spec.source) > 20 and spec.description
    # every operand has a backing store, and each listed dataflow fits the levels
    assert all(any(lv.holds(op) for lv in spec.levels) for op in Operand)
    assert all(dataflow_unsupported(df, spec.levels) is None for df in spec.dataflows)
    # the default width of a float model has a MAC
    assert spec.mac_energy_pj(spec.word_bits) > 0


@pytest.mark.parametrize("name", BUILTINS)
def test_every_number_in_a_builtin_has_a_comment(name):
    """A line that sets a number carries a comment, or sits right under a comment line."""
    lines = builtin_path(name).read_text().splitlines()
    uncommented = []
    for i, line in enumerate(lines):
        key_value = re.match(r"\s*(?:- )?([\w.-]+):([^#]*)", line)  # not the text of source:
        if not key_value or key_value[1] in ("name", "description"):
            continue
        if any(c.isdigit() for c in key_value[2]) and "#" not in line and not lines[i - 1].strip().startswith("#"):
            uncommented.append(f"{name}.yaml:{i + 1}: {line.strip()}")
    assert uncommented == []


def test_eyeriss_values_by_hand():
    spec = load_spec("eyeriss")
    # Chen/Emer/Sze ISCA 2016 normalized costs: MAC 1, RF 1, inter-PE 2, buffer 6, DRAM 200.
    assert spec.mac_energy_pj(16) == 1.0
    assert spec.mac_energy_pj(8) == 1.0  # narrowest MAC >= 8 bits is the 16-bit one
    assert spec.pe_array.noc_pj == 2.0
    assert (spec.level("RF").read_pj, spec.level("GLB").read_pj, spec.level("DRAM").read_pj) == (1.0, 6.0, 200.0)
    assert spec.level("DRAM").write_pj == 200.0
    # 12 x 14 = 168 PEs; RF 512 B per PE; GLB 108 kB = 108 * 1024 = 110592 B
    assert (spec.pe_array.rows, spec.pe_array.cols, spec.pe_array.num_pes) == (12, 14, 168)
    rf = spec.level("RF")
    assert rf.per_pe and rf.capacity_bytes == 512 and rf.operands == ALL
    assert spec.level("GLB").capacity_bytes == 110592
    assert spec.level("DRAM").capacity_bytes is None
    assert spec.num_per_pe_levels == 1
    assert spec.dataflows == (Dataflow.ROW_STATIONARY, Dataflow.WEIGHT_STATIONARY, Dataflow.OUTPUT_STATIONARY)
    assert spec.clock_hz == 200e6 and spec.word_bits == 16 and spec.technology_nm == 65
    inputs = spec.operand_sparsity(Operand.INPUTS)
    assert (inputs.action, inputs.format, inputs.index_bits) == (SparsityAction.GATE, SparseFormat.RLE, 5)
    # RLE inputs at density 0.5 move 0.5 * (16 + 5) = 10.5 bits per dense value
    assert inputs.stored_bits_per_value(16, 0.5) == 10.5
    weights = spec.operand_sparsity(Operand.WEIGHTS)
    assert (weights.action, weights.format) == (SparsityAction.SKIP, SparseFormat.BITMASK)
    # a bitmask at density 0.25 moves 0.25 * 16 + 1 = 5 bits per dense weight
    assert weights.stored_bits_per_value(16, 0.25) == 5.0


def test_eyeriss_65nm_accelergy_values():
    spec = load_spec("eyeriss-65nm")
    assert spec.mac_energy_pj(8) == 0.2077
    glb = spec.level("GLB")
    assert (glb.read_pj, glb.write_pj, glb.width_bits, glb.capacity_bytes) == (18.18, 14.14, 64, 128 * 1024)
    assert glb.operands == frozenset({Operand.INPUTS, Operand.OUTPUTS})  # weights bypass, as on the chip
    assert spec.level("DRAM").read_pj == 512.0
    # RF read = mean of the three spad reads: (1.977 + 0.202 + 0.251) / 3 = 2.43 / 3 = 0.81
    assert spec.level("RF").read_pj == pytest.approx((1.977 + 0.202 + 0.251) / 3)


def test_cortex_m_weights_live_in_bounded_flash():
    spec = load_spec("cortex-m")
    flash = spec.levels[-1]
    assert flash.name == "FLASH" and flash.operands == frozenset({Operand.WEIGHTS})
    assert flash.capacity_bytes == 2 * 1024 * 1024
    assert all(lv.capacity_bytes is not None for lv in spec.levels)  # no DRAM
    assert spec.mac_energy_pj(8) == 0.765  # SMLAD: int8 runs on the 16-bit MAC
    assert (spec.pe_array.rows, spec.pe_array.cols) == (1, 2)


def test_horowitz_macs_in_generic_45nm():
    spec = load_spec("generic-45nm")
    # mult + add: int8 0.2 + 0.03, fp16 1.1 + 0.4, fp32 3.7 + 0.9
    assert spec.mac_pj == ((8, 0.23), (16, 1.5), (32, 4.6))
    assert spec.level("DRAM").read_pj == 1950.0  # midpoint of 1300-2600


def test_unknown_builtin_name_suggests():
    with pytest.raises(SpecError) as info:
        load_spec("eyeris")
    message = str(info.value)
    assert message.startswith("eyeris: unknown built-in hardware spec; did you mean 'eyeriss'")
    assert "built-in specs: cortex-m, edge-tpu-int8, eyeriss, eyeriss-65nm, generic-45nm, mobile-cpu" in message
    with pytest.raises(SpecError, match="unknown built-in hardware spec; built-in specs"):
        builtin_path("zzzzzz")


def test_load_from_path_sets_path(tmp_path):
    text = builtin_path("eyeriss").read_text().replace("name: eyeriss", "name: my-eyeriss")
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    for arg in (path, str(path)):
        spec = load_spec(arg)
        assert spec.name == "my-eyeriss" and spec.path == str(path)
    # path is not part of equality: the same spec from two files compares equal
    assert load_spec(path) == load_spec(str(path))


def test_a_file_without_suffix_is_loaded_when_it_exists(tmp_path, monkeypatch):
    (tmp_path / "myspec").write_text(builtin_path("cortex-m").read_text())
    monkeypatch.chdir(tmp_path)
    assert load_spec("myspec").name == "cortex-m"
    assert load_spec("myspec").path == "myspec"


def test_load_problems_name_the_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SpecError) as info:
        load_spec(missing)
    assert str(info.value) == f"{missing}: no such file"
    bad = tmp_path / "bad.yaml"
    bad.write_text(builtin_path("eyeriss").read_text().replace("rows: 12", "rows: -12"))
    with pytest.raises(SpecError) as info:
        load_spec(bad)
    [problem] = info.value.problems
    assert str(problem).startswith(f"{bad}:") and str(problem).endswith("pe_array.rows: must be >= 1, got -12")
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(SpecError, match="is a directory"):
        load_spec(tmp_path / "dir.yaml")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(SpecError, match="is not UTF-8 text"):
        load_spec(binary)


def test_list_specs():
    listed = list_specs()
    assert [name for name, _ in listed] == BUILTINS
    assert dict(listed)["eyeriss"] == load_spec("eyeriss").description


def test_describe_eyeriss():
    text = describe_spec(load_spec("eyeriss"))
    lines = text.splitlines()
    assert lines[0].startswith("eyeriss: Eyeriss 65 nm")
    assert "clock:      200 MHz" in lines
    assert "PE array:   12 x 14 = 168 PEs, array network 2 pJ per word" in lines
    assert "dataflows:  rs, ws, os" in lines
    assert "MAC:        16-bit 1 pJ" in lines
    rows = {line.split()[0]: line.split() for line in lines if line.startswith("  ") and not line.startswith("  level")}
    # name scope capacity width read write read/word xMAC ...: DRAM 200 per 16-bit word = 200 MACs
    assert rows["RF"][:9] == ["RF", "per", "PE", "512", "B", "16", "b", "1", "1"]
    assert rows["GLB"][1:4] == ["shared", "108", "kB"]
    assert rows["DRAM"][2:11] == ["unbounded", "16", "b", "200", "200", "200", "200", "weights,", "inputs,"]
    assert "  inputs: zeros gated (no energy, still a cycle); stored as rle (5 index bits per nonzero)" in lines


def test_describe_normalises_per_word():
    lines = describe_spec(load_spec("cortex-m")).splitlines()
    flash = next(line for line in lines if line.startswith("  FLASH")).split()
    # 180 pJ per 64 b, word 8 bits: 180 * 8 / 64 = 22.5 pJ per word; / 0.765 pJ MAC = 29.41
    assert flash[:11] == ["FLASH", "shared", "2", "MB", "64", "b", "180", "0", "22.5", "29.41", "weights"]
    assert flash[-2:] == ["8", "B/cycle"]


def test_schema_doc_is_installed_next_to_the_loader():
    assert (Path(builtin_path("eyeriss")).parent.parent / "SCHEMA.md").is_file()
