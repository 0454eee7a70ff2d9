"""The two image engines against each other, the fast paths against the general ones, and NMS/top-k
against plain reference implementations."""

from __future__ import annotations

import time

import numpy as np
import pytest

from device_runtime import InputError, Model
from device_runtime.postprocess import batched_nms, nms, top_k
from device_runtime.preprocess import ImagePreprocessor, ImageSpec, engines, load_image, resolve_engine

# (name, spec, input scale, zero point, dtype): float, int8 (both quantized fast paths), a general LUT.
SPECS = [
    ("float [0,1] stretch", ImageSpec(24, 32), 0.0, 0, np.float32),
    ("float imagenet crop NCHW", ImageSpec(28, 28, layout="NCHW", resize="crop", mean=(123.675, 116.28, 103.53),
                                           std=(58.395, 57.12, 57.375)), 0.0, 0, np.float32),
    ("gray float letterbox", ImageSpec(16, 16, channels=1, resize="letterbox"), 0.0, 0, np.float32),
    ("int8 [0,1] letterbox", ImageSpec(32, 32, resize="letterbox"), 1 / 255, -128, np.int8),
    ("uint8 [0,1] crop", ImageSpec(20, 16, resize="crop"), 1 / 255, 0, np.uint8),
    ("int8 [-1,1] odd scale", ImageSpec(17, 23, mean=(127.5,), std=(127.5,)), 0.0078431, 3, np.int8),
]


def _pair(spec, scale, zero, dtype):
    return (ImagePreprocessor(spec, scale, zero, dtype, engine="numpy"),
            ImagePreprocessor(spec, scale, zero, dtype, engine="opencv"))


def _one_level(spec: ImageSpec, scale: float) -> float:
    """One 0..255 pixel level in the tensor's units (one step for quantized inputs)."""
    return 1.0 if scale else 1.0 / min(spec.std)


