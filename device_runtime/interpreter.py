"""Making and driving the TFLite interpreter: options, delegate libraries, and its errors as ours.

``backend`` chooses the interpreter package; this builds one for a model with
the caller's threads, XNNPACK choice and delegates, and turns whatever the
interpreter raises into the runtime's one-line errors.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import time
from typing import Iterator, Sequence

from .backend import Backend
from .errors import InferenceError, UnsupportedModelError
from .tflite_format import TFLiteModel

DELEGATE_ENTRY_POINTS = ("tflite_plugin_create_delegate", "tflite_plugin_destroy_delegate")


def make_interpreter(backend: Backend, data: bytes, spec: TFLiteModel, num_threads: int | None, use_xnnpack: bool,
                     delegates: Sequence[str]):
    """An interpreter for the checked model ``data`` (``spec``), tensors allocated; a refusal names its cause
    (custom ops the package lacks, a delegate that will not load) in one line."""
    custom = [op for op in spec.ops_used() if op.startswith("CUSTOM:")]
    kwargs = {"model_content": data, "num_threads": num_threads}
    if not use_xnnpack:
        kwargs["experimental_op_resolver_type"] = backend.no_default_delegates
    if delegates:
        for path in delegates:
            check_delegate_library(path)
        try:
            kwargs["experimental_delegates"] = [backend.load_delegate(p) for p in delegates]
        except (ValueError, OSError) as exc:
            raise UnsupportedModelError(f"cannot load delegate {list(delegates)}: {exc}") from None
    try:
        interpreter = backend.interpreter_class(**kwargs)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if custom:
            raise UnsupportedModelError(
                f"the model needs custom ops {', '.join(c[7:] for c in custom)} that the "
                f"{backend.name} interpreter does not have; re-convert with builtin ops "
                f"or load a delegate that provides them") from None
        raise UnsupportedModelError(f"the {backend.name} interpreter refused the model: "
                                    f"{reason}") from None
    return interpreter


def check_delegate_library(path) -> None:
    """Refuse a delegate the interpreter's load_delegate would choke on: a missing file, one that is not a
    shared library, or one without the external-delegate entry points.  load_delegate raises for those
    too, but leaves a half-built object whose finaliser then prints a traceback."""
    try:
        library = ctypes.CDLL(os.fspath(path))
    except OSError as exc:
        raise UnsupportedModelError(f"cannot load delegate {path}: {exc}") from None
    missing = [name for name in DELEGATE_ENTRY_POINTS if not hasattr(library, name)]
    if missing:
        raise UnsupportedModelError(f"{path} is not a TFLite delegate library: it has no {' or '.join(missing)} "
                                    "(the external delegate interface)")


@contextlib.contextmanager
def interpreter_errors() -> Iterator[None]:
    """The interpreter's RuntimeError/ValueError as an InferenceError with its first 300 characters."""
    try:
        yield
    except (RuntimeError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise InferenceError(f"the interpreter failed to run the model: {reason}") from None


def timed_invoke(interpreter) -> float:
    """Invoke, and return the seconds it took: the monitor tells the interpreter's time from the
    pre- and post-processing around it."""
    started = time.perf_counter()
    interpreter.invoke()
    return time.perf_counter() - started
