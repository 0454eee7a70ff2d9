"""Learned weight rounding (AdaRound, #24) on small models built so rounding matters: one weight in each output
channel is 12x the others, so the int8 grid (max|w| / 127) is coarse for the rest; the inputs are smooth images
(neighbouring pixels correlated), so a layer's rounding errors can cancel when chosen together."""

from __future__ import annotations

import numpy as np
import pytest

import sdk
from converters.errors import RecipeError
from tests.test_cli import assert_bad_input, run

SPIKE = 12.0


def _smooth(n: int, channels_last: bool = False) -> np.ndarray:
    import torch

    base = np.random.default_rng(0).random((n, 3, 6, 6), np.float32)
    x = torch.nn.functional.interpolate(torch.from_numpy(base), size=(12, 12), mode="bilinear").numpy()
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if channels_last else x


def _torch_net():
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, groups=8),
                              torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(16 * 8 * 8, 10)).eval()
    with torch.no_grad():
        for module in net:
            if hasattr(module, "weight"):
                module.weight.view(module.weight.shape[0], -1)[:, 0] *= SPIKE
    return net


def _keras_net():
    from converters import _tf

    tfk = _tf.keras()
    tfk.utils.set_random_seed(0)
    inputs = tfk.Input((12, 12, 3))
    h = tfk.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(inputs)  # stride 2 "same": TF's padding
    h = tfk.layers.ReLU()(tfk.layers.BatchNormalization()(h))  # folded into the conv by the converter
    h = tfk.layers.ReLU()(tfk.layers.DepthwiseConv2D(3, padding="same")(h))
    h = tfk.layers.ReLU()(tfk.layers.Conv2D(16, 1)(h))
    model = tfk.Model(inputs, tfk.layers.Dense(10)(tfk.layers.Flatten()(h)))
    rng = np.random.default_rng(1)
    model.layers[2].set_weights([rng.uniform(0.5, 2, 8).astype("f"), rng.normal(0, .1, 8).astype("f"),
                                 rng.normal(0, .1, 8).astype("f"), rng.uniform(0.5, 2, 8).astype("f")])
    for layer in model.layers:
        if type(layer).__name__ in ("Conv2D", "DepthwiseConv2D", "Dense"):
            kernel, *rest = layer.get_weights()
            axis = 2 if type(layer).__name__ == "DepthwiseConv2D" else kernel.ndim - 1
            moved = np.moveaxis(kernel, axis, 0).copy()
            moved.reshape(len(moved), -1)[:, 0] *= SPIKE
            layer.set_weights([np.moveaxis(moved, 0, axis), *rest])
    return model


def _file_int8_channels(data: bytes) -> list[np.ndarray]:
    """Each int8 weight tensor of a .tflite as [channel, values sorted], with its scales checked per channel."""
    from device_runtime.tflite_format import read_model

    model = read_model(data)
    found = []
    for tensor in model.main.tensors:
        values = model.constant(tensor) if tensor.dtype_name == "int8" else None
        if values is None or tensor.quantization is None or not tensor.quantization.per_channel:
            continue
        rows = np.moveaxis(values, tensor.quantization.axis, 0).reshape(values.shape[tensor.quantization.axis], -1)
        found.append(np.sort(rows.astype(np.int64), axis=1))
    return found


def _expected(rows: list[np.ndarray]) -> list[np.ndarray]:
    """[channel, int8 values sorted] of AdaRound's [G, O, K] weights, snapped to their grid."""
    from converters.techniques.adaround import grid_scale

    out = []
    for weights in rows:
        q = weights / grid_scale(weights)
        assert np.abs(q - np.round(q)).max() < 1e-3  # every weight on its channel's grid
        out.append(np.sort(np.round(q).reshape(-1, weights.shape[-1]).astype(np.int64), axis=1))
    return out


