"""Source models: the one place that tells a source's framework; loaders per framework beside it.

``framework_of`` only looks (a suffix, a factory spec, a class); the loaders in keras.py, torch.py and
onnx.py open the model and raise ``SourceModelError`` for what they cannot read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import SourceModelError

ACCEPTED = ("a .keras or .h5 file, a SavedModel folder, a Keras model, a PyTorch module, TorchScript (.pt) file, "
            "'package.module:factory', or an .onnx file")


def framework_of(source: Any) -> str:
    """"onnx", "pytorch" or "keras" for ``source``; SourceModelError naming what is accepted otherwise."""
    from .keras import is_keras_source
    from .torch import is_torch_source

    if isinstance(source, (str, os.PathLike)) and Path(source).suffix.lower() == ".onnx":
        return "onnx"
    if is_torch_source(source):
        return "pytorch"
    if is_keras_source(source):
        return "keras"
    kind = (Path(source).suffix or "folder") if isinstance(source, (str, os.PathLike)) else type(source).__name__
    raise SourceModelError(f"unknown source model kind {kind!r}: give {ACCEPTED}")
