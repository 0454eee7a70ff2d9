"""Per-layer error report and automatic mixed precision (#24), on small models built here with one layer made
to break: huge weights on an input channel that is always zero do nothing in float, but set that layer's int8
weight scales so coarse that its other weights round away."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import sdk
from converters.errors import RecipeError
from sdk.cli import main

OUTLIER = 100.0  # times the layer's largest weight


def _broken_keras_model(keras=None):
    from converters import _tf

    keras = keras or _tf.keras()
    keras.utils.set_random_seed(0)
    inp = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv_a")(inp)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv_b")(x)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv_c")(x)
    x = keras.layers.Flatten(name="flat")(x)
    model = keras.Model(inp, keras.layers.Dense(10, name="fc")(x))
    w, b = model.get_layer("conv_a").get_weights()
    w[..., 0], b[0] = 0.0, -1.0  # channel 0 of conv_a is always 0 after its ReLU
    model.get_layer("conv_a").set_weights([w, b])
    w, b = model.get_layer("conv_b").get_weights()
    w[1, 1, 0, :] = OUTLIER * np.abs(w).max()  # conv_b's weights on that dead channel
    model.get_layer("conv_b").set_weights([w, b])
    return model


def _broken_torch_net():
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 8, 3)
            self.fc = torch.nn.Linear(8 * 8 * 8, 10)

        def forward(self, x):
            x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
            return self.fc(x.flatten(1))

    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        net.conv1.weight[0], net.conv1.bias[0] = 0.0, -1.0
        net.conv2.weight[:, 0, 1, 1] = OUTLIER * net.conv2.weight.abs().max()
    return net


@pytest.fixture(scope="module")
def calib():
    return np.random.default_rng(0).random((80, 12, 12, 3), np.float32)


def test_per_layer_report_names_the_broken_layer_and_inspect_compare_agrees(calib, tmp_path):
    from converters.recipe import QuantizeSettings
    from converters.targets.tflite.convert import to_tflite

    model = _broken_keras_model()
    # bias correction off: it moves conv_b's mean error into its bias (SNR 8.1 -> 11.8 dB); this test is about the
    # report naming the broken layer
    result = sdk.convert(model, tmp_path / "q.tflite", {"quantize": {"mode": "int8", "bias_correction": False}},
                         calib_data=calib)
    report = result.report
    rows = {r.layer: r for r in report.layer_errors.rows if r.layer}
    assert set(rows) == {"conv_a", "conv_b", "conv_c", "flat", "fc"}
    assert report.layer_errors.worst(1)[0].layer == "conv_b"
    assert rows["conv_a"].snr_db >= 35 and rows["conv_b"].snr_db <= 10  # measured: 44.6 and 8.1 dB
    assert rows["conv_b"].added_db <= 10 and rows["conv_b"].cosine < 0.95  # measured: 8.1 dB, 0.930
    assert min(r.added_db for r in report.layer_errors.rows if r.layer != "conv_b") >= 12
    assert report.layer_errors.unpaired_quantized == report.layer_errors.unpaired_float == 0
    assert report.fidelity.cosine < 0.99
    assert report.warnings and report.warnings[0].startswith(f"output cosine {report.fidelity.cosine:.4f} is "
                                                               "below 0.99")
    assert "conv_b (" in report.warnings[0].split("adding most error: ")[1].split(",")[0]
    saved = json.loads(result.report_path.read_text())
    assert saved["layer_errors"]["worst"][0] == "conv_b" and saved["warnings"] == report.warnings
    assert "warning: output cosine" in report.render() and "<- worst" in report.render()

    (tmp_path / "f.tflite").write_bytes(to_tflite(model, QuantizeSettings(mode="none")))
    np.save(tmp_path / "x.npy", calib[:20])
    cli = CliRunner().invoke(main, ["inspect", str(result.path), "--compare", str(tmp_path / "f.tflite"),
                                    "--data", str(tmp_path / "x.npy"), "--samples", "8", "--json"])
    assert cli.exit_code == 0, cli.output
    compared = json.loads(cli.stdout)
    assert compared["layers"]["samples"] == 8 and compared["fidelity"]["samples"] == 20
    by_op = {r["op_index"]: r for r in compared["layers"]["rows"]}
    for row in report.layer_errors.rows:  # the same pairs as the report, to within sampling (8 vs 16 samples)
        assert abs(by_op[row.op_index]["snr_db"] - row.snr_db) < 3
    assert compared["warnings"][0].startswith("output cosine")
    text = CliRunner().invoke(main, ["inspect", str(result.path), "--compare", str(tmp_path / "f.tflite"),
                                     "--data", str(tmp_path / "x.npy")])
    assert text.exit_code == 0 and "SNR dB" in text.stdout and "conv_b" in text.stdout
    missing = CliRunner().invoke(main, ["inspect", str(result.path), "--compare", str(tmp_path / "f.tflite")])
    assert missing.exit_code == 2
    assert missing.stderr.strip() == ("error: --compare needs --data DATA: the per-layer comparison runs both files "
                                      "on the data")


def test_automatic_mixed_precision_keeps_exactly_the_broken_layer_float(calib, tmp_path):
    # bias correction off, as on the PyTorch route below: this test is about the search
    result = sdk.convert(_broken_keras_model(), tmp_path / "mp.tflite", {"quantize": {"mode": "int8",
                                                                                     "min_cosine": 0.999,
                                                                                     "bias_correction": False}},
                         calib_data=calib)
    report = result.report
    record = report.mixed_precision
    assert record.met and record.kept == ["conv_b"]
    assert record.steps[0].cosine < 0.99 and record.steps[1].cosine >= 0.999
    # (the in-memory model's Dense op is named StatefulPartitionedCall in the file)
    assert [w.dtype for w in report.compressed.weights] == ["int8", "float32", "int8", "int8"]
    assert [w.layer for w in report.compressed.weights][:3] == ["conv_a", "conv_b", "conv_c"]
    # conv_b holds 3x3x8x8 = 576 weights: float32 costs 3 bytes more per weight than int8, plus its QUANTIZE ops
    assert 3 * 576 <= record.size_cost <= 3 * 576 + 400
    assert report.fidelity.cosine >= 0.999 and not report.warnings
    assert "automatic mixed precision (target cosine >= 0.999" in report.render()


def test_automatic_mixed_precision_on_the_pytorch_route(tmp_path):
    import torch

    calib = np.random.default_rng(0).random((80, 3, 12, 12), np.float32)
    # bias correction off: it lifts the all-int8 cosine above 0.99 here, and this test is about the search
    recipe = {"quantize": {"mode": "int8", "min_cosine": 0.999, "bias_correction": False}}
    result = sdk.convert(_broken_torch_net(), tmp_path / "t.tflite", recipe, example_input=torch.zeros(1, 3, 12, 12),
                         calib_data=calib)
    record = result.report.mixed_precision
    assert record.steps[0].cosine < 0.99  # all int8: the broken layer ruins it
    assert record.met and record.kept == ["conv2"]
    assert {w.layer: w.dtype for w in result.report.compressed.weights} == {
        "conv1": "int8", "conv2": "float32", "fc": "int8"}
    assert result.report.fidelity.cosine >= 0.999
    torch.onnx.export(_broken_torch_net(), torch.zeros(1, 3, 12, 12), tmp_path / "t.onnx", input_names=["x"],
                      dynamo=False)
    onnx_record = sdk.convert(tmp_path / "t.onnx", tmp_path / "o.tflite", recipe,
                              calib_data=calib).report.mixed_precision
    assert onnx_record.steps[0].cosine < 0.99 and onnx_record.met and onnx_record.kept == ["conv2"]


def test_fidelity_targets_are_checked_before_any_work(tmp_path):
    with pytest.raises(RecipeError) as err:
        sdk.Recipe.from_dict({"quantize": {"mode": "dynamic", "min_cosine": 0.99}})
    assert str(err.value) == ("quantize.min_cosine/min_agreement (automatic mixed precision) keep layers float under "
                              "int8; set quantize.mode int8 (got dynamic)")
    with pytest.raises(RecipeError, match=r"quantize.min_cosine must be a number in \(0, 1\], e.g. 0.99; got 1.5"):
        sdk.Recipe.from_dict({"quantize": {"mode": "int8", "min_cosine": 1.5}})
    with pytest.raises(RecipeError, match=r"min_agreement must be a percentage in \(0, 100\], e.g. 95; got 0"):
        sdk.Recipe.from_dict({"quantize": {"mode": "int8", "min_agreement": 0}})
    cli = CliRunner().invoke(main, ["convert", "nothing.h5", "-o", str(tmp_path / "m.tflite"), "--quantize",
                                    "float16", "--min-agreement", "95"])
    assert cli.exit_code == 2 and cli.stderr.startswith("error: quantize.min_cosine/min_agreement")
    assert not list(tmp_path.iterdir())


def test_an_all_zero_output_is_not_a_perfect_cosine():
    """compare() gave cosine 1.0 when the quantized output was all zeros (measured on a broken int8 model)."""
    from converters.verify.fidelity import compare

    ref = np.array([[0.2, -0.1, 0.3], [0.0, 0.0, 0.0]], np.float32)
    fid = compare(ref, np.zeros_like(ref), None, "x")
    assert fid.cosine == 0.5  # sample 1: 0 (zeros vs signal); sample 2: 1 (zeros vs zeros)


def _rounding_net():
    """Two convs whose small weights (0.38 of an int8 step, all positive) round to zero under int8: the
    output's mean shifts, which bias correction is for. Their zero biases are one shared ONNX initializer."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 8, 3)
            self.fc = torch.nn.Linear(8 * 8 * 8, 10)

        def forward(self, x):
            return self.fc(torch.relu(self.conv2(torch.relu(self.conv1(x)))).flatten(1))

    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        for conv in (net.conv1, net.conv2):
            weights = torch.full_like(conv.weight, 0.38 / 127)
            weights[:, 0, 1, 1] = 1.0
            conv.weight.copy_(weights)
            conv.bias.fill_(0.0)
    return net


