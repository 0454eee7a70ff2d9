"""Load Keras sources (.keras, .h5, SavedModel directory, in-memory tf_keras or Keras 3 model).

Which Keras wrote a file is read from the file's own metadata; Keras 3 models are
translated to tf_keras (``keras3.py``) because tfmot works on tf_keras only.

The user's model is never modified: files are only read, and an in-memory
model is cloned before any pass touches its weights.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path
from typing import Any

from .. import _tf
from ..errors import SourceModelError, first_line

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


def is_keras_source(source: Any) -> bool:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        return path.suffix.lower() in KERAS_SUFFIXES or (path / "saved_model.pb").exists()
    return any(c.__module__.startswith(("tf_keras", "keras")) for c in type(source).__mro__)


def load_keras_model(source: Any, custom_objects: dict | None = None, notes: list[str] | None = None):
    """A tf_keras model the SDK may modify freely (``notes`` gets a line when a Keras 3 model was translated)."""
    from . import keras3

    if not isinstance(source, (str, os.PathLike)):
        if keras3.is_keras3_model(source):
            return keras3.to_tf_keras(source, notes)
        return _clone(source, _tf.keras())
    path = Path(source)
    _check_file(path)
    if keras3.written_by_keras3(path):
        return keras3.to_tf_keras(keras3.load_keras3_file(path, custom_objects), notes)
    keras = _tf.keras()
    try:
        model = keras.models.load_model(path, custom_objects=custom_objects, compile=False)
    except Exception as exc:  # Keras raises many unrelated types for bad files
        reason = first_line(exc)
        custom = unknown_class(reason)
        if custom:
            raise SourceModelError(f"{path} uses a custom layer {custom!r} that Keras cannot rebuild; "
                                   f"pass custom_objects={{{custom!r}: TheClass}} in the Python API") from None
        raise SourceModelError(f"cannot load Keras model {path}: {reason[:200]} "
                               "(is the file complete?)") from None
    if not isinstance(model, keras.Model):
        raise SourceModelError(f"{path} is a SavedModel but not a Keras model (Keras 3's model.export() writes "
                               "those); give the model's .keras or .h5 file instead")
    return model


def unknown_class(reason: str) -> str | None:
    """The custom class name in Keras's several ways of saying it does not know one."""
    for pattern in (r"Unknown (?:layer|object)[^'\"]*['\"](\w+)", r"layer=(\w+) of type <class 'str'>",
                    r"Could not locate class '(\w+)'"):
        match = re.search(pattern, reason)
        if match:
            return match.group(1)
    return None


def _check_file(path: Path) -> None:
    if not path.exists():
        raise SourceModelError(f"source model not found: {path}")
    if path.is_dir():
        if not (path / "saved_model.pb").exists():
            raise SourceModelError(f"{path} is a folder without saved_model.pb; give a .keras, .h5 "
                                   "or SavedModel folder")
        return
    size = path.stat().st_size
    if size == 0:
        raise SourceModelError(f"source model {path} is empty (0 bytes)")
    suffix = path.suffix.lower()
    if suffix not in KERAS_SUFFIXES:
        raise SourceModelError(f"unknown model kind {path.name}: expected .keras, .h5, a SavedModel "
                               "folder, .onnx or .pt")
    with path.open("rb") as f:
        head = f.read(8)
    if suffix == ".keras" and not zipfile.is_zipfile(path):
        raise SourceModelError(f"{path} is not a valid .keras archive (truncated or corrupt zip)")
    if suffix in (".h5", ".hdf5") and head != HDF5_MAGIC:
        raise SourceModelError(f"{path} is not an HDF5 file (truncated or corrupt)")


def _clone(model, keras):
    if not isinstance(model, keras.Model):
        raise SourceModelError(
            f"in-memory model of type {type(model).__module__}.{type(model).__name__} is not a Keras "
            "model; give a tf_keras or Keras 3 model, or save it to .keras first")
    try:
        clone = keras.models.clone_model(model)
    except ValueError as exc:
        raise SourceModelError(f"cannot copy the in-memory model ({first_line(exc)}); "
                               "subclassed models must be saved to a file first") from None
    clone.set_weights(model.get_weights())
    return clone
