"""File helpers that never leave a half-written output or touch an input."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import OutputPathError


def check_output_path(output: str | os.PathLike, inputs: list[str | os.PathLike], force: bool) -> Path:
    """Refuse an output that is an input, or that exists without ``force``."""
    out = Path(output)
    for source in inputs:
        if source is not None and Path(source).exists() and out.resolve() == Path(source).resolve():
            raise OutputPathError(f"output {out} is the input model; choose another -o path")
    if out.is_dir():
        raise OutputPathError(f"output {out} is a directory; give a file path such as {out / 'model.tflite'}")
    if out.exists() and not force:
        raise OutputPathError(f"output {out} exists; pass --force (force=True) to overwrite it")
    return out


def atomic_write(path: str | os.PathLike, data: bytes, mode: int = 0o644) -> None:
    """Write to a temporary file in the same folder, then rename over ``path`` in one step.

    ``mode`` is set before the rename, so a secret (0o600) is never readable by others.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
