"""ONNX graphs of any shape (issue 21): batch > 1, rank-1 and rank-2 inputs, ConvTranspose, ops with no
TFLite builtin, and shape mismatches reported as fidelity failures; graphs built here with onnx.helper."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import sdk
from converters.errors import FidelityError
from converters.verify.fidelity import compare
from converters.targets.tflite.flex import FlexOpsError
from device_runtime import Model
from tests.test_cli import assert_bad_input, run

FLOAT_ATOL = 1e-5  # float32 .tflite vs onnxruntime on these small graphs


def save(path, nodes, inputs, outputs, weights, opset=17):
    """A checked ONNX file from nodes, (name, shape) inputs/outputs and {name: array} initializers."""
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
                              initializer=[numpy_helper.from_array(v, n) for n, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def weights(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def reference(path, x: np.ndarray) -> np.ndarray:
    """onnxruntime on one whole input, as the graph takes it."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_batch4_graph_keeps_its_batch_and_compresses(tmp_path):
    """A graph exported with batch 4 converts as batch 4 (NHWC) and prunes/clusters into the written file."""
    path = save(tmp_path / "b4.onnx", [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
                                       helper.make_node("Relu", ["c"], ["y"])],
                [("x", [4, 3, 8, 8])], [("y", [4, 16, 8, 8])], {"w": weights(16, 3, 3, 3), "b": weights(16)})
    result = sdk.convert(path, tmp_path / "b4.tflite", {"prune": {"sparsity": 0.5}, "cluster": {"clusters": 8}})
    report = result.report
    assert [i["shape"] for i in report.compressed.inputs] == [[4, 8, 8, 3]]
    assert report.float_fidelity.max_abs_error <= FLOAT_ATOL, report.float_fidelity
    conv = next(w for w in report.compressed.weights if w.op == "CONV_2D" and w.size == 16 * 3 * 3 * 3)
    assert conv.sparsity == pytest.approx(0.5, abs=0.01) and conv.unique_values <= 8 + 1, conv  # + the zero
    x = np.random.default_rng(1).random((4, 3, 8, 8), dtype=np.float32)
    float_path = sdk.convert(path, tmp_path / "f.tflite").path
    got = Model(str(float_path)).run({"x": x.transpose(0, 2, 3, 1)})["y"]
    np.testing.assert_allclose(got, reference(path, x).transpose(0, 2, 3, 1), atol=FLOAT_ATOL)


def test_rank1_and_rank2_inputs_keep_their_shapes(tmp_path):
    rank1 = save(tmp_path / "r1.onnx", [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mul", ["r", "k"], ["y"])],
                 [("x", [5])], [("y", [5])], {"k": weights(5)})
    rank2 = save(tmp_path / "r2.onnx", [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)],
                 [("x", [3, 4])], [("y", [3, 6])], {"w": weights(6, 4), "b": weights(6)})
    x1 = np.random.default_rng(2).standard_normal(5).astype(np.float32)
    x2 = np.random.default_rng(3).standard_normal((3, 4)).astype(np.float32)
    for path, x in ((rank1, x1), (rank2, x2)):
        result = sdk.convert(path, tmp_path / f"{path.stem}.tflite")
        assert [i["shape"] for i in result.report.compressed.inputs] == [list(x.shape)]
        assert result.report.float_fidelity.max_abs_error <= FLOAT_ATOL
        got = Model(str(result.path)).run({"x": x})["y"]
        np.testing.assert_allclose(got, reference(path, x), atol=FLOAT_ATOL)