def test_bias_correction_cuts_int8_error_and_leaves_the_float_reference(tmp_path):
    """Measured: mean abs error 0.048 -> 0.012, conv1 SNR 23.9 -> 42.2 dB. Before each layer got its own
    bias, the shared zero bias took both layers' corrections (error 0.115 the other way)."""
    import torch

    net, example = _rounding_net(), torch.zeros(1, 3, 12, 12)
    calib = np.random.default_rng(0).random((96, 3, 12, 12), np.float32)
    plain = sdk.convert(net, tmp_path / "p.tflite", {"quantize": {"mode": "int8", "bias_correction": False}},
                        example_input=example, calib_data=calib).report
    fixed = sdk.convert(net, tmp_path / "c.tflite", {"quantize": {"mode": "int8"}},  # on by default (auto)
                        example_input=example, calib_data=calib).report
    assert fixed.fidelity.mean_abs_error <= 0.35 * plain.fidelity.mean_abs_error
    snr = {r.layer: r.snr_db for r in fixed.layer_errors.rows if r.layer}
    before = {r.layer: r.snr_db for r in plain.layer_errors.rows if r.layer}
    assert snr["conv1"] >= before["conv1"] + 10 and snr["conv2"] >= before["conv2"] + 10
    assert fixed.float_fidelity.max_abs_error < 1e-5  # the float file (and the layer reference) is uncorrected
    assert "bias correction: 3 layer(s) corrected on 77 calibration samples" in fixed.notes
    torch.onnx.export(net, example, tmp_path / "r.onnx", input_names=["x"], dynamo=False)
    onnx = sdk.convert(tmp_path / "r.onnx", tmp_path / "o.tflite", {"quantize": {"mode": "int8",
                                                                                "bias_correction": True}},
                       calib_data=calib).report
    assert onnx.fidelity.mean_abs_error <= 0.35 * plain.fidelity.mean_abs_error
    with pytest.raises(RecipeError, match="quantize.bias_correction corrects int8 weights; set quantize.mode int8 "
                                          r"or int16x8 \(got dynamic\)"):
        sdk.Recipe.from_dict({"quantize": {"mode": "dynamic", "bias_correction": True}})
    assert not any("bias correction" in note for note in plain.notes)


