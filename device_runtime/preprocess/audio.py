"""A waveform -> fixed-length frames, the input an audio model takes."""

from __future__ import annotations

import numpy as np

from ..errors import ArgumentError, InputError


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
