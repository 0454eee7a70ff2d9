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


def _small_torch_net():
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.act = torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU()
            self.fc1, self.fc2 = torch.nn.Linear(8 * 6 * 6, 32), torch.nn.Linear(32, 10)

        def forward(self, x):
            return self.fc2(self.act(self.fc1(self.act(self.conv1(x)).flatten(1))))

    torch.manual_seed(0)
    return Net().eval()


def test_pytorch_and_onnx_layers_stay_float(tmp_path):
    """`precision: float` was silently ignored on the PyTorch/ONNX route: every layer came out int8. onnx2tf's
    tensor names do not carry the source layer, so the layer's op is found by its weights."""
    import numpy as np
    import torch

    net, example = _small_torch_net(), torch.zeros(1, 1, 8, 8)
    calib = np.random.default_rng(0).random((64, 1, 8, 8), np.float32)
    int8 = {"mode": "int8"}
    mixed = sdk.convert(net, tmp_path / "mixed.tflite", {"quantize": int8, "layers": {"fc1": {"precision": "float"}}},
                        example_input=example, calib_data=calib).report
    assert {w.layer: w.dtype for w in mixed.compressed.weights} == {"conv1": "int8", "fc1": "float32", "fc2": "int8"}
    assert mixed.compressed.ops.float_ops == {"FULLY_CONNECTED": 1}
    assert any("mixed precision: layer(s) fc1 kept in float32" in note for note in mixed.notes)
    assert mixed.fidelity.cosine >= 0.99
    by_type = sdk.convert(net, tmp_path / "convs.tflite", {"quantize": int8, "layer_types": {"Conv2d": {"precision": "float"}}},
                          example_input=example, calib_data=calib).report
    assert by_type.compressed.ops.float_ops == {"CONV_2D": 1}

    onnx_path = tmp_path / "net.onnx"
    torch.onnx.export(net, example, onnx_path, input_names=["x"], dynamo=False)
    from_onnx = sdk.convert(onnx_path, tmp_path / "onnx_mixed.tflite",
                            {"quantize": int8, "layers": {"fc2": {"precision": "float"}}}, calib_data=calib).report
    assert {w.layer: w.dtype for w in from_onnx.compressed.weights}["fc2"] == "float32"
    assert from_onnx.compressed.ops.float_ops == {"FULLY_CONNECTED": 1}


def test_float_precision_on_a_layer_without_weights_is_refused_before_any_work(tmp_path):
    import numpy as np
    import torch

    with pytest.raises(RecipeError, match=r"names none of them; layers with weights: conv1, fc1, fc2"):
        sdk.convert(_small_torch_net(), tmp_path / "x.tflite",
                    {"quantize": {"mode": "int8"}, "layers": {"act": {"precision": "float"}}},
                    example_input=torch.zeros(1, 1, 8, 8),
                    calib_data=np.zeros((8, 1, 8, 8), np.float32))
    assert list(tmp_path.iterdir()) == []
