"""Choice of TFLite interpreter package: the lightest one installed wins.

ai-edge-litert is the maintained package; tflite-runtime 2.14 is what many
Raspberry Pi images carry; full TensorFlow works but costs seconds of import
time and hundreds of MB, so it is only the last resort.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Any

from .errors import ArgumentError, NoInterpreterError

BACKENDS = ("ai-edge-litert", "tflite-runtime", "tensorflow")
_MODULES = {
    "ai-edge-litert": "ai_edge_litert.interpreter",
    "tflite-runtime": "tflite_runtime.interpreter",
    "tensorflow": "tensorflow.lite.python.interpreter",  # the heavy fallback: same API as the others
}


@dataclass(frozen=True)
class Backend:
    name: str
    interpreter_class: Any
    load_delegate: Any
    no_default_delegates: Any  # op-resolver value that turns XNNPACK off

    @property
    def is_heavy(self) -> bool:
        return self.name == "tensorflow"


@functools.cache
def get_backend(name: str = "auto") -> Backend:
    """Import the named interpreter package, or the first installed one for ``"auto"``."""
    if name != "auto" and name not in BACKENDS:
        raise ArgumentError(f"backend must be 'auto' or one of {', '.join(BACKENDS)}; got {name!r}")
    for candidate in BACKENDS if name == "auto" else (name,):
        try:
            module = importlib.import_module(_MODULES[candidate])
        except ImportError:
            continue
        return Backend(candidate, module.Interpreter, module.load_delegate,
                       module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    wanted = "any TFLite interpreter" if name == "auto" else f"the {name} package"
    raise NoInterpreterError(
        f"{wanted} is not installed: pip install ai-edge-litert "
        "(or tflite-runtime on a Raspberry Pi)")
