"""A camera's YUV 4:2:0 frame -> RGB, in integer arithmetic so that every runtime gets the same bytes."""

from __future__ import annotations

import numpy as np

from ..errors import InputError

# BT.601 full-range YCbCr -> RGB coefficients in 16.16 fixed point: 1.402, 0.344136, 0.714136, 1.772.
YUV_R_V, YUV_G_U, YUV_G_V, YUV_B_U = 91881, 22554, 46802, 116130


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
