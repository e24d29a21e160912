"""Estimator speed: ResNet-18 and ResNet-50 (generated with numpy + onnx.helper, random weights)
estimated with the full mapping search on one core, cold caches, every built-in spec; each run
costs the search's mappings with the compiled objective (energy/_objective.pyx) and, in turn in
the same process, with NumPy's ``evaluate`` alone, and checks that both give the same energy.

    python benchmarks/bench_estimate.py [--runs 3]

Writes the "## Estimator" section of benchmarks/RESULTS.md. ZigZag is not run here; its
figure (58-75 s for ResNet-18 on a 2-core machine like this one) is quoted from
shared/REFERENCES.md, measured by the project's CEO on the same machine class.
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

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import resnet50_onnx  # noqa: E402
from results import update_section  # noqa: E402

from energy import ModelError, dataflow, estimate, load_model, mapper  # noqa: E402
from hwspecs import builtin_names, load_spec  # noqa: E402

ZIGZAG_RESNET18_S = (58.0, 75.0)


def resnet18(batch: int = 1) -> onnx.ModelProto:
    return resnet50_onnx.build(batch=batch, blocks=(2, 2, 2, 2), bottleneck=False)


COMPILED = (mapper._compiled_objective, mapper._compiled_factors)


def cold_estimate_s(graph, spec, compiled: bool = True) -> tuple[float, float]:
    mapper._search_pool_cached.cache_clear()
    mapper._plan.cache_clear()
    dataflow.hardware_context.cache_clear()
    mapper._compiled_objective, mapper._compiled_factors = COMPILED if compiled else (None, None)
    try:
        t = time.perf_counter()
        report = estimate(graph, spec)
        return time.perf_counter() - t, report.total_energy_pj
    finally:
        mapper._compiled_objective, mapper._compiled_factors = COMPILED


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, proto in (("resnet18", resnet18()), ("resnet50", resnet50_onnx.build())):
            path = Path(tmp) / f"{name}.onnx"
            onnx.save(proto, path)
            t = time.perf_counter()
            graph = load_model(path).graph
            import_s = time.perf_counter() - t
            convs = sum(1 for l in graph.mac_layers() if l.onnx_op == "Conv")
            for spec_name in builtin_names():
                spec = load_spec(spec_name)
                times, numpy_times, energy = [], [], 0.0
                try:
                    for _ in range(args.runs):
                        s, energy = cold_estimate_s(graph, spec)
                        s_numpy, energy_numpy = cold_estimate_s(graph, spec, compiled=False)
                        if energy_numpy != energy:
                            raise SystemExit(f"{name} on {spec_name}: NumPy search gives {energy_numpy} pJ, compiled {energy}")
                        times.append(s)
                        numpy_times.append(s_numpy)
                except ModelError as e:  # a verdict, not a failure: e.g. 224x224 activations vs 512 kB SRAM
                    print(f"{name} on {spec_name}: {e}", flush=True)
                    rows.append((name, convs, graph.total_macs, spec_name, len(spec.dataflows), import_s, None, None, None, str(e)))
                    continue
                rows.append((name, convs, graph.total_macs, spec_name, len(spec.dataflows), import_s,
                             statistics.median(times), min(times), statistics.median(numpy_times), energy))
                print(rows[-1], flush=True)
    load = os.getloadavg()
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (run pinned to one), "
        f"Python {platform.python_version()}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        f"Command: `python benchmarks/bench_estimate.py --runs {args.runs}` (cold mapping caches each run; "
        "import = ONNX load + check + shape inference + IR, timed once). \"NumPy search\": the same estimate "
        "with the search's objective computed by NumPy's `evaluate` instead of energy/_objective.pyx, run in turn "
        "with it in the same process; both give the same energy (checked every run).",
        "",
        "| model | convs | MACs | spec | dataflows searched | import s | estimate s (median) | min s | NumPy search s (median) | speed-up | energy |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, convs, macs, spec, n_df, imp, med, mn, med_numpy, energy in rows:
        if med is None:
            lines.append(f"| {model} | {convs} | {macs / 1e9:.2f} G | {spec} | {n_df} | {imp:.2f} | - | - | - | - | does not fit: {energy.split(': ', 2)[-1]} |")
            continue
        lines.append(f"| {model} | {convs} | {macs / 1e9:.2f} G | {spec} | {n_df} | {imp:.2f} | {med:.3f} | {mn:.3f} | "
                     f"{med_numpy:.3f} | {med_numpy / med:.1f}x | {energy / 1e9:.3f} mJ |")
    r18 = [r for r in rows if r[0] == "resnet18"]
    worst18 = max(r[6] for r in r18 if r[6] is not None)
    lines += [
        "",
        f"ResNet-18, slowest spec: {worst18:.3f} s estimate vs ZigZag's quoted {ZIGZAG_RESNET18_S[0]:.0f}-"
        f"{ZIGZAG_RESNET18_S[1]:.0f} s: {ZIGZAG_RESNET18_S[0] / worst18:.0f}-{ZIGZAG_RESNET18_S[1] / worst18:.0f}x "
        "(not side by side: ZigZag was not run in this benchmark, and its search space and cost model differ).",
    ]
    update_section("Estimator", "\n".join(lines))


if __name__ == "__main__":
    main()
