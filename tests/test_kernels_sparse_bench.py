"""The benchmark only rewrites its own section of RESULTS.md (another section shares the file)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("torch")
_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_sparse.py"
_spec = importlib.util.spec_from_file_location("bench_sparse", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_write_section_creates_file(tmp_path):
    path = tmp_path / "RESULTS.md"
    bench.write_section("## Sparse kernels\n\nfirst\n", path)
    assert path.read_text() == "# Benchmark results\n\n## Sparse kernels\n\nfirst\n"


def test_write_section_replaces_only_its_own_section(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmark results\n\n## Sparse kernels\n\nold figures\n\n"
                    "## Hashed and reuse kernels\n\ntheirs\n")
    bench.write_section("## Sparse kernels\n\nnew figures\n", path)
    text = path.read_text()
    assert "old figures" not in text and "new figures" in text
    assert text.endswith("## Hashed and reuse kernels\n\ntheirs\n")
    assert text.startswith("# Benchmark results\n\n## Sparse kernels\n")


def test_write_section_appends_after_other_sections(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmark results\n\n## Hashed and reuse kernels\n\ntheirs\n")
    bench.write_section("## Sparse kernels\n\nnew\n", path)
    assert path.read_text() == ("# Benchmark results\n\n## Hashed and reuse kernels\n\ntheirs\n\n"
                                "## Sparse kernels\n\nnew\n")


def test_block_mask_sparsity():
    import numpy as np
    mask = bench.block_mask(np.random.default_rng(0), 10, 9, (4, 4), 0.75)
    assert mask.shape == (10, 9)
    tiles = np.zeros((12, 12), bool)
    tiles[:10, :9] = mask
    blocks = tiles.reshape(3, 4, 3, 4).transpose(0, 2, 1, 3).reshape(9, 16)
    assert all(b[:].all() or not b.any() for b in blocks[[0, 1, 3, 4]])  # whole blocks kept or not
