"""Write the standard TFLite model metadata so apps, Task libraries and MediaPipe can use the model.

The metadata flatbuffer is built with TFLite Support's own generated schema
module (``tflite-support==0.4.4`` installed with ``--no-deps``: its runtime
parts clash with the pinned stack, its schema module does not).  It is stored
as the model's TFLITE_METADATA buffer, and associated files (labels) are packed
as a zip appended to the model, as TFLite Support's populator does.
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Sequence

import flatbuffers
import numpy as np

from device_runtime.loading import read_model_bytes
from device_runtime.metadata import (METADATA_IDENTIFIER, METADATA_NAME, TENSOR_AXIS_LABELS, TENSOR_VALUE_LABELS,
                                     associated_files, read_info)
from device_runtime.tflite_format import TFLiteModel, read_model

from ...errors import ConversionError, UserInputError
from ...files import atomic_write
from ...labels import read_labels
from .normalisation import image_channels

if TYPE_CHECKING:
    from .text_metadata import Vocab

read_labels_file = read_labels  # the name `sdk convert` imports: one reader for every command

LABELS_FILE = "labels.txt"
MIN_PARSER_VERSION = "1.0.0"


TASKS = ("image_classifier", "object_detector", "audio_classifier")
DETECTION_OUTPUTS = ("location", "category", "score", "number of detections")


@dataclass(frozen=True)
class MetadataSpec:
    """What to embed.  Image settings apply to image tasks, sample rate and channels to audio."""

    task: str = "image_classifier"
    name: str = ""
    description: str = ""
    version: str = "1"
    author: str = ""
    license: str = ""
    mean: Sequence[float] | None = None  # (pixel - mean) / std on 0..255 pixels; None: unknown, none written
    std: Sequence[float] | None = None
    color_space: str | None = None  # RGB | GRAYSCALE; None: from the input's channels (1 or 3)
    labels: Sequence[str] = field(default_factory=tuple)
    box_index: Sequence[int] = (1, 0, 3, 2)  # positions of left, top, right, bottom: ymin, xmin, ymax, xmax
    sample_rate: int = 16000
    channels: int = 1
    vocab: Vocab | None = None  # a text model: its BERT tokenizer's vocabulary (then task and image fields are unused)

    def validate(self) -> None:
        if self.task not in TASKS:
            raise UserInputError(f"task must be one of {', '.join(TASKS)}; got {self.task!r}")
        if self.color_space not in (None, "RGB", "GRAYSCALE"):
            raise UserInputError(f"color_space must be RGB or GRAYSCALE; got {self.color_space!r}")
        if (self.mean is None) != (self.std is None) or (self.mean is not None and not (self.mean and self.std)):
            raise UserInputError(f"mean and std go together (the normalisation is (pixel - mean) / std); got mean "
                                 f"{self.mean} and std {self.std}. Fix: give both, or neither")
        if any(s == 0 for s in self.std or ()):
            raise UserInputError(f"normalisation std values must be non-zero; got {list(self.std)}. Fix: a "
                                 "positive std, e.g. 255 for inputs in [0, 1]")
        if sorted(self.box_index) != [0, 1, 2, 3]:
            raise UserInputError(f"box_index must order 0, 1, 2, 3; got {list(self.box_index)}")
        if self.sample_rate < 1 or self.channels < 1:
            raise UserInputError(f"sample_rate and channels must be >= 1; got {self.sample_rate}, {self.channels}")


def _schema():
    try:
        from tensorflow_lite_support.metadata import metadata_schema_py_generated as schema
    except ImportError:
        raise ConversionError("writing metadata needs TFLite Support's schema module: "
                              "pip install --no-deps tflite-support==0.4.4") from None
    return schema


def _tensor(schema, name: str, description: str, properties_type, properties, value_range: int | None = None):
    tensor = schema.TensorMetadataT()
    tensor.name, tensor.description = name, description
    content = schema.ContentT()
    content.contentPropertiesType, content.contentProperties = properties_type, properties
    if value_range is not None:  # the axis that lists the results (TFLite Support's convention)
        content.range = schema.ValueRangeT()
        content.range.min = content.range.max = value_range
    tensor.content = content
    return tensor


def _labels_file(schema, kind: int):
    labels = schema.AssociatedFileT()
    labels.name, labels.description, labels.type = LABELS_FILE, "Class names, one per line.", kind
    return [labels]


def _image_input(schema, spec: MetadataSpec, name: str):
    image = schema.ImagePropertiesT()
    image.colorSpace = getattr(schema.ColorSpaceType, spec.color_space or "RGB")
    if spec.mean is None:  # unknown: no guess (apps must be told, see converters/normalisation.py)
        return _tensor(schema, name, "Input image; its normalisation is not recorded.",
                       schema.ContentProperties.ImageProperties, image)
    tensor = _tensor(schema, name, "Input image, normalised as (pixel - mean) / std.",
                     schema.ContentProperties.ImageProperties, image)
    norm = schema.NormalizationOptionsT()
    norm.mean, norm.std = [float(v) for v in spec.mean], [float(v) for v in spec.std]
    unit = schema.ProcessUnitT()
    unit.optionsType, unit.options = schema.ProcessUnitOptions.NormalizationOptions, norm
    stats = schema.StatsT()  # the value range the normalised input takes
    means, stds = _widen(spec.mean, spec.std)
    stats.min = [(0.0 - m) / s for m, s in zip(means, stds)]
    stats.max = [(255.0 - m) / s for m, s in zip(means, stds)]
    tensor.processUnits, tensor.stats = [unit], stats
    return tensor


def _audio_input(schema, spec: MetadataSpec, name: str):
    audio = schema.AudioPropertiesT()
    audio.sampleRate, audio.channels = spec.sample_rate, spec.channels
    return _tensor(schema, name, "Input audio: float samples in [-1, 1].",
                   schema.ContentProperties.AudioProperties, audio)


def _scores_output(schema, spec: MetadataSpec, name: str):
    tensor = _tensor(schema, name, "Scores per class.", schema.ContentProperties.FeatureProperties,
                     schema.FeaturePropertiesT())
    if spec.labels:
        tensor.associatedFiles = _labels_file(schema, TENSOR_AXIS_LABELS)
    return tensor


def detection_roles(shapes: Sequence[tuple[int, ...]], names: Sequence[str]) -> list[str]:
    """The role (location, category, score, number of detections) of each output, in output order.

    Boxes are the rank-3 output ending in 4 and the count is the one-value output;
    categories and scores have the same shape, so their names must tell them apart.
    """
    roles: list[str | None] = [None] * len(shapes)
    for i, shape in enumerate(shapes):
        if len(shape) == 3 and shape[-1] == 4:
            roles[i] = DETECTION_OUTPUTS[0]
        elif int(np.prod(shape)) == 1:
            roles[i] = DETECTION_OUTPUTS[3]
    for i, name in enumerate(names):
        lowered = name.lower()
        if roles[i] is None and ("class" in lowered or "categor" in lowered or "label" in lowered):
            roles[i] = DETECTION_OUTPUTS[1]
        elif roles[i] is None and "score" in lowered:
            roles[i] = DETECTION_OUTPUTS[2]
    if sorted(r for r in roles if r) != sorted(DETECTION_OUTPUTS):
        raise UserInputError(f"cannot tell the detector's outputs apart from shapes {list(shapes)} and names "
                             f"{list(names)}: name them so one contains 'class' and one 'score'")
    return roles


def _detection_outputs(schema, spec: MetadataSpec, roles: Sequence[str]):
    box = schema.BoundingBoxPropertiesT()
    box.index = [int(v) for v in spec.box_index]
    box.type, box.coordinateType = schema.BoundingBoxType.BOUNDARIES, schema.CoordinateType.RATIO
    feature = schema.ContentProperties.FeatureProperties
    location = _tensor(schema, DETECTION_OUTPUTS[0], "Boxes in [0, 1] of the input size.",
                       schema.ContentProperties.BoundingBoxProperties, box, value_range=2)
    category = _tensor(schema, DETECTION_OUTPUTS[1], "Class of each box.", feature,
                       schema.FeaturePropertiesT(), value_range=2)
    if spec.labels:
        category.associatedFiles = _labels_file(schema, TENSOR_VALUE_LABELS)
    score = _tensor(schema, DETECTION_OUTPUTS[2], "Score of each box.", feature, schema.FeaturePropertiesT(),
                    value_range=2)
    count = _tensor(schema, DETECTION_OUTPUTS[3], "Number of boxes.", feature, schema.FeaturePropertiesT())
    group = schema.TensorGroupT()
    group.name, group.tensorNames = "detection_result", list(DETECTION_OUTPUTS[:3])
    by_role = dict(zip(DETECTION_OUTPUTS, (location, category, score, count)))
    return [by_role[role] for role in roles], [group]  # metadata is positional: follow the outputs' order


def metadata_buffer(spec: MetadataSpec, input_name: str, output_names: Sequence[str],
                    detection_order: Sequence[str] = DETECTION_OUTPUTS) -> bytes:
    """The TFLITE_METADATA flatbuffer for ``spec.task``; ``detection_order`` is each output's role."""
    schema = _schema()
    spec.validate()
    subgraph = schema.SubGraphMetadataT()
    if spec.task == "audio_classifier":
        subgraph.inputTensorMetadata = [_audio_input(schema, spec, input_name)]
    else:
        subgraph.inputTensorMetadata = [_image_input(schema, spec, input_name)]
    if spec.task == "object_detector":
        subgraph.outputTensorMetadata, subgraph.outputTensorGroups = _detection_outputs(schema, spec,
                                                                                        detection_order)
    else:
        subgraph.outputTensorMetadata = [_scores_output(schema, spec, output_names[0])]
    meta = schema.ModelMetadataT()
    meta.name, meta.description, meta.version = spec.name, spec.description, spec.version
    meta.author, meta.license = spec.author, spec.license
    meta.subgraphMetadata = [subgraph]
    meta.minParserVersion = MIN_PARSER_VERSION
    builder = flatbuffers.Builder(1024)
    builder.Finish(meta.Pack(builder), file_identifier=METADATA_IDENTIFIER)
    return bytes(builder.Output())


