"""Camera frame or image file -> the model's input tensor, in the model's own dtype.

``load_image`` reads a path, a PIL image or an HxWxC uint8 frame; an
``ImagePreprocessor`` fits it to an ``ImageSpec`` (``geometry``) with one of the
resampling engines (``engines``), normalisation and quantization folded in.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import ArgumentError, InputError
from .engines import NumpyEngine, OpenCVEngine, resolve_engine
from .geometry import Fit, ImageSpec, Letterbox

COLOR_ORDERS = ("RGB", "BGR")


def load_image(source, color_order: str = "RGB") -> np.ndarray:
    """An HxWx3 uint8 RGB array from a path, a PIL image, or an HxWxC uint8 array (RGB or BGR)."""
    if color_order not in COLOR_ORDERS:
        raise ArgumentError(f"color_order must be RGB or BGR; got {color_order!r}")
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
    if not frame.shape[0] or not frame.shape[1]:
        raise InputError(f"an image array needs at least one pixel; got shape {frame.shape}")
    frame = frame[..., :3] if frame.shape[2] == 4 else frame
    if frame.shape[2] == 1:
        frame = np.repeat(frame, 3, axis=2)
    return frame[..., ::-1] if color_order == "BGR" else frame


class ImagePreprocessor:
    """Frames of any size -> the model's input tensor, in the model's own dtype.

    Normalisation (and, for quantized inputs, quantization) is folded into the
    resampling, and the per-size plan is cached, because a camera delivers
    frames of one size many times a second.  ``engine`` picks the resampler:
    ``"numpy"`` is the exact reference, ``"opencv"`` is several times faster and
    within one pixel level of it, ``"auto"`` takes OpenCV when it is installed.
    """

    def __init__(self, spec: ImageSpec, scale: float = 0.0, zero_point: int = 0,
                 dtype: np.dtype = np.dtype(np.float32), engine: str = "auto"):
        self.spec = spec
        self.dtype = np.dtype(dtype)
        self.engine = resolve_engine(engine)
        self.quantized = bool(scale) and np.issubdtype(self.dtype, np.integer)
        mean = np.broadcast_to(np.asarray(spec.mean, np.float64), (3,))
        std = np.broadcast_to(np.asarray(spec.std, np.float64), (3,))
        q_scale, q_zero = (scale, zero_point) if self.quantized else (1.0, 0.0)
        self.gain = 1.0 / (std * q_scale)
        self.offset = q_zero - mean / (std * q_scale)
        border = spec.pad_value * self.gain + self.offset
        self.canvas = self.finish(np.broadcast_to(border[:spec.channels].astype(np.float32),
                                                  (spec.height, spec.width, spec.channels)).copy())
        self._plans: dict[tuple[int, int, bool], tuple[Fit, NumpyEngine | OpenCVEngine]] = {}

    def _plan(self, src_h: int, src_w: int, bgr: bool) -> tuple[Fit, NumpyEngine | OpenCVEngine]:
        fit = Fit.of(self.spec, src_h, src_w)
        engine = (OpenCVEngine if self.engine == "opencv" else NumpyEngine)(self, fit, bgr)
        return fit, engine

    def finish(self, values: np.ndarray) -> np.ndarray:
        """float values -> the model's dtype (rounded and clipped for quantized inputs)."""
        if self.quantized:
            info = np.iinfo(self.dtype)
            np.rint(values, out=values)
            return np.clip(values, info.min, info.max, out=values).astype(self.dtype)
        return values.astype(self.dtype, copy=False)

    @property
    def shape(self) -> tuple[int, ...]:
        """The (1, ...) tensor this makes, in the spec's layout."""
        height, width, channels = self.canvas.shape
        return (1, height, width, channels) if self.spec.layout == "NHWC" else (1, channels, height, width)

    def __call__(self, image: np.ndarray, out: np.ndarray | None = None) -> tuple[np.ndarray, Letterbox]:
        """``image``: HxWx3 uint8 RGB.  Returns a (1, ...) tensor and the mapping back.

        ``out``, an array of ``shape`` and the model's dtype, is filled instead of
        a new tensor: the interpreter's own input buffer, saving a copy per frame.
        A channel-reversed view (``load_image``'s answer for a BGR frame, or
        ``frame[..., ::-1]``) is read from its base, saving a full-frame copy.
        """
        if out is not None and (out.shape != self.shape or out.dtype != self.dtype):
            raise InputError(f"the image spec makes a {self.shape} {self.dtype} tensor but the model input is "
                             f"{out.shape} {out.dtype}: pass an ImageSpec of the input's size")
        bgr = image.ndim == 3 and image.strides[2] < 0
        frame = np.ascontiguousarray(image[..., ::-1] if bgr else image)
        key = (frame.shape[0], frame.shape[1], bgr)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._plan(*key)
        fit, engine = plan
        tensor = np.empty(self.shape, self.dtype) if out is None else out
        channels_last = self.spec.layout == "NHWC"
        hwc = tensor[0] if channels_last else np.empty_like(self.canvas)
        (top, left), (h, w) = fit.paste, fit.size
        if fit.size != self.canvas.shape[:2]:  # letterbox: the border comes from the canvas, made once
            hwc[:top], hwc[top + h:] = self.canvas[:top], self.canvas[top + h:]
            hwc[top:top + h, :left], hwc[top:top + h, left + w:] = (self.canvas[top:top + h, :left],
                                                                    self.canvas[top:top + h, left + w:])
        engine(frame, hwc[top:top + h, left:left + w])
        if not channels_last:
            tensor[0] = hwc.transpose(2, 0, 1)
        return tensor, fit.letterbox


def preprocess_image(source, spec: ImageSpec, color_order: str = "RGB", engine: str = "auto"
                     ) -> tuple[np.ndarray, Letterbox]:
    """A (1, ...) float32 tensor for ``spec`` and the mapping back to the original pixels."""
    return ImagePreprocessor(spec, engine=engine)(load_image(source, color_order))
