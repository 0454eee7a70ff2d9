"""The two resampling engines: numpy (the reference) and OpenCV (when installed, several times faster).

numpy's results are the same on every device and are reproduced exactly by
other runtimes (the Android core ports it); OpenCV's are within one pixel level
of them.  Both fold normalisation and input quantization into the resampling.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ArgumentError, InputError
from .geometry import Fit, axis_weights

if TYPE_CHECKING:
    from .image import ImagePreprocessor


class _Sampler:
    """Bilinear sampling of fixed positions from images of one size, with an affine map folded in.

    Precomputes flat indices of the four neighbours of every output element and
    their weights, so each frame costs one gather and one weighted sum.
    ``gain``/``offset`` (per channel) fold normalisation and input quantization
    into the weights: out = sum(w * pixel) * gain + offset.  ``source_channel``
    says which channel of the source feeds each output channel, so a BGR frame
    is read in place instead of being reordered first.
    """

    def __init__(self, src_shape: tuple[int, int, int], rows: tuple, cols: tuple,
                 gain: np.ndarray, offset: np.ndarray, source_channel: tuple[int, ...] = (0, 1, 2)):
        src_h, src_w, channels = src_shape
        (y0, y1, wy), (x0, x1, wx) = rows, cols
        self.shape = (len(y0), len(x0), channels)
        channel = np.asarray(source_channel[:channels])

        def flat(ys, xs):
            return ((ys[:, None] * src_w + xs[None, :])[..., None] * channels + channel).reshape(-1)

        self.index = np.stack([flat(y0, x0), flat(y0, x1), flat(y1, x0), flat(y1, x1)])
        wy_e, wx_e = wy[:, None, None], wx[None, :, None]
        per_pixel = [(1 - wy_e) * (1 - wx_e), (1 - wy_e) * wx_e, wy_e * (1 - wx_e), wy_e * wx_e]
        self.weights = np.stack([np.broadcast_to(w * gain, self.shape).reshape(-1) for w in per_pixel]
                                ).astype(np.float32)
        self.offset = np.broadcast_to(offset.astype(np.float32), self.shape).reshape(-1)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        corners = np.take(image.reshape(-1), self.index).astype(np.float32)
        # Separate multiply and add passes (never a fused multiply-add, which SIMD einsum may use on
        # some CPUs), in a fixed order: other runtimes (the Android core) reproduce this bit for bit.
        out = corners[0] * self.weights[0]
        product = np.empty_like(out)
        for k in (1, 2, 3):
            np.multiply(corners[k], self.weights[k], out=product)
            out += product
        out += self.offset
        return out.reshape(self.shape)


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize with half-pixel centres; returns float32 HxWxC."""
    image = np.ascontiguousarray(image)
    if image.ndim == 2:
        image = image[..., None]
    channels = image.shape[2]
    sampler = _Sampler(image.shape, axis_weights(image.shape[0], height), axis_weights(image.shape[1], width),
                       np.ones(channels, np.float32), np.zeros(channels, np.float32), tuple(range(channels)))
    return sampler(image)


ENGINES = ("auto", "numpy", "opencv")


@functools.cache
def _opencv():
    """The cv2 module when OpenCV is installed, else None; imported on first use (it costs ~0.1 s)."""
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def check_engine(engine: str, what: str = "engine") -> None:
    """Refuse an unknown engine name, without importing OpenCV (``what`` names the argument)."""
    if engine not in ENGINES:
        raise ArgumentError(f"{what} must be one of {', '.join(ENGINES)}; got {engine!r}")


def resolve_engine(engine: str) -> str:
    """``"auto"`` -> ``"opencv"`` when OpenCV is installed, else ``"numpy"``; other names are checked."""
    check_engine(engine)
    if engine == "auto":
        return "opencv" if _opencv() is not None else "numpy"
    if engine == "opencv" and _opencv() is None:
        raise InputError("engine 'opencv' needs OpenCV: pip install opencv-python-headless "
                         "(apt install python3-opencv on a Pi), or use engine='numpy'")
    return engine


