"""Resolve a sweep's models to files before any cell runs: build the examples' models (once,
cached in the output folder) and check every ONNX model and data file loads and fits."""
from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from sweep.config import ModelSource
from sweep.store import atomic_write_bytes, atomic_write_text

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_SCRIPTS = {"digits": REPO / "examples" / "digits" / "digits.py"}


@dataclass(frozen=True)
class ModelFiles:
    """A model ready for cells: its ONNX file and its train/test data (.npz with x, y)."""

    name: str
    onnx_path: Path
    train_path: Path
    test_path: Path


def load_example(name: str) -> ModuleType:
    """The example script ``name`` as a module (examples/ is not an installed package)."""
    path = EXAMPLE_SCRIPTS[name]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the {name} example is not there (it ships with a source checkout)")
    spec = importlib.util.spec_from_file_location(f"joulecut_example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _npz_bytes(x, y) -> bytes:
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=y)
    return buffer.getvalue()


def build_example(source: ModelSource, folder: Path, seed: int) -> ModelFiles:
    """Train the example's model (seeded) into ``folder`` unless an identical build is there."""
    import torch

    files = ModelFiles(source.name, folder / "model.onnx", folder / "train.npz", folder / "test.npz")
    meta = {"example": source.example, "options": dict(source.example_options), "seed": seed}
    meta_path = folder / "model.json"
    if meta_path.is_file() and all(p.is_file() for p in (files.onnx_path, files.train_path, files.test_path)):
        try:
            if json.loads(meta_path.read_text()) == meta:
                return files
        except ValueError:
            pass
    example = load_example(source.example)
    options = dict(source.example_options)
    from pruning.export import export_onnx

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic, and no spin-wait contention on small machines
    try:
        (x, y), (x_test, y_test) = example.make_dataset(options["variant"], seed=seed, noise=options["noise"],
                                                        copies=options["copies"])
        model = example.train_cnn(x, y, epochs=options["epochs"], seed=seed, lr=4e-3)
        export_onnx(model, torch.from_numpy(x[:1]), files.onnx_path)
    finally:
        torch.set_num_threads(threads)
    atomic_write_bytes(files.train_path, _npz_bytes(x, y))
    atomic_write_bytes(files.test_path, _npz_bytes(x_test, y_test))
    atomic_write_text(meta_path, json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return files


def check_model(files: ModelFiles) -> None:
    """Raise ModelError / DataError (naming the file) unless the model imports and the data fit it."""
    from energy import load_model
    from pruning.data import check_data, load_npz

    import onnx

    load_model(files.onnx_path, batch=1)  # ModelError names the file and node
    proto = onnx.load(str(files.onnx_path), load_external_data=False)
    inits = {t.name for t in proto.graph.initializer}
    first = next(i for i in proto.graph.input if i.name not in inits)
    shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in first.type.tensor_type.shape.dim)
    out_dims = proto.graph.output[0].type.tensor_type.shape.dim
    classes = out_dims[-1].dim_value if out_dims and out_dims[-1].HasField("dim_value") else None
    for path in (files.train_path, files.test_path):
        x, y = load_npz(path)
        check_data(x, y, shape, classes or int(y.max()) + 1, file=str(path))


def prepare_models(sources, out: Path, seed: int) -> dict[str, ModelFiles]:
    """``{name: ModelFiles}`` for every model; examples are built under ``out/models/<name>``."""
    prepared = {}
    for source in sources:  # the given files first: a bad one stops the sweep before any training
        if not source.example:
            files = ModelFiles(source.name, source.onnx_path, source.train_path, source.test_path)
            check_model(files)
            prepared[source.name] = files
    for source in sources:
        if source.example:
            files = build_example(source, Path(out) / "models" / source.name, seed)
            check_model(files)
            prepared[source.name] = files
    return {source.name: prepared[source.name] for source in sources}
