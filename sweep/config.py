"""The sweep config: a YAML file naming models, devices, budgets, methods and granularities.

    seed: 0                      # every cell is seeded from this and the cell's key
    output: report               # output folder, relative to this file (optional)
    models:
      - name: digits             # optional for an onnx model (default: the file's stem)
        example: digits          # a model made by examples/digits/digits.py ...
        epochs: 8                #   ... trained for this many epochs on `copies` noisy copies
      - onnx: models/mlp.onnx    # ... or an ONNX file with its data (.npz with x and y)
        train: data/train.npz
        test: data/test.npz
    devices: [eyeriss, mobile-cpu, my-spec.yaml]   # built-in names or YAML files
    budgets: [100%, 50%, 25%]    # 100% (or `dense`) is the unpruned model
    methods: [budget]            # see pruning.methods.METHODS
    granularities: [channel]     # weight, channel, block
    prune: {finetune_epochs: 1}  # extra keywords of pruning.api.prune
    validate: true               # check each pruned model: onnxruntime vs torch, kernels vs onnxruntime

Paths are relative to the config file. ``load_config`` checks everything (YAML syntax, types,
unknown keys with a did-you-mean, unknown spec names, missing files, duplicate cells) and
raises one :class:`~sweep.errors.SweepConfigError` listing every problem with its line.
"""
from __future__ import annotations

import difflib
import hashlib
import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from sweep.errors import ConfigProblem, SweepConfigError
from sweep.yamltree import read_yaml

TOP_KEYS = ("seed", "output", "models", "devices", "budgets", "methods", "granularities", "prune", "validate")
REQUIRED = ("models", "devices", "budgets")
ONNX_MODEL_KEYS = ("name", "onnx", "train", "test")
EXAMPLE_MODEL_KEYS = ("name", "example", "epochs", "copies", "variant", "noise")
EXAMPLES = {"digits": {"epochs": 8, "copies": 1, "variant": "hard", "noise": 0.15}}
DENSE = "100%"
# prune() keywords the sweep sets itself, so a config may not.
RESERVED_PRUNE = ("model", "spec", "budget", "method", "granularity", "train", "val", "calib", "evaluate_fn",
                  "seed", "progress", "estimate_fn")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass(frozen=True)
class ModelSource:
    """A model of the sweep: an ONNX file with train/test data, or an example to build."""

    name: str
    onnx_path: Path | None = None
    train_path: Path | None = None
    test_path: Path | None = None
    example: str | None = None
    example_options: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Device:
    """A hardware spec: ``label`` names it in tables, ``spec`` is what load_spec takes."""

    label: str
    spec: str


@dataclass(frozen=True)
class Cell:
    """One unit of work: a model on a device at a budget with a method and granularity.
    The dense cell (budget 100%) has method ``dense`` and granularity ``-``."""

    model: str
    device: str
    budget: str
    method: str
    granularity: str
    seed: int

    @property
    def key(self) -> str:
        if self.is_dense:
            return f"{self.model}/{self.device}/{DENSE}"
        return f"{self.model}/{self.device}/{self.budget}/{self.method}/{self.granularity}"

    @property
    def is_dense(self) -> bool:
        return self.budget == DENSE

    @property
    def slug(self) -> str:
        """A file name for this cell, unique per key."""
        readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.key.replace("%", "pct"))
        return f"{readable}-{hashlib.sha256(self.key.encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class SweepConfig:
    """A validated sweep config (paths absolute)."""

    file: Path
    seed: int
    models: tuple[ModelSource, ...]
    devices: tuple[Device, ...]
    budgets: tuple[str, ...]
    methods: tuple[str, ...]
    granularities: tuple[str, ...]
    prune_options: tuple[tuple[str, Any], ...]
    validate: bool
    output: Path | None

    def cells(self) -> list[Cell]:
        """Every cell, in a fixed order: model, device, then dense first and budgets as written."""
        cells = []
        for model in self.models:
            for device in self.devices:
                for budget in self.budgets:
                    if budget == DENSE:
                        combos = [("dense", "-")]
                    else:
                        combos = [(m, g) for m in self.methods for g in self.granularities]
                    for method, granularity in combos:
                        probe = Cell(model.name, device.label, budget, method, granularity, 0)
                        cells.append(Cell(model.name, device.label, budget, method, granularity,
                                          cell_seed(self.seed, probe.key)))
        return cells

    def model(self, name: str) -> ModelSource:
        return next(m for m in self.models if m.name == name)

    def device(self, label: str) -> Device:
        return next(d for d in self.devices if d.label == label)


