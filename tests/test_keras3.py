"""Keras 3 sources (issue 23): files Keras 3 wrote and Keras 3 models in memory, converted through a
verified tf_keras translation.

Reference: Keras 3's own predictions.  Float .tflite files must match them within 1e-5 of the output
scale (max |output|); int8 and compression numbers are read back from the written file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from converters import _tf
from converters.errors import ConversionError, SourceModelError
from converters.sources import keras3 as keras3_source
from converters.sources.keras import load_keras_model
from converters.verify.analysis import analyse
from device_runtime import Model
from examples.digits_cnn import accuracy, build_digits_cnn
from sdk import convert

ROOT = Path(__file__).resolve().parents[1]
RELATIVE = 1e-5  # of the output scale


def keras3():
    return _tf.keras3()


def sequential_cnn():
    layers = keras3().layers
    return keras3().Sequential([layers.Input((16, 16, 3)), layers.Conv2D(8, 3, activation="relu"),
                                layers.MaxPooling2D(), layers.Flatten(), layers.Dense(5, activation="softmax")])


def residual_bn():
    keras = keras3()
    layers = keras.layers
    inputs = keras.Input((16, 16, 3))
    x = layers.Conv2D(8, 3, padding="same", kernel_regularizer=keras.regularizers.L2(1e-4))(inputs)
    x = layers.ReLU()(layers.BatchNormalization()(x))
    y = layers.BatchNormalization()(layers.Conv2D(8, 3, padding="same")(x))
    x = layers.Add()([x, y])
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(4, activation="softmax")(x))


def mobilenet_classifier():
    keras = keras3()
    base = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, include_top=False)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(base(inputs))
    return keras.Model(inputs, keras.layers.Dense(6, activation="softmax")(keras.layers.Dropout(0.2)(x)))


def rescaling_first(calibration: np.ndarray):
    """Starts with the preprocessing layers Keras 3 models often have."""
    layers = keras3().layers
    norm = layers.Normalization()
    norm.adapt(calibration[:, 2:38, 2:38] / 255.0)
    return keras3().Sequential([
        layers.Input((40, 40, 3)), layers.Rescaling(1 / 255.0), layers.Resizing(36, 36), layers.CenterCrop(32, 32),
        norm, layers.Conv2D(8, 3, activation="relu"), layers.GlobalAveragePooling2D(),
        layers.Dense(3, activation="softmax")])


BUILDERS = {"sequential": sequential_cnn, "residual_bn": residual_bn, "mobilenet": mobilenet_classifier}


def batch(model, n: int = 32, seed: int = 1, high: float = 1.0) -> np.ndarray:
    shape = (n, *model.inputs[0].shape[1:])
    return (np.random.default_rng(seed).random(shape) * high).astype(np.float32)


def relative_error(reference: np.ndarray, got: np.ndarray) -> float:
    return float(np.abs(reference - got).max() / np.abs(reference).max())


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Each Keras 3 model, saved by Keras 3 as .keras and as .h5, with Keras 3's predictions on a batch."""
    folder = tmp_path_factory.mktemp("keras3")
    pixels = (np.random.default_rng(0).random((64, 40, 40, 3)) * 255).astype(np.float32)
    built = {name: build() for name, build in BUILDERS.items()} | {"rescaling": rescaling_first(pixels)}
    found = {}
    for name, model in built.items():
        x = pixels if name == "rescaling" else batch(model)
        for suffix in (".keras", ".h5"):
            model.save(folder / f"{name}{suffix}")
        found[name] = {"model": model, "x": x, "y": model.predict(x, verbose=0), "path": folder / name}
    return found


def tflite_output(path, x) -> np.ndarray:
    return next(iter(Model(path).run(x).values()))


def test_the_writer_is_read_from_the_file_metadata(models, digits_model_path, tmp_path):
    keras_file, h5_file = (models["sequential"]["path"].with_suffix(s) for s in (".keras", ".h5"))
    assert keras3_source.file_keras_version(keras_file) == keras3().__version__
    assert keras3_source.file_keras_version(h5_file) == keras3().__version__
    tf_keras_written = tmp_path / "legacy.keras"
    load_keras_model(digits_model_path).save(tf_keras_written)
    for legacy in (digits_model_path, tf_keras_written):
        assert keras3_source.file_keras_version(legacy).startswith("2.")
        assert not keras3_source.written_by_keras3(legacy)
    assert keras3_source.is_keras3_model(models["sequential"]["model"])
    assert not keras3_source.is_keras3_model(load_keras_model(digits_model_path))


