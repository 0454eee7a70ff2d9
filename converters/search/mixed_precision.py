"""Automatic mixed precision: keep the layers that lose most in float, one at a time, until a fidelity target
holds (``quantize.min_cosine`` / ``quantize.min_agreement``).

Each step measures the current int8 file against the float .tflite of the same model on the calibration
inputs (never the held-out evaluation data, which the report's fidelity is measured on), keeps the next layer
float through the converter's selective quantization (``float_layers``), and converts again (the model is
calibrated once; each step only re-quantizes). The order: each layer's own error (``weight_effect``: the
model's output error with only that layer's weights int8, measured once; on the ONNX graph for PyTorch/ONNX,
on the tf_keras model for Keras); without a ranking (a PyTorch/ONNX model with several inputs), the per-layer
report's (the SNR of the noise each op adds to what its inputs carried, worst first, measured again at each
step). A layer kept float gets back its bias from before bias
correction (the correction was for its int8 weights). The report lists each step with the output cosine,
agreement, file size and latency (through the runtime).

Activations in int16 for some layers only (int16x8 as a step cheaper than float) are not possible: TF 2.19's
quantizer takes one inference type for the whole model (``mlir_quantize(inference_type=...)``); whole-model
int16x8 is ``quantize.mode: int16x8``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from ..data import Dataset
from ..recipe import QuantizeSettings, Recipe
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
    layer_error: float | None = None  # or its own error (1 - output cosine with only it int8), as ranked
    latency_ms: float | None = None  # median of single-thread runs through device_runtime
    activations: str = "int8"  # "int16": the whole model with int16 activations (int16x8), no layer float


@dataclass
class MixedPrecisionRecord:
    target: str
    data: str
    met: bool
    steps: list[Step] = field(default_factory=list)
    stopped: str | None = None  # why the search ended without meeting the target
    int16_tried: Step | None = None  # whole-model int16 activations, tried and not taken

    @property
    def activations(self) -> str:
        return self.steps[-1].activations if self.steps else "int8"

    @property
    def kept(self) -> list[str]:
        return [s.kept for s in self.steps if s.kept] if self.activations == "int8" else []

    @property
    def size_cost(self) -> int:
        return self.steps[-1].file_size - self.steps[0].file_size if self.steps else 0

    @property
    def latency_cost_ms(self) -> float | None:
        first, last = (self.steps[0].latency_ms, self.steps[-1].latency_ms) if self.steps else (None, None)
        return None if first is None or last is None else round(last - first, 3)

    def to_dict(self) -> dict:
        return {**asdict(self), "kept": self.kept, "activations": self.activations, "size_cost_bytes": self.size_cost,
                "latency_cost_ms": self.latency_cost_ms}

    def note(self) -> str:
        """One line for the report's notes."""
        cost = f", +{self.size_cost:,} bytes" + ("" if self.latency_cost_ms is None
                                                 else f", {self.latency_cost_ms:+.2f} ms")
        if self.activations == "int16":
            return (f"automatic mixed precision ({self.target}): " + ("" if self.met else "target NOT met; ")
                    + f"keeping up to {len(self.steps) - 2} layer(s) float did not meet it, so the file has int16 "
                    f"activations and int8 weights in every layer (int16x8; TF 2.19 cannot mix them with float "
                    f"layers){cost}")
        kept = f"{len(self.kept)} layer(s) kept float32 ({', '.join(self.kept)}){cost}"
        tried = "" if self.int16_tried is None else (
            f"; int16 activations (int16x8) tried too: cosine {self.int16_tried.cosine:.5f}"
            + ("" if self.int16_tried.agreement is None else f", agreement {self.int16_tried.agreement:.2f}%"))
        if self.met:
            return f"automatic mixed precision ({self.target}): " + (kept if self.kept else
                                                                      "every layer int8 already meets it")
        return (f"automatic mixed precision ({self.target}): target NOT met on {self.data}, "
                + (kept if self.kept else "no layer kept float") + f": {self.stopped}{tried}")

    def render(self) -> list[str]:
        from ..verify.report import _table

        rows = [[str(i), s.kept or ("(int16 activations, every layer)" if s.activations == "int16" else "(all int8)"),
                 _blame(s), f"{s.cosine:.5f}",
                 "" if s.agreement is None else f"{s.agreement:.2f}%", f"{s.file_size:,}",
                 "" if s.latency_ms is None else f"{s.latency_ms:.2f}"] for i, s in enumerate(self.steps)]
        latency = "" if self.latency_cost_ms is None else f", {self.latency_cost_ms:+.2f} ms"
        head = (f"automatic mixed precision (target {self.target}, checked against the float .tflite on "
                f"{self.data}): " + (f"met with {len(self.kept)} layer(s) float, +{self.size_cost:,} bytes{latency}"
                                     if self.met else f"NOT met after {len(self.kept)} layer(s) float: "
                                     f"{self.stopped}"))
        return [head] + _table(["step", "kept float", "its error", "cosine", "agreement", "file bytes",
                                "latency ms"], rows)