def test_percentile_activation_ranges_ignore_rare_calibration_outliers(tmp_path):
    """Two calibration images with one hot pixel (60, the rest in [0, 1)) set min/max ranges 60x too wide;
    percentile ranges narrow them. Measured: mean abs error 0.0137 -> 0.0052, conv1 SNR 20.6 -> 37.9 dB.
    (MSE ranges keep these: clipping two values by 59 costs more squared error than the coarse steps.)"""
    model = _small_keras_model()
    x = np.random.default_rng(0).random((160, 10, 10, 1), np.float32)
    x[3, 4, 4, 0] = x[70, 2, 7, 0] = 60.0
    reports = _range_reports(model, x, ("minmax", "percentile"), tmp_path)
    assert reports["percentile"].fidelity.mean_abs_error <= 0.5 * reports["minmax"].fidelity.mean_abs_error
    snr = {name: {r.layer: r.snr_db for r in report.layer_errors.rows} for name, report in reports.items()}
    assert snr["percentile"]["conv1"] >= snr["minmax"]["conv1"] + 10
    with pytest.raises(RecipeError, match=r"quantize.activation_range percentile sets int8 activation ranges; set "
                                          r"quantize.mode int8 \(got int16x8\)"):
        sdk.Recipe.from_dict({"quantize": {"mode": "int16x8", "activation_range": "percentile"}})
    with pytest.raises(RecipeError, match=r"quantize.activation_range must be one of minmax, percentile, mse; got "
                                          r"'mean'"):
        sdk.Recipe.from_dict({"quantize": {"mode": "int8", "activation_range": "mean"}})