@pytest.mark.parametrize("name", ["sequential", "residual_bn", "mobilenet", "rescaling"])
def test_translation_matches_keras3_from_both_formats(models, name):
    """.keras and .h5 give the same tf_keras copy, equal to Keras 3 within 1e-5 of the output scale."""
    case = models[name]
    for suffix in (".keras", ".h5"):
        copy = load_keras_model(case["path"].with_suffix(suffix))
        assert type(copy).__module__.startswith("tf_keras")
        assert relative_error(case["y"], copy.predict(case["x"], verbose=0)) <= RELATIVE, (name, suffix)
    if name == "mobilenet":
        nested = copy.layers[1]
        assert type(nested).__name__ == "Functional" and len(nested.layers) == len(case["model"].layers[1].layers)


@pytest.mark.slow
@pytest.mark.parametrize("name,suffix", [("sequential", ".keras"), ("residual_bn", ".h5"), ("mobilenet", ".keras"),
                                         ("rescaling", ".h5")])
def test_float_tflite_matches_keras3(models, name, suffix, tmp_path):
    case = models[name]
    result = convert(case["path"].with_suffix(suffix), tmp_path / "f.tflite")
    assert relative_error(case["y"], tflite_output(result.path, case["x"])) <= RELATIVE
    assert any(note.startswith("Keras 3 model (read with Keras 3.") and "translated to tf_keras" in note
               for note in result.report.notes)


@pytest.mark.slow
@pytest.mark.parametrize("name,suffix", [("residual_bn", ".keras"), ("rescaling", ".keras")])
def test_int8_with_calibration(models, name, suffix, tmp_path):
    case = models[name]
    calibration = case["x"] if name == "rescaling" else batch(case["model"], 64, seed=2)
    result = convert(case["path"].with_suffix(suffix), tmp_path / "q.tflite", {"quantize": {"mode": "int8"}},
                     calib_data=calibration)
    got = tflite_output(result.path, case["x"])
    assert result.report.compressed.ops.float_ops == {}
    assert all(w.dtype == "int8" for w in result.report.compressed.weights)
    cosine = (got * case["y"]).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(case["y"], axis=1)
    assert cosine.mean() >= 0.99, cosine.mean()


@pytest.mark.slow
def test_digits_headline_recipe_on_a_keras3_file(digits, digits_model, tmp_path):
    """Prune 0.75 + cluster 16 + int8 with fine-tuning on a Keras 3 digits CNN (tfmot on the copy)."""
    model = build_digits_cnn(keras3())
    model.set_weights(digits_model.get_weights())
    model.save(tmp_path / "digits3.keras")
    reference = model.predict(digits.x_test, verbose=0)
    result = convert(tmp_path / "digits3.keras", tmp_path / "small.tflite",
                     {"prune": {"sparsity": 0.75}, "cluster": {"clusters": 16}, "quantize": {"mode": "int8"}},
                     finetune_data=(digits.x_train, digits.y_train), eval_data=(digits.x_test, digits.y_test))
    assert result.report.gzip_ratio >= 12.0, result.report.gzip_ratio
    assert accuracy(tflite_output(result.path, digits.x_test), digits.y_test) >= accuracy(reference, digits.y_test) - 1
    stats = analyse(result.path.read_bytes())
    for weight in stats.weights:
        assert abs(weight.sparsity - 0.75) <= 0.01 and weight.unique_values <= 16, weight


@pytest.mark.slow
def test_custom_layers_registered_and_given(tmp_path):
    keras = keras3()

    @keras.saving.register_keras_serializable(package="test_keras3")
    class Scale(keras.layers.Layer):
        def build(self, input_shape):
            self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="w")

        def call(self, x):
            return x * self.w + keras.ops.sin(x)

    class Doubler(keras.layers.Layer):
        def call(self, x):
            return x * 2.0

    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4), Scale(), Doubler(), keras.layers.Dense(2)])
    model.layers[1].w.assign(np.arange(1, 5, dtype=np.float32))
    model.save(tmp_path / "custom.h5")
    x = batch(model)
    with pytest.raises(SourceModelError, match=r"^\S+custom.h5 uses a custom class 'Doubler' that Keras 3 cannot "
                                               r"rebuild; pass custom_objects=\{'Doubler': TheClass\}"):
        convert(tmp_path / "custom.h5", tmp_path / "c.tflite")
    assert not (tmp_path / "c.tflite").exists()
    result = convert(tmp_path / "custom.h5", tmp_path / "c.tflite", custom_objects={"Doubler": Doubler})
    assert relative_error(model.predict(x, verbose=0), tflite_output(result.path, x)) <= RELATIVE
    lambda_model = keras.Sequential([keras.Input((6,)), keras.layers.Lambda(lambda t: keras.ops.relu(t) * 3.0)])
    assert np.allclose(load_keras_model(lambda_model).predict(x, verbose=0), np.maximum(x, 0) * 3, atol=1e-6)
    lambda_model.save(tmp_path / "lambda.keras")
    with pytest.raises(SourceModelError, match=r"lambda.keras holds a Lambda layer \(Python code\), which Keras 3 "
                                               r"loads only with safe_mode=False; if you trust the file"):
        load_keras_model(tmp_path / "lambda.keras")