def test_conv_transpose_without_kernel_shape_converts_and_compresses(tmp_path):
    """onnx2tf cannot convert a ConvTranspose that omits kernel_shape (valid ONNX); the SDK writes it in."""
    path = save(tmp_path / "ct.onnx", [helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2])],
                [("x", [1, 8, 5, 5])], [("y", [1, 16, 11, 11])], {"w": weights(8, 16, 3, 3)})
    result = sdk.convert(path, tmp_path / "ct.tflite", {"prune": {"sparsity": 0.5}, "cluster": {"clusters": 8}})
    report = result.report
    assert report.float_fidelity.max_abs_error <= FLOAT_ATOL, report.float_fidelity
    assert any("kernel_shape written into 1" in note for note in report.notes), report.notes
    kernel = next(w for w in report.compressed.weights if w.op == "TRANSPOSE_CONV")
    assert kernel.size == 8 * 16 * 3 * 3
    assert kernel.sparsity == pytest.approx(0.5, abs=0.01) and kernel.unique_values <= 8 + 1, kernel
    assert report.passes["prune"].layers and report.passes["cluster"].layers


def test_op_without_builtin_is_refused_in_one_line_and_allowed_with_allow_flex(tmp_path):
    """A 3-D MaxPool becomes TensorFlow's MaxPool3D, which TFLite runs only as a Select TF (Flex) op."""
    path = save(tmp_path / "pool3d.onnx", [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2, 2])],
                [("x", [1, 2, 4, 4, 4])], [("y", [1, 2, 3, 3, 3])], {})
    result = run("convert", path, "-o", tmp_path / "m.tflite")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert lines[0].startswith("error: no TFLite builtin for tf.MaxPool3D (ONNX MaxPool node 'y'); pass "
                               "--allow-flex"), lines[0]
    assert not (tmp_path / "m.tflite").exists()
    with pytest.raises(FlexOpsError):  # the API refuses the same way
        sdk.convert(path, tmp_path / "m.tflite")
    flex = sdk.convert(path, tmp_path / "flex.tflite", allow_flex=True)
    assert flex.report.float_fidelity.max_abs_error <= FLOAT_ATOL, flex.report.float_fidelity
    assert any(n.startswith("Select TF ops kept (--allow-flex): tf.MaxPool3D") and "Flex delegate" in n
               for n in flex.report.notes), flex.report.notes
    assert any("FlexMaxPool3D" in op for op in flex.report.compressed.ops.counts), flex.report.compressed.ops
    (tmp_path / "flex.yaml").write_text("allow_flex: true\n")  # the recipe key does what the flag does
    by_recipe = run("convert", path, "-o", tmp_path / "r.tflite", "--recipe", tmp_path / "flex.yaml")
    assert by_recipe.exit_code == 0, by_recipe.output
    assert b"FlexMaxPool3D" in (tmp_path / "r.tflite").read_bytes()
    (tmp_path / "bad.yaml").write_text("allow_flex: maybe\n")
    assert_bad_input(run("convert", path, "-o", tmp_path / "b.tflite", "--recipe", tmp_path / "bad.yaml"),
                     "allow_flex must be true or false; got 'maybe'")


def test_cubic_resize_converts_with_builtins_exactly(tmp_path):
    """onnx2tf lowers cubic Resize to ResizeBicubic (no builtin, and another kernel than ONNX's): the SDK
    writes it as two MatMuls with the node's own interpolation matrices."""
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="cubic")
    path = save(tmp_path / "cubic.onnx", [node], [("x", [1, 2, 4, 4])], [("y", [1, 2, 8, 8])],
                {"scales": np.array([1, 1, 2, 2], np.float32)})
    result = sdk.convert(path, tmp_path / "cubic.tflite")
    assert result.report.float_fidelity.max_abs_error <= FLOAT_ATOL, result.report.float_fidelity
    ops = result.report.compressed.ops.counts
    assert ops["FULLY_CONNECTED"] == 2 and not any("Flex" in op or "RESIZE" in op for op in ops), ops
    x = np.random.default_rng(5).random((1, 2, 4, 4), dtype=np.float32)
    got = Model(str(result.path)).run({"x": x.transpose(0, 2, 3, 1)})["y"]
    np.testing.assert_allclose(got, reference(path, x).transpose(0, 2, 3, 1), atol=FLOAT_ATOL)


