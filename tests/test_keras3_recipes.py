"""Every recipe feature on Keras 3 sources (issue 23): models built and saved by Keras 3 as .keras here, each
effect measured in the written file, fidelity against Keras 3's own predictions.

Per-layer overrides use the names the layers have in Keras 3: the tf_keras copy keeps them.
"""

from __future__ import annotations

import numpy as np
import pytest

import sdk
from converters import _tf
from converters.verify.analysis import analyse
from device_runtime import Model
from examples.digits_cnn import accuracy, build_digits_cnn
from tests.test_ptq_layers import _broken_keras_model


def outputs(path, x) -> np.ndarray:
    return next(iter(Model(path).run(x).values()))


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(1) == b.argmax(1)).mean() * 100)


@pytest.fixture(scope="module")
def digits3(digits, digits_model, tmp_path_factory):
    """The trained digits CNN as a Keras 3 model saved by Keras 3 (.keras), and Keras 3's test predictions."""
    model = build_digits_cnn(_tf.keras3())
    model.set_weights(digits_model.get_weights())
    path = tmp_path_factory.mktemp("digits3") / "digits3.keras"
    model.save(path)
    return path, model.predict(digits.x_test, verbose=0)


@pytest.mark.slow
def test_cluster_preserving_qat_on_a_keras3_file(digits, digits3, digits_npz, tmp_path):
    path, reference = digits3
    train, test = digits_npz
    result = sdk.convert(path, tmp_path / "pcqat.tflite",
                         {"prune": {"sparsity": 0.5}, "cluster": {"clusters": 16},
                          "quantize": {"mode": "int8", "qat": True}, "finetune": {"epochs": 2}},
                         finetune_data=train, eval_data=test)
    assert result.report.passes["qat"].summary["scheme"] == "cluster-preserving with sparsity (PCQAT)"
    weights = {w.layer: w for w in result.report.compressed.weights}  # measured from the written file
    for name in ("conv2", "conv3", "fc1"):
        shared = weights[name].unique_per_channel_max or weights[name].unique_values
        assert weights[name].dtype == "int8" and weights[name].sparsity >= 0.49 and shared <= 16 + 1, weights[name]
    got = outputs(result.path, digits.x_test)
    assert accuracy(got, digits.y_test) >= accuracy(reference, digits.y_test) - 2.0
    assert agreement(got, reference) >= 95.0


@pytest.mark.slow
def test_channels_low_rank_and_a_float_layer_on_a_keras3_file(digits, digits3, digits_npz, tmp_path):
    """One conversion: half the channels, fc1 at rank 1/4, the classifier kept float, the rest int8, fine-tuned
    by distillation from the Keras 3 model."""
    path, reference = digits3
    train, test = digits_npz
    result = sdk.convert(path, tmp_path / "thin.tflite",
                         {"channels": {"fraction": 0.5}, "low_rank": {"rank_ratio": 0.25},
                          "layers": {"classifier": {"precision": "float", "low_rank": None},
                                     "conv1": {"low_rank": None}},
                          "quantize": {"mode": "int8"}, "finetune": {"epochs": 4}},
                         finetune_data=train, eval_data=test)
    report = result.report
    assert {k: v["kept"] for k, v in report.passes["channels"].layers.items()} == \
        {"conv1": 16, "conv2": 32, "conv3": 32, "fc1": 64}
    assert report.passes["low_rank"].layers["fc1"]["rank"] == 16  # ceil(0.25 * min(512, 64))
    assert report.passes["channels"].fine_tuned and report.passes["low_rank"].fine_tuned
    weights = {w.layer: w for w in analyse(result.path.read_bytes()).weights}  # the written file
    assert weights["conv1"].shape == [16, 3, 3, 1] and weights["conv2"].shape == [32, 3, 3, 16]
    assert weights["fc1_lowrank"].shape == [16, 512] and weights["fc1"].shape == [64, 16]
    assert weights["classifier"].dtype == "float32" and weights["conv3"].dtype == "int8"
    assert report.compressed.ops.float_ops == {"FULLY_CONNECTED": 1}
    got = outputs(result.path, digits.x_test)
    assert accuracy(got, digits.y_test) >= accuracy(reference, digits.y_test) - 2.0


@pytest.mark.slow
def test_mixed_precision_by_name_and_by_target_on_a_keras3_file(tmp_path):
    """``fc`` kept float by name (its Keras 3 name), and --min-cosine finds the layer made to break."""
    keras = _tf.keras3()
    model = _broken_keras_model(keras)
    model.save(tmp_path / "broken.keras")
    calib = np.random.default_rng(0).random((80, 12, 12, 3), np.float32)
    result = sdk.convert(tmp_path / "broken.keras", tmp_path / "mp.tflite",
                         {"quantize": {"mode": "int8", "min_cosine": 0.999}, "layers": {"fc": {"precision": "float"}}},
                         calib_data=calib)
    record = result.report.mixed_precision
    assert record.met and record.kept == ["conv_b"]
    weights = analyse(result.path.read_bytes()).weights  # the last op is named after the output, not after fc
    assert [(w.layer, w.dtype) for w in weights][:3] == [("conv_a", "int8"), ("conv_b", "float32"), ("conv_c", "int8")]
    assert weights[3].dtype == "float32" and weights[3].shape == [10, 8 * 6 * 6]
    assert result.report.compressed.ops.float_ops == {"CONV_2D": 1, "FULLY_CONNECTED": 1}
    got = outputs(result.path, calib)
    reference = model.predict(calib, verbose=0)
    cosine = (got * reference).sum() / np.linalg.norm(got) / np.linalg.norm(reference)
    assert cosine >= 0.999, cosine


