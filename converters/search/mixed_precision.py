"""Automatic mixed precision: keep the layers that lose most in float, one at a time, until a fidelity target
holds (``quantize.min_cosine`` / ``quantize.min_agreement``).

Each step measures the current int8 file against the float .tflite of the same model on the calibration
inputs (never the held-out evaluation data, which the report's fidelity is measured on), ranks the layers with
weights by the error they add (``verify.layers``: the SNR of the noise each op adds to what its inputs carried,
worst first), keeps the worst one float through the converter's selective quantization (``float_layers``), and
converts again. The report lists each step with the output cosine, agreement and file size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from ..recipe import QuantizeSettings
from ..verify.fidelity import Fidelity, compare, run_tflite
from ..verify.layers import compare_layers

SEARCH_SAMPLES = 128  # calibration samples the target is checked on
LAYER_SAMPLES = 16  # of which the per-layer ranking uses the first
MAX_STEPS = 40  # a bound on conversions; the report says when the target was not reached within it


@dataclass
class Step:
    kept: str | None  # the layer kept float at this step (None: the all-int8 start)
    cosine: float
    agreement: float | None
    file_size: int
    layer_added_db: float | None = None  # the error that layer added, as measured before keeping it


@dataclass
class MixedPrecisionRecord:
    target: str
    data: str
    met: bool
    steps: list[Step] = field(default_factory=list)

    @property
    def kept(self) -> list[str]:
        return [s.kept for s in self.steps if s.kept]

    @property
    def size_cost(self) -> int:
        return self.steps[-1].file_size - self.steps[0].file_size if self.steps else 0

    def to_dict(self) -> dict:
        return {**asdict(self), "kept": self.kept, "size_cost_bytes": self.size_cost}

    def render(self) -> list[str]:
        from ..verify.report import _table

        rows = [[str(i), s.kept or "(all int8)", "" if s.layer_added_db is None else f"{s.layer_added_db:.1f}",
                 f"{s.cosine:.5f}", "" if s.agreement is None else f"{s.agreement:.2f}%", f"{s.file_size:,}"]
                for i, s in enumerate(self.steps)]
        head = (f"automatic mixed precision (target {self.target}, checked against the float .tflite on "
                f"{self.data}): " + (f"met with {len(self.kept)} layer(s) float, +{self.size_cost:,} bytes"
                                     if self.met else f"NOT met after {len(self.kept)} layer(s) float"))
        return [head] + _table(["step", "kept float", "its added dB", "cosine", "agreement", "file bytes"], rows)


def target_text(settings: QuantizeSettings) -> str:
    parts = []
    if settings.min_cosine is not None:
        parts.append(f"cosine >= {settings.min_cosine:g}")
    if settings.min_agreement is not None:
        parts.append(f"top-1 agreement >= {settings.min_agreement:g}%")
    return " and ".join(parts)


def meets(settings: QuantizeSettings, fid: Fidelity) -> bool:
    if settings.min_cosine is not None and fid.cosine < settings.min_cosine:
        return False
    if settings.min_agreement is not None and (fid.top1_agreement is None or
                                               fid.top1_agreement < settings.min_agreement):
        return False
    return True


def search(first: bytes, convert: Callable[[list[str]], bytes], reference: bytes, inputs: np.ndarray,
           candidates: Sequence[str] | Mapping[str, np.ndarray], settings: QuantizeSettings, data_name: str,
           progress: Callable[[str, int, int], None] | None = None) -> tuple[bytes, MixedPrecisionRecord]:
    """Keep layers of ``candidates`` float (``convert(kept)`` writes the file) until ``settings``' target holds
    on ``inputs`` (.tflite layout). ``first`` is the all-int8 file; returns the chosen file and the record."""
    from ..targets.tflite.convert import op_layers

    inputs = inputs[:SEARCH_SAMPLES]
    expected = run_tflite(reference, inputs)
    labels = op_layers(reference, candidates)
    record = MixedPrecisionRecord(target_text(settings), f"{len(inputs)} calibration samples", False)
    current, kept = first, []
    added: float | None = None
    while True:
        fid = compare(expected, run_tflite(current, inputs), None, data_name)
        record.steps.append(Step(kept[-1] if kept else None, round(fid.cosine, 6),
                                 None if fid.top1_agreement is None else round(fid.top1_agreement, 2),
                                 len(current), added))
        if meets(settings, fid):
            record.met = True
            return current, record
        if len(kept) >= MAX_STEPS:
            return current, record
        layers = compare_layers(current, reference, [inputs], data_name, LAYER_SAMPLES, labels)
        ranked = [r for r in layers.worst(len(layers.rows), with_layer=True) if r.layer not in kept]
        if not ranked:
            return current, record
        kept.append(ranked[0].layer)
        added = ranked[0].added_db
        if progress:
            progress("mixed precision", len(kept), len(set(labels.values())))
        current = convert(list(kept))


def float_layers_with(float_layers: Sequence[str] | Mapping[str, np.ndarray], kept: list[str],
                      candidates: Sequence[str] | Mapping[str, np.ndarray]):
    """The user's float layers plus the ones the search kept, in the form ``to_tflite`` takes."""
    if isinstance(candidates, Mapping):
        given = dict(float_layers) if isinstance(float_layers, Mapping) else {name: None for name in float_layers}
        return {**given, **{name: candidates[name] for name in kept}}
    return [*float_layers, *[name for name in kept if name not in float_layers]]


@dataclass
class PrecisionSearch:
    """What the pipelines hand ``export_tflite`` for automatic mixed precision; ``record`` is filled by it."""

    reference: bytes  # the float .tflite of the model being quantized
    inputs: np.ndarray  # calibration inputs, .tflite layout
    candidates: Sequence[str] | Mapping[str, np.ndarray]  # layers with weights: names (Keras) or {name: weights}
    data_name: str
    record: MixedPrecisionRecord | None = None

    def run(self, first: bytes, convert_with: Callable[[object], bytes],
            float_layers: Sequence[str] | Mapping[str, np.ndarray], settings: QuantizeSettings,
            progress: Callable[[str, int, int], None] | None = None) -> bytes:
        """The file meeting the target (or the last tried); ``convert_with(float_layers)`` converts."""
        chosen, self.record = search(
            first, lambda kept: convert_with(float_layers_with(float_layers, kept, self.candidates)),
            self.reference, self.inputs, self.candidates, settings, self.data_name, progress)
        return chosen
