"""``Model``: a checked TFLite model that callers feed and read in float.

The model bytes are opened by ``loading`` (decrypted, signature verified) and
validated by ``tflite_format.read_model`` before the interpreter (``interpreter``)
sees them.  Quantized inputs and outputs are converted with each tensor's scale
and zero point, so app code never handles int8 by hand.  The image tasks'
methods are here, their work in ``tasks``; statistics are kept by ``monitor``.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from . import metadata, postprocess, tasks, text_tasks, tflite_format
from .backend import get_backend
from .errors import ArgumentError, InputError
from .interpreter import interpreter_errors, make_interpreter, timed_invoke
from .loading import open_model
from .monitor import Monitor
from .preprocess import ImagePreprocessor, ImageSpec, Letterbox, check_engine, load_image


@dataclass(frozen=True)
class TensorSpec:
    """What one model input or output looks like to the caller."""

    name: str
    index: int
    shape: tuple[int, ...]
    shape_signature: tuple[int, ...]
    dtype: np.dtype
    scale: float
    zero_point: int

    @property
    def quantized(self) -> bool:
        return self.scale != 0.0 and np.issubdtype(self.dtype, np.integer)

    @property
    def quantization(self) -> tuple[float, int] | None:
        """(scale, zero_point) of a quantized tensor, else None: what the post-processing helpers take."""
        return (self.scale, self.zero_point) if self.quantized else None

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """float -> stored integer: q = round(x / scale) + zero_point, clipped to the dtype."""
        info = np.iinfo(self.dtype)
        q = np.round(x / self.scale) + self.zero_point
        return np.clip(q, info.min, info.max).astype(self.dtype)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return postprocess.dequantize(np.asarray(q), (self.scale, self.zero_point))

    def to_float(self, stored: np.ndarray) -> np.ndarray:
        """Stored values as the caller speaks them: dequantized when quantized, else as they are."""
        return self.dequantize(stored) if self.quantized else stored


class Model:
    """A TFLite model ready to run: ``model(x)`` or ``model.run({"name": x})``.

    ``num_threads`` sets interpreter threads; XNNPACK is on unless
    ``use_xnnpack=False``; ``delegates`` are paths of delegate libraries;
    ``backend`` picks the interpreter package ("auto" takes the lightest).
    ``image`` says how images are prepared for ``classify``/``detect``/``segment``
    (from the model's metadata and input shape when None); ``labels`` names the
    classes (default: the label file embedded in the model's metadata);
    ``image_engine`` resamples images: "auto" (OpenCV when installed, several
    times faster), "opencv", or "numpy" (the exact reference).
    Inputs and outputs are named by the model's signature when it has one.
    ``decryption_key`` opens a model written by ``sdk encrypt``, in memory only:
    the key file's content (``open("app.key", "rb").read()``) or the raw 32
    bytes; ``public_key`` refuses the model unless its signature (the ``.sig``
    beside the file, or ``signature=``) verifies, before any byte reaches the
    interpreter.
    """

    def __init__(self, source: str | os.PathLike | bytes, *, num_threads: int | None = None,
                 use_xnnpack: bool = True, delegates: Sequence[str] = (), backend: str = "auto",
                 image: ImageSpec | None = None, labels: Sequence[str] | str | os.PathLike | None = None,
                 image_engine: str = "auto", public_key=None, signature: dict | bytes | None = None,
                 decryption_key: bytes | str | None = None):
        if num_threads is not None and num_threads < 1:
            raise ArgumentError(f"num_threads must be >= 1 or None; got {num_threads}")
        check_engine(image_engine, "image_engine")  # resolved on the first image: OpenCV loads only then
        self._options = {"num_threads": num_threads, "use_xnnpack": use_xnnpack, "delegates": delegates,
                         "backend": backend, "image": image, "labels": labels, "image_engine": image_engine,
                         "public_key": public_key, "decryption_key": decryption_key}
        self.source = source if isinstance(source, (str, os.PathLike)) else "<bytes>"
        self._data = open_model(source, public_key=public_key, signature=signature, decryption_key=decryption_key)
        self.sha256 = hashlib.sha256(self._data).hexdigest()
        self.spec = tflite_format.read_model(self._data)
        self.backend = get_backend(backend)
        self._lock = threading.Lock()
        self._interpreter = make_interpreter(self.backend, self._data, self.spec, num_threads, use_xnnpack,
                                             delegates)
        names = {}
        if self.spec.signatures:
            signature = self.spec.signatures[0]
            names = {index: name for name, index in {**signature.inputs, **signature.outputs}.items()}
        self.inputs = self._tensor_specs(self._interpreter.get_input_details(), names)
        self.outputs = self._tensor_specs(self._interpreter.get_output_details(), names)
        self.info = metadata.read_info(self.spec)  # standard TFLite metadata, when embedded
        self.build = metadata.read_build_info(self.spec)  # what `sdk convert` recorded, when present
        if self.build:  # the TFLite converter sorts signature tensors; the source's order was recorded
            self.inputs = _in_order(self.inputs, self.build.get("input_order"))
            self.outputs = _in_order(self.outputs, self.build.get("output_order"))
        self._monitor = Monitor.for_build(self.build)
        self.image = image
        self.labels = tasks.read_labels(labels) or (list(self.info.labels) if self.info and self.info.labels else None)
        self._preprocessors: dict[str, ImagePreprocessor] = {}
        self._tokenizer = None  # built from the embedded vocabulary by the first text task
        self._allocated_shapes = {spec.index: spec.shape for spec in self.inputs}

    # -- construction -------------------------------------------------------------
    @staticmethod
    def _tensor_specs(details: list[dict], names: dict[int, str]) -> list[TensorSpec]:
        specs = []
        for d in details:
            scale, zero_point = d.get("quantization", (0.0, 0))
            specs.append(TensorSpec(names.get(d["index"], d["name"]), d["index"], tuple(int(v) for v in d["shape"]),
                                    tuple(int(v) for v in d.get("shape_signature", d["shape"])),
                                    np.dtype(d["dtype"]), float(scale), int(zero_point)))
        return specs

    # -- running --------------------------------------------------------------------
    def __call__(self, *arrays: np.ndarray) -> np.ndarray | list[np.ndarray]:
        """Positional inputs in model order; one output array, or a list of them."""
        if len(arrays) != len(self.inputs):
            raise InputError(f"the model takes {len(self.inputs)} input(s) "
                             f"({', '.join(s.name for s in self.inputs)}); got {len(arrays)}")
        result = self.run(dict(zip((s.name for s in self.inputs), arrays)))
        values = list(result.values())
        return values[0] if len(values) == 1 else values

    def run(self, inputs: Mapping[str, np.ndarray] | np.ndarray, *, raw: bool = False
            ) -> dict[str, np.ndarray]:
        """Run one batch; returns {output name: array}.

        Inputs are float, except that an array already in a quantized input's own
        dtype (int8, uint8, int16) is taken as its stored values.  Outputs are
        float unless ``raw=True``, which returns quantized outputs as stored.
        """
        if not isinstance(inputs, Mapping):
            if len(self.inputs) != 1:
                raise InputError(f"the model has {len(self.inputs)} inputs; pass a dict keyed by "
                                 f"{[s.name for s in self.inputs]}")
            inputs = {self.inputs[0].name: inputs}
        unknown = set(inputs) - {s.name for s in self.inputs}
        if unknown:
            raise InputError(f"unknown input name(s) {sorted(unknown)}; "
                             f"the model's inputs are {[s.name for s in self.inputs]}")
        missing = [s.name for s in self.inputs if s.name not in inputs]
        if missing:
            raise InputError(f"missing input(s) {missing}")
        started = time.perf_counter()
        with self._lock:  # inputs are prepared under the lock: a swapped model may quantize differently
            prepared = [self._prepare(spec, inputs[spec.name], raw) for spec in self.inputs]
            if prepared and self._needs_per_sample_loop(prepared):
                parts = [self._invoke([p[i:i + 1] for p in prepared], raw) for i in range(len(prepared[0]))]
                result = {k: np.concatenate([part[k] for part, _ in parts]) for k in parts[0][0]}
                invoke_seconds = sum(seconds for _, seconds in parts)
            else:
                result, invoke_seconds = self._invoke(prepared, raw)
            first = self.inputs[0] if prepared else None
            if first is not None:
                self._monitor.record_input(prepared[0], first.quantization)
        self._monitor.record_call(time.perf_counter() - started, invoke_seconds)
        return result

    def _prepare(self, spec: TensorSpec, x, raw: bool) -> np.ndarray:
        x = np.asarray(x)
        _check_shape(spec, x.shape)
        if spec.quantized and x.dtype == spec.dtype:
            return np.ascontiguousarray(x)  # already the stored integer values (e.g. from preprocess())
        if raw and spec.quantized:
            raise InputError(f"raw input '{spec.name}' must be {spec.dtype}; got {x.dtype}")
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
            raise InputError(f"input '{spec.name}' must be numeric; got dtype {x.dtype}")
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            raise InputError(f"input '{spec.name}' contains NaN or infinity")
        if spec.quantized:
            return spec.quantize(x.astype(np.float32))
        return np.ascontiguousarray(x, dtype=spec.dtype)

    def _needs_per_sample_loop(self, prepared: list[np.ndarray]) -> bool:
        """A model built for batch 1 with a fixed batch dimension is run one sample at a time."""
        return any(spec.shape_signature and spec.shape_signature[0] != -1 and p.shape[0] != spec.shape[0]
                   and spec.shape[0] == 1 for spec, p in zip(self.inputs, prepared))

    def _allocate(self, shapes: list[tuple[int, ...]]) -> None:
        """Resize inputs whose shape differs from the allocated one (a new batch size), then reallocate."""
        resized = False
        for spec, shape in zip(self.inputs, shapes):
            if shape != self._allocated_shapes[spec.index]:
                if spec.shape_signature and spec.shape_signature[0] != -1 and shape[0] != spec.shape[0]:
                    raise InputError(f"input '{spec.name}' has a fixed batch of {spec.shape[0]}; "
                                     f"got {shape[0]}")
                self._interpreter.resize_tensor_input(spec.index, shape, strict=True)
                self._allocated_shapes[spec.index] = shape
                resized = True
        if resized:
            self._interpreter.allocate_tensors()

    def _invoke(self, prepared: list[np.ndarray], raw: bool) -> tuple[dict[str, np.ndarray], float]:
        """The outputs of one invoke, and the seconds the invoke itself took."""
        interpreter = self._interpreter
        with interpreter_errors():
            self._allocate([x.shape for x in prepared])
            for spec, x in zip(self.inputs, prepared):
                interpreter.set_tensor(spec.index, x)
            invoke_seconds = timed_invoke(interpreter)
            outputs = [(spec, interpreter.get_tensor(spec.index)) for spec in self.outputs]
        return {spec.name: value if raw else spec.to_float(value) for spec, value in outputs}, invoke_seconds

    def _answer_image(self, image, resize: str | None, color_order: str, read: Callable):
        """One image through the interpreter's own buffers: preprocessed straight into the input tensor,
        answered straight from the outputs, so neither side is copied (the image tasks' fast path).

        ``read(outputs, letterbox)`` gets {output name: view of the stored values} and must return
        no view of them: the interpreter refuses to run while one is alive.
        """
        if len(self.inputs) != 1:
            raise InputError(f"image tasks need a model with one input; this one has {len(self.inputs)} "
                             f"({', '.join(s.name for s in self.inputs)}): use run() with a dict")
        started = time.perf_counter()  # the whole call, reading the image included
        frame = load_image(image, color_order)
        with self._lock:  # a swapped model may want another size or quantization
            spec, interpreter = self.inputs[0], self._interpreter
            preprocessor = tasks.preprocessor(self, resize)
            _check_shape(spec, preprocessor.shape)
            buffer = None
            try:
                with interpreter_errors():
                    self._allocate([preprocessor.shape])
                buffer = interpreter.tensor(spec.index)()
                letterbox = preprocessor(frame, out=buffer)[1]
                self._monitor.record_input(buffer, spec.quantization)
                buffer = None
                with interpreter_errors():
                    invoke_seconds = timed_invoke(interpreter)
                answer = read({s.name: interpreter.tensor(s.index)() for s in self.outputs}, letterbox)
            except BaseException as exc:
                # A view left alive in this frame or in the traceback's would stop every later invoke.
                buffer = None
                traceback.clear_frames(exc.__traceback__)
                raise
        self._monitor.record_call(time.perf_counter() - started, invoke_seconds)
        return answer

    # -- maintenance ---------------------------------------------------------------------
    def swap(self, source, *, signature: dict | bytes | None = None) -> None:
        """Switch to a new model file atomically; on any failure keep serving the current one.

        The new file is loaded and checked completely (signature when this Model
        has a public key, format, interpreter) before the switch, and must have
        the same input and output names, shapes and dtypes.  Statistics carry on.
        """
        new = Model(source, signature=signature, **self._options)
        old_io = [(s.name, s.shape_signature, s.dtype) for s in self.inputs + self.outputs]
        new_io = [(s.name, s.shape_signature, s.dtype) for s in new.inputs + new.outputs]
        if old_io != new_io:
            raise InputError(f"the new model's inputs/outputs {new_io} differ from the current {old_io}; "
                             "create a new Model for it")
        with self._lock:
            for name, value in vars(new).items():
                if name not in ("_lock", "_monitor"):
                    setattr(self, name, value)

    def stats(self) -> dict:
        """Rolling latency percentiles (whole calls, the invoke alone, and the pre- and post-processing
        around it), top-1 confidence histogram, and input drift vs calibration data."""
        out = self._monitor.snapshot()
        out["model_sha256"] = self.sha256
        out["version"] = self.info.version if self.info else None
        return out

    def reset_stats(self) -> None:
        """Start the statistics afresh: after a warm-up, say, whose first slow calls would skew them."""
        with self._lock:
            self._monitor = Monitor.for_build(self.build)

    # -- tasks (the work is in tasks.py) ----------------------------------------------------
    def preprocess(self, image, *, resize: str | None = None, color_order: str = "RGB"
                   ) -> tuple[np.ndarray, Letterbox]:
        """The input tensor for an image (path, PIL image or HxWxC uint8 frame) and its mapping.

        The tensor is in the model's input dtype (int8 for an int8 model), ready for ``run``.
        """
        return tasks.preprocessor(self, resize)(load_image(image, color_order))

    def camera_size(self, resize: str | None = None, aspect: tuple[int, int] = (4, 3)) -> tuple[int, int]:
        """(width, height) to ask a camera for, so that its frames need no resampling here.

        A camera's ISP scales for free (picamera2 delivers any size), whereas resizing
        a 640x480 frame on the CPU cost ~15% of a 1.7 ms MobileNetV2 int8 invoke
        (bench/runtime.py).
        ``resize`` as in ``preprocess`` (detect() letterboxes); ``aspect`` is the
        sensor's.  Stretch gives the model's own size, letterbox the inner size
        of an ``aspect`` frame (320x240 for a 320x320 detector), crop the
        smallest ``aspect`` frame covering the input.
        """
        return tasks.camera_size(self, resize, aspect)

    @property
    def knows_normalisation(self) -> bool:
        """Whether images can be normalised as the model expects: ``image=`` given, or in its metadata."""
        return self.image is not None or (self.info is not None and self.info.mean is not None)

    def classify(self, image, top_k: int = 5, color_order: str = "RGB") -> list[postprocess.Classification]:
        """Top-k classes for an image, with labels when the model has them.

        Refuses a model whose input normalisation is unknown (no metadata, no ``image=``): a guess
        would give wrong classes without a word.
        """
        return tasks.classify(self, image, top_k, color_order)

    def detect(self, image, *, score_threshold: float = 0.25, iou_threshold: float = 0.45,
               max_detections: int = 100, color_order: str = "RGB", has_objectness: bool = False
               ) -> list[postprocess.Detection]:
        """Objects with boxes in original-image pixels: SSD-style (4 outputs) or raw YOLO (1 output)."""
        return tasks.detect(self, image, score_threshold=score_threshold, iou_threshold=iou_threshold,
                            max_detections=max_detections, color_order=color_order, has_objectness=has_objectness)

    def segment(self, image, color_order: str = "RGB") -> np.ndarray:
        """Per-pixel class ids at the original image size."""
        return tasks.segment(self, image, color_order)

    def embed(self, x) -> np.ndarray:
        """An L2-normalised embedding of an image (array/path/PIL) or of a ready input tensor."""
        return tasks.embed(self, x)

    # -- text tasks (the work is in text_tasks.py, the tokenizer in text.py) -----------------------
    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """Sentence embeddings, one row per text, for a BERT-class encoder whose vocabulary is embedded.

        Texts are tokenized as Hugging Face's BertTokenizer does, then truncated and padded to the
        model's sequence length.  A model that outputs per-token states (batch, tokens, dim) is
        mean-pooled over the attention mask and L2-normalised (sentence-transformers' pooling); a
        (batch, dim) output is returned as the model gives it.  Without an embedded vocabulary:
        ``MissingMetadataError`` naming ``sdk metadata add ... --vocab``.
        """
        return text_tasks.embed_text(self, texts)

    def classify_text(self, text: str | Sequence[str], top_k: int = 5
                      ) -> list[postprocess.Classification] | list[list[postprocess.Classification]]:
        """Top-k classes of a text (a list for one string, a list of lists for several), with the labels
        embedded in the metadata (or ``labels=``).  Scores are probabilities: the output itself when it
        already is one (non-negative, rows summing to 1), else its softmax (a classifier's logits).
        """
        return text_tasks.classify_text(self, text, top_k)

    @property
    def tokenizer(self):
        """The ``text.WordPieceTokenizer`` built from the embedded vocabulary (for token ids by hand)."""
        return text_tasks.tokenizer(self)


def _check_shape(spec: TensorSpec, shape: tuple[int, ...]) -> None:
    """Refuse a shape the input cannot take: another rank, or another size on a fixed axis (batch aside)."""
    if len(shape) != len(spec.shape_signature):
        raise InputError(f"input '{spec.name}' must have rank {len(spec.shape_signature)} "
                         f"(shape {_shape_text(spec.shape_signature)}); got shape {shape}")
    for axis, (want, got) in enumerate(zip(spec.shape_signature, shape)):
        if axis and want != -1 and want != got:
            raise InputError(f"input '{spec.name}' must have shape {_shape_text(spec.shape_signature)}; got {shape}")


def _shape_text(signature: tuple[int, ...]) -> str:
    return "(" + ", ".join("N" if d == -1 else str(d) for d in signature) + ")"


def _in_order(specs: list, order) -> list:
    """``specs`` sorted as ``order`` (a list of names) says, when it names exactly these tensors."""
    by_name = {spec.name: spec for spec in specs}
    if not isinstance(order, list) or sorted(map(str, order)) != sorted(by_name):
        return specs
    return [by_name[name] for name in order]
