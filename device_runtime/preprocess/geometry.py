"""Where a frame's pixels go in the model input: the image spec, the fit of a frame to it, and the map back.

Resizing samples with half-pixel centres (as OpenCV and TF do); a frame is
stretched, letterboxed (keep aspect, pad) or centre-cropped (keep aspect) to
the model's size, and ``Letterbox`` maps model pixels back to the frame's.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ..errors import ArgumentError, InputError

RESIZE_MODES = ("stretch", "letterbox", "crop")
LAYOUTS = ("NHWC", "NCHW")


@dataclass(frozen=True)
class ImageSpec:
    """How a model wants its image input."""

    height: int
    width: int
    channels: int = 3
    layout: str = "NHWC"
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (255.0,)
    resize: str = "stretch"  # stretch | letterbox (keep aspect, pad) | crop (keep aspect, centre crop)
    pad_value: float = 114.0  # letterbox border, in 0..255 pixel units

    def __post_init__(self):
        for name, value, allowed in (("resize", self.resize, RESIZE_MODES), ("layout", self.layout, LAYOUTS)):
            if value not in allowed:
                raise ArgumentError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        if self.channels not in (1, 3):
            raise ArgumentError(f"channels must be 1 or 3; got {self.channels}")
        if len(self.mean) not in (1, self.channels) or len(self.std) not in (1, self.channels):
            raise ArgumentError(f"mean/std need 1 or {self.channels} values; got {self.mean} / {self.std}")
        if any(s == 0 for s in self.std):
            raise ArgumentError("std values must be non-zero")

    @classmethod
    def from_input_shape(cls, shape: tuple[int, ...], **kwargs) -> ImageSpec:
        """Guess size and layout from a rank-4 input shape such as (1, 224, 224, 3) or (1, 3, 224, 224)."""
        if len(shape) != 4:
            raise InputError(f"the model input has shape {shape}; an image input needs rank 4")
        if shape[3] in (1, 3):
            return cls(shape[1], shape[2], shape[3], "NHWC", **kwargs)
        if shape[1] in (1, 3):
            return cls(shape[2], shape[3], shape[1], "NCHW", **kwargs)
        raise InputError(f"cannot tell the channel axis of input shape {shape}; pass an ImageSpec")


@dataclass(frozen=True)
class Letterbox:
    """The mapping between original-image pixels and model-input pixels."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float
    source_width: int
    source_height: int

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """(N, 4) x1, y1, x2, y2 in model pixels -> original pixels, clipped to the image."""
        offset, scale, limit = self._per_coordinate
        out = (np.asarray(boxes, np.float64).reshape(-1, 4) - offset) / scale
        np.minimum(out, limit, out=out)
        return np.maximum(out, 0.0, out=out)

    def to_model(self, boxes: np.ndarray) -> np.ndarray:
        offset, scale, _ = self._per_coordinate
        return np.asarray(boxes, np.float64).reshape(-1, 4) * scale + offset

    @functools.cached_property
    def _per_coordinate(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Padding, scale and image size per x1, y1, x2, y2, made once: a detector maps boxes every frame."""
        return (np.array((self.pad_x, self.pad_y) * 2), np.array((self.scale_x, self.scale_y) * 2),
                np.array((self.source_width, self.source_height) * 2, np.float64))



def axis_weights(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half-pixel-centre sample positions of ``dst`` outputs over ``src`` inputs: (low, high, weight)."""
    pos = (np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5
    pos = np.clip(pos, 0, src - 1)
    low = np.floor(pos).astype(np.intp)
    high = np.minimum(low + 1, src - 1)
    return low, high, (pos - low).astype(np.float32)



@dataclass(frozen=True)
class Fit:
    """Where a frame of one size goes: resized whole to ``resized``, then the window at ``crop``
    of ``size`` is kept and pasted at ``paste`` in the model input.  Both engines sample from it."""

    resized: tuple[int, int]
    crop: tuple[int, int]
    size: tuple[int, int]
    paste: tuple[int, int]
    letterbox: Letterbox

    @classmethod
    def of(cls, spec: ImageSpec, src_h: int, src_w: int) -> Fit:
        height, width = spec.height, spec.width
        if spec.resize == "stretch":
            return cls((height, width), (0, 0), (height, width), (0, 0),
                       Letterbox(width / src_w, height / src_h, 0.0, 0.0, src_w, src_h))
        if spec.resize == "letterbox":
            scale = min(width / src_w, height / src_h)
            new_w, new_h = max(1, round(src_w * scale)), max(1, round(src_h * scale))
            top, left = (height - new_h) // 2, (width - new_w) // 2
            return cls((new_h, new_w), (0, 0), (new_h, new_w), (top, left),
                       Letterbox(new_w / src_w, new_h / src_h, float(left), float(top), src_w, src_h))
        scale = max(width / src_w, height / src_h)  # crop: scale the shorter side to fit, keep the centre
        new_w, new_h = max(width, round(src_w * scale)), max(height, round(src_h * scale))
        top, left = (new_h - height) // 2, (new_w - width) // 2
        return cls((new_h, new_w), (top, left), (height, width), (0, 0),
                   Letterbox(new_w / src_w, new_h / src_h, -float(left), -float(top), src_w, src_h))

    @property
    def source(self) -> tuple[int, int]:
        """(height, width) of the frames this fit is for."""
        return self.letterbox.source_height, self.letterbox.source_width

    @property
    def resamples(self) -> bool:
        """False for a frame already at the resize size (a camera's stream at the model's size)."""
        return self.resized != self.source

    def axis(self, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The numpy engine's (low, high, weight) sample positions along one axis of the window."""
        start = self.crop[axis]
        return tuple(a[start:start + self.size[axis]] for a in axis_weights(self.source[axis], self.resized[axis]))
