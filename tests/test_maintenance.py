"""Versioned, monitored models: hot-swap under load, rolling statistics, drift, provenance."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from converters import _tf
from converters.recipe import QuantizeSettings
from converters.targets.tflite.convert import to_tflite
from device_runtime import DeviceRuntimeError, Model
from device_runtime.metadata import read_build_info
from device_runtime.preprocess import ImageSpec
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
    model = Model(_versions(1)[0], image=ImageSpec(8, 8, 1))  # no metadata: the normalisation is given
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


def test_a_waveform_input_gets_pooled_statistics_not_one_per_sample(tmp_path):
    """A (N, 16000) input's last axis is samples, not channels: its statistics used to be 16,000 means and
    stds in the build info, 665 KB in a 5 KB model. Now they are pooled, and drift still shows."""
    from device_runtime.metadata import BUILD_INFO_NAME

    keras = _tf.keras()
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.layers.Input((16000,)), keras.layers.Reshape((16000, 1)),
                            keras.layers.Conv1D(8, 80, strides=16, activation="relu"),
                            keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(4, activation="softmax")])
    waves = np.random.default_rng(0).uniform(-1, 1, (40, 16000)).astype(np.float32)
    result = convert(net, tmp_path / "kws.tflite", {"quantize": {"mode": "int8"}}, calib_data=waves)
    spec = read_model(result.path.read_bytes())
    assert len(spec.buffers[spec.metadata[BUILD_INFO_NAME]]) < 2048
    reference = read_build_info(spec)["input_stats"]
    assert len(reference["mean"]) == 1 and reference["std"][0] == pytest.approx(1 / np.sqrt(3), rel=0.01)
    quiet, loud = Model(result.path), Model(result.path)
    for wave in np.random.default_rng(1).uniform(-1, 1, (8, 16000)).astype(np.float32):
        quiet(wave[None])
        loud(np.clip(wave[None] * 0.2 + 0.5, -1, 1))  # a DC offset and a quiet microphone
    assert quiet.stats()["input_drift"]["mean_shift_sigma"] < 0.05
    assert loud.stats()["input_drift"]["mean_shift_sigma"] > 0.5 and loud.stats()["input_drift"]["std_ratio"] < 0.3


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

    channels_first = np.zeros((1, 3, 224, 224), np.float32)  # its last axis is 224 columns: values pooled
    channels_first[:, :, :, ::32] = 1.0  # one bright column in 32
    monitor = Monitor({"mean": [0.0], "std": [1.0]})
    monitor.record_input(channels_first)
    drift = monitor.snapshot()["input_drift"]
    assert INPUT_VALUES // 2 < drift["samples"] <= INPUT_VALUES and drift["mean"][0] == pytest.approx(1 / 32, abs=0.01)