def _widen(mean: Sequence[float], std: Sequence[float]) -> tuple[list[float], list[float]]:
    n = max(len(mean), len(std))
    return [float(mean[i % len(mean)]) for i in range(n)], [float(std[i % len(std)]) for i in range(n)]


def populate(model: bytes, buffers: dict[str, bytes], files: dict[str, bytes] | None = None) -> bytes:
    """The model with each named metadata buffer set (replaced if present) and ``files`` zipped on its end."""
    from ai_edge_litert import schema_py_generated as tfl

    read_model(model)  # validated first: never rewrite a broken file
    end = _flatbuffer_end(model)
    tree = tfl.ModelT.InitFromPackedBuf(bytearray(model[:end]), 0)
    tree.metadata = [m for m in (tree.metadata or []) if _text(m.name) not in buffers]  # replace, not add
    for name, data in buffers.items():
        buffer = tfl.BufferT()
        buffer.data = list(data)
        tree.buffers.append(buffer)
        entry = tfl.MetadataT()
        entry.name = name
        entry.buffer = len(tree.buffers) - 1
        tree.metadata.append(entry)
    builder = flatbuffers.Builder(len(model) + sum(len(d) for d in buffers.values()) + 1024)
    builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
    if files is None:  # keep files packed earlier (labels); zip offsets change, so they are re-zipped
        files = associated_files(model)
    out = io.BytesIO(bytes(builder.Output()))
    if files:
        with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as archive:
            for name, data in files.items():
                archive.writestr(name, data)
    return out.getvalue()


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _flatbuffer_end(data: bytes) -> int:
    """Bytes before any appended zip (a model that already carries associated files)."""
    if not associated_files(data):
        return len(data)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return min(info.header_offset for info in archive.infolist())