def _assert_same_channels(found: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert len(found) == len(expected)
    for rows in expected:
        assert any(f.shape == rows.shape and np.array_equal(f, rows) for f in found), rows.shape


def test_adaround_pytorch_route_cuts_int8_error_and_the_file_holds_its_grid(tmp_path):
    """Measured: mean abs error 0.0072 -> 0.0027 (cosine 0.9984 -> 0.9997); float .tflite unchanged."""
    import io

    import onnx
    import torch

    from converters.techniques.adaround import nearest
    from converters.techniques.adaround_onnx import _Layer, adaround

    net, x, example = _torch_net(), _smooth(200), torch.zeros(1, 3, 12, 12)
    reports = {r: sdk.convert(net, tmp_path / f"{r}.tflite", {"quantize": {"mode": "int8", "rounding": r,
                                                                          "bias_correction": False}},
                              example_input=example, calib_data=x[:160], eval_data=x[160:]).report
               for r in ("nearest", "adaround")}
    assert reports["adaround"].fidelity.mean_abs_error <= 0.5 * reports["nearest"].fidelity.mean_abs_error
    assert reports["adaround"].float_fidelity.max_abs_error < 1e-4  # the float file is the source's
    assert any(n.startswith("adaround: 4 layer(s) rounded on 160 calibration samples")
               for n in reports["adaround"].notes)

    buffer = io.BytesIO()
    torch.onnx.export(net, example, buffer, input_names=["x"], dynamo=False)
    source = onnx.load_from_string(buffer.getvalue())
    rounded, record = adaround(source, x[:160], 500, correct_bias=False)
    ratios = sorted(learned / near for near, learned in record.layers.values())  # measured 0.06 0.08 0.45 0.79
    assert ratios[-1] < 0.85 and ratios[1] < 0.2
    def layers(model):
        inits = {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}
        return [_Layer(node, node.name, {a.name: a for a in node.attribute}, inits[node.input[1]]).rows()
                for node in model.graph.node if node.op_type in ("Conv", "Gemm")]

    chosen = _expected(layers(rounded))
    moved = sum(int((np.sort(nearest(w).reshape(len(q), -1), axis=1) != q).sum())
                for w, q in zip(layers(source), chosen))
    assert moved > 50  # learned rounding is not nearest rounding
    onnx.save(source, tmp_path / "source.onnx")  # the ONNX route: the same cut from the file itself
    onnx_errors = {r: sdk.convert(tmp_path / "source.onnx", tmp_path / f"onnx_{r}.tflite",
                                  {"quantize": {"mode": "int8", "rounding": r, "bias_correction": False}},
                                  calib_data=x[:160], eval_data=x[160:]).report.fidelity.mean_abs_error
                   for r in ("nearest", "adaround")}
    assert onnx_errors["adaround"] <= 0.5 * onnx_errors["nearest"]
    onnx.save(rounded, tmp_path / "rounded.onnx")
    out = sdk.convert(tmp_path / "rounded.onnx", tmp_path / "r.tflite",
                      {"quantize": {"mode": "int8", "bias_correction": False}}, calib_data=x[:160])
    _assert_same_channels(_file_int8_channels(out.path.read_bytes()), chosen)


def test_adaround_keras_route_folds_batchnorm_and_the_file_holds_its_grid(tmp_path):
    """Measured: mean abs error 0.0038 -> 0.0030; the folded conv's int8 values are exactly the learned ones."""
    from converters.techniques.adaround_keras import _Layer, adaround_keras

    model, x = _keras_net(), _smooth(200, channels_last=True)
    reports = {r: sdk.convert(model, tmp_path / f"{r}.tflite", {"quantize": {"mode": "int8", "rounding": r}},
                              calib_data=x[:160], eval_data=x[160:]).report for r in ("nearest", "adaround")}
    assert reports["adaround"].fidelity.mean_abs_error <= 0.85 * reports["nearest"].fidelity.mean_abs_error
    assert reports["adaround"].float_fidelity.max_abs_error < 1e-5
    assert any("adaround: 4 layer(s)" in n and "bias correction of the rounded weights in 4 layer(s)" in n
               for n in reports["adaround"].notes)

    rounded, record = adaround_keras(model, x[:160], 500)
    assert all(learned < near for near, learned in record.layers.values())
    chosen = _expected([_Layer(layer).rows() for layer in rounded.layers
                        if type(layer).__name__ in ("Conv2D", "DepthwiseConv2D", "Dense")])
    out = sdk.convert(rounded, tmp_path / "r.tflite", {"quantize": {"mode": "int8", "bias_correction": False}},
                      calib_data=x[:160])
    _assert_same_channels(_file_int8_channels(out.path.read_bytes()), chosen)


@pytest.mark.parametrize("quantize, message", [
    ({"mode": "int8", "rounding": "adaptive"},
     "quantize.rounding must be one of nearest, adaround; got 'adaptive'"),
    ({"mode": "dynamic", "rounding": "adaround"},
     "quantize.rounding adaround learns the rounding of int8 weights; set quantize.mode int8 or int16x8, or "
     "rounding nearest (got mode dynamic)"),
    ({"mode": "float16", "rounding": "adaround"}, "set quantize.mode int8 or int16x8, or rounding nearest "
                                                  "(got mode float16)"),
    ({"mode": "int8", "rounding": "adaround", "qat": True},
     "quantize.rounding adaround and quantize.qat cannot be combined: QAT trains the weights for int8 already"),
    ({"mode": "int8", "rounding": "adaround", "per_channel": False},
     "quantize.rounding adaround learns per-channel int8 grids; set quantize.per_channel auto or true, or "
     "rounding nearest (got per_channel false)"),
    ({"mode": "int8", "rounding": "adaround", "rounding_iterations": 0},
     "quantize.rounding_iterations must be an integer >= 1, e.g. 500; got 0"),
])
def test_adaround_refusals(quantize, message):
    with pytest.raises(RecipeError) as caught:
        sdk.Recipe.from_dict({"quantize": quantize})
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_adaround_cli_refuses_in_one_line_before_any_work(tmp_path):
    _keras_net().save(tmp_path / "m.h5")
    (tmp_path / "bad.yaml").write_text("quantize: {mode: int8, rounding: adaptive}\n")
    (tmp_path / "nocalib.yaml").write_text("quantize: {mode: int8, rounding: adaround}\n")
    out = tmp_path / "out"
    out.mkdir()
    assert_bad_input(run("convert", tmp_path / "m.h5", "-o", out / "o.tflite", "--recipe", tmp_path / "bad.yaml"),
                     "error: quantize.rounding must be one of nearest, adaround; got 'adaptive'", out)
    assert_bad_input(run("convert", tmp_path / "m.h5", "-o", out / "o.tflite", "--recipe", tmp_path / "nocalib.yaml",
                         "--allow-random-calibration"),
                     "error: quantize.rounding adaround learns each layer's rounding on calibration data, and "
                     "none was given; pass --calib DATA, or set rounding nearest", out)


def test_adaround_with_cluster_is_refused():
    with pytest.raises(RecipeError, match="quantize.rounding adaround cannot be combined with cluster"):
        sdk.Recipe.from_dict({"cluster": {"clusters": 16}, "quantize": {"mode": "int8", "rounding": "adaround"}})


def test_mixed_precision_from_adaround_gives_layers_kept_float_their_float_weights(tmp_path):
    """The broken conv2 is ranked first (by its own error with AdaRound's grid); kept float, it gets back its
    float weights and source bias, in place of the rounded ones."""
    import torch

    from device_runtime.tflite_format import read_model
    from tests.test_ptq_layers import _broken_torch_net

    net = _broken_torch_net()
    calib = np.random.default_rng(0).random((80, 3, 12, 12), np.float32)
    result = sdk.convert(net, tmp_path / "t.tflite", {"quantize": {"mode": "int8", "min_cosine": 0.9999,
                                                                   "rounding": "adaround",
                                                                   "rounding_iterations": 200}},
                         example_input=torch.zeros(1, 3, 12, 12), calib_data=calib)
    record = result.report.mixed_precision
    assert any(note.startswith("adaround: 3 layer(s) rounded") for note in result.report.notes)
    assert record.met and record.kept[0] == "conv2"
    model = read_model(result.path.read_bytes())
    floats = [np.sort(model.constant(t), axis=None) for t in model.main.tensors
              if t.dtype_name == "float32" and model.constant(t) is not None]
    for source in (net.conv2.weight, net.conv2.bias):
        expected = np.sort(source.detach().numpy(), axis=None)
        assert any(f.shape == expected.shape and np.array_equal(f, expected) for f in floats)
