"""Which input normalisation a converted image model expects, written into its metadata only when known.

The TFLite metadata convention is ``(pixel - mean) / std`` on 0..255 pixels.  A guess is worse than
nothing: an app (``Model.classify``, the Task library) would feed the model differently from training
without a word.  The normalisation is known from, in this order:

1. ``--mean/--std`` (``MetadataSpec(mean=..., std=...)``): the user says it;
2. a Keras model whose first layers are ``Rescaling`` / ``Normalization`` (tf_keras or Keras 3): the
   model normalises its input itself, so the metadata says which raw range it takes (0..255 pixels:
   mean 0, std 1);
3. data given as an image folder: the SDK loads those images as ``(pixel - 0) / 255``, so the model
   was calibrated (and fine-tuned) on that.

Otherwise it is unknown: no NormalizationOptions are written and the report says how to set them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ...errors import UserInputError

HOW_TO_SET = ("set it with `sdk convert ... --mean M --std S` or `sdk metadata add MODEL -o OUT --mean M --std S` "
              "(0..255 pixels, e.g. --mean 0 --std 255 for inputs in [0, 1], --mean 127.5 --std 127.5 for [-1, 1])")

NORMALISERS = ("Rescaling", "Normalization")  # matched by class name: tf_keras and Keras 3 layers alike
# Layers that leave pixel values' range as it is at inference (augmentation is off, resizing interpolates).
PASS_THROUGH = ("InputLayer", "Resizing", "CenterCrop")
INPUT_RANGES = ((255.0, (0.0,), (1.0,), "0..255 pixels"), (1.0, (0.0,), (255.0,), "[0, 1] inputs"))
NORMALISED_BOUND = 10.0  # a normalising prefix maps its input range into about [-3, 3]; allow a margin
NORMALISED_SPAN = 0.5  # ... and spreads it over a range of at least this width


@dataclass(frozen=True)
class Normalisation:
    """``(pixel - mean) / std`` on 0..255 pixels, and where that is known from (for the report)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str

    def describe(self) -> str:
        return f"(pixel - {list(self.mean)}) / {list(self.std)}"


FOLDER = Normalisation((0.0,), (255.0,), "image-folder data, which the SDK loads as pixel / 255")


def image_channels(shape: Sequence[int | None]) -> int | None:
    """An image input's channels (NHWC last axis or NCHW second, when 1 or 3), or None for no image.

    ``shape`` includes the batch axis; the rule is the device runtime's and ``metadata add``'s.
    """
    if len(shape) != 4:
        return None
    return shape[3] if shape[3] in (1, 3) else shape[1] if shape[1] in (1, 3) else None


def explicit(mean: Sequence[float] | None, std: Sequence[float] | None,
             shape: Sequence[int | None]) -> Normalisation | None:
    """``--mean/--std`` as given, checked against the model input ``shape`` (batch included) before any work."""
    from .metadata import MetadataSpec, _fit_input

    if mean is None and std is None:
        return None
    if not mean or not std:
        given, missing = ("--mean", "--std") if mean else ("--std", "--mean")
        raise UserInputError(f"{given} was given without {missing}: the normalisation (pixel - mean) / std needs "
                             f"both. Fix: add {missing} (0..255 pixel scale, once or once per channel)")
    shape = (1 if shape[0] is None else shape[0], *shape[1:])  # a free height/width stays free (None)
    if image_channels(shape) is None:
        raise UserInputError(f"--mean/--std describe an image input's normalisation; the model's input {shape} is "
                             "no image of 1 or 3 channels. Fix: drop --mean/--std")
    spec = MetadataSpec(mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std))
    spec.validate()
    _fit_input(spec, shape)
    return Normalisation(spec.mean, spec.std, "--mean/--std")


def given(spec: Any, shapes: Sequence[Sequence[int | None]]) -> Normalisation | None:
    """``spec``'s (a MetadataSpec or None) mean/std for a model with inputs of ``shapes`` (batch included)."""
    if spec is None or (spec.mean is None and spec.std is None):
        return None
    if len(shapes) != 1:
        raise UserInputError(f"--mean/--std describe one image input; the model has {len(shapes)} inputs. Fix: "
                             "drop --mean/--std")
    return explicit(spec.mean, spec.std, shapes[0])


def keras_normalisation(model: Any) -> tuple[Normalisation | None, str | None]:
    """The normalisation a Keras model's own leading Rescaling/Normalization layers imply, and a note.

    The layers are composed numerically (run on constant images), so any version's attributes do; the
    composed ``a * x + b`` then tells which raw range the model takes: the one it maps into a normalised
    range (0..255 pixels for ``Rescaling(1/255)``, [0, 1] for ``Rescaling(2, offset=-1)``).
    """
    if len(getattr(model, "inputs", None) or ()) != 1:
        return None, None
    shape = tuple(model.inputs[0].shape)
    channels = image_channels(shape)
    if channels is None:
        return None, None
    layers = _leading_normalisers(model)
    if not any(type(layer).__name__ in NORMALISERS for layer in layers):
        return None, None
    names = " -> ".join(f"{type(layer).__name__}" for layer in layers
                        if type(layer).__name__ in NORMALISERS)
    gain, offset = _compose(layers, shape, channels)
    if gain is None:
        return None, (f"the model's leading {names} layers are no per-channel scale and shift, so they do not "
                      "tell the input normalisation")
    if np.allclose(gain, 1.0) and np.allclose(offset, 0.0):
        return None, None  # an identity (e.g. a Normalization with mean 0, variance 1) says nothing
    for top, mean, std, what in INPUT_RANGES:
        low, high = offset, gain * top + offset
        if max(np.abs(low).max(), np.abs(high).max()) <= NORMALISED_BOUND and \
                np.abs(high - low).min() >= NORMALISED_SPAN:
            pixels = _describe_affine(gain, offset)
            return Normalisation(mean, std, f"the model's own {names} layers ({pixels}), so it takes {what}"), None
    return None, (f"the model's leading {names} layers ({_describe_affine(gain, offset)}) map neither 0..255 "
                  "pixels nor [0, 1] into a normalised range, so they do not tell the input normalisation")


