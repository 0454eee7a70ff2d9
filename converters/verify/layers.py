"""Per-layer error of a quantized .tflite against its float counterpart, measured in TensorFlow's interpreter.

A whole-model cosine says *that* int8 loses; this says *where*. Both files run on the same inputs with every
intermediate tensor preserved (``experimental_preserve_all_tensors``, default delegates off so no op is fused
away), and each quantized op's output, dequantized, is compared with the float op it pairs with.

Pairing rule: each file's ops are listed in execution order without QUANTIZE and DEQUANTIZE (they only move
values between integer and float), each as (op type, output shape); the two lists are aligned by their longest
common subsequence (difflib's matcher), so an op one converter fused or added stays unpaired rather than
mis-paired. Only ops whose float output is float32 are compared.

The interpreter is TensorFlow's, on the converters' side: ``device_runtime`` never imports TensorFlow.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from .. import _tf

if TYPE_CHECKING:
    from .fidelity import Fidelity

SKIPPED_OPS = {"QUANTIZE", "DEQUANTIZE"}
DEFAULT_SAMPLES = 32
WARN_COSINE = 0.99  # the report warns below this output cosine (mean over samples)
CAP_DB = 99.0  # an exact match has infinite SNR; JSON cannot hold it
RULE = ("ops paired by aligning both files' op sequences (op type and output shape, QUANTIZE/DEQUANTIZE "
        "skipped, longest common subsequence)")


@dataclass
class LayerError:
    op_index: int  # in the quantized file
    op: str
    tensor: str  # the quantized file's output tensor
    layer: str | None  # the source layer, where the op has its weights
    shape: list[int]
    dtype: str
    snr_db: float  # 10 log10(signal power / error power) of this output, errors of earlier layers included
    cosine: float  # mean over samples
    added_db: float  # the same for the error this op adds to what its inputs already carried

    @property
    def label(self) -> str:
        return self.layer or self.tensor.split(";")[0][-40:]


@dataclass
class LayerReport:
    samples: int
    data: str
    rule: str
    rows: list[LayerError] = field(default_factory=list)
    unpaired_quantized: int = 0
    unpaired_float: int = 0

    def worst(self, count: int = 3, with_layer: bool = False) -> list[LayerError]:
        """The ops adding the most error, worst first (only those with a source layer if ``with_layer``)."""
        rows = [r for r in self.rows if (r.layer or not with_layer) and r.added_db < CAP_DB]
        return sorted(rows, key=lambda r: r.added_db)[:count]

    def to_dict(self) -> dict:
        return {**asdict(self), "worst": [r.label for r in self.worst()]}

    def render(self) -> list[str]:
        from .report import _table

        worst = {id(r) for r in self.worst()}
        lines = [f"per-layer error vs the float .tflite ({self.samples} samples, {self.data}; {self.rule}; "
                 f"{self.unpaired_quantized} quantized and {self.unpaired_float} float ops unpaired):"]
        rows = [[str(r.op_index), r.label, r.op, "x".join(map(str, r.shape)), r.dtype, _db(r.snr_db),
                 f"{r.cosine:.4f}", _db(r.added_db) + ("  <- worst" if id(r) in worst else "")]
                for r in self.rows]
        return lines + _table(["#", "layer", "op", "shape", "dtype", "SNR dB", "cosine", "added dB"], rows)


def _db(value: float) -> str:
    return f">={CAP_DB:.0f}" if value >= CAP_DB else f"{value:.1f}"


def compare_layers(quantized: bytes, reference: bytes, inputs: Sequence[np.ndarray], data_name: str,
                   samples: int = DEFAULT_SAMPLES, layers: Mapping[int, str] | None = None) -> LayerReport:
    """Each paired op's SNR and cosine on the first ``samples`` of ``inputs`` (one float array per model
    input, in the .tflite's layout). ``layers`` labels the float file's ops ({op index: source layer})."""
    from device_runtime.tflite_format import read_model

    q_model, f_model = read_model(quantized).main, read_model(reference).main
    q_ops, f_ops = _compute_ops(q_model), _compute_ops(f_model)
    matcher = difflib.SequenceMatcher(None, [k for _, k in q_ops], [k for _, k in f_ops], autojunk=False)
    pairs = [(q_ops[a + i][0], f_ops[b + i][0]) for a, b, n in matcher.get_matching_blocks() for i in range(n)]
    pairs = [(qi, fi) for qi, fi in pairs
             if f_model.tensors[f_model.operators[fi].outputs[0]].dtype_name == "float32"]
    count = min(samples, min(len(x) for x in inputs))
    q_interp, f_interp = _interpreter(quantized), _interpreter(reference)
    signal = np.zeros(len(pairs))
    noise = np.zeros(len(pairs))
    cosines = np.zeros(len(pairs))
    for s in range(count):
        _invoke(q_interp, [x[s:s + 1] for x in inputs])
        _invoke(f_interp, [x[s:s + 1] for x in inputs])
        for k, (qi, fi) in enumerate(pairs):
            ref = f_interp.get_tensor(f_model.operators[fi].outputs[0]).astype(np.float64).ravel()
            got = _dequantized(q_interp, q_model.operators[qi].outputs[0]).ravel()
            err = ref - got
            signal[k] += ref @ ref
            noise[k] += err @ err
            norms = np.linalg.norm(ref) * np.linalg.norm(got)
            cosines[k] += (ref @ got) / norms if norms > 0 else float(np.array_equal(ref, got))
    snr = [_snr(s, n) for s, n in zip(signal, noise)]
    relative = {qi: (10 ** (-db / 10) if db < CAP_DB else 0.0) for (qi, _), db in zip(pairs, snr)}
    producers = _producers(q_model)
    rows = []
    for k, (qi, fi) in enumerate(pairs):
        op = q_model.operators[qi]
        carried = max((relative.get(p, 0.0) for p in _computed_inputs(op, producers)), default=0.0)
        added = relative[qi] - carried
        tensor = q_model.tensors[op.outputs[0]]
        rows.append(LayerError(qi, op.op_name, tensor.name, (layers or {}).get(fi), list(tensor.shape),
                               tensor.dtype_name, round(snr[k], 2), round(cosines[k] / max(count, 1), 6),
                               round(min(CAP_DB, -10 * math.log10(added)) if added > 0 else CAP_DB, 2)))
    return LayerReport(count, data_name, RULE, rows, len(q_ops) - len(pairs), len(f_ops) - len(pairs))


def _compute_ops(sg) -> list[tuple[int, tuple]]:
    return [(i, (op.op_name, tuple(sg.tensors[op.outputs[0]].shape))) for i, op in enumerate(sg.operators)
            if op.op_name not in SKIPPED_OPS and op.outputs]


def _producers(sg) -> dict[int, int]:
    """Tensor -> the op that computes it, looking through QUANTIZE/DEQUANTIZE to the op behind them."""
    direct = {t: i for i, op in enumerate(sg.operators) for t in op.outputs}
    out = {}
    for tensor, i in direct.items():
        seen = 0
        while sg.operators[i].op_name in SKIPPED_OPS and sg.operators[i].inputs[0] in direct and seen < 8:
            i, seen = direct[sg.operators[i].inputs[0]], seen + 1
        out[tensor] = i
    return out


def _computed_inputs(op, producers: dict[int, int]) -> list[int]:
    return [producers[t] for t in op.inputs if t >= 0 and t in producers]


def _snr(signal: float, noise: float) -> float:
    if noise <= 0:
        return CAP_DB
    if signal <= 0:
        return -CAP_DB
    return min(CAP_DB, 10 * math.log10(signal / noise))


def _interpreter(data: bytes):
    import warnings

    tf = _tf.tensorflow()
    with warnings.catch_warnings():  # TF 2.19 calls its interpreter deprecated in favour of ai_edge_litert
        warnings.simplefilter("ignore")
        interp = tf.lite.Interpreter(
            model_content=data, experimental_preserve_all_tensors=True,
            experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    return interp


def _invoke(interp, arrays: list[np.ndarray]) -> None:
    for detail, x in zip(interp.get_input_details(), arrays):
        if list(detail["shape"]) != list(x.shape):
            interp.resize_tensor_input(detail["index"], x.shape)
            interp.allocate_tensors()
    for detail, x in zip(interp.get_input_details(), arrays):
        scale, zero = detail["quantization"]
        if detail["dtype"] in (np.int8, np.uint8, np.int16) and scale:
            info = np.iinfo(detail["dtype"])
            x = np.clip(np.round(x / scale + zero), info.min, info.max)
        interp.set_tensor(detail["index"], x.astype(detail["dtype"]))
    interp.invoke()


def _dequantized(interp, index: int) -> np.ndarray:
    detail = _details(interp)[index]
    value = interp.get_tensor(index).astype(np.float64)
    params = detail["quantization_parameters"]
    if detail["dtype"] in (np.int8, np.uint8, np.int16, np.int32) and len(params["scales"]):
        scales, zeros = params["scales"], params["zero_points"]
        if len(scales) > 1:
            shape = [1] * value.ndim
            shape[params["quantized_dimension"]] = -1
            scales, zeros = scales.reshape(shape), zeros.reshape(shape)
        value = (value - zeros) * scales
    return value


def _details(interp) -> dict[int, dict]:
    cached = getattr(interp, "_sdk_details", None)
    if cached is None:
        cached = interp._sdk_details = {d["index"]: d for d in interp.get_tensor_details()}
    return cached


LAYER_REPORT_MODES = ("int8", "int16x8", "dynamic")


def quantized_layer_report(mode: str, quantized: bytes, reference: bytes | None, x: np.ndarray, data_name: str,
                           layers: Sequence[str] | Mapping[str, np.ndarray]) -> LayerReport | None:
    """The pipelines' per-layer table for quantized files (None for float ones); ``layers`` names the source
    layers as ``to_tflite``'s ``float_layers`` does (names, or {name: weights} on the PyTorch/ONNX route)."""
    from ..targets.tflite.convert import op_layers

    if mode not in LAYER_REPORT_MODES or reference is None:
        return None
    try:
        return compare_layers(quantized, reference, [x], data_name, layers=op_layers(reference, layers))
    except (RuntimeError, ValueError) as exc:  # a diagnostic: the interpreter refusing it must not fail the file
        import warnings

        warnings.warn(f"per-layer error report not measured: {str(exc).splitlines()[0][:200]}", RuntimeWarning)
        return None