def test_numeric_mismatch_is_a_fidelity_failure_not_a_written_model(tmp_path, monkeypatch):
    """ONNX's Clip with min > max gives max; onnx2tf's gives min: without the rewrite that fixes it (taken
    out here), exit 1 with the numbers."""
    from converters.lowering import onnx_rewrites

    monkeypatch.setattr(onnx_rewrites, "REWRITES", tuple(r for r in onnx_rewrites.REWRITES
                                                         if r[0] is not onnx_rewrites._crossed_clips))
    path = save(tmp_path / "clip.onnx", [helper.make_node("Clip", ["x", "lo", "hi"], ["y"])], [("x", [3, 4])],
                [("y", [3, 4])], {"lo": np.array(2, np.float32), "hi": np.array(1, np.float32)})
    result = run("convert", path, "-o", tmp_path / "m.tflite")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert lines[0].startswith("error: the converted model does not reproduce the source: output 'y' float32 max "
                               "abs error 1 > 0.00101 (0.001 of the output scale 1)"), lines[0]
    assert not (tmp_path / "m.tflite").exists() and not (tmp_path / "m.report.json").exists()


def test_shape_mismatch_is_reported_not_broadcast(tmp_path, monkeypatch):
    fid = compare(np.zeros((64, 3072), np.float32), np.zeros((64, 3069), np.float32), None, "random")
    assert fid.mismatch == "output shape (3069,) where the source gives (3072,)" and np.isnan(fid.max_abs_error)
    # A converted output in another layout than the route believes: a FidelityError naming both shapes.
    from converters.lowering import onnx_io

    monkeypatch.setattr(onnx_io, "output_layouts", lambda model, flags, route: {})
    path = save(tmp_path / "c.onnx", [helper.make_node("Conv", ["x", "w"], ["y"])],
                [("x", [1, 2, 6, 6])], [("y", [1, 3, 4, 4])], {"w": weights(3, 2, 3, 3)})
    with pytest.raises(FidelityError, match=r"^the converted model does not reproduce the source: output 'y' has "
                                            r"output shape \(4, 4, 3\) where the source gives \(3, 4, 4\)"):
        sdk.convert(path, tmp_path / "m.tflite")
    assert not (tmp_path / "m.tflite").exists()


def test_graphs_onnx2tf_mis_converts_are_rewritten_or_converted_in_its_layout(tmp_path):
    """Valid ONNX that onnx2tf 1.29 fails or gets wrong: a Clip without bounds (onnx2tf emits nothing),
    LayerNormalization over axes 1.. with its Mean output, exact Gelu (TFLite's GELU builtin, although
    tf.nn.gelu uses Erfc, which has none); and a rank-3 input concatenated with a rank-3 constant (right
    only in onnx2tf's layout)."""
    nodes = [helper.make_node("Clip", ["x", "", ""], ["c"]),
             helper.make_node("LayerNormalization", ["c", "scale", "bias"], ["n", "mean"], axis=1),
             helper.make_node("Gelu", ["n"], ["y"])]
    path = save(tmp_path / "mixed.onnx", nodes, [("x", [2, 3, 4])], [("y", [2, 3, 4]), ("mean", [2, 1, 1])],
                {"scale": weights(3, 4), "bias": weights(3, 4, seed=1)}, opset=20)
    concat = save(tmp_path / "concat.onnx", [helper.make_node("Concat", ["x", "k"], ["y"], axis=0)],
                  [("x", [2, 2, 2])], [("y", [4, 2, 2])], {"k": weights(2, 2, 2, seed=2)})
    for path, fired in ((path, ("Clip node(s) with neither min nor max", "LayerNormalization node(s)")),
                        (concat, ("converted in onnx2tf's channel-last layout behind a transpose",))):
        result = sdk.convert(path, tmp_path / f"{path.stem}.tflite")
        for name, fid in (result.report.output_fidelity or {"y": result.report.float_fidelity}).items():
            assert fid.max_abs_error <= 1e-3 * fid.output_scale, (name, fid)  # exact GELU builtin
        notes = " ".join(result.report.notes)
        assert all(f in notes for f in fired), (fired, result.report.notes)
        assert not any("Flex" in op for op in result.report.compressed.ops.counts)
        assert result.report.compressed.ops.counts.get("GELU", 0) == (path.stem == "mixed")
        shape = [d.dim_value for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim]
        x = np.random.default_rng(4).standard_normal(shape).astype(np.float32)
        got = Model(str(result.path)).run({"x": x})
        np.testing.assert_allclose(got["y"], reference(path, x), atol=1e-3)