def _blame(step: Step) -> str:
    if step.layer_error is not None:
        return f"1-cos {step.layer_error:.2e}"
    return "" if step.layer_added_db is None else f"{step.layer_added_db:.1f} dB added"


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
           progress: Callable[[str, int, int], None] | None = None,
           ranking: Callable[[], list[tuple[str, float]]] | None = None,
           matched: Mapping[str, np.ndarray] | None = None) -> tuple[bytes, MixedPrecisionRecord]:
    """Keep layers of ``candidates`` float (``convert(kept)`` writes the file) until ``settings``' target holds
    on ``inputs`` (.tflite layout). ``first`` is the all-int8 file; ``ranking()`` gives [(layer, own error)]
    worst first (else the per-layer report ranks at each step); ``matched``: the weights as the converted files
    hold them, where they differ from the candidates' (``restore_biases``); returns the chosen file and the
    record."""
    from ..targets.tflite.convert import op_layers

    inputs = inputs[:SEARCH_SAMPLES]
    expected = run_tflite(reference, inputs)
    labels = op_layers(reference, candidates)
    record = MixedPrecisionRecord(target_text(settings), f"{len(inputs)} calibration samples", False)
    current, kept = first, []
    added: float | None = None
    own: float | None = None
    ranked_once: list[tuple[str, float]] | None = None
    while True:
        fid = compare(expected, run_tflite(current, inputs), None, data_name)
        record.steps.append(Step(kept[-1] if kept else None, round(fid.cosine, 6),
                                 None if fid.top1_agreement is None else round(fid.top1_agreement, 2),
                                 len(current), added, own, latency_ms(current)))
        if meets(settings, fid):
            record.met = True
            return current, record
        if len(kept) >= MAX_STEPS:
            record.stopped = f"stopped after {MAX_STEPS} layers (the search's bound)"
            return current, record
        if ranking is not None:
            ranked_once = ranking() if ranked_once is None else ranked_once
            left = [(layer, error) for layer, error in ranked_once if layer not in kept]
            if not left:
                record.stopped = _none_left(ranked_once, labels, candidates)
                return current, record
            kept.append(left[0][0])
            own = left[0][1]
        else:
            layers = compare_layers(current, reference, [inputs], data_name, LAYER_SAMPLES, labels)
            ranked = [r for r in layers.worst(len(layers.rows), with_layer=True) if r.layer not in kept]
            if not ranked:
                record.stopped = _none_left(None, labels, candidates)
                return current, record
            kept.append(ranked[0].layer)
            added = ranked[0].added_db
        if progress:
            progress("mixed precision", len(kept), len(set(labels.values())))
        current = restore_biases(convert(list(kept)), reference,
                                 {name: candidates[name] for name in kept} if isinstance(candidates, Mapping)
                                 else list(kept), {name: matched[name] for name in kept} if matched else None)


def _none_left(ranked, labels: Mapping[int, str], candidates) -> str:
    """Why no layer is left to keep float."""
    found = len(set(labels.values()))
    if not found:
        return f"none of the {len(candidates)} layers with weights was found in the converted file"
    if ranked is not None:
        return f"every ranked layer ({len(ranked)}) is float already"
    return (f"every layer found in the converted file ({found} of {len(candidates)} with weights) whose ops add "
            "error is float already")


def latency_ms(data: bytes, runs: int = 20) -> float | None:
    """Median single-thread latency of ``data`` through device_runtime (random inputs), or None if it fails."""
    from device_runtime.bench import benchmark

    try:
        return round(benchmark(data, threads=(1,), warmup=3, runs=runs)["results"][0]["p50_ms"], 3)
    except Exception:  # a file the runtime cannot time (e.g. Flex ops) still gets its search, without latency
        return None