@pytest.mark.parametrize("name, spec, scale, zero, dtype", SPECS, ids=[s[0] for s in SPECS])
@pytest.mark.parametrize("height, width", [(37, 29), (48, 64), (480, 640)])
def test_opencv_engine_is_within_one_pixel_level_of_numpy(name, spec, scale, zero, dtype, height, width):
    frame = np.random.default_rng(height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    exact, fast = _pair(spec, scale, zero, dtype)
    for order in ("RGB", "BGR"):
        (a, box_a), (b, box_b) = exact(load_image(frame, order)), fast(load_image(frame, order))
        assert a.shape == b.shape and a.dtype == b.dtype == np.dtype(dtype)
        assert box_a == box_b
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
        level = _one_level(spec, scale) * (1.5 if spec.channels == 1 else 1.0)  # gray: a second rounding
        assert diff.max() <= level * (1 + 1e-4), (order, diff.max() / level)
        assert diff.mean() <= 0.6 * level  # mostly much closer: 11-bit weights, one rounding to uint8
    fit = exact._plans[(height, width, True)][0]
    (top, left), (h, w) = fit.paste, fit.size
    border = np.ones((spec.height, spec.width), bool)
    border[top:top + h, left:left + w] = False
    nhwc = (lambda t: t[0]) if spec.layout == "NHWC" else (lambda t: t[0].transpose(1, 2, 0))
    np.testing.assert_array_equal(nhwc(a)[border], nhwc(b)[border])  # the letterbox border: same constant
    assert border.any() == (spec.resize == "letterbox" and (height, width) != (spec.height, spec.width))


@pytest.mark.parametrize("engine", ["numpy", "opencv"])
def test_bgr_view_is_read_in_place_with_the_same_result_as_a_copy(engine):
    frame = np.random.default_rng(3).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    preprocessor = ImagePreprocessor(ImageSpec(20, 30, resize="letterbox"), engine=engine)
    view = load_image(frame, "BGR")
    assert view.strides[2] < 0  # what load_image hands over for BGR: no copy made
    np.testing.assert_array_equal(preprocessor(view)[0], preprocessor(np.ascontiguousarray(view))[0])


@pytest.mark.parametrize("name, spec, scale, zero, dtype", [s for s in SPECS if s[1].resize != "crop"],
                         ids=[s[0] for s in SPECS if s[1].resize != "crop"])
def test_frame_at_model_size_skips_resampling_with_the_same_bits(name, spec, scale, zero, dtype):
    exact, fast = _pair(spec, scale, zero, dtype)
    frame = np.random.default_rng(4).integers(0, 256, (spec.height, spec.width, 3), dtype=np.uint8)
    kept = frame.copy()
    for order in ("RGB", "BGR"):
        image = load_image(frame, order)
        shortcut, _ = exact(image)
        plan = exact._plans[(spec.height, spec.width, order == "BGR")][1]
        assert plan.identity
        plan.identity = False  # the full sampler on the same frame
        np.testing.assert_array_equal(shortcut, exact(image)[0])
        plan.identity = True
        diff = np.abs(fast(image)[0].astype(np.float64) - shortcut.astype(np.float64))
        assert diff.max() <= _one_level(spec, scale) * (1 + 1e-4)
    np.testing.assert_array_equal(frame, kept)  # the fast paths never write into the caller's frame


def test_quantized_fast_paths_give_the_exact_stored_values():
    frame = np.random.default_rng(5).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    for dtype, zero, expected in ((np.int8, -128, frame.astype(np.int16) - 128), (np.uint8, 0, frame)):
        fast = ImagePreprocessor(ImageSpec(8, 8), 1 / 255, zero, dtype, engine="opencv")
        out, _ = fast(frame)
        assert fast._plans[(8, 8, False)][1].shift is not None  # no lookup table on this path
        np.testing.assert_array_equal(out[0], expected)
    mean, std, scale = np.array([10.3, 20.7, 30.1]), np.array([50.0, 61.0, 73.0]), 0.0213  # no exact .5 ties
    general = ImagePreprocessor(ImageSpec(8, 8, mean=tuple(mean), std=tuple(std)), scale, 5, np.int8,
                                engine="opencv")
    out, _ = general(frame)
    assert general._plans[(8, 8, False)][1].shift is None
    expected = np.clip(np.rint((frame - mean) / std / scale + 5), -128, 127)
    np.testing.assert_array_equal(out[0], expected)


def test_engine_choice_and_its_errors(monkeypatch):
    assert resolve_engine("auto") == "opencv" and resolve_engine("numpy") == "numpy"
    with pytest.raises(ValueError, match="engine must be one of auto, numpy, opencv; got 'simd'"):
        resolve_engine("simd")
    with pytest.raises(ValueError, match="image_engine must be one of auto, numpy, opencv; got 'gpu'"):
        Model(b"unused", image_engine="gpu")
    monkeypatch.setattr(engines, "_opencv", lambda: None)  # a device without OpenCV
    assert resolve_engine("auto") == "numpy"
    with pytest.raises(InputError, match="engine 'opencv' needs OpenCV: pip install opencv-python-headless"):
        resolve_engine("opencv")


def test_opencv_engine_is_several_times_faster_on_a_camera_frame():
    """The reason the engine exists (bench/runtime.py has the end-to-end figures): a generous 2x bound."""
    frame = np.random.default_rng(6).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    exact, fast = _pair(ImageSpec(224, 224), 1 / 255, -128, np.int8)

    def median_seconds(preprocessor):
        preprocessor(frame)
        times = []
        for _ in range(30):
            start = time.perf_counter()
            preprocessor(frame)
            times.append(time.perf_counter() - start)
        return float(np.median(times))

    ratios = [median_seconds(exact) / median_seconds(fast) for _ in range(3)]
    assert max(ratios) >= 2.0, ratios


def _reference_greedy(boxes, scores, classes, threshold, max_detections):
    """Textbook greedy NMS, one box at a time, comparing same-class boxes on their own coordinates."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep, removed = [], set()
    for i in order:
        if i in removed:
            continue
        if len(keep) == max_detections:
            break
        keep.append(i)
        for j in order:
            if j != i and j not in removed and classes[j] == classes[i]:
                a, b = boxes[i], boxes[j]
                inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
                union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
                if union > 0 and inter / union > threshold:
                    removed.add(j)
    return keep


def test_class_parallel_nms_equals_textbook_greedy():
    rng = np.random.default_rng(7)
    for trial in range(400):
        n = int(rng.integers(0, 50))
        corner, size = rng.integers(0, 50, (n, 2)).astype(float), rng.integers(0, 30, (n, 2)).astype(float)
        boxes = np.concatenate([corner, corner + size], axis=1)  # integer grid: duplicates, zero areas
        scores = rng.integers(0, 5, n) / 4 if trial % 2 else rng.random(n)  # ties in every other scene
        classes = rng.integers(0, int(rng.integers(1, 5)), n)
        if trial % 3 == 1:  # ids that cannot index a table (negative, huge, float) take the relabelling path
            classes = classes * 100_003 - 50_000 if trial % 2 else classes + 0.5
        threshold, limit = float(rng.choice([0.0, 0.3, 0.45, 0.9])), int(rng.choice([1, 2, 300]))
        got = batched_nms(boxes, scores, classes, threshold, limit).tolist()
        assert got == _reference_greedy(boxes, scores, classes, threshold, limit), trial
        assert nms(boxes, scores, threshold, limit).tolist() == _reference_greedy(
            boxes, scores, np.zeros(n), threshold, limit), trial


def test_top_k_of_stored_int8_scores_equals_top_k_of_their_float_values():
    from device_runtime.postprocess import dequantize

    rng = np.random.default_rng(11)
    for trial in range(200):
        stored = rng.integers(-128, 128, int(rng.integers(1, 60))).astype(np.int8)
        stored[: trial % 3] = -128  # the lowest value, whose negation overflows int8
        quantization = (float(rng.uniform(0.001, 0.1)), int(rng.integers(-128, 128)))
        k = int(rng.integers(0, 8))
        got = top_k(stored, k, quantization=quantization)
        expected = top_k(dequantize(stored, quantization), k)
        assert [(c.index, c.score) for c in got] == [(c.index, c.score) for c in expected], trial
    with pytest.raises(ValueError, match="scale must be positive; got 0.0"):
        top_k(stored, 3, quantization=(0.0, 0))


def test_top_k_by_partition_keeps_the_lower_index_on_ties():
    rng = np.random.default_rng(8)
    for trial in range(500):
        n, k = int(rng.integers(1, 40)), int(rng.integers(0, 45))
        scores = rng.integers(0, 4, n).astype(np.float32) if trial % 2 else rng.random(n).astype(np.float32)
        expected = np.argsort(-scores, kind="stable")[:k].tolist()
        assert [c.index for c in top_k(scores, k)] == expected
