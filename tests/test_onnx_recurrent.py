"""LSTM / GRU / RNN unrolled before onnx2tf (issue 21): the rewrite equals onnxruntime on every variant,
PyTorch nn.LSTM and nn.GRU convert to builtins only (float and int8 with calibration), batch-first nodes
convert, and a dynamic sequence length is refused in one line."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

import sdk
from converters.lowering.onnx_rewrites import rewrite_for_onnx2tf
from device_runtime import Model
from tests.test_cli import assert_bad_input, run
from tests.test_onnx_shapes import save, weights

RECURRENT_BUILTINS = {"FULLY_CONNECTED", "STRIDED_SLICE", "ADD", "SUB", "MUL", "LOGISTIC", "TANH", "RESHAPE",
                      "CONCATENATION", "TRANSPOSE", "QUANTIZE", "DEQUANTIZE", "BATCH_MATMUL", "SQUEEZE", "GATHER"}


def _session_run(model, x):
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"X": x})


def _node_model(op, direction, gates, hidden=4, seq=5, batch=2, size=3, **attrs):
    dirs = 2 if direction == "bidirectional" else 1
    inits = {"W": weights(dirs, gates * hidden, size, seed=1), "R": weights(dirs, gates * hidden, hidden, seed=2),
             "B": weights(dirs, 2 * gates * hidden, seed=3), "h0": weights(dirs, batch, hidden, seed=4)}
    inputs = ["X", "W", "R", "B", "", "h0"]
    outputs = ["Y", "Y_h"]
    if op == "LSTM":
        inits.update(c0=weights(dirs, batch, hidden, seed=5), P=weights(dirs, 3 * hidden, seed=6))
        inputs += ["c0", "P"]
        outputs.append("Y_c")
    node = helper.make_node(op, inputs, outputs, hidden_size=hidden, direction=direction, **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", 1, [seq, batch, size])],
                              [helper.make_tensor_value_info(o, 1, None) for o in outputs],
                              initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("op, gates, attrs", [("LSTM", 4, {}), ("LSTM", 4, {"clip": 0.7}),
                                               ("GRU", 3, {}), ("GRU", 3, {"linear_before_reset": 1}),
                                               ("RNN", 1, {"activations": ["Relu"] * 2})])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_unrolled_node_equals_onnxruntime(op, gates, attrs, direction):
    """Initial states, biases, peepholes, clip, linear_before_reset, activations: Y, Y_h (, Y_c) within 2e-6."""
    if attrs.get("activations") and direction != "bidirectional":
        attrs = {"activations": ["Relu"]}
    model = _node_model(op, direction, gates, **attrs)
    rewritten, notes = rewrite_for_onnx2tf(model)
    assert not [n for n in rewritten.graph.node if n.op_type in ("LSTM", "GRU", "RNN")]
    assert notes[0].startswith("1 recurrent node(s) unrolled into per-step MatMul/Add/Sigmoid/Tanh/Mul ops: "
                               f"{op} (5 steps)"), notes
    x = np.random.default_rng(7).standard_normal((5, 2, 3)).astype(np.float32)
    for want, got in zip(_session_run(model, x), _session_run(rewritten, x), strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=2e-6, rtol=1e-5)


class Recurrent(torch.nn.Module):
    """A batch-first LSTM into a GRU into a linear head on the last step: (1, 8, 6) -> (1, 5)."""

    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(6, 12, batch_first=True)
        self.gru = torch.nn.GRU(12, 10, batch_first=True, bidirectional=True)
        self.head = torch.nn.Linear(20, 5)

    def forward(self, x):
        y, _ = self.lstm(x)
        y, _ = self.gru(y)
        return self.head(y[:, -1])


def test_pytorch_lstm_and_gru_convert_to_builtins_float_and_int8(tmp_path):
    """nn.LSTM + bidirectional nn.GRU, seq 8: float within 1e-5 of PyTorch; int8 with calibration converts
    (TensorFlow's calibrator crashes on onnx2tf's loops) with only builtins and a measured fidelity."""
    torch.manual_seed(0)
    module = Recurrent().eval()
    x = np.random.default_rng(0).standard_normal((64, 8, 6)).astype(np.float32)
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    result = sdk.convert(module, tmp_path / "f.tflite", example_input=torch.from_numpy(x[:1]))
    got = np.stack([Model(str(result.path)).run({"x": s[None]})["output"][0] for s in x[:8]])
    np.testing.assert_allclose(got, want[:8], atol=1e-5)
    assert any("recurrent node(s) unrolled" in n and "(8 steps)" in n for n in result.report.notes)
    assert set(result.report.compressed.ops.counts) <= RECURRENT_BUILTINS, result.report.compressed.ops.counts
    np.save(tmp_path / "calib.npy", x)
    int8 = sdk.convert(module, tmp_path / "q.tflite", {"quantize": {"mode": "int8"}},
                       example_input=torch.from_numpy(x[:1]), calib_data=x, eval_data=x)
    fidelity = int8.report.fidelity
    assert set(int8.report.compressed.ops.counts) <= RECURRENT_BUILTINS, int8.report.compressed.ops.counts
    assert "FULLY_CONNECTED" in int8.report.compressed.ops.counts
    assert fidelity.cosine >= 0.98, fidelity  # measured 0.99x (see README)
    print("int8 fidelity:", fidelity)


def test_batch_first_node_converts(tmp_path):
    """layout=1 (batch first): onnxruntime has no kernel for it; the SDK runs it as layout 0 + Transposes."""
    node = helper.make_node("GRU", ["X", "W", "R"], ["Y", "Y_h"], hidden_size=4, layout=1)
    path = save(tmp_path / "bw.onnx", [node], [("X", [3, 5, 2])], [("Y", [3, 5, 1, 4]), ("Y_h", [3, 1, 4])],
                {"W": weights(1, 12, 2), "R": weights(1, 12, 4)}, opset=14)
    result = sdk.convert(path, tmp_path / "bw.tflite")
    assert result.report.float_fidelity.max_abs_error <= 1e-5
    assert any(n.startswith("1 batch-first (layout=1) recurrent node(s)") for n in result.report.notes)
    x = np.random.default_rng(3).standard_normal((3, 5, 2)).astype(np.float32)
    reference = onnx.load(str(path))
    from converters.lowering.onnx_recurrent import sequence_first_layouts

    sequence_first_layouts(reference)
    want = _session_run(reference, x)
    got = Model(str(result.path)).run({"X": x})
    np.testing.assert_allclose(got["Y"], want[0], atol=1e-5)
    np.testing.assert_allclose(got["Y_h"], want[1], atol=1e-5)


def test_dynamic_sequence_length_is_refused_unless_given(tmp_path):
    node = helper.make_node("LSTM", ["X", "W", "R"], ["", "Y_h"], hidden_size=4)
    path = save(tmp_path / "dyn.onnx", [node], [("X", ["seq", 1, 3])], [("Y_h", [1, 1, 4])],
                {"W": weights(1, 16, 3), "R": weights(1, 16, 4)})
    assert_bad_input(run("convert", path, "-o", tmp_path / "m.tflite"),
                     "LSTM node 'Y_h' has a dynamic sequence length (X shape (?,1,3)); recurrent nodes are unrolled "
                     "over a fixed number of steps: give --input-shape with the sequence length", tmp_path)
    result = sdk.convert(path, tmp_path / "m.tflite", input_shapes=[(6, 1, 3)])
    assert any("(6 steps)" in n for n in result.report.notes), result.report.notes
