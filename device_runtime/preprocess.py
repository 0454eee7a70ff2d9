"""Camera frame / image file / waveform -> model input tensor, vectorised.

Normalisation follows the TFLite metadata convention: ``(pixel - mean) / std``
on 0..255 pixels, so mean=0, std=255 gives [0, 1] and mean=std=127.5 gives
[-1, 1].  Resizing is bilinear with half-pixel centres (as OpenCV and TF do).
Two engines do it: numpy, the reference whose results are the same on every
device and are reproduced exactly by other runtimes (the Android core ports
it), and OpenCV when installed, several times faster and within one pixel
level of the reference.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np

from .errors import ArgumentError, InputError

RESIZE_MODES = ("stretch", "letterbox", "crop")
LAYOUTS = ("NHWC", "NCHW")
COLOR_ORDERS = ("RGB", "BGR")
# BT.601 full-range YCbCr -> RGB coefficients in 16.16 fixed point: 1.402, 0.344136, 0.714136, 1.772.
YUV_R_V, YUV_G_U, YUV_G_V, YUV_B_U = 91881, 22554, 46802, 116130


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


def _axis_weights(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half-pixel-centre sample positions of ``dst`` outputs over ``src`` inputs: (low, high, weight)."""
    pos = (np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5
    pos = np.clip(pos, 0, src - 1)
    low = np.floor(pos).astype(np.intp)
    high = np.minimum(low + 1, src - 1)
    return low, high, (pos - low).astype(np.float32)


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
    sampler = _Sampler(image.shape, _axis_weights(image.shape[0], height), _axis_weights(image.shape[1], width),
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


@dataclass(frozen=True)
class _Fit:
    """Where a frame of one size goes: resized whole to ``resized``, then the window at ``crop``
    of ``size`` is kept and pasted at ``paste`` in the model input.  Both engines sample from it."""

    resized: tuple[int, int]
    crop: tuple[int, int]
    size: tuple[int, int]
    paste: tuple[int, int]
    letterbox: Letterbox

    @classmethod
    def of(cls, spec: ImageSpec, src_h: int, src_w: int) -> _Fit:
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
        return tuple(a[start:start + self.size[axis]] for a in _axis_weights(self.source[axis], self.resized[axis]))


class _NumpyEngine:
    """The reference: float32 bilinear weights with normalisation folded in (the Android core's twin)."""

    def __init__(self, pre: ImagePreprocessor, fit: _Fit, bgr: bool):
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


class _OpenCVEngine:
    """cv2.resize (half-pixel bilinear in 11-bit fixed point: within 1 pixel level of the reference),
    then one pass from pixels to stored values: multiply-add for float inputs, a lookup table for
    quantized ones.  Several times faster than numpy on a camera frame."""

    def __init__(self, pre: ImagePreprocessor, fit: _Fit, bgr: bool):
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
        self._plans: dict[tuple[int, int, bool], tuple[_Fit, _NumpyEngine | _OpenCVEngine]] = {}

    def _plan(self, src_h: int, src_w: int, bgr: bool) -> tuple[_Fit, _NumpyEngine | _OpenCVEngine]:
        fit = _Fit.of(self.spec, src_h, src_w)
        engine = (_OpenCVEngine if self.engine == "opencv" else _NumpyEngine)(self, fit, bgr)
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


def yuv420_to_rgb(y: np.ndarray, u: np.ndarray | None = None, v: np.ndarray | None = None) -> np.ndarray:
    """A camera's YUV 4:2:0 frame -> HxWx3 uint8 RGB (BT.601 full range, as Android and libcamera deliver).

    Pass the three planes (Y: HxW, U and V: ceil(H/2) x ceil(W/2)), or one
    (H*3/2) x W array in I420 order as picamera2's "YUV420" format gives.
    Integer fixed-point arithmetic, so every runtime gets the same bytes.
    """
    if u is None or v is None:
        packed = np.asarray(y)
        if packed.ndim != 2 or packed.shape[0] % 3 or packed.shape[1] % 2:
            raise InputError(f"an I420 frame must be (H*3/2) x W with even H and W; got {packed.shape}")
        height, width = packed.shape[0] * 2 // 3, packed.shape[1]
        chroma = packed[height:].reshape(-1)
        quarter = (height // 2) * (width // 2)
        y = packed[:height]
        u = chroma[:quarter].reshape(height // 2, width // 2)
        v = chroma[quarter:].reshape(height // 2, width // 2)
    y, u, v = (np.asarray(plane) for plane in (y, u, v))
    if y.ndim != 2 or any(p.dtype != np.uint8 for p in (y, u, v)):
        raise InputError("YUV planes must be 2-D uint8 arrays")
    chroma_shape = ((y.shape[0] + 1) // 2, (y.shape[1] + 1) // 2)
    if u.shape != chroma_shape or v.shape != chroma_shape:
        raise InputError(f"U and V planes must be {chroma_shape} for a {y.shape} Y plane; got {u.shape}, {v.shape}")
    luma = y.astype(np.int32)
    cb = np.repeat(np.repeat(u.astype(np.int32) - 128, 2, axis=0), 2, axis=1)[:y.shape[0], :y.shape[1]]
    cr = np.repeat(np.repeat(v.astype(np.int32) - 128, 2, axis=0), 2, axis=1)[:y.shape[0], :y.shape[1]]
    rgb = np.empty(y.shape + (3,), np.int32)
    rgb[..., 0] = luma + ((YUV_R_V * cr + 32768) >> 16)
    rgb[..., 1] = luma + ((-YUV_G_U * cb - YUV_G_V * cr + 32768) >> 16)
    rgb[..., 2] = luma + ((YUV_B_U * cb + 32768) >> 16)
    return np.clip(rgb, 0, 255).astype(np.uint8)


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
        raise ArgumentError(f"frame_length and hop_length must be >= 1; got {frame_length}, {hop}")
    count = max(1, int(np.ceil(max(len(wave) - frame_length, 0) / hop)) + 1)
    padded = np.zeros((count - 1) * hop + frame_length, np.float32)
    padded[:len(wave)] = wave[:len(padded)]
    starts = np.arange(count) * hop
    return padded[starts[:, None] + np.arange(frame_length)[None, :]]
