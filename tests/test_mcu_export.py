"""Microcontroller export: TFLM vs TFLite outputs, compiled C helpers vs Python, the measured arena.

The real TFLite Micro headers are not installed here, so model_ops.h and
example_main.cc compile against stubs in tests/mcu_stubs (they check syntax,
linking and the op count N); the TFLM numbers come from the tflite-micro
Python interpreter.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from converters import _tf
from converters.targets.mcu import BOARDS, McuExport, export_mcu
from converters.targets.mcu.export import TargetError, run_tflm
from converters.recipe import QuantizeSettings
from converters.targets.tflite.convert import to_tflite
from device_runtime import Model
from device_runtime.postprocess import top_k
from device_runtime.tflite_format import read_model
from sdk import convert

STUBS = Path(__file__).parent / "mcu_stubs"
needs_compiler = pytest.mark.skipif(not (shutil.which("gcc") and shutil.which("g++")), reason="no gcc/g++")


@pytest.fixture(scope="module")
def digits_int8(digits, digits_model_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("mcu") / "digits_int8.tflite"
    convert(digits_model_path, out, {"quantize": {"mode": "int8", "io_type": "int8"}}, calib_data=digits.x_train)
    return out


@pytest.fixture(scope="module")
def keyword_spotter(tmp_path_factory):
    """A 1-D audio keyword-spotting-style model: 1 s of 8 kHz audio -> 4 keywords."""
    keras = _tf.keras()
    keras.utils.set_random_seed(0)
    net = keras.Sequential([
        keras.layers.Input((8000, 1)),
        keras.layers.Conv1D(8, 80, strides=16, activation="relu"),
        keras.layers.Conv1D(16, 3, strides=2, activation="relu"),
        keras.layers.MaxPooling1D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(4, activation="softmax")])
    calib = np.random.default_rng(0).uniform(-1, 1, (32, 8000, 1)).astype(np.float32)
    out = tmp_path_factory.mktemp("kws") / "kws.tflite"
    out.write_bytes(to_tflite(net, QuantizeSettings(mode="int8", io_type="int8"), calib))
    return out


@pytest.mark.parametrize("which", ["digits_int8", "keyword_spotter"])
def test_tflm_outputs_equal_tflite(request, which, digits):
    path = request.getfixturevalue(which)
    model = Model(path)
    spec = model.inputs[0]
    if which == "digits_int8":
        x = digits.x_test[:50]
    else:
        x = np.random.default_rng(1).uniform(-1, 1, (20, 8000, 1)).astype(np.float32)
    q = spec.quantize(x)
    lite = model.run({spec.name: q}, raw=True)[model.outputs[0].name]
    micro = run_tflm(path.read_bytes(), q).outputs
    assert micro.dtype == lite.dtype
    assert np.abs(micro.astype(int) - lite.astype(int)).max() <= 1  # exact or one quantization step


def test_export_writes_project_and_summary(digits_int8, tmp_path):
    result = export_mcu(digits_int8, tmp_path / "out", board="cortex-m4-256k", labels=[str(i) for i in range(10)])
    assert result.files == ["example_main.cc", "model_data.cc", "model_data.h", "model_io.c", "model_io.h",
                            "model_ops.h", "model_settings.h"]
    assert result.fits and result.model_bytes == digits_int8.stat().st_size
    assert result.ops == ["CONV_2D", "FULLY_CONNECTED", "MAX_POOL_2D", "RESHAPE", "SOFTMAX"]
    ops = (tmp_path / "out" / "model_ops.h").read_text()
    assert "MicroMutableOpResolver<kModelOpCount>" in ops and "constexpr int kModelOpCount = 5;" in ops
    assert "AllOpsResolver" not in ops
    data = (tmp_path / "out" / "model_data.cc").read_text()
    assert "alignas(16) const unsigned char g_model_data[]" in data
    assert f"g_model_data_len = {result.model_bytes};" in data
    settings = (tmp_path / "out" / "model_settings.h").read_text()
    assert f"#define MODEL_ARENA_SIZE {result.arena_bytes}" in settings and '"9"' in settings
    assert "fits" in result.render()


def test_reported_arena_is_what_tflm_needs(digits_int8, tmp_path):
    result = export_mcu(digits_int8, tmp_path / "out")
    assert result.arena_margin_bytes >= 1024 and result.arena_bytes % 16 == 0
    code = ("import sys, numpy as np\n"
            "from tflite_micro.python.tflite_micro import runtime as tflm\n"
            "data = open(sys.argv[1], 'rb').read()\n"
            "for size in map(int, sys.argv[2:]):\n"
            "    try:\n"
            "        it = tflm.Interpreter.from_bytes(data, arena_size=size)\n"
            "        it.set_input(np.zeros((1, 8, 8, 1), np.int8), 0); it.invoke(); print('ok')\n"
            "    except RuntimeError:\n"
            "        print('fail')\n")
    too_small = result.arena_bytes - result.arena_margin_bytes - 1024
    done = subprocess.run([sys.executable, "-c", code, str(digits_int8), str(result.arena_bytes),
                           str(result.arena_min_bytes), str(too_small)], capture_output=True, text=True)
    assert done.stdout.split() == ["ok", "ok", "fail"], done.stderr[-500:]


@needs_compiler
def test_generated_files_compile_and_c_helpers_match_python(digits_int8, digits, tmp_path):
    out = tmp_path / "out"
    export_mcu(digits_int8, out, labels=[str(i) for i in range(10)])
    _compile_and_match_python(out, tmp_path, Model(digits_int8), digits.x_test[:40])


def _compile_and_match_python(out: Path, tmp_path: Path, model: Model, x: np.ndarray) -> None:
    """Compile the exported files with -Werror, run example_main and the op check, and feed the compiled
    C helpers the inputs and the interpreter's outputs: quantized inputs and top-1/top-3 equal Python's."""
    flags = ["-Wall", "-Wextra", "-Werror", f"-I{out}", f"-I{STUBS}"]
    build = [
        ["gcc", "-std=c99", *flags, "-c", str(out / "model_io.c"), "-o", str(tmp_path / "model_io.o")],
        ["g++", "-std=c++17", *flags, "-c", str(out / "model_data.cc"), "-o", str(tmp_path / "model_data.o")],
        ["g++", "-std=c++17", *flags, str(out / "example_main.cc"), str(tmp_path / "model_data.o"),
         str(tmp_path / "model_io.o"), "-o", str(tmp_path / "example")],
    ]
    (tmp_path / "ops_check.cc").write_text(
        '#include "model_ops.h"\nint main() { ModelOpResolver r;\n'
        "  if (RegisterModelOps(r) != kTfLiteOk) return 1;\n"
        "  return r.registered == kModelOpCount ? 0 : 2; }\n")
    build.append(["g++", "-std=c++17", *flags, str(tmp_path / "ops_check.cc"), "-o", str(tmp_path / "ops_check")])
    (tmp_path / "harness.c").write_text(  # scores are read as floats: exact for int8 values and for floats
        '#include <stdio.h>\n#include "model_io.h"\n#include "model_settings.h"\n'
        "int main(void) {\n"
        "  static float x[MODEL_INPUT_SIZE]; static model_input_t q[MODEL_INPUT_SIZE];\n"
        "  static model_output_t s[MODEL_OUTPUT_SIZE]; size_t top[3];\n"
        "  for (;;) {\n"
        "    for (int i = 0; i < MODEL_INPUT_SIZE; ++i) if (scanf(\"%f\", &x[i]) != 1) return 0;\n"
        "    for (int i = 0; i < MODEL_OUTPUT_SIZE; ++i) { float v; if (scanf(\"%f\", &v) != 1) return 1; s[i] = (model_output_t)v; }\n"
        "    model_quantize_input(x, q, MODEL_INPUT_SIZE);\n"
        "    for (int i = 0; i < MODEL_INPUT_SIZE; ++i) printf(\"%.9g \", (double)q[i]);\n"
        "    model_top_k(s, MODEL_OUTPUT_SIZE, 3, top);\n"
        "    printf(\"| %zu | %zu %zu %zu\\n\", model_argmax(s, MODEL_OUTPUT_SIZE), top[0], top[1], top[2]);\n"
        "  }\n}\n")
    build.append(["gcc", "-std=c99", *flags, str(tmp_path / "harness.c"), str(tmp_path / "model_io.o"),
                  "-lm", "-o", str(tmp_path / "harness")])
    for command in build:
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, (command, done.stderr)
    assert subprocess.run([str(tmp_path / "ops_check")]).returncode == 0
    assert subprocess.run([str(tmp_path / "example")], capture_output=True).returncode == 0

    spec, out_spec = model.inputs[0], model.outputs[0]
    x = x.astype(np.float32)
    stored = spec.quantize(x) if spec.quantized else x
    raw = model.run({spec.name: stored}, raw=True)[out_spec.name]
    feed = "\n".join(" ".join(f"{v:.9g}" for v in xi.reshape(-1)) + "\n" + " ".join(f"{v:.9g}" for v in ri)
                     for xi, ri in zip(x, raw))
    done = subprocess.run([str(tmp_path / "harness")], input=feed, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    probs = out_spec.to_float(raw)
    for line, si, pi in zip(done.stdout.splitlines(), stored, probs):
        q_text, argmax_text, top_text = line.split("|")
        np.testing.assert_array_equal(np.array(q_text.split(), np.float32), si.reshape(-1).astype(np.float32))
        assert int(argmax_text) == int(pi.argmax())
        assert [int(v) for v in top_text.split()] == [c.index for c in top_k(pi, 3)]


@pytest.fixture(scope="module")
def digits_float(digits_model_path, digits, tmp_path_factory):
    """The digits CNN all float, and with int8 ops but float input and output (the converter's default I/O)."""
    folder = tmp_path_factory.mktemp("mcu_float")
    return {"float": convert(digits_model_path, folder / "float.tflite").path,
            "int8 ops, float io": convert(digits_model_path, folder / "int8_float_io.tflite",
                                          {"quantize": {"mode": "int8"}}, calib_data=digits.x_train).path}


@needs_compiler
@pytest.mark.parametrize("which", ["float", "int8 ops, float io"])
def test_allow_float_exports_float_models_that_compile_and_run(digits_float, digits, tmp_path, which):
    """--allow-float ended in "internal error (KeyError): 'float'" whatever the model: model_io had no float
    case. A float input is now copied (no quantization), and a float output read as it is."""
    from click.testing import CliRunner

    from sdk.cli import main

    path, out = digits_float[which], tmp_path / "fw"
    done = CliRunner().invoke(main, ["export", "mcu", str(path), "-o", str(out), "--allow-float"])
    assert done.exit_code == 0, done.output
    assert "note:  float inputs/outputs" in done.stdout
    assert ("note:  exported with float ops" in done.stdout) == (which == "float")
    io_header = (out / "model_io.h").read_text()
    assert "typedef float model_input_t;" in io_header and "typedef float model_output_t;" in io_header
    assert "#define MODEL_INPUT_TYPE kTfLiteFloat32" in (out / "model_settings.h").read_text()
    model, x = Model(path), digits.x_test[:20].astype(np.float32)
    micro = run_tflm(path.read_bytes(), x).outputs  # what the exported model computes on TFLite Micro
    np.testing.assert_allclose(micro, model(x), atol=1e-5)
    _compile_and_match_python(out, tmp_path, model, x)


def test_float_models_and_missing_kernels_are_refused(digits_model_path, tmp_path):
    float_model = convert(digits_model_path, tmp_path / "float.tflite").path
    with pytest.raises(TargetError, match=r"ops computing in float: .*FULLY_CONNECTED x2.*--quantize int8"):
        export_mcu(float_model, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    tf = _tf.tensorflow()
    fn = tf.function(lambda x: tf.math.atan2(x, x + 1.0)).get_concrete_function(tf.TensorSpec((1, 8), tf.float32))
    atan = tmp_path / "atan.tflite"
    atan.write_bytes(tf.lite.TFLiteConverter.from_concrete_functions([fn]).convert())
    assert "ATAN2" in read_model(atan.read_bytes()).ops_used()
    with pytest.raises(TargetError, match="TFLite Micro has no kernels for ATAN2"):
        export_mcu(atan, tmp_path / "out2", allow_float=True)


@pytest.mark.parametrize("logit_scale, crashes", [(1e-7, True), (4e-7, False)])
def test_a_collapsed_softmax_input_is_named_instead_of_a_bare_crash(tmp_path, logit_scale, crashes):
    """TFLite Micro aborts (SIGABRT, no message) when a softmax's int8 input scale is <= 2^-26, as an
    untrained model's near-constant logits give; the export names the tensor and the fix instead."""
    keras = _tf.keras()
    keras.utils.set_random_seed(0)
    weights = keras.initializers.RandomNormal(stddev=logit_scale)
    net = keras.Sequential([keras.layers.Input((8, 8, 1)), keras.layers.Flatten(),
                            keras.layers.Dense(3, kernel_initializer=weights), keras.layers.Softmax()])
    path = tmp_path / "flat.tflite"
    path.write_bytes(to_tflite(net, QuantizeSettings(mode="int8", io_type="int8"),
                               np.random.default_rng(0).random((16, 8, 8, 1), dtype=np.float32)))
    graph = read_model(path.read_bytes()).main
    softmax = next(op for op in graph.operators if op.op_name == "SOFTMAX")
    scale = float(graph.tensors[softmax.inputs[0]].quantization.scale[0])
    assert (scale <= 2.0 ** -26) == crashes, scale  # each case sits on its side of the limit
    if not crashes:
        assert export_mcu(path, tmp_path / "out").ops == ["FULLY_CONNECTED", "RESHAPE", "SOFTMAX"]
        return
    with pytest.raises(TargetError, match=r"crashed \(SIGABRT\).*the SOFTMAX input '.*' has int8 scale "
                                          r".*calibrate with representative inputs"):
        export_mcu(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_export_mcu(digits_int8, tmp_path):
    from click.testing import CliRunner

    from sdk.cli import main

    runner = CliRunner()
    ok = runner.invoke(main, ["export", "mcu", str(digits_int8), "-o", str(tmp_path / "o"), "--board", "cortex-m0-32k"])
    assert ok.exit_code == 0, ok.output
    assert "board: cortex-m0-32k" in ok.stdout and ": fits (RAM 12" in ok.stdout  # 12 KiB arena, 196 KiB flash
    again = runner.invoke(main, ["export", "mcu", str(digits_int8), "-o", str(tmp_path / "o")])
    assert again.exit_code == 2 and "is not empty; pass --force" in again.stderr
    bad = runner.invoke(main, ["export", "mcu", str(digits_int8), "-o", str(tmp_path / "p"), "--board", "esp32"])
    assert bad.exit_code == 2 and "did you mean 'esp32-s3'" in bad.stderr


def _refused(result, message: str) -> None:
    """Exit 2, exactly one stderr line starting "error: " that contains ``message``, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0], lines[0]
    assert "Traceback" not in result.output


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def no_tflm(monkeypatch):
    """Fail the test if TFLite Micro is asked to run: a check came after the work."""
    def refuse(*_):
        raise AssertionError("run_tflm was called before the inputs were checked")
    monkeypatch.setattr("converters.targets.mcu.export.run_tflm", refuse)


def test_labels_that_do_not_fit_are_refused_before_any_work(digits_int8, tmp_path, no_tflm):
    """3 labels for 10 classes exited 0 (a label table example_main.cc reads past its end), while
    export android and metadata add refused the same file; blank lines shifted names silently."""
    from click.testing import CliRunner

    from sdk.cli import main

    out = tmp_path / "fw"
    cases = {"three.txt": ("a\nb\nc\n", "the model scores 10 classes but there are 3 labels in "),
             "blank.txt": ("0\n1\n\n2\n3\n4\n5\n6\n7\n8\n", "blank.txt line 3 is empty, which would shift"),
             "empty.txt": ("\n\n", "empty.txt has no labels; give one label per class"),
             "latin1.txt": (None, "latin1.txt is not UTF-8 text (byte 0xe9 at offset 1); save it as UTF-8"),
             "missing.txt": (False, "cannot read labels file ")}
    for name, (text, message) in cases.items():
        if text is None:
            (tmp_path / name).write_bytes("z\u00e9ro\n".encode("latin-1"))
        elif text is not False:
            (tmp_path / name).write_text(text)
        result = CliRunner().invoke(main, ["export", "mcu", str(digits_int8), "-o", str(out), "--labels",
                                           str(tmp_path / name)])
        _refused(result, message)
        assert not out.exists()
    ok = tmp_path / "ok.txt"  # a byte-order mark and trailing blank lines are fine
    ok.write_text("\ufeff" + "\n".join(f"digit {i}" for i in range(10)) + "\n\n\n", encoding="utf-8")
    from converters.labels import read_labels

    assert read_labels(ok, 10) == [f"digit {i}" for i in range(10)]


def test_output_folder_is_checked_before_the_model(digits_float, tmp_path, no_tflm):
    """A non-empty folder without --force is refused first, before the model is read, checked or run."""
    from click.testing import CliRunner

    from sdk.cli import main

    out = tmp_path / "fw"
    out.mkdir()
    (out / "model_data.h").write_text("keep me")
    for model in (digits_float["float"], tmp_path / "no_such_model.tflite"):
        _refused(CliRunner().invoke(main, ["export", "mcu", str(model), "-o", str(out)]),
                 f"{out} is not empty; pass --force to overwrite its files")
    assert _tree(out) == {"model_data.h": b"keep me"}


@pytest.mark.parametrize("existing", [False, True])
def test_a_full_disk_leaves_the_output_folder_as_it_was(digits_int8, tmp_path, monkeypatch, existing):
    """The files were written one by one: a full disk at the third left model_data.h and model_data.cc."""
    import errno
    import os

    from click.testing import CliRunner

    from sdk.cli import main

    out = tmp_path / "fw" / "model"
    if existing:
        out.mkdir(parents=True)
        (out / "model_data.h").write_text("old header")
        (out / "notes.txt").write_text("mine")
    before = _tree(tmp_path)
    real_fsync, calls = os.fsync, []

    def fsync(fd):  # where a full disk shows itself: the data reaches the disk
        calls.append(fd)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    result = CliRunner().invoke(main, ["export", "mcu", str(digits_int8), "-o", str(out), "--force"])
    _refused(result, f"cannot write {out / 'model_ops.h'}: No space left on device")
    assert _tree(tmp_path) == before
    assert sorted(p.name for p in tmp_path.rglob("*")) == (["fw", "model", "model_data.h", "notes.txt"]
                                                          if existing else [])
    monkeypatch.setattr(os, "fsync", real_fsync)
    done = CliRunner().invoke(main, ["export", "mcu", str(digits_int8), "-o", str(out), "--force"])
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in out.iterdir()) == sorted(["example_main.cc", "model_data.cc", "model_data.h",
                                                            "model_io.c", "model_io.h", "model_ops.h",
                                                            "model_settings.h"] + (["notes.txt"] if existing else []))
    assert not list(tmp_path.rglob(".*"))


def test_board_fit_verdict():
    board = BOARDS["cortex-m0-32k"]
    too_big = McuExport("out", [], model_bytes=100_000, arena_bytes=40_000, arena_min_bytes=38_000,
                        arena_margin_bytes=2_000, ops=["CONV_2D"], board=board)
    assert too_big.fits is False and "does NOT fit (RAM 40000/32768" in too_big.render()
    assert McuExport("out", [], 100_000, 30_000, 28_000, 2_000, ["CONV_2D"], board).fits is True
    assert McuExport("out", [], 100_000, 30_000, 28_000, 2_000, ["CONV_2D"], None).fits is None


@pytest.mark.parametrize("op, method", [
    ("CONV_2D", "AddConv2D"), ("MAX_POOL_2D", "AddMaxPool2D"), ("DEPTHWISE_CONV_2D", "AddDepthwiseConv2D"),
    ("FULLY_CONNECTED", "AddFullyConnected"), ("RELU6", "AddRelu6"), ("EXPAND_DIMS", "AddExpandDims"),
    ("BATCH_TO_SPACE_ND", "AddBatchToSpaceNd"), ("UNIDIRECTIONAL_SEQUENCE_LSTM", "AddUnidirectionalSequenceLSTM")])
def test_resolver_method_names_match_tflite_micro(op, method):
    from converters.targets.mcu.codegen import resolver_method

    assert resolver_method(op) == method


def test_convert_with_target_mcu(digits_npz, digits_model_path, tmp_path):
    from click.testing import CliRunner

    from sdk.cli import main

    train, _ = digits_npz
    runner = CliRunner()
    refused = runner.invoke(main, ["convert", str(digits_model_path), "-o", str(tmp_path / "f.tflite"),
                                   "--target", "mcu"])
    assert refused.exit_code == 2 and "--target mcu needs a full-integer model" in refused.stderr
    done = runner.invoke(main, ["convert", str(digits_model_path), "-o", str(tmp_path / "m.tflite"), "--quantize",
                                "int8", "--io-type", "int8", "--calib", str(train), "--target", "mcu",
                                "--board", "rp2040"])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "m_mcu" / "model_data.cc").exists() and "board: rp2040" in done.stdout
    assert "recipe: quantize int8 (io int8)" in (tmp_path / "m_mcu" / "model_data.cc").read_text()
