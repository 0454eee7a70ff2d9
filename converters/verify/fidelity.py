"""How closely a .tflite reproduces its source model, measured on held-out inputs."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from device_runtime import Model


@dataclass
class Fidelity:
    samples: int
    data: str
    max_abs_error: float
    mean_abs_error: float
    output_scale: float  # max |reference output|, so errors can be read relative to it
    cosine: float
    top1_agreement: float | None  # percent; for outputs with a class axis
    accuracy_source: float | None  # percent; when labels are given
    accuracy_tflite: float | None
    mismatch: str | None = None  # the .tflite's output cannot be compared: its shape differs from the source's

    def to_dict(self) -> dict:
        return asdict(self)


def run_tflite(data: bytes, x: np.ndarray) -> np.ndarray:
    """The first output of a .tflite on ``x``, in float (quantized outputs are dequantized)."""
    model = Model(data)
    return next(iter(model.run(x).values()))


def compare(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None,
            data_name: str) -> Fidelity:
    """Errors of ``candidate`` against ``reference`` (samples on axis 0); a shape that differs is recorded
    as a ``mismatch`` with NaN errors, never compared by broadcasting."""
    if candidate.shape != reference.shape:
        nan = float("nan")
        return Fidelity(len(reference), data_name, nan, nan, float(np.abs(reference).max(initial=0.0)), nan,
                        None, None, None, f"output shape {tuple(candidate.shape[1:])} where the source gives "
                        f"{tuple(reference.shape[1:])}")
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    got = candidate.reshape(len(candidate), -1).astype(np.float64)
    diff = np.abs(ref - got)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1)
    # A zero output matches only a zero reference: a quantized model that outputs zeros is not faithful.
    same = np.all(ref == got, axis=1).astype(np.float64)
    cos = np.where(norms > 0, (ref * got).sum(axis=1) / np.maximum(norms, 1e-30), same)
    classifier = reference.ndim == 2 and reference.shape[1] > 1
    top1 = float((ref.argmax(1) == got.argmax(1)).mean() * 100) if classifier else None
    acc_ref = acc_got = None
    if classifier and labels is not None:
        acc_ref = float((ref.argmax(1) == labels).mean() * 100)
        acc_got = float((got.argmax(1) == labels).mean() * 100)
    return Fidelity(len(ref), data_name, float(diff.max()), float(diff.mean()), float(np.abs(ref).max(initial=0.0)),
                    float(cos.mean()), top1, acc_ref, acc_got)
