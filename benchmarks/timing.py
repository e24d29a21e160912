"""Side-by-side timing shared by the benchmarks."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int) -> tuple[dict, dict]:
    """(median wall seconds, median CPU seconds of this thread) per function; each round runs
    every function 3 times in turn, the order alternating between rounds. The CPU time is
    what a call cost when it ran alone on its thread (meaningful with 1 thread: it leaves out
    time the scheduler gave to other processes)."""
    for fn in fns.values():
        fn()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(max(1, repeats // 3)):
        for k in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            time.sleep(0.02)  # let the other OpenMP runtime's threads stop spinning
            for _ in range(3):
                t, c = time.perf_counter(), time.thread_time()
                fns[k]()
                cpu[k].append(time.thread_time() - c)
                wall[k].append(time.perf_counter() - t)
    return ({k: float(np.median(v)) for k, v in wall.items()},
            {k: float(np.median(v)) for k, v in cpu.items()})
