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
    check_writable_folder(out)
    return out


def check_writable_folder(output: str | os.PathLike) -> None:
    """Refuse, before any work is done, an output whose folder cannot be made or written to."""
    folder = Path(output).absolute().parent
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise OutputPathError(f"cannot write {output}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot write {output}: no permission to write in {existing}")


def atomic_write(path: str | os.PathLike, data: bytes, mode: int = 0o644) -> None:
    """Write to a temporary file in the same folder, then rename over ``path`` in one step.

    ``mode`` is set before the rename, so a secret (0o600) is never readable by others.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputPathError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):  # a full disk, a folder made read-only meanwhile: one line, not a traceback
            raise OutputPathError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise
