"""`sdk export android`: put an SDK-built model into the Android demo app with a model card it reads.

The card (model_card.json) tells the app everything model-specific: task,
input size/layout/dtype/normalisation, quantization of every tensor, output
roles in the interpreter's output order, labels and detection settings.  The
app's Kotlin core (android_demo/core) parses it, so swapping in another
classifier or detector needs no code change.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from device_runtime import Model
from device_runtime.errors import DeviceRuntimeError
from device_runtime.preprocess import ImageSpec

from ..errors import OutputPathError, UserInputError
from ..files import atomic_write
from ..labels import check_label_count, read_labels

CARD_FORMAT, CARD_VERSION = "edge-sdk-model-card", 1
ASSETS = Path("app/src/main/assets")
MODEL_FILE, LABELS_FILE, CARD_FILE = "model.tflite", "labels.txt", "model_card.json"
APP_TASKS = ("image_classifier", "object_detector")
APP_INPUT_TYPES = ("float32", "int8", "uint8")
SSD_ROLES = ("location", "category", "score", "number of detections")


@dataclass
class AndroidExport:
    """What was written, for the CLI summary and for scripts (``--json``)."""

    assets: Path
    card: dict
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"assets": str(self.assets), "files": self.files, "notes": self.notes, "card": self.card}

    def render(self) -> str:
        card = self.card
        image = card["input"]
        lines = [f"wrote {', '.join(self.files)} to {self.assets}",
                 f"  task {card['task']}, input {image['height']}x{image['width']}x{image['channels']} "
                 f"{image['dtype']} ({image['layout']}, resize {image['resize']}), {len(card['labels'])} labels",
                 f"  outputs: {', '.join(o['role'] for o in card['outputs'])}"]
        lines += [f"  note: {note}" for note in self.notes]
        lines.append("  build and install: cd android_demo && ./gradlew installDebug (see README)")
        return "\n".join(lines)


def check_project(project_dir: str | os.PathLike) -> Path:
    """The app's assets folder in ``project_dir``, which must be the Android demo project."""
    assets = Path(project_dir) / ASSETS
    if not assets.parent.is_dir():
        raise UserInputError(f"{project_dir} is not the Android demo project (no {ASSETS.parent}); "
                             "pass the android_demo folder, e.g. -o android_demo/")
    return assets


def export_android(model_path: str | os.PathLike, project_dir: str | os.PathLike, *, task: str | None = None,
                   labels: str | os.PathLike | Sequence[str] | None = None, mean: Sequence[float] | None = None,
                   std: Sequence[float] | None = None, has_objectness: bool = False,
                   score_threshold: float = 0.25, iou_threshold: float = 0.45, force: bool = False
                   ) -> AndroidExport:
    """Copy ``model_path`` into ``project_dir``'s assets with labels and a model card.

    Refuses what the app cannot run (not an image model, an unsupported task,
    no labels, label count not matching the classes) before writing anything.
    """
    assets = check_project(project_dir)
    try:
        model = Model(model_path)
    except DeviceRuntimeError as exc:
        raise UserInputError(str(exc)) from None
    info = model.info
    task = task or (info.task if info is not None else None)
    if task not in APP_TASKS:
        found = f"its metadata says {task!r}" if task else "it has no task metadata"
        raise UserInputError(f"the Android demo runs {' or '.join(APP_TASKS)} models; {found}. Pass --task, or "
                             "embed metadata with `sdk metadata add`")
    inputs, outputs = _positional(model)
    image = _image_input(inputs, info, mean, std, task)
    names = _labels(labels, info)
    notes = []
    if task == "image_classifier":
        roles, detection = _classifier_outputs(outputs, names), None
    else:
        roles, detection = _detector_outputs(outputs, names, info, has_objectness, score_threshold, iou_threshold)
    if (info is None or info.mean is None) and mean is None:
        if task == "image_classifier":  # as Model.classify: a guessed normalisation fails silently on a phone
            raise UserInputError("the model's metadata gives no input normalisation, so the app would have to "
                                 "guess it; pass --mean M --std S (on 0..255 pixels, e.g. --mean 0 --std 255 for "
                                 "[0, 1] inputs), or embed them with `sdk metadata add MODEL -o OUT --mean M --std S`")
        notes.append(f"no normalisation in the model's metadata: the app uses mean {list(image.mean)}, "
                     f"std {list(image.std)} (pass --mean/--std if the model expects otherwise)")
    data = Path(model_path).read_bytes()
    card = {
        "format": CARD_FORMAT, "format_version": CARD_VERSION, "task": task,
        "name": info.name if info else Path(model_path).stem, "version": info.version if info else "",
        "model_file": MODEL_FILE, "labels_file": LABELS_FILE, "labels": names, "sha256": model.sha256,
        "input": {**_tensor_card(inputs[0], "image"), "height": image.height, "width": image.width,
                  "channels": image.channels, "layout": image.layout, "mean": list(image.mean),
                  "std": list(image.std), "resize": image.resize,
                  "color_space": "GRAYSCALE" if image.channels == 1 else "RGB"},
        "outputs": [_tensor_card(spec, role) for spec, role in zip(outputs, roles)],
        "detection": detection,
    }
    targets = {MODEL_FILE: data, LABELS_FILE: ("\n".join(names) + "\n").encode(),
               CARD_FILE: (json.dumps(card, indent=2) + "\n").encode()}
    existing = [name for name in targets if (assets / name).exists()]
    if existing and not force:
        raise OutputPathError(f"{assets} already has {', '.join(existing)}; pass --force to replace the app's model")
    for name, payload in targets.items():  # the card last: an app never sees a card for a missing model
        atomic_write(assets / name, payload)
    return AndroidExport(assets, card, list(targets), notes)