def test_dynamic_dimensions_become_one_with_a_note_and_runs_follow_the_batch(tmp_path):
    """No conversion: the shape plumbing itself.  A dynamic dimension is 1 unless --input-shape; samples
    fill runs of the input's batch (wrapping around), and outputs join back into one row per sample."""
    from converters.sources.onnx import TensorSpec, fix_input_shapes, join_runs

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "H", 8])])
    notes: list[str] = []
    specs = fix_input_shapes(helper.make_model(graph), None, notes)
    assert specs == [TensorSpec("x", (1, 3, 1, 8), "float32")]
    assert notes == ["input 'x' has dynamic shape (?,3,?,8); converted with 1,3,1,8 (each dynamic dimension 1): "
                     "give --input-shape to choose"]
    assert fix_input_shapes(helper.make_model(graph), [(4, 3, 5, 8)])[0].shape == (4, 3, 5, 8)
    batch4, rank1 = TensorSpec("x", (4, 2)), TensorSpec("s", (3,))
    x = np.arange(10 * 2, dtype=np.float32).reshape(10, 2)
    runs = batch4.runs(x)
    assert [r.shape for r in runs] == [(4, 2)] * 3 and np.array_equal(runs[2][2:], x[:2])  # wrapped around
    joined = join_runs([batch4], [[r * 2, r.sum()] for r in runs], 10)
    assert np.array_equal(joined[0], x * 2) and joined[1].shape == (3,)  # per-run scalars: one row per run
    assert [r.shape for r in rank1.runs(np.zeros((5, 3)))] == [(3,)] * 5


def test_training_batchnorm_constant_concat_and_crossed_clip_convert(tmp_path):
    """Three graphs onnx2tf mis-converts, rewritten before it: a training-mode BatchNormalization (batch
    statistics and updated running statistics), a rank-4 Concat with a constant operand, Clip min > max."""
    bn = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["n", "mean", "var"], training_mode=1,
                          epsilon=1e-2)
    concat = helper.make_node("Concat", ["n", "k"], ["y"], axis=1)
    path = save(tmp_path / "bn.onnx", [bn, concat], [("x", [2, 3, 4, 5])],
                [("y", [2, 5, 4, 5]), ("mean", [3]), ("var", [3])],
                {"s": weights(3, seed=1), "b": weights(3, seed=2), "m": weights(3, seed=3),
                 "v": np.abs(weights(3, seed=4)), "k": weights(2, 2, 4, 5, seed=5)}, opset=15)
    clip = save(tmp_path / "clip.onnx", [helper.make_node("Clip", ["x", "lo", "hi"], ["y"])], [("x", [3])],
                [("y", [3])], {"lo": np.array(2, np.float32), "hi": np.array(1, np.float32)}, opset=13)
    import onnxruntime as ort

    for model, x, rewrites in ((path, weights(2, 3, 4, 5, seed=6), ("training-mode BatchNormalization", "Concat")),
                               (clip, weights(3, seed=7), ("Clip node(s) with min > max",))):
        result = sdk.convert(model, tmp_path / f"{model.stem}.tflite")
        assert all(any(r in n for n in result.report.notes) for r in rewrites), result.report.notes
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        want = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": x})))
        nhwc = x.ndim == 4  # BatchNormalization makes it an image input: NHWC in the .tflite, outputs too
        got = Model(str(result.path)).run({"x": x.transpose(0, 2, 3, 1) if nhwc else x})
        last = {r["output"] for r in result.report.io_layout if r["layout"].startswith("channels last")
                and "output" in r}
        for name, value in want.items():
            np.testing.assert_allclose(got[name], value.transpose(0, 2, 3, 1) if name in last else value,
                                       atol=FLOAT_ATOL)
