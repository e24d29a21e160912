"""Digits end to end: train a small CNN on a harder version of sklearn's 8x8 digits, save it
as ONNX, estimate its energy, prune it to a budget, export the pruned model and check it in
onnxruntime.

    python examples/digits/digits.py [--quick] [--out DIR] [--hw eyeriss] [--budget 25%]

The harder task: every image gets seeded Gaussian pixel noise and a random shift of up to one
pixel in each direction, so pruning methods can be told apart (clean digits are too easy).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 10


class DigitsCNN(nn.Module):
    """conv 1->16 3x3, conv 16->32 3x3, 2x2 max pool, conv 32->32 3x3, fc 512 -> 10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 4 * 4, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        x = F.relu(self.conv3(F.max_pool2d(x, 2)))
        return self.fc(torch.flatten(x, 1))


def _shift(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(image)
    h, w = image.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = image[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def make_dataset(variant: str = "hard", seed: int = 0, noise: float = 0.15, copies: int = 3,
                 test_fraction: float = 0.25) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((x_train, y_train), (x_test, y_test)), x as N x 1 x 8 x 8 float32 in about [0, 1].

    ``variant`` "clean": the images scaled to [0, 1]. "hard": ``copies`` versions of each image,
    each with N(0, noise) pixel noise and a random shift in {-1, 0, 1}^2. The split is by source
    image, so no test digit has a noisy twin in training."""
    train, _, test = make_splits(variant, seed, noise, copies, test_fraction, val_fraction=0.0)
    return train, test


def make_splits(variant: str = "hard", seed: int = 0, noise: float = 0.15, copies: int = 3,
                test_fraction: float = 0.25, val_fraction: float = 0.2):
    """(train, val, test) pairs as in :func:`make_dataset`, all three split by source image, so
    the validation set (what pruning selects on) holds no noisy twin of a training image.
    ``val_fraction`` is of the non-test images; 0 gives an empty validation set."""
    from sklearn.datasets import load_digits

    if variant not in ("clean", "hard"):
        raise ValueError(f"variant must be 'clean' or 'hard', got {variant!r}")
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    n_test = int(round(test_fraction * len(images)))
    n_val = int(round(val_fraction * (len(images) - n_test)))
    parts = []
    for idx in (order[n_test + n_val:], order[n_test:n_test + n_val], order[:n_test]):
        if len(idx) == 0:
            parts.append((np.zeros((0, 1, 8, 8), np.float32), np.zeros(0, np.int64)))
            continue
        if variant == "clean":
            parts.append((images[idx][:, None], labels[idx]))
            continue
        xs, ys = [], []
        for _ in range(copies):
            for i in idx:
                dy, dx = rng.integers(-1, 2, size=2)
                xs.append(_shift(images[i], int(dy), int(dx)) + rng.normal(0.0, noise, size=(8, 8)).astype(np.float32))
                ys.append(labels[i])
        parts.append((np.stack(xs)[:, None].astype(np.float32), np.array(ys, dtype=np.int64)))
    return parts[0], parts[1], parts[2]


def train_cnn(x: np.ndarray, y: np.ndarray, *, epochs: int = 20, seed: int = 0, lr: float = 2e-3) -> DigitsCNN:
    """Train a DigitsCNN with Adam (batch 64)."""
    from pruning.train import fine_tune

    torch.manual_seed(seed)
    model = DigitsCNN()
    fine_tune(model, torch.from_numpy(x), torch.from_numpy(y), epochs=epochs, seed=seed, lr=lr)
    return model.eval()


def onnx_accuracy(path: str | Path, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of an ONNX classifier in onnxruntime."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})[0]
    return float((logits.argmax(axis=1) == y).mean())


def run(out: Path, *, quick: bool = False, hw: str = "eyeriss", budget: str = "25%", method: str = "budget",
        granularity: str = "channel", seed: int = 0, variant: str = "hard", progress=None) -> dict:
    """The whole pipeline; returns a summary dict (energies in pJ, accuracies in [0, 1])."""
    from energy import estimate, load_model
    from pruning.api import prune
    from pruning.export import export_onnx, verify_onnx

    torch.set_num_threads(1)  # a shared 2-core machine: one thread avoids spin-wait contention
    out.mkdir(parents=True, exist_ok=True)
    (x, y), (x_val, y_val), (x_test, y_test) = make_splits(variant, seed=seed, copies=1 if quick else 3)
    model = train_cnn(x, y, epochs=8 if quick else 20, seed=seed, lr=4e-3 if quick else 2e-3)
    model_path = export_onnx(model, torch.from_numpy(x[:1]), out / "digits_cnn.onnx")
    np.savez(out / "digits.npz", x=np.concatenate([x, x_val]), y=np.concatenate([y, y_val]))
    np.savez(out / "digits_test.npz", x=x_test, y=y_test)
    dense = estimate(load_model(model_path, batch=1).graph, hw)
    options = {"initial_step": 0.2} if quick and method == "budget" else None
    result = prune(model_path, hw, budget=budget, method=method, granularity=granularity, train=(x, y),
                   val=(x_val, y_val), seed=seed,
                   finetune_epochs=1 if quick else 4, short_epochs=0.2 if quick else 0.3,
                   calib_size=256 if quick else 1024, method_options=options, progress=progress)
    pruned_path = result.save(out / "digits_cnn_pruned.onnx", source=model_path)
    diff = verify_onnx(pruned_path, result.module, torch.from_numpy(x_test[:64]))
    pruned_estimate = estimate(load_model(pruned_path, batch=1).graph, hw)
    return {
        "dense_energy_pj": float(dense.total_energy_pj),
        "pruned_energy_pj": float(pruned_estimate.total_energy_pj),
        "result_energy_pj": result.energy_after_pj,
        "dense_test_accuracy": onnx_accuracy(model_path, x_test, y_test),
        "pruned_test_accuracy": onnx_accuracy(pruned_path, x_test, y_test),
        "onnxruntime_max_abs_diff": diff,
        "dense_bytes": model_path.stat().st_size,
        "pruned_bytes": pruned_path.stat().st_size,
        "model": str(model_path), "pruned": str(pruned_path), "result": result,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("digits_out"))
    parser.add_argument("--quick", action="store_true", help="tiny data and epochs (for the tests)")
    parser.add_argument("--hw", default="eyeriss")
    parser.add_argument("--budget", default="25%")
    parser.add_argument("--method", default="budget", choices=["magnitude", "energy-aware", "budget"])
    parser.add_argument("--granularity", default="channel", choices=["weight", "channel", "block"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", default="hard", choices=["hard", "clean"])
    args = parser.parse_args(argv)
    s = run(args.out, quick=args.quick, hw=args.hw, budget=args.budget, method=args.method,
            granularity=args.granularity, seed=args.seed, variant=args.variant)
    print(f"dense : {s['dense_energy_pj']:.4g} pJ, test accuracy {s['dense_test_accuracy']:.4f}, {s['dense_bytes']} bytes")
    print(f"pruned: {s['pruned_energy_pj']:.4g} pJ ({100 * s['pruned_energy_pj'] / s['dense_energy_pj']:.1f}% of dense), "
          f"test accuracy {s['pruned_test_accuracy']:.4f}, {s['pruned_bytes']} bytes")
    print(f"onnxruntime vs torch max abs diff {s['onnxruntime_max_abs_diff']:.2e}; wrote {s['pruned']}")
    print(s["result"].to_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