def test_keras_ops_between_tensors_become_merge_layers():
    """``x + y`` in a functional model is a keras.ops operation (Keras 3 itself cannot reload it from .h5)."""
    keras = keras3()
    a, b = keras.Input((6,)), keras.Input((6,))
    h = keras.layers.Dense(6)(a)
    model = keras.Model([a, b], keras.layers.Concatenate()([h + b, h * b, h - b]))
    x = [batch(model, seed=3), batch(model, seed=4)]
    copy = load_keras_model(model)
    assert [type(layer).__name__ for layer in copy.layers[-4:-1]] == ["Add", "Multiply", "Subtract"]
    assert relative_error(model.predict(x, verbose=0), copy.predict(x, verbose=0)) <= RELATIVE


def test_what_tf_keras_cannot_express_is_refused_in_one_line():
    keras = keras3()
    layers = keras.layers
    inputs = keras.Input((8,))
    cases = {
        r"^layer 'hs' \(Activation\) uses activation 'hard_silu', which tf_keras computes differently or lacks; "
        r"allowed: elu, .*; use one of them or a layer":
            keras.Model(inputs, layers.Activation("hard_silu", name="hs")(inputs)),
        r"^layer 'lora' \(Dense\) sets lora_rank=2, which tf_keras's Dense has no option for; rebuild the layer "
        "without lora_rank$": keras.Model(inputs, layers.Dense(3, lora_rank=2, name="lora")(inputs)),
        r"^Keras 3 model applies keras.ops add \('add\w*'\) to a constant, which tf_keras cannot rebuild; use a "
        "layer instead": keras.Model(inputs, keras.ops.add(inputs, 1.0)),
    }
    for message, model in cases.items():
        with pytest.raises(SourceModelError, match=message) as caught:
            load_keras_model(model)
        assert "\n" not in str(caught.value)

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(SourceModelError, match="subclassed and has no layer graph to copy; build it with "
                                               r"keras.Model\(inputs, outputs\) or keras.Sequential"):
        load_keras_model(Subclassed())


def test_a_translation_that_differs_from_keras3_is_refused(monkeypatch):
    """Keras 3's hard_sigmoid is relu6(x + 3) / 6, tf_keras's clip(0.2 x + 0.5): let it through on purpose."""
    monkeypatch.setitem(keras3_source.ACTIVATIONS, "hard_sigmoid", "hard_sigmoid")
    keras = keras3()
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="hard_sigmoid")(keras.layers.Dense(8)(inputs)))
    with pytest.raises(ConversionError, match=r"the tf_keras copy of this Keras 3 model differs from it by \S+ "
                                              r"\(output scale \S+, allowed 1e-05 of it\) on a random batch"):
        load_keras_model(model)


def _python(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_in_memory_keras3_model_where_tf_keras_is_keras3(tmp_path):
    """A user's process: tf.keras is Keras 3 (TF_USE_LEGACY_KERAS unset), model in memory, fine-tuned passes."""
    code = f"""
import json, os, numpy as np, tensorflow as tf
assert tf.keras.version().startswith("3.")
keras = tf.keras
rng = np.random.default_rng(0)
x = rng.random((120, 8, 8, 1)).astype("float32"); y = (x.mean((1, 2, 3)) > 0.5).astype("int64")
model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, activation="relu"),
                          keras.layers.Flatten(), keras.layers.Dense(2, activation="softmax")])
import sdk
flat = sdk.convert(model, {str(tmp_path / 'f.tflite')!r})
small = sdk.convert(model, {str(tmp_path / 's.tflite')!r}, {{"prune": {{"sparsity": 0.5}}, "cluster": {{"clusters": 8}},
                    "finetune": {{"epochs": 1}}}}, finetune_data=(x, y))
from device_runtime import Model
got = next(iter(Model(flat.path).run(x).values()))
ref = model.predict(x, verbose=0)
print(json.dumps({{"error": float(abs(got - ref).max() / abs(ref).max()),
                  "prune": small.report.passes["prune"].fine_tuned}}))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_USE_LEGACY_KERAS", "KERAS_BACKEND")}
    done = _python(code, env)
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    assert measured["error"] <= RELATIVE and measured["prune"], measured
    weights = analyse((tmp_path / "s.tflite").read_bytes()).weights
    assert all(abs(w.sparsity - 0.5) <= 0.01 and w.unique_values <= 8 for w in weights), weights


@pytest.mark.slow
def test_torch_backend_is_refused_with_the_way_out(models, tmp_path):
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    source = models["sequential"]["path"].with_suffix(".keras")
    done = subprocess.run([sys.executable, "-m", "sdk.cli", "convert", source, "-o", tmp_path / "t.tflite"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: Keras 3 runs on the torch backend here (KERAS_BACKEND or ~/.keras/keras.json), allowed: tensorflow; "
        "set KERAS_BACKEND=tensorflow for the conversion (a .keras file is backend-neutral)"]
    assert not list(tmp_path.iterdir())
