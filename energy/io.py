"""Atomic output: write to a temp file beside the target, then rename over it."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, data: str | bytes, protect: tuple[str | os.PathLike, ...] = ()) -> Path:
    """Write ``data`` to ``path`` so a reader never sees a half-written file, even after a crash
    or a kill (the data is flushed to disk before the rename). The file gets the usual
    permissions (0666 less the umask), not mkstemp's private 0600.

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
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target