def standard_metadata(model: TFLiteModel, spec: MetadataSpec) -> tuple[bytes, dict[str, bytes]]:
    """The TFLITE_METADATA buffer and associated files for ``model`` as ``spec`` describes it.

    Checks the model fits the task (inputs, outputs, label count) and names the
    tensors as the model's signature does.
    """
    spec.validate()
    if spec.vocab is not None:
        from .text_metadata import text_metadata

        return text_metadata(model, spec, _tensor, _schema())
    sg = model.main
    wanted_outputs = 4 if spec.task == "object_detector" else 1
    if len(sg.inputs) != 1 or len(sg.outputs) != wanted_outputs:
        raise UserInputError(f"a {spec.task} needs 1 input and {wanted_outputs} output(s); the model has "
                             f"{len(sg.inputs)} and {len(sg.outputs)}")
    spec = _fit_input(spec, tuple(sg.tensors[sg.inputs[0]].shape))
    if spec.task != "object_detector":
        read_labels(spec.labels, sg.tensors[sg.outputs[0]].shape[-1])
    names = {index: name for s in model.signatures[:1] for name, index in {**s.inputs, **s.outputs}.items()}
    output_names = [names.get(i, sg.tensors[i].name) for i in sg.outputs]
    roles = detection_roles([sg.tensors[i].shape for i in sg.outputs], output_names) \
        if spec.task == "object_detector" else DETECTION_OUTPUTS
    buffer = metadata_buffer(spec, names.get(sg.inputs[0], sg.tensors[sg.inputs[0]].name), output_names, roles)
    files = {LABELS_FILE: ("\n".join(spec.labels) + "\n").encode()} if spec.labels else {}
    return buffer, files


