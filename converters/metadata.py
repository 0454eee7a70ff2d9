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
from dataclasses import dataclass, field
from typing import Sequence

import flatbuffers

from device_runtime.metadata import METADATA_IDENTIFIER, METADATA_NAME, TENSOR_AXIS_LABELS, associated_files
from device_runtime.tflite_format import read_model

from .errors import ConversionError, UserInputError
from .files import atomic_write
from .tflite_analysis import read_single_io_model

LABELS_FILE = "labels.txt"
MIN_PARSER_VERSION = "1.0.0"


@dataclass(frozen=True)
class MetadataSpec:
    """What to embed; image settings apply to a rank-4 image input."""

    name: str = ""
    description: str = ""
    version: str = "1"
    author: str = ""
    license: str = ""
    mean: Sequence[float] = (0.0,)
    std: Sequence[float] = (255.0,)
    color_space: str = "RGB"  # RGB | GRAYSCALE
    labels: Sequence[str] = field(default_factory=tuple)


def _schema():
    try:
        from tensorflow_lite_support.metadata import metadata_schema_py_generated as schema
    except ImportError:
        raise ConversionError("writing metadata needs TFLite Support's schema module: "
                              "pip install --no-deps tflite-support==0.4.4") from None
    return schema


def metadata_buffer(spec: MetadataSpec, input_name: str, output_name: str) -> bytes:
    """The TFLITE_METADATA flatbuffer for a classifier-style model (image in, scores out)."""
    schema = _schema()
    if spec.color_space not in ("RGB", "GRAYSCALE"):
        raise UserInputError(f"color_space must be RGB or GRAYSCALE; got {spec.color_space!r}")
    if any(s == 0 for s in spec.std):
        raise UserInputError("normalisation std values must be non-zero")
    image = schema.ImagePropertiesT()
    image.colorSpace = getattr(schema.ColorSpaceType, spec.color_space)
    content = schema.ContentT()
    content.contentPropertiesType = schema.ContentProperties.ImageProperties
    content.contentProperties = image
    norm = schema.NormalizationOptionsT()
    norm.mean, norm.std = [float(v) for v in spec.mean], [float(v) for v in spec.std]
    unit = schema.ProcessUnitT()
    unit.optionsType = schema.ProcessUnitOptions.NormalizationOptions
    unit.options = norm
    stats = schema.StatsT()  # the value range the normalised input takes
    means, stds = _widen(spec.mean, spec.std)
    stats.min = [(0.0 - m) / s for m, s in zip(means, stds)]
    stats.max = [(255.0 - m) / s for m, s in zip(means, stds)]
    inp = schema.TensorMetadataT()
    inp.name, inp.description = input_name, "Input image, normalised as (pixel - mean) / std."
    inp.content, inp.processUnits, inp.stats = content, [unit], stats
    out = schema.TensorMetadataT()
    out.name, out.description = output_name, "Scores per class."
    out_content = schema.ContentT()
    out_content.contentPropertiesType = schema.ContentProperties.FeatureProperties
    out_content.contentProperties = schema.FeaturePropertiesT()
    out.content = out_content
    if spec.labels:
        labels = schema.AssociatedFileT()
        labels.name, labels.description = LABELS_FILE, "Class names, one per line, in output order."
        labels.type = TENSOR_AXIS_LABELS
        out.associatedFiles = [labels]
    subgraph = schema.SubGraphMetadataT()
    subgraph.inputTensorMetadata, subgraph.outputTensorMetadata = [inp], [out]
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


def add_metadata(model_path: str | os.PathLike, output: str | os.PathLike, spec: MetadataSpec,
                 force: bool = False) -> bytes:
    """Write a copy of the model with standard metadata; the input file is never changed."""
    from .files import check_output_path

    out = check_output_path(output, [model_path], force)
    data, parsed = read_single_io_model(model_path, "writing metadata")
    sg = parsed.main
    classes = sg.tensors[sg.outputs[0]].shape[-1]
    if spec.labels and len(spec.labels) != classes:
        raise UserInputError(f"{len(spec.labels)} labels given but the model outputs {classes} scores")
    names = {index: name for s in parsed.signatures[:1] for name, index in {**s.inputs, **s.outputs}.items()}
    buffer = metadata_buffer(spec, names.get(sg.inputs[0], sg.tensors[sg.inputs[0]].name),
                             names.get(sg.outputs[0], sg.tensors[sg.outputs[0]].name))
    files = {LABELS_FILE: ("\n".join(spec.labels) + "\n").encode()} if spec.labels else {}
    result = populate(data, {METADATA_NAME: buffer}, files)
    atomic_write(out, result)
    return result


def read_labels_file(path: str | os.PathLike) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    except OSError as exc:
        raise UserInputError(f"cannot read labels file {path}: {exc.strerror}") from None

