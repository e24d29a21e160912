"""Atomic output: write to a temp file beside the target, then rename over it."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: str | os.PathLike, data: str | bytes, protect: tuple[str | os.PathLike, ...] = ()) -> Path:
    """Write ``data`` to ``path`` so a reader never sees a half-written file.

    Raises ValueError if ``path`` is one of the ``protect`` paths (the command's inputs)."""
    target = Path(path)
    for p in protect:
        if Path(p).exists() and target.exists() and os.path.samefile(p, target):
            raise ValueError(f"refusing to overwrite the input file {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target