@pytest.mark.slow
def test_budget_mode_on_a_keras3_file(digits, digits3, digits_npz, tmp_path):
    path, reference = digits3
    train, test = digits_npz
    budget = sdk.convert_within_budget(path, tmp_path / "auto.tflite", max_drop=1.0, finetune_data=train,
                                       eval_data=test)
    got = outputs(budget.result.path, digits.x_test)
    assert accuracy(got, digits.y_test) >= accuracy(reference, digits.y_test) - 1.0
    stats = analyse(budget.result.path.read_bytes())
    assert {w.layer for w in stats.weights} >= {"conv1", "conv2", "conv3", "fc1", "classifier"}
    assert budget.result.report.gzip_ratio >= 8.0, budget.result.report.gzip_ratio
    assert len(sdk.Recipe.load(budget.recipe_path).layers) == 5  # per-layer choices under the Keras 3 names


def _rounding_keras3_model():
    """Small positive weights (0.38 of an int8 step) that round to zero under int8, so each layer's mean output
    shifts: a Conv2D whose BatchNormalization the converter folds (inside a nested model), a DepthwiseConv2D
    with a bias, and a Dense head."""
    keras = _tf.keras3()
    layers = keras.layers
    keras.utils.set_random_seed(0)
    inner_in = keras.Input((12, 12, 3))
    x = layers.BatchNormalization(name="bn")(layers.Conv2D(8, 3, use_bias=False, name="conv")(inner_in))
    block = keras.Model(inner_in, layers.ReLU()(x), name="block")
    inputs = keras.Input((12, 12, 3))
    x = layers.ReLU()(layers.DepthwiseConv2D(3, name="depthwise")(block(inputs)))
    model = keras.Model(inputs, layers.Dense(10, name="head")(layers.Flatten()(x)))
    for name, shape in (("conv", (3, 3, 3, 8)), ("depthwise", (3, 3, 8, 1))):
        kernel = np.full(shape, 0.38 / 127, np.float32)
        kernel[1, 1, 0 if name == "conv" else slice(None), :] = 1.0
        target = block.get_layer(name) if name == "conv" else model.get_layer(name)
        target.set_weights([kernel, *target.get_weights()[1:]])
    return model


def test_bias_correction_on_a_keras3_file(tmp_path):
    """Measured from the written files: the int8 output's mean abs error vs Keras 3 falls by more than half."""
    model = _rounding_keras3_model()
    model.save(tmp_path / "rounding.keras")
    calib = np.random.default_rng(0).random((64, 12, 12, 3), np.float32)
    x = np.random.default_rng(1).random((32, 12, 12, 3), np.float32)
    reference = model.predict(x, verbose=0)
    errors, reports = {}, {}
    for setting in (False, "auto"):
        result = sdk.convert(tmp_path / "rounding.keras", tmp_path / f"{setting}.tflite",
                             {"quantize": {"mode": "int8", "bias_correction": setting}}, calib_data=calib)
        errors[setting] = float(np.abs(outputs(result.path, x) - reference).mean())
        reports[setting] = result.report
    assert errors["auto"] <= 0.5 * errors[False], errors
    corrected = [n for n in reports["auto"].notes if n.startswith("bias correction: ")]
    assert len(corrected) == 1 and corrected[0].startswith("bias correction: 3 layer(s) corrected on "), corrected
    assert not any("bias correction" in note for note in reports[False].notes)
    assert reports["auto"].float_fidelity.max_abs_error < 1e-5  # the float file stays uncorrected


def test_layers_kept_float_get_their_uncorrected_biases_back():
    """A mixed-precision search keeps layers float; inside a nested model too. Their biases must be the
    source's, not the int8 correction's."""
    from converters.sources.keras import load_keras_model
    from converters.techniques.base import leaf_layers
    from converters.techniques.bias_correction_keras import correct_keras_biases, uncorrected

    model = load_keras_model(_rounding_keras3_model())
    assert [(layer.name, within) for layer, within in leaf_layers(model) if layer.weights] == \
        [("conv", ("block",)), ("bn", ("block",)), ("depthwise", ()), ("head", ())]
    calib = np.random.default_rng(0).random((32, 12, 12, 3), np.float32)
    corrected, record = correct_keras_biases(model, calib)
    assert set(record.corrected) == {"conv", "depthwise", "head"}
    source_beta = model.get_layer("block").get_layer("bn").beta.numpy()
    beta = corrected.get_layer("block").get_layer("bn").beta
    depthwise_bias = corrected.get_layer("depthwise").bias
    assert not np.allclose(beta.numpy(), source_beta)
    seen = uncorrected(corrected, ["block"], lambda: (beta.numpy().copy(), depthwise_bias.numpy().copy()))
    np.testing.assert_array_equal(seen[0], source_beta)  # the nested model's layers, by its name
    assert not np.allclose(seen[1], model.get_layer("depthwise").bias.numpy())  # others stay corrected
    assert not np.allclose(beta.numpy(), source_beta)  # and the correction is back afterwards
