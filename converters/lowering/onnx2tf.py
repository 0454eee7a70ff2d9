"""ONNX -> tf_keras through onnx2tf, offline, quiet, and with one-line errors.

onnx2tf downloads a calibration sample from the internet whenever every input
looks like an RGB image, and prints pages of coloured logs.  Here its download
function is replaced by local data, every socket connection is refused while
it runs, and its output (Python and C++) goes to a log file that errors name.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .. import _tf
from ..errors import ConversionError, first_line

# onnx2tf's sample is 20 images of 128x128x3 in [0, 1]; it only feeds its own shape checks.
SAMPLE_IMAGES_SHAPE = (20, 128, 128, 3)
# Ops TFLite has no builtin for, rewritten by onnx2tf from builtins: Erf outside GELU uses a polynomial
# (GELU subgraphs are Gelu nodes by then, see lowering/gelu.py).  Without it, Erf needs Flex (TensorFlow)
# ops.  Not "gelu": onnx2tf would turn every exact GELU it recognises into the tanh approximation.
PSEUDO_OPS = ["erf"]
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


class NetworkBlocked(OSError):
    """Raised inside onnx2tf when it tries to open a connection."""


def unsupported_ops(model) -> dict[str, str]:
    """{op type: first node name} for ops onnx2tf has no converter for, found before converting."""
    missing = {}
    for node in model.graph.node:
        if node.op_type not in missing and importlib.util.find_spec(f"onnx2tf.ops.{node.op_type}") is None:
            missing[node.op_type] = node.name or "(unnamed)"
    return missing


@dataclass
class Onnx2tfResult:
    model: object  # tf_keras.Model
    channel_last_outputs: dict[str, bool]  # {output name: True when onnx2tf made it channel-last}
    blocked_connections: int  # connection attempts refused while onnx2tf ran; 0 is the norm


def onnx_to_keras(model, keep_channel_first: list[str], log_path: Path, strict: bool = True) -> Onnx2tfResult:
    """Convert with onnx2tf; inputs named in ``keep_channel_first`` keep NCHW/NCW.

    ``strict=False`` skips onnx2tf's accuracy correction, which runs the partly built model after each
    MatMul/Reshape to find transpositions that an NCHW -> NHWC change broke: for graphs without that
    change it finds none and costs a quarter of the time (all-MiniLM-L6-v2: 70 -> 53 s, same output).
    """
    missing = unsupported_ops(model)
    if missing:
        listed = ", ".join(f"{op} (node {node})" for op, node in missing.items())
        raise ConversionError(f"unsupported op for TFLite conversion: {listed}; export with another opset "
                              "(torch.onnx.export(..., opset_version=17)) or replace the op in the model")
    _tf.tensorflow()
    import onnx2tf
    import onnx2tf.onnx2tf as onnx2tf_module

    blocked: list[str] = []
    with tempfile.TemporaryDirectory(prefix="sdk-onnx2tf-") as work, _offline(onnx2tf_module, blocked), \
            _output_to(log_path):
        try:
            keras_model = onnx2tf.convert(
                onnx_graph=model, output_folder_path=work, not_use_onnxsim=True, disable_model_save=True,
                keep_ncw_or_nchw_or_ncdhw_input_names=keep_channel_first or None, verbosity="info",
                replace_to_pseudo_operators=PSEUDO_OPS, disable_strict_mode=not strict)
        except NetworkBlocked:
            raise ConversionError(f"onnx2tf tried to reach the network and was stopped; see {log_path}") \
                from None
        except (Exception, SystemExit) as exc:  # onnx2tf raises anything, or calls sys.exit(1)
            failure = exc
        else:
            failure = None
    if failure is not None:
        raise ConversionError(_explain(failure, model, log_path)) from None
    layouts = dict(getattr(keras_model, "onnx_output_layouts", {}) or {})
    return Onnx2tfResult(keras_model, layouts, len(blocked))


def _explain(exc: BaseException, model, log_path: Path) -> str:
    """One line: which node failed, why, and what to try."""
    log = ANSI_ESCAPE.sub("", log_path.read_text(errors="replace")) if log_path.is_file() else ""
    node_names = re.findall(r"onnx_op_name: (\S+)", log)
    ops = {n.name: n.op_type for n in model.graph.node}
    reason = first_line(exc, 200)
    where = ""
    if node_names:
        name = node_names[-1]
        where = f" at {ops.get(name, 'an')} node {name}"
    return (f"onnx2tf could not convert the model{where}: {reason}; try --keep-nchw, another opset "
            f"(opset_version=17), or a supported alternative op; full log: {log_path}")


@contextlib.contextmanager
def _offline(onnx2tf_module, blocked: list[str]) -> Iterator[None]:
    """Local sample data instead of onnx2tf's download, and no socket may connect meanwhile."""

    def local_sample_images() -> np.ndarray:
        return np.random.default_rng(0).random(SAMPLE_IMAGES_SHAPE, dtype=np.float32)

    def refuse(*args, **kwargs):
        blocked.append(repr(args)[:100])
        raise NetworkBlocked("network access is disabled during conversion")

    patches = [(onnx2tf_module, "download_test_image_data", local_sample_images),
               (socket.socket, "connect", refuse), (socket.socket, "connect_ex", refuse),
               (socket, "create_connection", refuse), (socket, "getaddrinfo", refuse)]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    try:
        for owner, name, replacement in patches:
            setattr(owner, name, replacement)
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


@contextlib.contextmanager
def _output_to(log_path: Path) -> Iterator[None]:
    """Send sys.stdout/stderr and file descriptors 1 and 2 (Python prints and C++ logs) to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(log_path, "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