class NumpyEngine:
    """The reference: float32 bilinear weights with normalisation folded in (the Android core's twin)."""

    def __init__(self, pre: ImagePreprocessor, fit: Fit, bgr: bool):
        gray = pre.spec.channels == 1
        gain = pre.gain * (np.array([0.299, 0.587, 0.114]) if gray else 1.0)  # BT.601 luma, as PIL's "L"
        offset = pre.offset if not gray else np.full(3, pre.offset[0] / 3.0)
        self.bgr = bgr
        self.sampler = _Sampler(fit.source + (3,), fit.axis(0), fit.axis(1), gain, offset,
                                (2, 1, 0) if bgr else (0, 1, 2))
        # A frame already at the model's size (a camera's low-resolution stream) needs no resampling:
        # the sampler's weights would be exactly gain and zeros, so this gives the same bits.
        self.identity = not fit.resamples and fit.size == fit.resized
        self.gain, self.offset = gain.astype(np.float32), offset.astype(np.float32)
        self.gray, self.finish = gray, pre.finish

    def __call__(self, frame: np.ndarray, dest: np.ndarray) -> None:
        if self.identity:
            values = (frame[..., ::-1] if self.bgr else frame).astype(np.float32) * self.gain
            values += self.offset
        else:
            values = self.sampler(frame)
        if self.gray:
            values = values.sum(axis=2, keepdims=True)
        dest[...] = self.finish(values)


class OpenCVEngine:
    """cv2.resize (half-pixel bilinear in 11-bit fixed point: within 1 pixel level of the reference),
    then one pass from pixels to stored values: multiply-add for float inputs, a lookup table for
    quantized ones.  Several times faster than numpy on a camera frame."""

    def __init__(self, pre: ImagePreprocessor, fit: Fit, bgr: bool):
        cv2 = _opencv()
        self.cv2, self.fit = cv2, fit
        channels = pre.spec.channels
        gray = channels == 1
        self.convert = (cv2.COLOR_BGR2GRAY if bgr else cv2.COLOR_RGB2GRAY) if gray else (
            cv2.COLOR_BGR2RGB if bgr else None)
        gain, offset = pre.gain[:channels], pre.offset[:channels]
        self.table = self.shift = None
        if pre.quantized:  # the stored value of every 0..255 pixel, per channel
            levels = np.arange(256, dtype=np.float64)[:, None] * gain + offset
            table = pre.finish(levels)
            shared = (table == table[:, :1]).all()  # one table serves all channels
            self.table = np.ascontiguousarray(table[:, 0] if shared else table.reshape(1, 256, channels))
            pixels = np.arange(256)
            # The two common tables need no lookup: uint8 = pixel, and int8 = pixel - 128 (a sign-bit flip).
            self.shift = (0 if (table == pixels[:, None]).all() and pre.dtype == np.uint8 else
                          0x80 if (table == pixels[:, None] - 128).all() and pre.dtype == np.int8 else None)
        # Gain and offset as scalars when the channels share them, else tiled over one row: numpy is
        # fast on long rows and slow when it broadcasts over a 3-element channel axis.
        width = fit.size[1]
        self.gain = np.float32(gain[0]) if (gain == gain[0]).all() else np.tile(gain, width).astype(np.float32)
        self.offset = (None if not offset.any() else np.float32(offset[0]) if (offset == offset[0]).all()
                       else np.tile(offset, width).astype(np.float32))

    def __call__(self, frame: np.ndarray, dest: np.ndarray) -> None:
        cv2, fit = self.cv2, self.fit
        resized = cv2.resize(frame, fit.resized[::-1], interpolation=cv2.INTER_LINEAR) if fit.resamples else frame
        if fit.size != fit.resized:
            (top, left), (height, width) = fit.crop, fit.size
            resized = resized[top:top + height, left:left + width]
        if self.convert is not None:
            resized = cv2.cvtColor(np.ascontiguousarray(resized), self.convert)
        if resized.ndim == 2:
            resized = resized[..., None]
        if self.table is None:
            out = _rows(dest)
            np.multiply(_rows(resized), self.gain, out=out)
            if self.offset is not None:
                np.add(out, self.offset, out=out)
        elif self.shift is None:
            dest[...] = cv2.LUT(np.ascontiguousarray(resized), self.table).reshape(dest.shape)
        else:  # never in place: ``resized`` may be the caller's frame
            np.bitwise_xor(resized, self.shift, out=dest.view(np.uint8))


def _rows(image: np.ndarray) -> np.ndarray:
    """An HxWxC view as H rows of W*C values, never a copy (setting .shape raises instead)."""
    rows = image.view()
    rows.shape = (image.shape[0], image.shape[1] * image.shape[2])
    return rows