def _positional(model: Model):
    """Inputs and outputs in the interpreter's own order, which is what the Java/Kotlin API indexes by."""
    main = model.spec.main
    return (sorted(model.inputs, key=lambda s: main.inputs.index(s.index)),
            sorted(model.outputs, key=lambda s: main.outputs.index(s.index)))


def _image_input(inputs, info, mean, std, task: str) -> ImageSpec:
    if len(inputs) != 1:
        raise UserInputError(f"the Android demo feeds one image input; the model has {len(inputs)} inputs")
    spec = inputs[0]
    if spec.dtype.name not in APP_INPUT_TYPES:
        raise UserInputError(f"the model's input is {spec.dtype.name}; the app feeds {', '.join(APP_INPUT_TYPES)}")
    if mean is None and info is not None and info.mean is not None:
        mean, std = info.mean, info.std
    try:
        return ImageSpec.from_input_shape(spec.shape, mean=tuple(mean or (0.0,)), std=tuple(std or (255.0,)),
                                          resize="letterbox" if task == "object_detector" else "stretch")
    except (DeviceRuntimeError, ValueError) as exc:
        raise UserInputError(f"not an image model the app can feed: {exc}") from None


def _labels(labels, info) -> list[str]:
    if labels is None:
        if info is None or not info.labels:
            raise UserInputError("the model has no labels; pass --labels FILE (one class name per line) or embed "
                                 "them with `sdk convert --labels` / `sdk metadata add --labels`")
        return read_labels(list(info.labels))
    return read_labels(labels)


def _classifier_outputs(outputs, names: list[str]) -> list[str]:
    if len(outputs) != 1:
        raise UserInputError(f"an image classifier for the app has one scores output; the model has {len(outputs)}")
    check_label_count(names, int(np.prod(outputs[0].shape)))
    return ["scores"]


def _detector_outputs(outputs, names, info, has_objectness, score_threshold, iou_threshold):
    settings = {"score_threshold": float(score_threshold), "iou_threshold": float(iou_threshold),
                "max_detections": 100, "has_objectness": bool(has_objectness), "normalized": None}
    if len(outputs) == 4:
        if info is None or sorted(info.output_names) != sorted(SSD_ROLES):
            raise UserInputError("an SSD-style detector needs detector metadata naming its outputs: "
                                 "sdk metadata add MODEL -o OUT --task object_detector --labels FILE")
        box_index = list(info.box_index) if info.box_index else [1, 0, 3, 2]
        return list(info.output_names), {"format": "ssd", "box_index": box_index, **settings}
    if len(outputs) != 1 or len(outputs[0].shape) != 3:
        raise UserInputError(f"the app decodes SSD-style (4 outputs) or YOLO-style (one (1, 4+C, N) output) "
                             f"detectors; this model has outputs {[s.shape for s in outputs]}")
    _, a, b = outputs[0].shape
    classes = min(a, b) - (5 if has_objectness else 4)
    check_label_count(names, classes, what=f"the YOLO output {outputs[0].shape} holds {classes} classes"
                                           f"{' after objectness' if has_objectness else ''}")
    return ["yolo"], {"format": "yolo", "box_index": [0, 1, 2, 3], **settings}


def _tensor_card(spec, role: str) -> dict:
    card = {"name": spec.name, "role": role, "shape": list(spec.shape), "dtype": spec.dtype.name}
    if spec.quantized:
        card["quantization"] = {"scale": spec.scale, "zero_point": spec.zero_point}
    return card
