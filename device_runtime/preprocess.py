"""Camera frame / image file / waveform -> model input tensor, in vectorised numpy.

Normalisation follows the TFLite metadata convention: ``(pixel - mean) / std``
on 0..255 pixels, so mean=0, std=255 gives [0, 1] and mean=std=127.5 gives
[-1, 1].  Resizing is bilinear with half-pixel centres (as OpenCV and TF do),
written in numpy so that results are the same on every device and can be
reproduced exactly by other runtimes (the Android core ports it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .errors import InputError

RESIZE_MODES = ("stretch", "letterbox", "crop")
LAYOUTS = ("NHWC", "NCHW")
COLOR_ORDERS = ("RGB", "BGR")


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
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3; got {self.channels}")
        if len(self.mean) not in (1, self.channels) or len(self.std) not in (1, self.channels):
            raise ValueError(f"mean/std need 1 or {self.channels} values; got {self.mean} / {self.std}")
        if any(s == 0 for s in self.std):
            raise ValueError("std values must be non-zero")

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
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        out = np.empty_like(boxes)
        out[:, 0::2] = (boxes[:, 0::2] - self.pad_x) / self.scale_x
        out[:, 1::2] = (boxes[:, 1::2] - self.pad_y) / self.scale_y
        out[:, 0::2] = out[:, 0::2].clip(0, self.source_width)
        out[:, 1::2] = out[:, 1::2].clip(0, self.source_height)
        return out

    def to_model(self, boxes: np.ndarray) -> np.ndarray:
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        out = np.empty_like(boxes)
        out[:, 0::2] = boxes[:, 0::2] * self.scale_x + self.pad_x
        out[:, 1::2] = boxes[:, 1::2] * self.scale_y + self.pad_y
        return out


def load_image(source, color_order: str = "RGB") -> np.ndarray:
    """An HxWx3 uint8 RGB array from a path, a PIL image, or an HxWxC uint8 array (RGB or BGR)."""
    if color_order not in COLOR_ORDERS:
        raise ValueError(f"color_order must be RGB or BGR; got {color_order!r}")
    if isinstance(source, (str, os.PathLike)):
        try:
            from PIL import Image, UnidentifiedImageError
        except ImportError:
            raise InputError("reading image files needs Pillow (pip install pillow); "
                             "or pass an HxWx3 uint8 array") from None
        try:
            with Image.open(source) as img:
                return np.asarray(img.convert("RGB"))
        except FileNotFoundError:
            raise InputError(f"image file not found: {source}") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise InputError(f"cannot read image {source}: {exc}") from None
    if hasattr(source, "convert") and hasattr(source, "size"):  # a PIL image
        return np.asarray(source.convert("RGB"))
    frame = np.asarray(source)
    if frame.ndim == 2:
        frame = frame[..., None]
    if frame.ndim != 3 or frame.shape[2] not in (1, 3, 4):
        raise InputError(f"an image array must be HxW, HxWx1, HxWx3 or HxWx4; got shape {frame.shape}")
    if frame.dtype != np.uint8:
        raise InputError(f"an image array must be uint8 (0..255); got {frame.dtype}")
    frame = frame[..., :3] if frame.shape[2] == 4 else frame
    if frame.shape[2] == 1:
        frame = np.repeat(frame, 3, axis=2)
    return frame[..., ::-1] if color_order == "BGR" else frame


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize with half-pixel centres; returns float32 HxWxC."""
    src_h, src_w = image.shape[:2]
    if (src_h, src_w) == (height, width):
        return image.astype(np.float32)
    y0, y1, wy = _axis_weights(src_h, height)
    x0, x1, wx = _axis_weights(src_w, width)
    img = image.astype(np.float32)
    top = img[y0]
    bottom = img[y1]
    rows = top + (bottom - top) * wy[:, None, None]
    left = rows[:, x0]
    right = rows[:, x1]
    return left + (right - left) * wx[None, :, None]


def _axis_weights(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pos = (np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5
    pos = np.clip(pos, 0, src - 1)
    low = np.floor(pos).astype(np.intp)
    high = np.minimum(low + 1, src - 1)
    return low, high, (pos - low).astype(np.float32)


def preprocess_image(source, spec: ImageSpec, color_order: str = "RGB") -> tuple[np.ndarray, Letterbox]:
    """A (1, ...) float32 tensor for ``spec`` and the mapping back to the original pixels."""
    image = load_image(source, color_order)
    src_h, src_w = image.shape[:2]
    if spec.resize == "stretch":
        resized = resize_bilinear(image, spec.height, spec.width)
        box = Letterbox(spec.width / src_w, spec.height / src_h, 0.0, 0.0, src_w, src_h)
    elif spec.resize == "letterbox":
        scale = min(spec.width / src_w, spec.height / src_h)
        new_w, new_h = max(1, round(src_w * scale)), max(1, round(src_h * scale))
        pad_x, pad_y = (spec.width - new_w) // 2, (spec.height - new_h) // 2
        resized = np.full((spec.height, spec.width, 3), spec.pad_value, np.float32)
        resized[pad_y:pad_y + new_h, pad_x:pad_x + new_w] = resize_bilinear(image, new_h, new_w)
        box = Letterbox(new_w / src_w, new_h / src_h, float(pad_x), float(pad_y), src_w, src_h)
    else:  # crop: scale the shorter side to fit, cut the centre
        scale = max(spec.width / src_w, spec.height / src_h)
        new_w, new_h = max(spec.width, round(src_w * scale)), max(spec.height, round(src_h * scale))
        off_x, off_y = (new_w - spec.width) // 2, (new_h - spec.height) // 2
        resized = resize_bilinear(image, new_h, new_w)[off_y:off_y + spec.height, off_x:off_x + spec.width]
        box = Letterbox(new_w / src_w, new_h / src_h, -float(off_x), -float(off_y), src_w, src_h)
    if spec.channels == 1:  # ITU-R BT.601 luma, as PIL's "L" conversion
        resized = resized @ np.array([0.299, 0.587, 0.114], np.float32)
        resized = resized[..., None]
    tensor = (resized - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    if spec.layout == "NCHW":
        tensor = tensor.transpose(2, 0, 1)
    return tensor[None].astype(np.float32, copy=False), box


def frame_audio(waveform: np.ndarray, frame_length: int, hop_length: int | None = None) -> np.ndarray:
    """Split a mono waveform (int16 PCM or float in [-1, 1]) into (frames, frame_length) float32.

    The last frame is zero-padded, so no sample is dropped.
    """
    wave = np.asarray(waveform)
    if wave.ndim == 2 and 1 in wave.shape:
        wave = wave.reshape(-1)
    if wave.ndim != 1:
        raise InputError(f"audio must be mono (1-D); got shape {wave.shape}")
    if wave.dtype == np.int16:
        wave = wave.astype(np.float32) / 32768.0
    elif np.issubdtype(wave.dtype, np.floating):
        wave = wave.astype(np.float32)
    else:
        raise InputError(f"audio must be int16 PCM or float; got {wave.dtype}")
    if not np.isfinite(wave).all():
        raise InputError("audio contains NaN or infinity")
    hop = hop_length or frame_length
    if frame_length < 1 or hop < 1:
        raise ValueError(f"frame_length and hop_length must be >= 1; got {frame_length}, {hop}")
    count = max(1, int(np.ceil(max(len(wave) - frame_length, 0) / hop)) + 1)
    padded = np.zeros((count - 1) * hop + frame_length, np.float32)
    padded[:len(wave)] = wave[:len(padded)]
    starts = np.arange(count) * hop
    return padded[starts[:, None] + np.arange(frame_length)[None, :]]
