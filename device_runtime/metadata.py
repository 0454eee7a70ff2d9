"""Read the standard TFLite model metadata (TFLITE_METADATA) without TensorFlow or tflite-support.

The metadata flatbuffer (TFLite Support's metadata_schema.fbs) is read with
the same bounds-checked reader as the model; associated files such as label
lists live in a zip archive appended to the model file, as the standard
populator writes them.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
from dataclasses import dataclass

from .errors import ModelFormatError
from .tflite_format import TFLiteModel, _Table

METADATA_NAME = "TFLITE_METADATA"
BUILD_INFO_NAME = "EDGE_SDK_BUILD"  # JSON: how the file was built, and its inputs' reference statistics
METADATA_IDENTIFIER = b"M001"
TENSOR_AXIS_LABELS = 2
TENSOR_VALUE_LABELS = 3
VOCABULARY = 5
NORMALIZATION_OPTIONS, BERT_TOKENIZER_OPTIONS = 1, 4  # ProcessUnitOptions union members
TOKENIZER_CONFIG = "tokenizer_config.json"  # the SDK's tokenizer settings (lowercase, accents), beside the vocab
IMAGE_PROPERTIES, BOUNDING_BOX_PROPERTIES, AUDIO_PROPERTIES = 2, 3, 4  # ContentProperties union members
COLOR_SPACES = {0: "unknown", 1: "RGB", 2: "GRAYSCALE"}


@dataclass(frozen=True)
class ModelInfo:
    """What the embedded metadata says about the model and its first input and output."""

    name: str
    description: str
    version: str
    author: str
    license: str
    input_name: str
    color_space: str | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    output_name: str
    labels: tuple[str, ...] | None
    label_file: str | None
    task: str = "unknown"  # image_classifier | object_detector | audio_classifier | unknown
    output_names: tuple[str, ...] = ()
    box_index: tuple[int, ...] | None = None  # positions of left, top, right, bottom in a box
    sample_rate: int | None = None
    channels: int | None = None
    vocab_file: str | None = None  # a BERT tokenizer's vocabulary (BertTokenizerOptions), packed in the model
    tokenizer_config: str | None = None  # its settings file (JSON), when the SDK wrote one


def read_info(model: TFLiteModel) -> ModelInfo | None:
    """The model's metadata, or None when it has none."""
    raw = model.metadata_bytes(METADATA_NAME)
    if raw is None:
        return None
    buf = memoryview(raw)
    if len(buf) < 8 or bytes(buf[4:8]) != METADATA_IDENTIFIER:
        raise ModelFormatError("corrupt model: TFLITE_METADATA is not a metadata flatbuffer (identifier M001)")
    root = _Table(buf, struct.unpack_from("<I", buf, 0)[0], "metadata")
    subgraphs = root.tables(3, "subgraph_metadata")
    inputs = subgraphs[0].tables(2, "input_tensor_metadata") if subgraphs else []
    outputs = subgraphs[0].tables(3, "output_tensor_metadata") if subgraphs else []
    mean = std = color = sample_rate = channels = box_index = None
    task = "unknown"
    if inputs:
        for unit in inputs[0].tables(4, "process_unit"):
            if unit.scalar(0, "B", 0) == NORMALIZATION_OPTIONS:
                options = unit.table(1, "normalization_options")
                mean = tuple(float(v) for v in options.array(0, "<f4"))
                std = tuple(float(v) for v in options.array(1, "<f4"))
        content = inputs[0].table(3, "content")
        kind = content.scalar(0, "B", 0) if content is not None else 0
        if kind == IMAGE_PROPERTIES:
            color = COLOR_SPACES.get(content.table(1, "image_properties").scalar(0, "b", 0), "unknown")
            task = "image_classifier"
        elif kind == AUDIO_PROPERTIES:
            audio = content.table(1, "audio_properties")
            sample_rate, channels = audio.scalar(0, "I", 0), audio.scalar(1, "I", 0)
            task = "audio_classifier"
    vocab_file, tokenizer_config = _tokenizer_files(subgraphs[0], inputs) if subgraphs else (None, None)
    if vocab_file:
        task = "text_embedder"
    label_file = None
    for output in outputs:
        content = output.table(3, "content")
        if content is not None and content.scalar(0, "B", 0) == BOUNDING_BOX_PROPERTIES:
            box_index = tuple(int(v) for v in content.table(1, "bounding_box_properties").array(0, "<u4"))
            task = "object_detector"
        for file in output.tables(6, "associated_file"):
            if file.scalar(2, "b", 0) in (TENSOR_AXIS_LABELS, TENSOR_VALUE_LABELS) and label_file is None:
                label_file = file.string(0)
    labels = _read_labels(model.data, label_file) if label_file else None
    if vocab_file and labels:
        task = "text_classifier"
    return ModelInfo(root.string(0), root.string(1), root.string(2), root.string(4), root.string(5),
                     inputs[0].string(0) if inputs else "", color, mean, std,
                     outputs[0].string(0) if outputs else "", labels, label_file, task,
                     tuple(o.string(0) for o in outputs), box_index, sample_rate, channels,
                     vocab_file, tokenizer_config)


def _tokenizer_files(subgraph: _Table, inputs: list[_Table]) -> tuple[str | None, str | None]:
    """(vocabulary file, settings file) of a BERT tokenizer: TFLite Support puts its options in the
    subgraph's input process units (BertNLClassifier) or in an input tensor's own."""
    units = subgraph.tables(5, "input_process_unit") + [u for t in inputs for u in t.tables(4, "process_unit")]
    vocab = None
    for unit in units:
        if unit.scalar(0, "B", 0) == BERT_TOKENIZER_OPTIONS:
            files = unit.table(1, "bert_tokenizer_options").tables(0, "vocab_file")
            vocab = files[0].string(0) if files else None
            break
    config = next((f.string(0) for f in subgraph.tables(4, "associated_file") if f.string(0) == TOKENIZER_CONFIG),
                  None)
    return vocab, config


def read_build_info(model: TFLiteModel) -> dict | None:
    """What `sdk convert` recorded in the model: source hash, recipe, calibration input statistics."""
    raw = model.metadata_bytes(BUILD_INFO_NAME)
    if raw is None:
        return None
    try:
        info = json.loads(raw)
    except ValueError:
        raise ModelFormatError(f"corrupt model: the {BUILD_INFO_NAME} metadata is not JSON") from None
    if not isinstance(info, dict):
        raise ModelFormatError(f"corrupt model: the {BUILD_INFO_NAME} metadata is not a JSON object")
    return info


def associated_files(data: bytes) -> dict[str, bytes]:
    """Files packed into the model (a zip appended to the flatbuffer); empty when there are none."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return {name: archive.read(name) for name in archive.namelist()}
    except (zipfile.BadZipFile, OSError, EOFError):
        return {}


def associated_file(data: bytes, name: str, what: str) -> bytes:
    """One file packed into the model, which its metadata names; refused when absent."""
    files = associated_files(data)
    if name not in files:
        raise ModelFormatError(f"the metadata names {what} file {name!r} but the model does not contain it; "
                               "re-embed it with sdk metadata add")
    return files[name]


def _read_labels(data: bytes, name: str) -> tuple[str, ...]:
    try:
        text = associated_file(data, name, "label").decode("utf-8")
    except UnicodeDecodeError:
        raise ModelFormatError(f"label file {name!r} in the model is not UTF-8") from None
    return tuple(line.strip() for line in text.splitlines() if line.strip())
