"""Mixed precision: per-layer `precision: float` keeps chosen layers in float32 while the rest is int8."""

from __future__ import annotations

import pytest

import sdk
from converters.errors import RecipeError
from device_runtime import Model
from examples.digits_cnn import accuracy


def test_chosen_layers_stay_float_and_the_rest_is_int8(digits, digits_model_path, digits_npz, tmp_path):
    train, test = digits_npz
    mixed = sdk.convert(digits_model_path, tmp_path / "mixed.tflite",
                        {"quantize": {"mode": "int8", "io_type": "int8"}, "layers": {"fc1": {"precision": "float"}}},
                        calib_data=train, eval_data=test)
    report = mixed.report
    dtypes = {w.layer: w.dtype for w in report.compressed.weights}
    assert dtypes == {"conv1": "int8", "conv2": "int8", "conv3": "int8", "fc1": "float32", "classifier": "int8"}
    assert report.compressed.ops.float_ops == {"FULLY_CONNECTED": 1}  # fc1 alone computes in float
    full = sdk.convert(digits_model_path, tmp_path / "int8.tflite", {"quantize": {"mode": "int8"}},
                       calib_data=train, eval_data=test).report
    # fc1 holds 1024 x 128 weights: float32 costs 3 more bytes per weight than int8 (less its int8 scales)
    assert 2.9 * 1024 * 128 <= report.compressed.file_size - full.compressed.file_size <= 3 * 1024 * 128
    model = Model(mixed.path)
    assert model.inputs[0].dtype.name == "int8"  # full-integer I/O still
    assert accuracy(next(iter(model.run(digits.x_test).values())), digits.y_test) >= \
        report.fidelity.accuracy_source - 1.0
    by_type = sdk.convert(digits_model_path, tmp_path / "convs.tflite",
                          {"quantize": {"mode": "int8"}, "layer_types": {"Conv2D": {"precision": "float"}}},
                          calib_data=train).report
    assert by_type.compressed.ops.float_ops == {"CONV_2D": 3}


def test_precision_needs_int8_and_cannot_mix_with_qat(digits_model_path, digits_npz, tmp_path):
    train, _ = digits_npz
    with pytest.raises(RecipeError, match="precision applies under quantize.mode int8"):
        sdk.Recipe.from_dict({"quantize": {"mode": "dynamic"}, "layers": {"fc1": {"precision": "float"}}})
    with pytest.raises(RecipeError, match="cannot be combined"):
        sdk.convert(digits_model_path, tmp_path / "x.tflite", {"quantize": {"mode": "int8", "qat": True},
                                                               "layers": {"fc1": {"precision": "float"}}},
                    finetune_data=train)
    assert not (tmp_path / "x.tflite").exists()