def test_mse_activation_ranges_clip_heavy_tails(tmp_path):
    """MSE ranges clip a tail only where that costs less squared error than coarser steps for every value:
    a calibrated range 4x wider than the values measured is narrowed to them; on Student's t (2 degrees of
    freedom) the far tail is clipped a little. Measured on t inputs: mean abs error 0.0833 -> 0.0793."""
    from converters.techniques.activation_ranges import mse_range

    uniform = np.random.default_rng(1).random(12800).astype(np.float32)
    low, high = mse_range(uniform, 0.0, 4.0)
    assert low == 0.0 and 0.95 <= high <= 1.05
    heavy = np.random.default_rng(1).standard_t(2, 12800).astype(np.float32)
    low, high = mse_range(heavy, float(heavy.min()), float(heavy.max()))
    assert heavy.min() < low < 0 < high < heavy.max()
    x = np.random.default_rng(0).standard_t(2, (160, 10, 10, 1)).astype(np.float32)
    reports = _range_reports(_small_keras_model(), x, ("minmax", "mse"), tmp_path)
    assert reports["mse"].fidelity.mean_abs_error <= reports["minmax"].fidelity.mean_abs_error


def _small_keras_model():
    from converters import _tf

    keras = _tf.keras()
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.layers.Input((10, 10, 1)),
                             keras.layers.Conv2D(8, 3, activation="relu", name="conv1"),
                             keras.layers.Conv2D(8, 3, activation="relu", name="conv2"), keras.layers.Flatten(),
                             keras.layers.Dense(10, name="fc")])


def _range_reports(model, x: np.ndarray, methods: tuple[str, ...], tmp_path) -> dict:
    return {ranges: sdk.convert(model, tmp_path / f"{ranges}.tflite",
                                {"quantize": {"mode": "int8", "activation_range": ranges, "percentile": 99.9}},
                                calib_data=x[:128], eval_data=x[128:]).report for ranges in methods}


