"""The Keras path end to end, with the numbers the foundation issue asks for.

Reference: the float Keras model.  Every number is read back from the written
.tflite (through the device runtime and the flatbuffer reader), not from the
recipe.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from converters import _tf
from converters.recipe import Recipe
from converters.verify.analysis import analyse
from device_runtime import Model
from examples.digits_cnn import accuracy
from sdk import convert

FLOAT_TOLERANCE = 1e-4  # max abs error of float32 .tflite vs Keras (softmax outputs in [0, 1])


@pytest.fixture(scope="module")
def compressed(digits, digits_model_path, tmp_path_factory):
    """The headline recipe: 75% sparsity + 16 clusters + int8, fine-tuned with labels."""
    out = tmp_path_factory.mktemp("compressed") / "digits_small.tflite"
    recipe = Recipe.from_dict({"prune": {"sparsity": 0.75}, "cluster": {"clusters": 16},
                               "quantize": {"mode": "int8"}})
    return convert(digits_model_path, out, recipe, finetune_data=(digits.x_train, digits.y_train),
                   eval_data=(digits.x_test, digits.y_test))


def test_float_conversion_matches_keras(digits, digits_model, digits_model_path, tmp_path):
    result = convert(digits_model_path, tmp_path / "float.tflite")
    got = Model(result.path).run(digits.x_test)
    reference = digits_model.predict(digits.x_test, verbose=0)
    assert np.abs(next(iter(got.values())) - reference).max() <= FLOAT_TOLERANCE
    assert result.report.fidelity.max_abs_error <= FLOAT_TOLERANCE
    assert result.report.compressed.ops.float_ops  # a float model computes in float


def test_plain_int8_agrees_with_float(digits, digits_model_path, tmp_path):
    result = convert(digits_model_path, tmp_path / "int8.tflite", {"quantize": {"mode": "int8"}},
                     calib_data=(digits.x_train, digits.y_train), eval_data=(digits.x_test, digits.y_test))
    assert result.report.fidelity.top1_agreement >= 98.0
    assert result.report.compressed.ops.float_ops == {}
    assert all(w.dtype == "int8" and w.unique_per_channel_max for w in result.report.compressed.weights)


def test_headline_recipe_size_and_accuracy(compressed, digits, digits_model):
    report = compressed.report
    float_acc = accuracy(digits_model.predict(digits.x_test, verbose=0), digits.y_test)
    tflite_acc = accuracy(next(iter(Model(compressed.path).run(digits.x_test).values())), digits.y_test)
    assert report.gzip_ratio >= 12.0, report.gzip_ratio
    assert tflite_acc >= float_acc - 1.0, (float_acc, tflite_acc)
    assert report.fidelity.accuracy_tflite == pytest.approx(tflite_acc)


def test_headline_recipe_sparsity_and_unique_values_in_file(compressed):
    stats = analyse(compressed.path.read_bytes())
    assert {w.layer for w in stats.weights} == {"conv1", "conv2", "conv3", "fc1", "classifier"}
    for weight in stats.weights:
        assert weight.dtype == "int8"
        assert abs(weight.sparsity - 0.75) <= 0.01, (weight.layer, weight.sparsity)
        assert weight.unique_values <= 16, (weight.layer, weight.unique_values)  # zero is one of the 16
    assert stats.ops.float_ops == {}


def test_report_json_beside_model(compressed):
    data = json.loads(compressed.report_path.read_text())
    assert compressed.report_path.name == "digits_small.report.json"
    assert data["compressed"]["gzip_size"] == compressed.report.compressed.gzip_size
    assert data["passes"]["prune"]["fine_tuned"] and set(data["passes"]["cluster"]["layers"]) == \
        {"conv1", "conv2", "conv3", "fc1", "classifier"}
    assert data["fidelity"]["samples"] == 360


def test_one_shot_without_data_and_layer_overrides(digits_model_path, tmp_path):
    recipe = {"prune": {"sparsity": 0.6}, "cluster": {"clusters": 8},
              "layers": {"classifier": None, "conv1": {"prune": None}}}
    result = convert(digits_model_path, tmp_path / "oneshot.tflite", recipe)
    weights = {w.layer: w for w in result.report.compressed.weights}
    assert weights["classifier"].sparsity == 0 and weights["classifier"].unique_values > 100
    assert weights["conv1"].sparsity == 0 and weights["conv1"].unique_values <= 8
    for name in ("conv2", "conv3", "fc1"):
        assert abs(weights[name].sparsity - 0.6) <= 0.01
        assert weights[name].unique_values <= 8  # zero is one of the 8
    assert not result.report.passes["prune"].fine_tuned
    assert result.report.fidelity.data == "random uniform inputs"


def test_two_of_four_pattern_in_file(digits_model_path, tmp_path):
    result = convert(digits_model_path, tmp_path / "24.tflite",
                     {"prune": {"sparsity": 0.5, "structure": "2:4"}, "layers": {"conv1": None},
                      "sparse_export": "off"})
    from device_runtime.tflite_format import read_model

    parsed = read_model(result.path.read_bytes())
    fc = [op for op in parsed.main.operators if op.op_name == "FULLY_CONNECTED"]
    kernel = parsed.constant(parsed.main.tensors[fc[0].inputs[1]])  # (out, in): groups along "in"
    groups = kernel.reshape(kernel.shape[0], -1, 4)
    assert (np.count_nonzero(groups, axis=2) <= 2).all()


@pytest.mark.parametrize("mode, weight_dtype, min_cosine", [
    ("dynamic", "int8", 0.999), ("float16", "float16", 0.99999), ("int16x8", "int8", 0.999)])
def test_other_quantization_modes(digits, digits_model_path, tmp_path, mode, weight_dtype, min_cosine):
    result = convert(digits_model_path, tmp_path / f"{mode}.tflite", {"quantize": {"mode": mode}},
                     calib_data=digits.x_train, eval_data=(digits.x_test, digits.y_test))
    # The converter leaves weights under 1024 values in float for dynamic range (conv1 has 288).
    big = [w for w in result.report.compressed.weights if w.size >= 1024 or mode != "dynamic"]
    assert {w.dtype for w in big} == {weight_dtype} and len(big) >= 4
    assert result.report.fidelity.cosine >= min_cosine
    assert result.report.compressed.file_size < result.report.baseline.file_size / 1.9


def test_int8_io_types(digits, digits_model_path, tmp_path):
    for io_type in ("int8", "uint8"):
        result = convert(digits_model_path, tmp_path / f"io_{io_type}.tflite",
                         {"quantize": {"mode": "int8", "io_type": io_type}}, calib_data=digits.x_train,
                         eval_data=(digits.x_test, digits.y_test))
        model = Model(result.path)
        assert model.inputs[0].dtype == np.dtype(io_type) and model.outputs[0].dtype == np.dtype(io_type)
        assert result.report.fidelity.top1_agreement >= 98.0


def test_unlabelled_finetune_distils(digits, digits_model, digits_model_path, tmp_path):
    result = convert(digits_model_path, tmp_path / "distilled.tflite",
                     {"prune": {"sparsity": 0.75}},
                     finetune_data=digits.x_train, eval_data=(digits.x_test, digits.y_test))
    fid = result.report.fidelity
    assert result.report.passes["prune"].fine_tuned
    assert fid.accuracy_tflite >= fid.accuracy_source - 1.5
    assert result.report.compressed.overall_sparsity == pytest.approx(0.75, abs=0.01)


def test_in_memory_model_is_not_modified(digits_model, tmp_path):
    before = [w.copy() for w in digits_model.get_weights()]
    convert(digits_model, tmp_path / "mem.tflite", {"prune": {"sparsity": 0.9}})
    for a, b in zip(before, digits_model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_depthwise_layers_are_reported_as_skipped(tmp_path):
    keras = _tf.keras()
    model = keras.Sequential([keras.layers.Input((8, 8, 4)),
                              keras.layers.DepthwiseConv2D(3, name="dw"),
                              keras.layers.Conv2D(8, 1, name="pw"), keras.layers.Flatten(),
                              keras.layers.Dense(4, name="head")])
    result = convert(model, tmp_path / "dw.tflite", {"prune": {"sparsity": 0.5}, "cluster": {"clusters": 4}})
    for name in ("prune", "cluster"):
        assert result.report.passes[name].skipped == {"dw": f"tfmot cannot {name} DepthwiseConv2D weights"}
    assert "skipped by prune: dw: tfmot cannot prune DepthwiseConv2D weights" in result.report.render()
    weights = {w.layer: w for w in result.report.compressed.weights}
    assert weights["dw"].sparsity == 0 and abs(weights["pw"].sparsity - 0.5) < 0.01