def cell_seed(seed: int, key: str) -> int:
    """The seed of a cell: a hash of the config's seed and the cell's key (31 bits)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:4], "big") & 0x7FFFFFFF


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _got(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


class _Checker:
    """Collects problems with their lines."""

    def __init__(self, file: str, lines: Mapping[str, int]):
        self.file, self.lines, self.problems = file, lines, []

    def add(self, path: str, message: str) -> None:
        line = self.lines.get(path)
        parent = path
        while line is None and parent:
            parent = parent.rsplit(".", 1)[0] if "." in parent else ""
            line = self.lines.get(parent)
        self.problems.append(ConfigProblem(self.file, line, path, message))

    def keys(self, mapping: dict, path: str, allowed, required=()) -> None:
        for key in mapping:
            if key not in allowed:
                child = f"{path}.{key}" if path else str(key)
                self.add(child, f"unknown key '{key}'{_did_you_mean(key, allowed)}; allowed: {', '.join(allowed)}")
        for key in required:
            if key not in mapping:
                self.add(path, f"missing required key '{key}'")

    def string_list(self, value: Any, path: str) -> list[tuple[str, str]]:
        """[(item, item path)] of a non-empty list of strings (a single string counts as one)."""
        if isinstance(value, str):
            value = [value]
            items = [(value[0], path)]
        elif not isinstance(value, list) or not value:
            self.add(path, f"must be a non-empty list, got {_got(value)}")
            return []
        else:
            items = [(v, f"{path}[{i}]") for i, v in enumerate(value)]
        good = []
        for item, p in items:
            if isinstance(item, str) and item.strip():
                good.append((item.strip(), p))
            else:
                self.add(p, f"must be a string, got {_got(item)}")
        return good

    def unique(self, items: list[tuple[Any, str, str]], what: str) -> list[tuple[Any, str, str]]:
        """Drop (and report) repeated identities; items are (identity, shown, path)."""
        seen: dict[Any, str] = {}
        kept = []
        for ident, shown, path in items:
            if ident in seen:
                first = self.lines.get(seen[ident])
                self.add(path, f"duplicate {what} {shown!r} (same as {seen[ident]}"
                         + (f" on line {first}" if first else "") + "): it would repeat cells")
                continue
            seen[ident] = path
            kept.append((ident, shown, path))
        return kept


def _resolve(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path)


def _models(raw: Any, check: _Checker, base: Path) -> list[ModelSource]:
    if not isinstance(raw, list) or not raw:
        check.add("models", f"must be a non-empty list of models, got {_got(raw)}")
        return []
    models = []
    for i, entry in enumerate(raw):
        path = f"models[{i}]"
        if isinstance(entry, str):
            entry = {"onnx": entry}
        if not isinstance(entry, dict):
            check.add(path, f"must be a mapping with 'onnx' (and 'train', 'test') or 'example', got {_got(entry)}")
            continue
        if "example" in entry:
            example = entry["example"]
            check.keys(entry, path, EXAMPLE_MODEL_KEYS)
            if example not in EXAMPLES:
                check.add(f"{path}.example", f"unknown example {example!r}{_did_you_mean(example, EXAMPLES)}; "
                          f"examples: {', '.join(EXAMPLES)}")
                continue
            from sweep.models import EXAMPLE_SCRIPTS

            if not EXAMPLE_SCRIPTS[example].is_file():
                check.add(f"{path}.example", f"no such file: {EXAMPLE_SCRIPTS[example]} (the {example} example "
                          "ships with a source checkout of joulecut)")
                continue
            options = dict(EXAMPLES[example])
            for key, default in EXAMPLES[example].items():
                if key not in entry:
                    continue
                value = entry[key]
                if isinstance(default, str):
                    ok = value in ("hard", "clean")
                    want = "'hard' or 'clean'"
                elif isinstance(default, int):
                    ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
                    want = "a positive integer"
                else:
                    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
                    want = "a number >= 0"
                if not ok:
                    check.add(f"{path}.{key}", f"must be {want}, got {_got(value)}")
                options[key] = value
            name = entry.get("name", example)
            models.append((ModelSource(name=str(name), example=example, example_options=tuple(sorted(options.items()))), path))
            continue
        check.keys(entry, path, ONNX_MODEL_KEYS, required=("onnx", "train", "test"))
        files = {}
        for key in ("onnx", "train", "test"):
            value = entry.get(key)
            if value is None:
                continue
            if not isinstance(value, str):
                check.add(f"{path}.{key}", f"must be a file path, got {_got(value)}")
                continue
            file = _resolve(base, value)
            if not file.is_file():
                check.add(f"{path}.{key}", f"no such file: {file}" if not file.exists() else f"not a file: {file}")
                continue
            files[key] = file
        if len(files) < 3:
            continue
        name = entry.get("name", files["onnx"].stem)
        models.append((ModelSource(name=str(name), onnx_path=files["onnx"], train_path=files["train"], test_path=files["test"]), path))
    named = []
    for model, path in models:
        if not _NAME.match(model.name):
            check.add(f"{path}.name" if f"{path}.name" in check.lines else path,
                      f"model name must be letters, digits and _.+- (no spaces or slashes), got {model.name!r}")
            continue
        named.append((model.name, model.name, path))
    keep = {path for _, _, path in check.unique(named, "model")}
    return [m for m, p in models if p in keep]


def _devices(raw: Any, check: _Checker, base: Path) -> list[Device]:
    from hwspecs import SpecError, builtin_names, load_spec

    names = builtin_names()
    found = []
    for value, path in check.string_list(raw, "devices"):
        looks_like_file = value.endswith((".yaml", ".yml")) or "/" in value or "\\" in value
        if not looks_like_file and value not in names:
            hint = _did_you_mean(value, names)
            check.add(path, f"unknown hardware spec {value!r}{hint}; built-in specs: {', '.join(names)} "
                      "(or give a path to a .yaml file)")
            continue
        target = value if not looks_like_file else str(_resolve(base, value))
        if looks_like_file and not Path(target).is_file():
            check.add(path, f"no such spec file: {target}")
            continue
        try:
            spec = load_spec(target)
        except SpecError as exc:
            check.add(path, f"invalid hardware spec: {exc}")
            continue
        label = value if not looks_like_file else spec.name
        found.append((Device(label=label, spec=target), path))
    keep = {p for _, _, p in check.unique([(d.label, d.label, p) for d, p in found], "device")}
    return [d for d, p in found if p in keep]


def _budgets(raw: Any, check: _Checker) -> list[str]:
    from pruning.budget import BudgetError, parse_budget

    parsed = []
    items = raw if isinstance(raw, list) else [raw]
    if not isinstance(raw, (list, str)) or (isinstance(raw, list) and not raw):
        check.add("budgets", f"must be a non-empty list of budgets like 100%, 50% or 2.5mJ, got {_got(raw)}")
        return []
    for i, value in enumerate(items):
        path = f"budgets[{i}]" if isinstance(raw, list) else "budgets"
        text = str(value).strip() if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None
        if text is None:
            check.add(path, f"must be a budget like 100%, 50% or 2.5mJ, got {_got(value)}")
            continue
        if text.lower() == "dense" or re.fullmatch(r"100(\.0*)?\s*%", text):
            parsed.append((("dense",), DENSE, path))
            continue
        try:
            budget = parse_budget(text)
        except BudgetError as exc:
            check.add(path, f"{exc} (100% or 'dense' is the unpruned model)")
            continue
        parsed.append(((budget.fraction, budget.energy_pj), str(budget), path))
    return [shown for _, shown, _ in check.unique(parsed, "budget")]


def _choices(raw: Any, path: str, choices, check: _Checker) -> list[str]:
    picked = []
    for value, p in check.string_list(raw, path):
        if value not in choices:
            check.add(p, f"must be one of {', '.join(choices)}, got {value!r}{_did_you_mean(value, choices)}")
            continue
        picked.append((value, value, p))
    return [v for v, _, _ in check.unique(picked, path.rstrip("s"))]


def prune_option_defaults() -> dict[str, Any]:
    """The keywords of pruning.api.prune a config may set, with their defaults."""
    from pruning.api import prune

    return {name: p.default for name, p in inspect.signature(prune).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in RESERVED_PRUNE}


def _type_ok(value: Any, default: Any) -> tuple[bool, str]:
    if isinstance(default, bool):
        return isinstance(value, bool), "true or false"
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool), "an integer"
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    if isinstance(default, str):
        return isinstance(value, str), "a string"
    if isinstance(default, tuple):
        return isinstance(value, list), "a list"
    return True, ""


def _prune_options(raw: Any, check: _Checker) -> list[tuple[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, dict):
        check.add("prune", f"must be a mapping of pruning.api.prune keywords, got {_got(raw)}")
        return []
    defaults = prune_option_defaults()
    check.keys(raw, "prune", tuple(defaults))
    options = []
    for key, value in raw.items():
        if key not in defaults:
            continue
        ok, want = _type_ok(value, defaults[key])
        if key == "method_options" and not isinstance(value, dict):
            ok, want = False, "a mapping"
        if not ok:
            check.add(f"prune.{key}", f"must be {want}, got {_got(value)}")
            continue
        options.append((key, tuple(value) if isinstance(value, list) else value))
    return sorted(options, key=lambda kv: kv[0])


def load_config(path: str | Path, *, output: str | Path | None = None) -> SweepConfig:
    """Read and validate a sweep config; ``output`` overrides the config's ``output`` key.
    Raises SweepConfigError listing every problem (file:line: key: message)."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SweepConfigError([ConfigProblem(str(file), None, "", "no such config file")]) from None
    except IsADirectoryError:
        raise SweepConfigError([ConfigProblem(str(file), None, "", "is a directory, not a YAML file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SweepConfigError([ConfigProblem(str(file), None, "", f"cannot be read: {exc}")]) from None
    return parse_config(text, str(file), base=file.resolve().parent, output=output)


def parse_config(text: str, file: str = "<string>", *, base: Path | None = None,
                 output: str | Path | None = None) -> SweepConfig:
    """Validate config text; relative paths are taken from ``base`` (default: the cwd)."""
    base = (base or Path.cwd()).resolve()
    raw, lines = read_yaml(text, file)
    check = _Checker(file, lines)
    if not isinstance(raw, dict):
        check.add("", f"must be a mapping with keys {', '.join(REQUIRED)}, got {_got(raw)}")
        raise SweepConfigError(check.problems)
    check.keys(raw, "", TOP_KEYS, REQUIRED)
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        check.add("seed", f"must be an integer >= 0, got {_got(seed)}")
    validate = raw.get("validate", True)
    if not isinstance(validate, bool):
        check.add("validate", f"must be true or false, got {_got(validate)}")
    out = raw.get("output")
    if out is not None and not isinstance(out, str):
        check.add("output", f"must be a folder path, got {_got(out)}")
    models = _models(raw.get("models"), check, base) if "models" in raw else []
    devices = _devices(raw.get("devices"), check, base) if "devices" in raw else []
    budgets = _budgets(raw.get("budgets"), check) if "budgets" in raw else []
    from pruning.api import GRANULARITIES
    from pruning.methods import METHODS

    methods = _choices(raw.get("methods", ["budget"]), "methods", METHODS, check)
    granularities = _choices(raw.get("granularities", ["channel"]), "granularities", GRANULARITIES, check)
    options = _prune_options(raw.get("prune"), check)
    if check.problems:
        raise SweepConfigError(check.problems)
    output_path = Path(output) if output is not None else (_resolve(base, out) if out else None)
    return SweepConfig(file=Path(file), seed=seed, models=tuple(models), devices=tuple(devices),
                       budgets=tuple(budgets), methods=tuple(methods), granularities=tuple(granularities),
                       prune_options=tuple(options), validate=validate, output=output_path)
