"""Cross-layer equalization (#24) on a small model built to need it: the first conv's output channels have
ranges 1000x apart (so one int8 activation scale rounds the small channels away), the depthwise conv after
it undoes that in float."""

from __future__ import annotations

import numpy as np
import pytest

import sdk
from converters.errors import RecipeError

SPREAD = np.array([30.0, 0.03, 1.0, 0.05, 10.0, 0.1, 0.3, 3.0], np.float32)  # conv1's channel scales


def _spread_net():
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = torch.nn.Conv2d(3, 8, 3)
            self.dw = torch.nn.Conv2d(8, 8, 3, groups=8)
            self.pw = torch.nn.Conv2d(8, 6, 1)
            self.fc = torch.nn.Linear(6 * 8 * 8, 10)

        def forward(self, x):
            x = torch.relu(self.pw(torch.relu(self.dw(torch.relu(self.conv1(x))))))
            return self.fc(x.flatten(1))

    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        scale = torch.from_numpy(SPREAD)
        net.conv1.weight.mul_(scale[:, None, None, None])
        net.conv1.bias.mul_(scale)
        net.dw.weight.div_(scale[:, None, None, None])
    return net


def test_equalization_keeps_float_outputs_and_cuts_int8_error(tmp_path):
    """Measured: float outputs move by 2.7e-7 of their scale; int8 mean abs error 0.00326 -> 0.00035 (both
    routes)."""
    import onnxruntime as ort
    import torch

    from converters.techniques.equalization import equalize

    net, example = _spread_net(), torch.zeros(1, 3, 12, 12)
    x = np.random.default_rng(0).random((160, 3, 12, 12), np.float32)
    torch.onnx.export(net, example, tmp_path / "n.onnx", input_names=["x"], dynamo=False)
    import onnx

    source = onnx.load(str(tmp_path / "n.onnx"))
    equalized, record = equalize(source)
    assert len(record.pairs) == 2 and record.largest_scale > 10  # conv1 -> dw, dw -> pw
    run = {name: ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
           for name, model in (("before", source), ("after", equalized))}
    before, after = (np.concatenate([run[k].run(None, {"x": x[i:i + 1]})[0] for i in range(16)])
                     for k in ("before", "after"))
    assert np.abs(after - before).max() <= 1e-5 * np.abs(before).max()
    reports = {on: sdk.convert(net, tmp_path / f"{on}.tflite", {"quantize": {"mode": "int8", "equalization": on,
                                                                            "bias_correction": False}},
                               example_input=example, calib_data=x[:128], eval_data=x[128:]).report
               for on in (False, True)}
    assert reports[True].fidelity.mean_abs_error <= 0.25 * reports[False].fidelity.mean_abs_error
    assert reports[True].float_fidelity.max_abs_error < 1e-4  # the float reference is the unequalized source
    assert "cross-layer equalization: 2 conv pair(s) equalized" in " ".join(reports[True].notes)
    onnx_route = sdk.convert(tmp_path / "n.onnx", tmp_path / "o.tflite", {"quantize": {
        "mode": "int8", "equalization": True, "bias_correction": False}}, calib_data=x[:128], eval_data=x[128:])
    assert onnx_route.report.fidelity.mean_abs_error <= 0.25 * reports[False].fidelity.mean_abs_error

    with pytest.raises(RecipeError, match=r"quantize.equalization rescales weights for int8; set quantize.mode "
                                          r"int8 or int16x8 \(got dynamic\)"):
        sdk.Recipe.from_dict({"quantize": {"mode": "dynamic", "equalization": True}})
    with pytest.raises(RecipeError, match="quantize.equalization cannot be combined with float layers"):
        sdk.Recipe.from_dict({"quantize": {"mode": "int8", "equalization": True, "min_cosine": 0.99}})


def test_equalization_does_not_cross_relu6():
    """ReLU6 clips at 6: scaling a channel would move its clip, so the pair is left and counted."""
    import io

    import onnx
    import torch

    from converters.techniques.equalization import equalize

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU6(), torch.nn.Conv2d(4, 4, 3, groups=4)).eval()
    buffer = io.BytesIO()
    torch.onnx.export(net, torch.zeros(1, 3, 8, 8), buffer, input_names=["x"], dynamo=False)
    _, record = equalize(onnx.load_from_string(buffer.getvalue()))
    assert record.pairs == [] and sum(record.skipped.values()) == 1
    assert "ReLU6/Clip between" in record.summary()


def test_mixed_precision_starts_from_bias_correction_and_ranks_by_own_error(tmp_path):
    """The broken conv2 (huge weights on a dead channel) is ranked first by its own error; kept float, it gets
    back its source bias (bias correction moved conv2's int8 error into it); each step is timed."""
    import torch

    from converters.search.mixed_precision import latency_ms
    from device_runtime.tflite_format import read_model
    from tests.test_ptq_layers import _broken_torch_net

    net = _broken_torch_net()
    calib = np.random.default_rng(0).random((80, 3, 12, 12), np.float32)
    # MSE ranges too: the PyTorch route stacks calibration runs on a new axis, which the range measurement
    # once fed the interpreter as 5-D inputs (CONV_2D failed to prepare)
    result = sdk.convert(net, tmp_path / "t.tflite", {"quantize": {"mode": "int8", "min_cosine": 0.9999,
                                                                   "activation_range": "mse"}},
                         example_input=torch.zeros(1, 3, 12, 12), calib_data=calib)
    report = result.report
    record = report.mixed_precision
    assert any(note.startswith("bias correction: 3 layer(s) corrected") for note in report.notes)
    assert record.met and record.kept[0] == "conv2" and record.steps[1].layer_error > 1e-3
    assert all(step.latency_ms > 0 for step in record.steps) and record.latency_cost_ms is not None
    model = read_model(result.path.read_bytes())
    biases = [model.constant(model.main.tensors[op.inputs[2]]) for op in model.main.operators
              if len(op.inputs) > 2 and op.inputs[2] >= 0 and model.main.tensors[op.inputs[2]].dtype_name == "float32"]
    expected = net.conv2.bias.detach().numpy()
    assert any(b is not None and b.shape == expected.shape and np.allclose(b, expected, atol=1e-7) for b in biases)
    assert latency_ms(b"not a model") is None