def _fit_input(spec: MetadataSpec, shape: tuple[int, ...]) -> MetadataSpec:
    """``spec`` with its colour space filled in, or refused where it does not fit the model's input ``shape``.

    An image's channels are its rank-4 shape's last axis (NHWC) or second (NCHW) when that is 1 or 3, as the
    device runtime reads them; a metadata reader would otherwise fail on the first image (three means for
    one channel) or feed it wrongly (RGB for a grayscale input).
    """
    if spec.task == "audio_classifier":
        if len(shape) >= 4:
            raise UserInputError(f"--task audio_classifier needs a waveform input such as (1, samples); the "
                                 f"model's input {shape} is an image's. Fix: --task image_classifier (or "
                                 "object_detector) for an image model")
        return spec
    channels = image_channels(shape)
    if channels is None:
        return spec
    if spec.mean is not None and (len(spec.mean) not in (1, channels) or len(spec.std) not in (1, channels)):
        raise UserInputError(f"--mean/--std give {len(spec.mean)}/{len(spec.std)} values but the model's input "
                             f"{shape} has {channels} channel{'s' if channels > 1 else ''}. Fix: one --mean and "
                             f"one --std{f', or {channels} of each (one per channel)' if channels > 1 else ''}")
    fitting = "GRAYSCALE" if channels == 1 else "RGB"
    if spec.color_space not in (None, fitting):
        raise UserInputError(f"--color-space {spec.color_space} does not fit the model's input {shape}: it has "
                             f"{channels} channel{'s' if channels > 1 else ''}. Fix: --color-space {fitting}, or "
                             "leave it out (it follows the input)")
    return replace(spec, color_space=fitting)


def add_metadata(model_path: str | os.PathLike, output: str | os.PathLike, spec: MetadataSpec,
                 force: bool = False) -> bytes:
    """Write a copy of the model with standard metadata; the input file is never changed.

    Without ``spec.mean/std`` the model's existing normalisation is kept, or none is written (unknown).
    """
    from ...files import check_output_path

    spec.validate()
    out = check_output_path(output, [model_path], force)
    data = read_model_bytes(model_path)
    parsed = read_model(data)
    existing = read_info(parsed)
    if spec.mean is None and spec.std is None and spec.task != "audio_classifier" and spec.vocab is None:
        if existing is not None and existing.mean is not None:  # a rewrite (labels, version) keeps it
            spec = replace(spec, mean=existing.mean, std=existing.std)
    if spec.vocab is None and existing is not None and existing.vocab_file:  # ... and a text model's vocabulary
        from .text_metadata import vocab_in_model

        spec = replace(spec, vocab=vocab_in_model(data, existing))
    buffer, files = standard_metadata(parsed, spec)
    result = populate(data, {METADATA_NAME: buffer}, files)
    atomic_write(out, result)
    return result
