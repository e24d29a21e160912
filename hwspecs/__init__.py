"""Hardware descriptions (YAML) for the energy estimator: schema, loader and built-in specs.

    spec = load_spec("eyeriss")          # a built-in, or a path to a YAML file
    print(describe_spec(spec))

The YAML schema is documented in hwspecs/SCHEMA.md; a bad file raises SpecError listing
every problem as FILE:LINE: key.path: message.
"""
from __future__ import annotations

from hwspecs.checks import dataflow_unsupported
from hwspecs.describe import describe_spec, list_specs
from hwspecs.errors import SpecError, SpecProblem
from hwspecs.loader import builtin_names, builtin_path, load_spec, load_spec_text
from hwspecs.spec import (
    Dataflow,
    HardwareSpec,
    MemoryLevel,
    Operand,
    OperandSparsity,
    PEArray,
    SparseFormat,
    SparsityAction,
)

__all__ = [
    "Dataflow",
    "HardwareSpec",
    "MemoryLevel",
    "Operand",
    "OperandSparsity",
    "PEArray",
    "SparseFormat",
    "SparsityAction",
    "SpecError",
    "SpecProblem",
    "builtin_names",
    "builtin_path",
    "dataflow_unsupported",
    "describe_spec",
    "list_specs",
    "load_spec",
    "load_spec_text",
]
