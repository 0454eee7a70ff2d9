"""Rolling statistics a maintainer watches: latency, prediction confidence, input drift.

Input drift compares the running per-channel mean and std of what the app feeds
with the calibration data's, recorded in the model by `sdk convert`.
"""

from __future__ import annotations

import math
import threading
from collections import deque

import numpy as np

CONFIDENCE_BINS = 10
# The drift statistics read about INPUT_VALUES values (1,024 pixels of 3 channels) of every
# INPUT_EVERY-th call, the first included: a running mean and std over a stream of frames needs no
# more, and reading all of a camera frame cost more than the image task itself (330 us for a 224x224x3
# frame, 670 us for 320x320x3, when every 4th pixel of every call was read; the sample costs 12-20 us).
INPUT_VALUES = 3072
INPUT_EVERY = 4
# Statistics are per channel when the input's last axis is a channel axis (an image's RGB, a few
# features), else over all its values: a (1, 16000) waveform's per-"channel" statistics were 16,000
# means and stds in the model's build info, 665 KB beside 5 KB of weights.
MAX_STAT_CHANNELS = 32


def channel_rows(x: np.ndarray) -> tuple[np.ndarray, int]:
    """``x`` as (values, channels) rows for drift statistics, and how many rows make one line of the
    input (an image row's pixels), along which the sampler spreads its picks.  The converter's
    reference statistics and the runtime's use this one rule."""
    if x.shape[-1] <= MAX_STAT_CHANNELS:
        return x.reshape(-1, x.shape[-1]), x.shape[-2] if x.ndim > 1 else 1
    return x.reshape(-1, 1), x.shape[-1]


class Monitor:
    def __init__(self, reference: dict | None, window: int = 1000):
        self._lock = threading.Lock()
        self._latencies = deque(maxlen=window)  # ms per call, whole
        self._invokes = deque(maxlen=window)  # ms of the interpreter's invoke within each call
        self._confidence = np.zeros(CONFIDENCE_BINS, np.int64)
        self._reference = reference
        self._sum = self._sumsq = None
        self._count = 0
        self._inputs_seen = 0
        self.calls = 0

    @classmethod
    def for_build(cls, build: dict | None) -> Monitor:
        """Drift is measured against the calibration statistics `sdk convert` stored in the build info."""
        return cls(build.get("input_stats") if build else None)

    def record_call(self, seconds: float, invoke_seconds: float) -> None:
        """One call's whole time and the part of it the interpreter's invoke took."""
        with self._lock:
            self._latencies.append(seconds * 1000.0)
            self._invokes.append(invoke_seconds * 1000.0)
            self.calls += 1

    def record_confidence(self, score: float) -> None:
        with self._lock:
            self._confidence[min(int(score * CONFIDENCE_BINS), CONFIDENCE_BINS - 1)] += 1

    def record_input(self, x: np.ndarray, quantization: tuple[float, int] | None = None) -> None:
        """Per-channel sums (``channel_rows``) over a sample of the pixels of one input batch, for every
        INPUT_EVERY-th batch; stored int values (``quantization`` = (scale, zero_point)) are mapped
        back to float."""
        if self._reference is None or x.ndim < 2:
            return
        with self._lock:
            turn, self._inputs_seen = self._inputs_seen, self._inputs_seen + 1
        if turn % INPUT_EVERY:
            return
        pixels, width = channel_rows(x)
        rows = pixels[::_sample_step(len(pixels), pixels.shape[1], width)].astype(np.float64)
        if quantization:
            scale, zero_point = quantization
            rows = (rows - zero_point) * scale
        ones = np.ones(len(rows))  # a product sums columns ~10x faster than sum(axis=0) on 3 of them
        total, squares = ones @ rows, ones @ (rows * rows)
        with self._lock:
            if self._sum is None or self._sum.shape != total.shape:
                self._sum, self._sumsq, self._count = np.zeros(len(total)), np.zeros(len(total)), 0
            self._sum += total
            self._sumsq += squares
            self._count += len(rows)

    def snapshot(self) -> dict:
        with self._lock:
            latencies, invokes = np.array(self._latencies), np.array(self._invokes)
            invoke = _percentiles(invokes)
            overhead = _percentiles(latencies - invokes)  # per call: the pre- and post-processing around the invoke
            return {"calls": self.calls, "latency_ms": _percentiles(latencies), "invoke_ms": invoke,
                    "overhead_ms": overhead,
                    "overhead_share": overhead["p50"] / invoke["p50"] if invoke and invoke["p50"] > 0 else None,
                    "confidence_histogram": {"edges": np.linspace(0, 1, CONFIDENCE_BINS + 1).round(2).tolist(),
                                             "counts": self._confidence.tolist()},
                    "input_drift": self._drift()}

    def _drift(self) -> dict | None:
        if self._reference is None or not self._count:
            return None
        mean = self._sum / self._count
        std = np.sqrt(np.maximum(self._sumsq / self._count - mean * mean, 0.0))
        ref_mean = np.asarray(self._reference["mean"], np.float64)
        ref_std = np.asarray(self._reference["std"], np.float64)
        if ref_mean.shape != mean.shape:
            return None
        usable = ref_std > 0
        shift = np.abs(mean - ref_mean)[usable] / ref_std[usable]
        return {"mean_shift_sigma": float(shift.max()) if shift.size else 0.0,
                "std_ratio": float((std[usable] / ref_std[usable]).mean()) if usable.any() else 1.0,
                "mean": mean.tolist(), "std": std.tolist(), "reference_mean": ref_mean.tolist(),
                "reference_std": ref_std.tolist(), "samples": self._count}


def _percentiles(ms: np.ndarray) -> dict | None:
    if not len(ms):
        return None
    return {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
            "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean()), "window": len(ms)}


def _sample_step(pixels: int, channels: int, width: int) -> int:
    """A stride over the flattened pixels taking at most INPUT_VALUES values (never less than one
    pixel), coprime with the row width so that successive rows are sampled at other columns: a stride
    that divides the width would read a few columns only (the left edge of every row, say) and miss
    what the camera sees.  Counting values, not pixels, bounds a channels-first input too, whose
    "pixels" are rows of a whole image width."""
    step = max(1, -(-pixels // max(1, INPUT_VALUES // channels)))
    while step > 1 and math.gcd(step, width) != 1:
        step += 1
    return step
