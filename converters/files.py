"""File helpers that never leave a half-written output or touch an input."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
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


def atomic_write_folder(folder: str | os.PathLike, files: dict[str, bytes], mode: int = 0o644) -> None:
    """Write every file of ``files`` ({name: bytes}) into ``folder``: all of them, or none.

    They are written into a temporary folder and moved in at the end: a folder beside ``folder`` renamed
    into place as a whole when ``folder`` does not exist yet, else one inside it whose files are renamed
    over the old ones (renames need no space). A failure, such as a full disk, leaves ``folder`` and its
    parents as they were.
    """
    folder = Path(folder)
    exists = folder.is_dir()
    home = folder if exists else folder.parent
    made = [p for p in (home, *home.parents) if not p.exists()][::-1]  # outermost first
    staging, name = None, None
    try:
        try:
            home.mkdir(parents=True, exist_ok=True)
            candidate = home / f".{folder.name}.{secrets.token_hex(4)}.tmp"
            os.mkdir(candidate)  # the umask's permissions, not mkdtemp's 0o700: it may become ``folder``
            staging = candidate
        except OSError as exc:
            raise OutputPathError(f"cannot write {folder}: {exc.strerror or exc}") from None
        for name, data in files.items():
            _write_new(staging / name, data, mode)
        name = None
        if exists:
            for name in files:
                os.replace(staging / name, folder / name)
            name = None
            staging.rmdir()
        else:
            os.rename(staging, folder)
    except BaseException as exc:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        for parent in reversed(made):
            with contextlib.suppress(OSError):
                parent.rmdir()  # only the empty folders this call made
        if isinstance(exc, OSError):  # a full disk: one line naming the file, not a traceback
            raise OutputPathError(f"cannot write {folder / name if name else folder}: "
                                  f"{exc.strerror or exc}") from None
        raise


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` (which must not exist) with ``data``, flushed to the disk."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, mode)