def restore_biases(mixed: bytes, reference: bytes, kept: Sequence[str] | Mapping[str, np.ndarray],
                   found_as: Mapping[str, np.ndarray] | None = None) -> bytes:
    """``mixed`` with each kept-float layer's bias as in ``reference`` (the float file of the model before bias
    correction, which moved int8 weight error into biases: wrong for a layer whose weights stay float).
    ``found_as``: the kept layers' weights as ``mixed`` holds them when they differ from ``reference``'s (AdaRound
    snapped them to the int8 grid): the ops are found by those, and get ``reference``'s float weights back too."""
    from tensorflow.lite.tools import flatbuffer_utils

    from device_runtime.tflite_format import read_model

    from ..targets.tflite.convert import op_layers

    ref_model = read_model(reference)
    ref_ops = {layer: index for index, layer in op_layers(reference, kept).items()}
    mixed_ops = op_layers(mixed, found_as if found_as else kept)
    model = None
    for index, layer in mixed_ops.items():
        ref_index = ref_ops.get(layer)
        if ref_index is None:
            continue
        ref_op = ref_model.main.operators[ref_index]
        for slot in (2, 1) if found_as else (2,):
            if len(ref_op.inputs) <= slot or ref_op.inputs[slot] < 0:
                continue
            values = ref_model.constant(ref_model.main.tensors[ref_op.inputs[slot]])
            model = model or flatbuffer_utils.convert_bytearray_to_object(bytearray(mixed))
            _replace_constant(model, index, slot, values)
    return mixed if model is None else bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _replace_constant(model, index: int, slot: int, values: np.ndarray | None) -> None:
    """Input ``slot`` of op ``index`` (a float32 constant of the same size) set to ``values``, in a new buffer."""
    from tensorflow.lite.python import schema_py_generated as schema

    graph = model.subgraphs[0]
    op = graph.operators[index]
    if values is None or len(op.inputs) <= slot or op.inputs[slot] < 0:
        return
    tensor = graph.tensors[op.inputs[slot]]
    if tensor.type != 0 or tuple(tensor.shape) != values.shape:  # 0: FLOAT32
        return
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(np.ascontiguousarray(values, np.float32).tobytes(), np.uint8)
    model.buffers.append(buffer)
    tensor.buffer = len(model.buffers) - 1


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
    ranking: Callable[[], list[tuple[str, float]]] | None = None  # [(layer, own error)] worst first, or None
    matched: Mapping[str, np.ndarray] | None = None  # {name: weights} in the quantized model (AdaRound's), if moved

    def run(self, first: bytes, convert_with: Callable[[object], bytes],
            float_layers: Sequence[str] | Mapping[str, np.ndarray], settings: QuantizeSettings,
            progress: Callable[[str, int, int], None] | None = None) -> bytes:
        """The file meeting the target (or the last tried); ``convert_with(float_layers)`` converts."""
        chosen, self.record = search(
            first, lambda kept: convert_with(float_layers_with(float_layers, kept, self.matched or self.candidates)),
            self.reference, self.inputs, self.candidates, settings, self.data_name, progress, self.ranking,
            self.matched)
        return chosen

    def widen(self, current: bytes, convert_int16: Callable[[], bytes], settings: QuantizeSettings) -> bytes:
        """After float layers did not meet the target: the whole model with int16 activations (int16x8; weights
        stay int8), taken when it meets the target or comes closer to it than ``current``."""
        record = self.record
        inputs = self.inputs[:SEARCH_SAMPLES]
        wide = convert_int16()
        fid = compare(run_tflite(self.reference, inputs), run_tflite(wide, inputs), None, self.data_name)
        step = Step(None, round(fid.cosine, 6), None if fid.top1_agreement is None else round(fid.top1_agreement, 2),
                    len(wide), latency_ms=latency_ms(wide), activations="int16")
        last = record.steps[-1]
        closer = (step.agreement or 0.0, step.cosine) > (last.agreement or 0.0, last.cosine) \
            if settings.min_agreement is not None else step.cosine > last.cosine
        if meets(settings, fid) or closer:
            record.steps.append(step)
            record.met = meets(settings, fid)
            record.stopped = None if record.met else record.stopped
            return wide
        record.int16_tried = step
        return current

    def may_widen(self, settings: QuantizeSettings, float_layers) -> bool:
        """int16 activations are a step past float layers for int8 models with float inputs and outputs and no
        layer the recipe keeps float (TF 2.19 cannot mix int16 activations with float layers)."""
        return (self.record is not None and not self.record.met and settings.widen_activations
                and settings.mode == "int8"
                and settings.io_type == "float32" and not float_layers
                and np.issubdtype(np.asarray(self.inputs).dtype, np.floating))


def quantization_checks(model, recipe: Recipe, baseline_bytes: bytes, changed: bool, calib: Dataset | None,
                        calibration, input_shapes: list[tuple], candidates: Mapping[str, np.ndarray],
                        traced: bool = False) -> tuple[bytes | None, PrecisionSearch | None]:
    """The float .tflite that quantized layers are compared with, and the automatic mixed precision search when
    the recipe sets a fidelity target. The reference is the source's float file (so the per-layer table also
    shows what pruning or clustering lost), except under a search, which measures quantization alone against
    the compressed model's float file."""
    from ..targets.tflite.convert import representative_samples, to_tflite
    from ..verify.layers import LAYER_REPORT_MODES

    if recipe.quantize.mode not in LAYER_REPORT_MODES:
        return None, None
    if not recipe.quantize.searches_precision:  # the report compares with the source's float file: no extra work
        return baseline_bytes, None
    reference = to_tflite(model, QuantizeSettings(mode="none"), traced=traced) if changed else baseline_bytes
    inputs = representative_samples(calibration, recipe.quantize, input_shapes)[0]
    return reference, PrecisionSearch(reference, inputs, candidates,
                                      calib.source if calib is not None else "random calibration inputs")

