"""Whole pruned models on joulecut's kernel runner vs onnxruntime, side by side.

    python benchmarks/bench_runner.py [--repeats 30]

Models: the digits CNN (examples/digits, trained 4 epochs on clean digits) and the shipped
ResNet-style examples/models/tiny_resnet.onnx, each magnitude-pruned to 90% weight sparsity
per layer. For each batch size: onnxruntime on the dense model, onnxruntime on the pruned
model (it gains nothing from zeros), and GraphRunner on the pruned model (each layer in the
format its weight calls for), one thread each, interleaved rounds, medians. Writes the
"## Whole-model runner" section of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "examples" / "digits"), str(Path(__file__).resolve().parent)]
from results import update_section  # noqa: E402


def prune_90(model: onnx.ModelProto) -> onnx.ModelProto:
    pruned = onnx.ModelProto.FromString(model.SerializeToString())
    for t in pruned.graph.initializer:
        w = numpy_helper.to_array(t).copy()
        if w.ndim >= 2:
            w[np.abs(w) < np.quantile(np.abs(w), 0.9)] = 0
            t.CopyFrom(numpy_helper.from_array(w, t.name))
    return pruned


def with_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    m = onnx.ModelProto.FromString(model.SerializeToString())
    for v in list(m.graph.input) + list(m.graph.output):
        v.type.tensor_type.shape.dim[0].dim_value = batch
    del m.graph.value_info[:]
    return m


def digits_model(folder: Path) -> onnx.ModelProto:
    import torch

    import digits
    from pruning.export import export_onnx

    (x, y), _ = digits.make_dataset("clean", seed=0, copies=1)
    model = digits.train_cnn(x, y, epochs=4, seed=0)
    return onnx.load(export_onnx(model, torch.from_numpy(x[:1]), folder / "digits.onnx"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    import onnxruntime as ort
    from threadpoolctl import threadpool_limits

    from kernels.runner import GraphRunner

    rows = []
    with tempfile.TemporaryDirectory() as tmp, threadpool_limits(limits=1, user_api="blas"):
        models = {"digits CNN": digits_model(Path(tmp)), "tiny ResNet": onnx.load(ROOT / "examples/models/tiny_resnet.onnx")}
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        for name, dense in models.items():
            for batch in (1, 32):
                d, p = with_batch(dense, batch), with_batch(prune_90(dense), batch)
                shape = [batch] + [x.dim_value for x in d.graph.input[0].type.tensor_type.shape.dim[1:]]
                feeds = {d.graph.input[0].name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
                ort_dense = ort.InferenceSession(d.SerializeToString(), options)
                ort_pruned = ort.InferenceSession(p.SerializeToString(), options)
                runner = GraphRunner(p)
                ref = ort_pruned.run(None, feeds)[0]
                err = float(np.abs(runner.run(feeds)[0] - ref).max() / np.abs(ref).max())
                times = {"ort dense": [], "ort pruned": [], "kernels pruned": []}
                for _ in range(args.repeats):  # interleaved rounds
                    for label, fn in (("ort dense", lambda: ort_dense.run(None, feeds)),
                                      ("ort pruned", lambda: ort_pruned.run(None, feeds)),
                                      ("kernels pruned", lambda: runner.run(feeds))):
                        t = time.perf_counter()
                        fn()
                        times[label].append(time.perf_counter() - t)
                med = {k: statistics.median(v) for k, v in times.items()}
                layer_s = sum(l.seconds for l in runner.last_run if l.dense_macs)
                total_s = sum(l.seconds for l in runner.last_run)
                formats = sorted({l.format for l in runner.last_run if l.dense_macs})
                rows.append((name, batch, med, err, layer_s / total_s, formats))
                print(rows[-1], flush=True)
    load = os.getloadavg()
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, one thread for every side; load average "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        f"Command: `python benchmarks/bench_runner.py --repeats {args.repeats}` (medians of interleaved rounds). "
        "Pruned = 90% of every weight zeroed by magnitude, per layer.",
        "",
        "| model | batch | ort dense ms | ort pruned ms | kernels pruned ms | speed-up vs ort dense | kernel formats | share of runner time in weight layers | max rel. error vs ort |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, batch, med, err, share, formats in rows:
        lines.append(f"| {name} | {batch} | {med['ort dense'] * 1e3:.3f} | {med['ort pruned'] * 1e3:.3f} | "
                     f"{med['kernels pruned'] * 1e3:.3f} | {med['ort dense'] / med['kernels pruned']:.2f}x | "
                     f"{', '.join(formats)} | {100 * share:.0f}% | {err:.1e} |")
    lines += ["", "Fell short: on these small models the runner is slower than onnxruntime's dense run, not faster. "
              "It executes node by node in Python with NumPy for the non-weight ops (the per-node overhead sets the "
              "time at batch 1), and at 16-64 channels the sparse conv kernels (im2col panels, CSR) run well below "
              "onnxruntime's dense convolutions even at 90% sparsity (the weight-layer share above). The kernels' "
              "speed-ups at realistic layer sizes are in \"Sparse kernels\"; a fused graph and small-channel "
              "direct-conv kernels are what the runner lacks."]
    update_section("Whole-model runner", "\n".join(lines))


if __name__ == "__main__":
    main()