def fidelity_warnings(cosine: float | None, agreement: float | None, layers: LayerReport | None) -> list[str]:
    """A warning when the written file's output strays from the source, naming the layers that add most."""
    if cosine is None or cosine >= WARN_COSINE:
        return []
    worst = ", ".join(f"{r.label} ({r.added_db:.1f} dB)" for r in layers.worst()) if layers else ""
    return [f"output cosine {cosine:.4f} is below {WARN_COSINE}" +
            (f" (top-1 agreement {agreement:.1f}%)" if agreement is not None else "") +
            (f"; the layers adding most error: {worst}" if worst else "") +
            "; set quantize.min_cosine / --min-cosine (or --min-agreement) to keep the worst layers float"]


@dataclass
class LayerComparison:
    """``sdk inspect --compare``: the output's fidelity and the per-layer table for two files of one model."""

    fidelity: "Fidelity"
    layers: LayerReport

    def to_dict(self) -> dict:
        return {"fidelity": self.fidelity.to_dict(), "layers": self.layers.to_dict(),
                "warnings": self.warnings()}

    def warnings(self) -> list[str]:
        return fidelity_warnings(self.fidelity.cosine, self.fidelity.top1_agreement, self.layers)

    def render(self) -> str:
        from .report import render_fidelity

        return "\n".join([*[f"warning: {w}" for w in self.warnings()],
                          *render_fidelity("output vs the reference file", self.fidelity), *self.layers.render()])


def compare_files(quantized: bytes, reference: bytes, x: np.ndarray, data_name: str,
                  samples: int = DEFAULT_SAMPLES) -> LayerComparison:
    """Output fidelity on all of ``x`` and per-layer errors on its first ``samples``."""
    from .fidelity import compare, run_tflite

    x = np.asarray(x, np.float32)
    fidelity = compare(run_tflite(reference, x), run_tflite(quantized, x), None, data_name)
    return LayerComparison(fidelity, compare_layers(quantized, reference, [x], data_name, samples))