def _leading_normalisers(model: Any) -> list:
    """The chain of Rescaling/Normalization (and range-keeping) layers the input goes through first.

    Followed through the graph: each layer must be the only one reading the previous tensor, so a layer
    on a side branch is never taken for the model's input normalisation.
    """
    found: list = []
    tensor = model.inputs[0]
    while True:
        readers = [(layer, node) for layer in model.layers if type(layer).__name__ != "InputLayer"
                   for node in getattr(layer, "_inbound_nodes", ()) if _is_only(node.input_tensors, tensor)]
        if len(readers) != 1:
            return found
        layer, node = readers[0]
        kind = type(layer).__name__
        if kind in NORMALISERS or kind in PASS_THROUGH or kind.startswith("Random"):
            found.append(layer)
        elif hasattr(layer, "layers") and hasattr(layer, "inputs"):  # a nested Sequential / functional model
            inner = _leading_normalisers(layer)
            found += inner
            if len(inner) != len([sub for sub in layer.layers if type(sub).__name__ != "InputLayer"]):
                return found
        else:
            return found
        outputs = _tensors(node.output_tensors)
        if len(outputs) != 1:
            return found
        tensor = outputs[0]


def _is_only(value: Any, tensor: Any) -> bool:
    tensors = _tensors(value)
    return len(tensors) == 1 and tensors[0] is tensor  # by identity: symbolic tensors refuse == and len()


def _tensors(value: Any) -> list:
    """A node's tensors as a list (tf_keras gives one tensor or a list, Keras 3 a tuple)."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _compose(layers: list, shape: tuple, channels: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Per-channel (gain, offset) of ``layers`` run in order, or (None, None) when they are not affine."""
    probe_shape = tuple(1 if d is None else int(d) for d in shape)
    axis = 3 if probe_shape[3] == channels else 1
    values = []
    for level in (0.0, 1.0, 2.0):
        x = np.full(probe_shape, level, np.float32)
        try:
            for layer in layers:
                x = np.asarray(layer(x, training=False) if type(layer).__name__.startswith("Random") else layer(x),
                               np.float64)
        except Exception:  # noqa: BLE001 -- a layer that refuses a probe tells nothing; the conversion goes on
            return None, None
        if x.ndim != 4 or x.shape[axis] != channels:
            return None, None
        per_channel = np.moveaxis(x, axis, -1).reshape(-1, channels)
        if np.ptp(per_channel, axis=0).max() > 1e-4 * max(1.0, np.abs(per_channel).max()):
            return None, None  # not the same at every pixel: no per-channel normalisation
        values.append(per_channel[0])
    offset, gain = values[0], values[1] - values[0]
    if not np.allclose(values[2], offset + 2 * gain, rtol=1e-4, atol=1e-5) or np.any(gain == 0):
        return None, None
    return gain, offset


def _describe_affine(gain: np.ndarray, offset: np.ndarray) -> str:
    def short(values: np.ndarray) -> str:
        rounded = [float(f"{v:.4g}") for v in values]
        return str(rounded[0]) if len(set(rounded)) == 1 else str(rounded)
    sign = "-" if np.all(offset <= 0) and np.any(offset < 0) else "+"
    return f"x * {short(gain)} {sign} {short(np.abs(offset) if sign == '-' else offset)}"


def choose(given: Normalisation | None, from_model: Normalisation | None, model_note: str | None
           ) -> tuple[Normalisation | None, list[str]]:
    """What is known before the data is loaded (image folders then load with it), and notes for the report."""
    if given is not None and from_model is not None and (given.mean, given.std) != (from_model.mean, from_model.std):
        return given, [f"--mean/--std {given.describe()} used instead of {from_model.describe()} from "
                       f"{from_model.source}"]
    if given is not None:
        return given, []
    return from_model, [model_note] if model_note else []


def with_data(known: Normalisation | None, data: Sequence[Any]) -> Normalisation | None:
    """``known``, else the image-folder normalisation when any data came from an image folder."""
    if known is not None:
        return known
    return FOLDER if any(d is not None and getattr(d, "images", False) for d in data) else None


def unknown_note() -> str:
    return ("input normalisation unknown (the data were arrays and the model has no leading Rescaling or "
            "Normalization layer), so none was written to the metadata and Model.classify refuses the model until "
            f"it is set; {HOW_TO_SET}")


def range_note(norm: Normalisation, data: Any, what: str) -> str | None:
    """A note when array data clearly do not span what ``norm`` makes of 0..255 pixels (e.g. [0, 1] data for a
    model that takes pixels): the model was then calibrated on inputs an app will never feed it."""
    if data is None or getattr(data, "images", False) or data.x.ndim != 4:
        return None
    mean, std = (np.asarray(v, np.float64) for v in (norm.mean, norm.std))
    ends = np.stack([(0.0 - mean) / std, (255.0 - mean) / std])
    low, high = float(ends.min()), float(ends.max())
    span = high - low
    got_low, got_high = float(data.x.min()), float(data.x.max())
    if got_low < low - 0.5 * span or got_high > high + 0.5 * span or got_high - got_low < 0.1 * span:
        return (f"the {what} data span [{got_low:.3g}, {got_high:.3g}], but images normalised as {norm.describe()} "
                f"span [{low:.3g}, {high:.3g}]: an app feeding images will not match the data; check --mean/--std "
                "or the data's scale")
    return None
