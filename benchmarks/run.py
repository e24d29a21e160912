"""Run every benchmark, one after another, each rewriting its own section of RESULTS.md.

    python benchmarks/run.py              # all of them (tens of minutes on 2 cores)
    python benchmarks/run.py estimate dsr # just these

Benchmarks time ratios side by side in one process; run them on a quiet machine.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = {  # name -> arguments that make it write its RESULTS.md section
    "estimate": [],
    "sparse": [],
    "slide": ["--write"],
    "reuse": ["--write"],
    "runner": [],
    "dsr": ["--write"],
    "pruning": ["--write"],
    "sweep": ["--write"],
}


def main(argv: list[str]) -> int:
    names = argv or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    for name in names:
        print(f"== {name}", flush=True)
        code = subprocess.call([sys.executable, str(HERE / f"bench_{name}.py"), *BENCHMARKS[name]])
        if code:
            print(f"bench_{name}.py exited with {code}", file=sys.stderr)
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
