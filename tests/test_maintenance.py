"""Versioned, monitored models: hot-swap under load, rolling statistics, drift, provenance."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from converters import _tf
from converters.recipe import QuantizeSettings
from converters.tflite_export import to_tflite
from device_runtime import DeviceRuntimeError, Model
from device_runtime.metadata import read_build_info
from device_runtime.tflite_format import read_model
from sdk import convert
from sdk import integrity as tools

SWAPS = 50


def _versions(count: int) -> list[bytes]:
    """``count`` models with the same inputs/outputs and different weights (v0, v1, ...)."""
    keras = _tf.keras()
    out = []
    for version in range(count):
        keras.utils.set_random_seed(version)
        net = keras.Sequential([keras.layers.Input((8, 8, 1), name="pixels"), keras.layers.Flatten(),
                                keras.layers.Dense(16, activation="relu"),
                                keras.layers.Dense(3, activation="softmax", name="scores")])
        out.append(to_tflite(net, QuantizeSettings()))
    return out


def test_hot_swap_under_load_never_fails_a_call(tmp_path):
    versions = _versions(2)
    pair, stranger = tools.keygen(tmp_path / "release"), tools.keygen(tmp_path / "stranger")
    x = np.random.default_rng(0).random((1, 8, 8, 1), dtype=np.float32)
    expected = [Model(v)(x) for v in versions]
    files = []
    for i in range(SWAPS):
        path = tmp_path / f"candidate{i}.tflite"
        if i % 2 == 0:  # a good new version, properly signed
            path.write_bytes(versions[(i // 2 + 1) % 2])
            tools.sign(path, pair.private_path)
        elif i % 4 == 1:  # corrupt: truncated after signing
            path.write_bytes(versions[0])
            tools.sign(path, pair.private_path)
            path.write_bytes(versions[0][:len(versions[0]) // 2])
        else:  # intact but signed by someone else
            path.write_bytes(versions[1])
            tools.sign(path, stranger.private_path)
        files.append(path)
    first = tmp_path / "v0.tflite"
    first.write_bytes(versions[0])
    tools.sign(first, pair.private_path)
    model = Model(first, public_key=pair.public_path)

    failures, results, stop = [], [], threading.Event()

    def serve():
        while not stop.is_set():
            try:
                results.append(model(x))
            except Exception as exc:  # any failure of a call is what this test forbids
                failures.append(exc)

    worker = threading.Thread(target=serve)
    worker.start()
    current, refused = 0, 0
    try:
        for i, path in enumerate(files):
            calls_before, deadline = len(results), time.monotonic() + 10
            while len(results) < calls_before + 3:  # let calls land on every version
                assert time.monotonic() < deadline and worker.is_alive(), "the serving thread stopped"
                time.sleep(0.001)
            if i % 2 == 0:
                model.swap(path)
                current = (i // 2 + 1) % 2
            else:
                with pytest.raises(DeviceRuntimeError):
                    model.swap(path)
                refused += 1
            np.testing.assert_array_equal(model(x), expected[current])  # the right model is serving
    finally:
        stop.set()
        worker.join()
    assert failures == [] and refused == SWAPS // 2
    assert len(results) > 3 * SWAPS
    assert all(any(np.array_equal(r, e) for e in expected) for r in results)  # never a mixed state
    stats = model.stats()
    assert stats["calls"] >= len(results) and stats["latency_ms"]["p50"] > 0


def test_swap_refuses_a_model_with_other_inputs(tmp_path):
    keras = _tf.keras()
    other = keras.Sequential([keras.layers.Input((4,)), keras.layers.Dense(3)])
    model = Model(_versions(1)[0])
    with pytest.raises(DeviceRuntimeError, match="differ from the current"):
        model.swap(to_tflite(other, QuantizeSettings()))
    assert model(np.zeros((1, 8, 8, 1), np.float32)).shape == (1, 3)


def test_confidence_histogram_counts_every_classification():
    model = Model(_versions(1)[0])
    frames = np.random.default_rng(1).integers(0, 256, (7, 8, 8), dtype=np.uint8)
    for frame in frames:
        model.classify(frame)
    histogram = model.stats()["confidence_histogram"]
    assert sum(histogram["counts"]) == 7 and len(histogram["edges"]) == 11


def test_build_info_and_input_drift(digits, digits_model_path, tmp_path):
    result = convert(digits_model_path, tmp_path / "m.tflite", {"quantize": {"mode": "int8", "io_type": "int8"}},
                     calib_data=digits.x_train, eval_data=digits.x_test)
    build = read_build_info(read_model(result.path.read_bytes()))
    assert build["source_sha256"] == result.report.source_sha256
    assert build["recipe"]["quantize"]["mode"] == "int8" and len(build["recipe_sha256"]) == 64
    reference = build["input_stats"]
    assert reference["samples"] == len(digits.x_train)
    assert reference["mean"][0] == pytest.approx(float(digits.x_train.mean()), rel=1e-6)

    in_distribution = Model(result.path)
    in_distribution(digits.x_test)
    drift = in_distribution.stats()["input_drift"]
    assert drift["mean_shift_sigma"] < 0.2 and 0.8 < drift["std_ratio"] < 1.2

    shifted = Model(result.path)
    shifted(np.clip(digits.x_test * 0.3 + 0.6, 0, 1))  # over-exposed camera: brighter, flatter
    drift = shifted.stats()["input_drift"]
    assert drift["mean_shift_sigma"] > 1.0 and drift["std_ratio"] < 0.5


def test_drift_statistics_read_a_bounded_spread_of_pixels():
    """Camera frames are sampled, not read whole (that cost more than the image task): some pixels
    of every INPUT_EVERY-th frame, which still give the frames' statistics.  A stride dividing the
    width would see few columns."""
    from sklearn.datasets import load_sample_image

    from device_runtime.monitor import INPUT_EVERY, INPUT_VALUES, Monitor

    frame = load_sample_image("china.jpg")[None].astype(np.float32) / 255.0  # 427 x 640
    monitor = Monitor({"mean": [0.5] * 3, "std": [0.25] * 3})
    monitor.record_input(frame)
    first = monitor.snapshot()["input_drift"]["samples"]
    assert 0 < first <= INPUT_VALUES // 3
    for _ in range(INPUT_EVERY):
        monitor.record_input(frame)
    drift = monitor.snapshot()["input_drift"]
    assert drift["samples"] == 2 * first  # the first frame and the INPUT_EVERY-th after it
    pixels = frame.reshape(-1, 3)
    np.testing.assert_allclose(drift["mean"], pixels.mean(axis=0), atol=0.02)
    np.testing.assert_allclose(drift["std"], pixels.std(axis=0), rtol=0.05)

    stripes = np.zeros((1, 64, 1024, 1), np.float32)
    stripes[:, :, ::64] = 1.0  # one bright column in 64: a stride of 64 would read only those
    monitor = Monitor({"mean": [0.0], "std": [1.0]})
    monitor.record_input(stripes)
    assert monitor.snapshot()["input_drift"]["mean"][0] == pytest.approx(1 / 64, abs=0.005)

    channels_first = np.zeros((1, 3, 224, 224), np.float32)  # its "pixels" are rows of 224 values
    monitor = Monitor({"mean": [0.0] * 224, "std": [1.0] * 224})
    monitor.record_input(channels_first)
    assert 0 < monitor.snapshot()["input_drift"]["samples"] * 224 <= INPUT_VALUES