def test_inspect_compare_plot_and_refusals(calib, tmp_path):
    from converters.recipe import QuantizeSettings
    from converters.targets.tflite.convert import to_tflite

    model = _broken_keras_model()
    (tmp_path / "f.tflite").write_bytes(to_tflite(model, QuantizeSettings(mode="none")))
    (tmp_path / "q.tflite").write_bytes(to_tflite(model, QuantizeSettings(mode="int8"), calib))
    np.save(tmp_path / "x.npy", calib[:8])
    args = ["inspect", str(tmp_path / "q.tflite"), "--compare", str(tmp_path / "f.tflite"), "--data",
            str(tmp_path / "x.npy")]
    plotted = CliRunner().invoke(main, [*args, "--plot", str(tmp_path / "layers.png")])
    assert plotted.exit_code == 0, plotted.output
    assert (tmp_path / "layers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = CliRunner().invoke(main, [*args, "--plot", str(tmp_path / "layers.png")])
    assert again.exit_code == 2 and "--force" in again.stderr  # an existing plot is not overwritten
    alone = CliRunner().invoke(main, ["inspect", str(tmp_path / "q.tflite"), "--plot", str(tmp_path / "p.png")])
    assert alone.exit_code == 2 and alone.stderr.strip() == ("error: --plot draws the per-layer comparison; add "
                                                             "--compare FLOAT.tflite --data DATA")
    np.save(tmp_path / "wrong.npy", np.zeros((4, 5, 5, 3), np.float32))
    wrong = CliRunner().invoke(main, [*args[:-1], str(tmp_path / "wrong.npy")])
    assert wrong.exit_code == 2 and wrong.stderr.startswith("error: ") and len(wrong.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "p.png").exists()


def _wide_activation_net():
    """conv1's channel 0 is ~1000 on every input (a huge bias before the ReLU) and conv2 ignores it: one int8
    scale for that tensor rounds the other channels (~1) to a few levels, whatever layer is kept float."""
    import torch

    net = _broken_torch_net()
    with torch.no_grad():
        net.conv1.weight[0], net.conv1.bias[0] = 0.0, 1000.0
        net.conv2.weight[:, 0] = 0.0
    return net


def test_automatic_mixed_precision_widens_activations_to_int16_when_float_layers_fall_short(tmp_path, monkeypatch):
    import torch

    from converters.search import mixed_precision
    from device_runtime.tflite_format import read_model

    monkeypatch.setattr(mixed_precision, "MAX_STEPS", 1)  # one float layer, then the whole model's activations
    calib = np.random.default_rng(0).random((80, 3, 12, 12), np.float32)
    recipe = {"quantize": {"mode": "int8", "min_cosine": 0.999, "bias_correction": False, "widen_activations": True}}
    result = sdk.convert(_wide_activation_net(), tmp_path / "w.tflite", recipe, example_input=torch.zeros(1, 3, 12, 12),
                         calib_data=calib)
    record = result.report.mixed_precision
    assert [s.activations for s in record.steps] == ["int8", "int8", "int16"]
    # measured: all int8 0.8976, conv1 kept float 0.8979, int16 activations 0.99976
    assert record.steps[1].cosine < 0.9 and record.steps[2].cosine >= 0.999  # a float layer could not, int16 could
    assert record.met and record.kept == [] and record.activations == "int16"
    main_graph = read_model(result.path.read_bytes()).main
    conv_outputs = [main_graph.tensors[op.outputs[0]].dtype_name for op in main_graph.operators
                    if len(op.inputs) > 1 and main_graph.tensors[op.inputs[1]].dtype_name == "int8"]
    assert conv_outputs and set(conv_outputs) == {"int16"}  # int8 weights, int16 activations
    assert result.report.fidelity.cosine >= 0.999
    assert any("int16 activations and int8 weights in every layer" in n for n in result.report.notes)
    # opt-in (TFLite's 16x8 kernels are slow): without it the search ends unmet at one float layer
    recipe["quantize"]["widen_activations"] = False
    plain = sdk.convert(_wide_activation_net(), tmp_path / "p.tflite", recipe,
                        example_input=torch.zeros(1, 3, 12, 12), calib_data=calib).report.mixed_precision
    assert not plain.met and [s.activations for s in plain.steps] == ["int8", "int8"]
    with pytest.raises(RecipeError, match=r"^quantize.widen_activations is the last step of automatic mixed "
                                          r"precision; set quantize.min_cosine or min_agreement too"):
        sdk.Recipe.from_dict({"quantize": {"mode": "int8", "widen_activations": True}})
