"""What is embedded in every written model: provenance (recipe, hashes, calibration statistics) and, for image
classifiers and text models, standard TFLite metadata; with the checks on labels and vocabularies that must
hold before any work."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Sequence

import numpy as np

from device_runtime.metadata import BUILD_INFO_NAME, METADATA_NAME
from device_runtime.monitor import channel_rows

from ...data import Dataset
from ...errors import ConversionError
from ...labels import LabelsError
from ...recipe import Recipe
from .metadata import MetadataSpec, populate, standard_metadata
from .normalisation import Normalisation


def embed_metadata(tflite_bytes: bytes, provenance: bytes, spec: MetadataSpec | None, name: str,
                   data: Dataset | None, notes: list[str],
                   normalisation: tuple[Normalisation | None, Sequence[Dataset | None]] = (None, ())) -> bytes:
    """Build provenance for every model, and standard TFLite metadata for image classifiers.

    ``normalisation``: (what is known before the data, the (fine-tune, calibration, evaluation) sets); an
    image folder among the sets makes it known, array data are checked against it.
    """
    from . import normalisation as norms

    known, sets = normalisation
    norm = norms.with_data(known, sets)
    buffers = {BUILD_INFO_NAME: provenance}
    files = None
    standard, note = _standard_metadata(tflite_bytes, spec, name, data, norm)
    if standard is not None and norm is not None:
        notes += [n for n in (norms.range_note(norm, d, what) for d, what in
                              zip(sets, ("fine-tuning", "calibration", "evaluation"))) if n][:1]
    if standard is not None:
        buffers[METADATA_NAME], files = standard
    if note:
        notes.append(note)
    return populate(tflite_bytes, buffers, files)


def check_vocab_fits(metadata: MetadataSpec | None, inputs: Sequence[tuple[str, Any, int | None]]) -> None:
    """With ``--vocab``: refuse, before any work, a model with no token-id input or too few embedding rows.

    ``inputs``: (name, dtype, embedding rows its ids index or None)."""
    if metadata is not None and metadata.vocab is not None:
        from .text_metadata import check_token_inputs

        check_token_inputs(metadata.vocab, [(name, np.dtype(getattr(dtype, "name", dtype)).name, rows)
                                            for name, dtype, rows in inputs])


def check_folder_labels(data: Dataset | None, metadata: MetadataSpec | None, output_shape: tuple) -> None:
    """An image folder's sub-folders become the metadata's labels: refuse, before any work, a folder whose
    class count is not the model's (it used to fail after the conversion, when the metadata was written)."""
    if data is None or not data.class_names or (metadata is not None and metadata.labels):
        return
    if len(output_shape) == 2 and output_shape[-1] and output_shape[-1] != len(data.class_names):
        raise LabelsError(f"the model scores {output_shape[-1]} classes but the image folder {data.source} has "
                          f"{len(data.class_names)} class sub-folders, whose names would be its labels; give a "
                          "folder with one sub-folder per class, or --labels FILE")


def _standard_metadata(tflite_bytes: bytes, spec: MetadataSpec | None, name: str, data: Dataset | None,
                       norm: Normalisation | None):
    """(TFLITE_METADATA buffer, files) for an image classifier, or None, and a note for the report."""
    from device_runtime.tflite_format import read_model

    from .normalisation import unknown_note

    model = read_model(tflite_bytes)
    if spec is not None and spec.vocab is not None:
        written = standard_metadata(model, spec)
        return written, (f"standard TFLite metadata written: text model, BERT tokenizer ({spec.vocab.describe()}, "
                         f"from {spec.vocab.source})" + (f", {len(spec.labels)} labels" if spec.labels else ""))
    sg = model.main
    if any(sg.tensors[i].dtype_name in ("int32", "int64") for i in sg.inputs):
        return None, ("no tokenizer vocabulary embedded (token-id input): Model.embed_text/classify_text need one; "
                      "convert with --vocab vocab.txt, or sdk metadata add OUT -o OUT2 --vocab vocab.txt")
    shape = sg.tensors[sg.inputs[0]].shape
    if len(sg.inputs) != 1 or len(sg.outputs) != 1 or len(shape) != 4 or shape[-1] not in (1, 3):
        return None, None
    scores = sg.tensors[sg.outputs[0]].shape
    if not (len(scores) >= 2 and all(d == 1 for d in scores[1:-1])):  # also with --labels/--mean: no guess
        return None, (f"standard TFLite metadata not written: the output {tuple(scores)} is not one score per "
                      "class, so the model is no image classifier; describe it with sdk metadata add --task")
    if spec is None:
        spec = MetadataSpec(name=name, labels=data.class_names if data is not None else ())
    # One channel can only be grayscale, three only RGB: the input shape decides.
    spec = dataclasses.replace(spec, color_space="GRAYSCALE" if shape[-1] == 1 else "RGB",
                               mean=norm.mean if norm else None, std=norm.std if norm else None)
    try:
        written = standard_metadata(model, spec)
    except ConversionError as exc:  # the schema module is missing: convert anyway, and say so
        return None, f"standard TFLite metadata not written: {exc}"
    described = f"input {norm.describe()} (from {norm.source})" if norm else "no input normalisation"
    return written, (f"standard TFLite metadata written: image classifier, {described}, {len(spec.labels)} labels, "
                     f"version {spec.version}" + ("" if norm else f"; {unknown_note()}"))


def build_info(source_sha256: str, recipe: Recipe, calib: Dataset | None, calibration: np.ndarray | None,
               io_order: dict[str, list[str]] | None = None) -> bytes:
    """Provenance and the calibration inputs' per-channel statistics, embedded in the model.

    ``calibration`` is ``calib``'s inputs in the .tflite's layout (channels last); ``io_order``
    ({"input_order": [...], "output_order": [...]}) lets the device runtime restore the source's order.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        sdk_version = version("edge-deploy-sdk")
    except PackageNotFoundError:
        sdk_version = "unknown"
    recipe_json = json.dumps(recipe.to_dict(), sort_keys=True)
    stats = None
    if calibration is not None:  # in the .tflite's layout: channels last, grouped as the monitor groups them
        channels = channel_rows(calibration)[0].astype(np.float64)
        stats = {"mean": channels.mean(axis=0).tolist(), "std": channels.std(axis=0).tolist(),
                 "samples": len(calibration), "data": calib.source}
    return json.dumps({"format": "edge-deploy-build/1", "sdk_version": sdk_version,
                       "source_sha256": source_sha256,
                       "recipe_sha256": hashlib.sha256(recipe_json.encode()).hexdigest(),
                       "recipe": recipe.to_dict(), "input_stats": stats, **(io_order or {})}).encode()

