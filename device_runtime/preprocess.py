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
    into the weights: out = sum(w * pixel) * gain + offset.
    """

    def __init__(self, src_shape: tuple[int, int, int], rows: tuple, cols: tuple,
                 gain: np.ndarray, offset: np.ndarray):
        src_h, src_w, channels = src_shape
        (y0, y1, wy), (x0, x1, wx) = rows, cols
        self.shape = (len(y0), len(x0), channels)
        channel = np.arange(channels)

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
                       np.ones(channels, np.float32), np.zeros(channels, np.float32))
    return sampler(image)


class ImagePreprocessor:
    """Frames of any size -> the model's input tensor, in the model's own dtype.

    Normalisation (and, for quantized inputs, quantization) is folded into the
    resize weights, and the per-size sampling plan is cached, because a camera
    delivers frames of one size many times a second.
    """

    def __init__(self, spec: ImageSpec, scale: float = 0.0, zero_point: int = 0,
                 dtype: np.dtype = np.dtype(np.float32)):
        self.spec = spec
        self.dtype = np.dtype(dtype)
        self.quantized = bool(scale) and np.issubdtype(self.dtype, np.integer)
        mean = np.broadcast_to(np.asarray(spec.mean, np.float64), (3,))
        std = np.broadcast_to(np.asarray(spec.std, np.float64), (3,))
        q_scale, q_zero = (scale, zero_point) if self.quantized else (1.0, 0.0)
        self.gain = 1.0 / (std * q_scale)
        self.offset = q_zero - mean / (std * q_scale)
        self._plans: dict[tuple[int, int], tuple[_Sampler, Letterbox, tuple[int, int], np.ndarray]] = {}

    def _plan(self, src_h: int, src_w: int):
        spec = self.spec
        gray = spec.channels == 1
        gain = self.gain * (np.array([0.299, 0.587, 0.114]) if gray else 1.0)  # BT.601 luma, as PIL's "L"
        offset = self.offset if not gray else np.full(3, self.offset[0] / 3.0)
        if spec.resize == "stretch":
            rows, cols = _axis_weights(src_h, spec.height), _axis_weights(src_w, spec.width)
            box, paste = Letterbox(spec.width / src_w, spec.height / src_h, 0.0, 0.0, src_w, src_h), (0, 0)
        elif spec.resize == "letterbox":
            scale = min(spec.width / src_w, spec.height / src_h)
            new_w, new_h = max(1, round(src_w * scale)), max(1, round(src_h * scale))
            paste = ((spec.height - new_h) // 2, (spec.width - new_w) // 2)
            rows, cols = _axis_weights(src_h, new_h), _axis_weights(src_w, new_w)
            box = Letterbox(new_w / src_w, new_h / src_h, float(paste[1]), float(paste[0]), src_w, src_h)
        else:  # crop: scale the shorter side to fit, keep the centre
            scale = max(spec.width / src_w, spec.height / src_h)
            new_w, new_h = max(spec.width, round(src_w * scale)), max(spec.height, round(src_h * scale))
            off_x, off_y = (new_w - spec.width) // 2, (new_h - spec.height) // 2
            rows = tuple(a[off_y:off_y + spec.height] for a in _axis_weights(src_h, new_h))
            cols = tuple(a[off_x:off_x + spec.width] for a in _axis_weights(src_w, new_w))
            box, paste = Letterbox(new_w / src_w, new_h / src_h, -float(off_x), -float(off_y), src_w, src_h), (0, 0)
        sampler = _Sampler((src_h, src_w, 3), rows, cols, gain, offset)
        border = spec.pad_value * self.gain + self.offset
        canvas = self._finish(np.broadcast_to(border[:spec.channels].astype(np.float32),
                                              (spec.height, spec.width, spec.channels)).copy())
        return sampler, box, paste, canvas

    def _finish(self, values: np.ndarray) -> np.ndarray:
        """float values -> the model's dtype (rounded and clipped for quantized inputs)."""
        if self.quantized:
            info = np.iinfo(self.dtype)
            np.rint(values, out=values)
            return np.clip(values, info.min, info.max, out=values).astype(self.dtype)
        return values.astype(self.dtype, copy=False)

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """``image``: HxWx3 uint8 RGB.  Returns a (1, ...) tensor and the mapping back."""
        key = image.shape[:2]
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._plan(*key)
        sampler, box, (top, left), canvas = plan
        values = sampler(np.ascontiguousarray(image))
        if self.spec.channels == 1:
            values = values.sum(axis=2, keepdims=True)
        values = self._finish(values)
        if values.shape[:2] == canvas.shape[:2]:
            out = values
        else:  # letterbox: the border was computed once, in the model's dtype
            out = canvas.copy()
            out[top:top + values.shape[0], left:left + values.shape[1]] = values
        if self.spec.layout == "NCHW":
            out = out.transpose(2, 0, 1)
        return out[None], box


def preprocess_image(source, spec: ImageSpec, color_order: str = "RGB") -> tuple[np.ndarray, Letterbox]:
    """A (1, ...) float32 tensor for ``spec`` and the mapping back to the original pixels."""
    return ImagePreprocessor(spec)(load_image(source, color_order))


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
        raise ValueError(f"frame_length and hop_length must be >= 1; got {frame_length}, {hop}")
    count = max(1, int(np.ceil(max(len(wave) - frame_length, 0) / hop)) + 1)
    padded = np.zeros((count - 1) * hop + frame_length, np.float32)
    padded[:len(wave)] = wave[:len(padded)]
    starts = np.arange(count) * hop
    return padded[starts[:, None] + np.arange(frame_length)[None, :]]
