"""The image tasks a ``Model`` answers (classify, detect, segment, embed), the preprocessing they share,
and the labels-file reader.

Each function takes the ``Model`` whose method of the same name calls it; the
image goes through ``Model._answer_image`` (the interpreter's own buffers) and
the answer is decoded by ``postprocess``.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from . import postprocess
from .errors import ArgumentError, InputError, MissingMetadataError, ModelFormatError
from .labels import read_labels_file
from .preprocess import ImagePreprocessor, ImageSpec

if TYPE_CHECKING:
    from .model import Model


def read_labels(labels) -> list[str] | None:
    """Class names given as a list, or read from a labels file (``labels.read_labels_file``); None for None."""
    if labels is None or isinstance(labels, (list, tuple)):
        return None if labels is None else list(labels)
    return read_labels_file(labels)


def preprocessor(model: Model, resize: str | None) -> ImagePreprocessor:
    """The preprocessor for ``resize`` (None: the spec's own), made on first use."""
    key = resize or ""
    found = model._preprocessors.get(key)
    if found is None:
        first = model.inputs[0]
        found = model._preprocessors[key] = ImagePreprocessor(
            image_spec(model, resize), first.scale, first.zero_point, first.dtype,
            engine=model._options["image_engine"])
    return found


def image_spec(model: Model, resize: str | None) -> ImageSpec:
    """``image=`` when given, else the input's shape with the metadata's normalisation."""
    if model.image is not None:
        return model.image
    spec = ImageSpec.from_input_shape(model.inputs[0].shape, resize=resize or "stretch")
    if model.info is None or model.info.mean is None:
        return spec
    mean, std = tuple(model.info.mean), tuple(model.info.std or ())
    if len(mean) not in (1, spec.channels) or len(std) not in (1, spec.channels) or 0 in std:
        raise ModelFormatError(
            f"the model's metadata normalises its input {model.inputs[0].shape} ({spec.channels} channel"
            f"{'s' if spec.channels > 1 else ''}) with mean {list(mean)} and std {list(std)}, which do not fit "
            f"it; rewrite the metadata with one non-zero value each, or one per channel (sdk metadata add "
            f"MODEL -o OUT --mean M --std S), or pass image=ImageSpec(...)")
    return dataclasses.replace(spec, mean=mean, std=std)


def camera_size(model: Model, resize: str | None, aspect: tuple[int, int]) -> tuple[int, int]:
    """(width, height) to ask a camera for (``Model.camera_size`` says why and how)."""
    if len(aspect) != 2 or min(aspect) <= 0:
        raise ArgumentError(f"aspect must be two positive numbers (width, height); got {aspect}")
    spec = image_spec(model, resize)
    mode = resize or spec.resize
    if mode == "stretch":
        return spec.width, spec.height
    bound = min if mode == "letterbox" else max  # fit inside the input, or cover it
    scale = bound(spec.width / aspect[0], spec.height / aspect[1])
    return bound(spec.width, round(aspect[0] * scale)), bound(spec.height, round(aspect[1] * scale))


def classify(model: Model, image, top_k: int, color_order: str) -> list[postprocess.Classification]:
    """Top-k classes, refused when the input normalisation is unknown; the top score feeds the monitor."""
    if len(model.inputs) == 1 and not model.knows_normalisation:  # (several inputs: refused as such below)
        raise MissingMetadataError(
            "the model has no input normalisation in its metadata, so classify() cannot know how to scale "
            "pixels; set it with `sdk metadata add MODEL -o OUT --mean M --std S` (0..255 pixels: --mean 0 "
            "--std 255 for [0, 1] inputs, --mean 127.5 --std 127.5 for [-1, 1]), or pass "
            "image=ImageSpec(height, width, mean=..., std=...)")
    spec = model.outputs[0]
    found = model._answer_image(image, None, color_order, lambda outputs, _: postprocess.top_k(
        outputs[spec.name], top_k, model.labels, quantization=spec.quantization))
    if found:
        model._monitor.record_confidence(found[0].score)
    return found


def detect(model: Model, image, *, score_threshold: float, iou_threshold: float, max_detections: int,
           color_order: str, has_objectness: bool) -> list[postprocess.Detection]:
    """Boxes from SSD-style (4 outputs) or raw YOLO (1 output) models, letterboxed in and mapped back."""
    if len(model.outputs) not in (1, 4):
        raise InputError(f"detect() understands 1 (YOLO) or 4 (SSD) outputs; the model has "
                         f"{len(model.outputs)}")
    spec = preprocessor(model, "letterbox").spec
    size = (spec.height, spec.width)
    if len(model.outputs) == 4:
        order = model.info.box_index if model.info and model.info.box_index else (1, 0, 3, 2)
        roles = model.info.output_names if model.info and model.info.task == "object_detector" else None

        def read(outputs, letterbox):
            values = [s.to_float(outputs[s.name]) for s in model.outputs]
            return postprocess.decode_ssd(*postprocess.ssd_outputs(values, roles), letterbox, size,
                                          score_threshold=score_threshold, labels=model.labels,
                                          box_index=order)
    else:
        output = model.outputs[0]

        def read(outputs, letterbox):  # decoded as stored: only the candidates are dequantized
            return postprocess.decode_yolo(outputs[output.name], letterbox, score_threshold=score_threshold,
                                           iou_threshold=iou_threshold, max_detections=max_detections,
                                           has_objectness=has_objectness, input_size=size,
                                           labels=model.labels, quantization=output.quantization)
    return model._answer_image(image, "letterbox", color_order, read)


def segment(model: Model, image, color_order: str) -> np.ndarray:
    """Per-pixel class ids, letterboxed in and mapped back to the original size."""
    spec = model.outputs[0]

    def read(outputs, letterbox):  # class ids: the argmax is the same on stored values
        scores = outputs[spec.name]
        return postprocess.segmentation_mask(scores, letterbox, channels_first=scores.shape[1] < scores.shape[-1])
    return model._answer_image(image, "letterbox", color_order, read)


def embed(model: Model, x) -> np.ndarray:
    """The L2-normalised first output for an image, or for a tensor already of the input's rank."""
    if isinstance(x, np.ndarray) and x.ndim == len(model.inputs[0].shape):
        tensor = x
    else:
        tensor, _ = model.preprocess(x)
    return postprocess.l2_normalize(next(iter(model.run(tensor).values())))
