"""Defects a new user met (issue #19): each fails on the code before its fix.

Every bad input is one line on stderr, exit 2, and nothing written; accepted input does what it says.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.test_cli import assert_bad_input, run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def out(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def test_readme_mixed_precision_recipe_with_auto_sparse_export(digits_model_path, digits_npz, tmp_path, out):
    """The README's recipe crashed in the fidelity check: the sparse selective-int8 file had its outputs swapped."""
    train, test = digits_npz
    recipe = tmp_path / "r.yaml"
    recipe.write_text("prune: {sparsity: 0.75}\nquantize: {mode: int8}\nlayers:\n  fc1: {precision: float}\n")
    result = run("convert", digits_model_path, "-o", out / "r.tflite", "--recipe", recipe, "--calib", train,
                 "--eval", test, "--json")
    assert result.exit_code == 0, result.output
    import json

    report = json.loads(result.stdout)
    weights = {w["layer"]: w for w in report["compressed"]["weights"]}
    assert weights["fc1"]["dtype"] == "float32" and weights["conv1"]["dtype"] == "int8", weights
    assert abs(weights["fc1"]["sparsity"] - 0.75) < 0.01
    assert report["fidelity"]["samples"] == 360 and report["fidelity"]["cosine"] > 0.5
    assert any("not tried: mixed precision" in note for note in report["notes"])


def test_sparse_export_on_with_mixed_precision_is_refused_first(digits_model_path, digits_npz, tmp_path, out):
    train, _ = digits_npz
    recipe = tmp_path / "r.yaml"
    recipe.write_text("quantize: {mode: int8}\nsparse_export: on\nlayers:\n  fc1: {precision: float}\n")
    assert_bad_input(run("convert", digits_model_path, "-o", out / "r.tflite", "--recipe", recipe, "--calib", train),
                     "sparse_export: on cannot be combined with precision: float", out)


@pytest.mark.parametrize("word, expected", [("on", "on"), ("off", "off"), ("auto", "auto")])
def test_yaml_on_off_unquoted(tmp_path, word, expected):
    """YAML 1.1 reads on/off as booleans; the recipe documents the words."""
    from converters.recipe import Recipe

    path = tmp_path / "r.yaml"
    path.write_text(f"sparse_export: {word}\n")
    assert Recipe.load(path).sparse_export == expected


def test_flags_that_need_other_flags(digits_model_path, digits_npz, out):
    train, _ = digits_npz
    assert_bad_input(run("convert", digits_model_path, "-o", out / "m.tflite", "--board", "rp2040"),
                     "--board rp2040 applies to --target mcu", out)
    assert_bad_input(run("convert", digits_model_path, "-o", out / "m.tflite", "--prune", "0.5", "--epochs", "3"),
                     "--epochs 3 sets fine-tuning epochs, but no --finetune DATA was given", out)
    # an unknown board was refused only after the conversion had written the model and its report
    assert_bad_input(run("convert", digits_model_path, "-o", out / "m.tflite", "--quantize", "int8",
                         "--io-type", "int8", "--calib", train, "--target", "mcu", "--board", "esp8266"),
                     "unknown board 'esp8266'", out)


def test_labels_out_of_range_are_bad_input(digits, digits_model_path, tmp_path, out):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=digits.x_train, y=digits.y_train + 5)
    result = run("convert", digits_model_path, "-o", out / "m.tflite", "--prune", "0.5", "--finetune", bad,
                 "--epochs", "1", "--quiet")
    assert_bad_input(result, "does not fit the model's 10 classes; labels must be class ids 0..9", out)


def test_help_keeps_the_factory_example_and_lists_exit_130():
    text = run("convert", "--help").output
    assert "--input-shape 1,3,32,32 \\\n" in text, text
    assert "130 interrupted" in text
    for command in (("convert",), ("inspect",), ("bench",), ("export", "mcu"), ("metadata", "add"), ("sign",),
                    ("distill",)):
        shown = run(*command, "--help").output
        assert "--quiet" in shown and "--verbose" in shown and "--log-file" in shown, command


def _sdk(*args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, "-m", "sdk.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_real_process_prints_one_line_not_tensorflow_noise(digits_model_path, tmp_path):
    """TensorFlow's C++ logs (cuDNN/cuBLAS factories, cuInit, absl) start before absl is set up: no env var
    silences them, so the CLI redirects descriptor 2 while it works, and --log-file keeps them."""
    missing = _sdk("convert", tmp_path / "nope.h5", "-o", tmp_path / "m.tflite", cwd=ROOT)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [f"error: source model not found: {tmp_path / 'nope.h5'}"]
    done = _sdk("convert", digits_model_path, "-o", tmp_path / "m.tflite", "--quiet", cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr
    log = tmp_path / "tf.log"
    kept = _sdk("inspect", tmp_path / "m.tflite", "--log-file", log, cwd=ROOT)
    assert kept.returncode == 0 and kept.stderr.strip() == "", kept.stderr
    assert log.exists()
    for command in (("inspect",), ("bench", "--runs", "1", "--warmup", "0"), ("export", "mcu", "-o", tmp_path / "fw"),
                    ("verify", "--key", tmp_path / "k.pub.pem"), ("sign", "--key", tmp_path / "k.pem"),
                    ("encrypt", "--key", tmp_path / "a.key", "-o", tmp_path / "m.enc"),
                    ("metadata", "add", "-o", tmp_path / "x.tflite"),
                    ("distill", "-o", tmp_path / "s.tflite", "--data", tmp_path / "d.npy", "--keep-layers", "2")):
        result = _sdk(*command[:2] if command[0] in ("export", "metadata") else command[:1], tmp_path / "none.tflite",
                      *(command[2:] if command[0] in ("export", "metadata") else command[1:]), cwd=ROOT)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (command, result.stderr)


def test_channels_last_data_for_a_channels_first_model_gets_a_transpose_not_a_reshape():
    """x.reshape(-1, 3, 16, 16) on NHWC images keeps the count but scrambles every pixel."""
    from converters.data import Dataset, _checked
    from converters.errors import DataError

    nhwc = Dataset(np.zeros((4, 16, 16, 3), np.float32), None, "calib.npy")
    with pytest.raises(DataError, match=r"use x.transpose\(0, 3, 1, 2\)$"):
        _checked(nhwc, (3, 16, 16), "calibration")
    flat = Dataset(np.zeros((4, 64), np.float32), None, "calib.npy")
    with pytest.raises(DataError, match=r"reshape it with x.reshape\(-1, 8, 8, 1\)$"):
        _checked(flat, (8, 8, 1), "calibration")


def test_recipe_overrides_must_name_a_layer(digits_model_path, tmp_path, out):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("prune: {sparsity: 0.5}\nlayers:\n  fc9: null\n")
    assert_bad_input(run("convert", digits_model_path, "-o", out / "m.tflite", "--recipe", recipe),
                     "layers['fc9'] matches no layer of the model (did you mean 'fc1'?)", out)
    recipe.write_text("prune: {sparsity: 0.5}\nlayer_types:\n  Dence: null\n")
    assert_bad_input(run("convert", digits_model_path, "-o", out / "m.tflite", "--recipe", recipe),
                     "layer_types['Dence'] matches no layer type of the model (did you mean 'Dense'?)", out)


@pytest.fixture()
def factory(tmp_path, monkeypatch):
    (tmp_path / "zoo_factory.py").write_text(
        "from examples.torch_zoo import build\n\ndef make():\n    return build('non_square', seed=3)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "zoo_factory:make"


def test_weights_that_do_not_fit_name_the_keys(factory, tmp_path, out):
    import torch

    from examples.torch_zoo import build

    other = tmp_path / "other.pth"
    torch.save(build("unet").state_dict(), other)
    result = run("convert", factory, "--weights", other, "--input-shape", "1,3,24,40", "-o", out / "m.tflite")
    assert_bad_input(result, "weights other.pth do not fit the model: missing ", out)
    assert "unexpected " in result.stderr
    notes = tmp_path / "notes.pt"
    notes.write_text("my notes about the model\n")
    assert_bad_input(run("convert", factory, "--weights", notes, "--input-shape", "1,3,24,40", "-o", out / "m.tflite"),
                     "cannot read weights notes.pt: not a file written by torch.save", out)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("prune: {sparsity: 0.5}\nlayers:\n  features.99: null\n")
    assert_bad_input(run("convert", factory, "--recipe", recipe, "--input-shape", "1,3,24,40", "-o", out / "m.tflite"),
                     "layers['features.99'] matches no layer of the model", out)


def test_a_factory_without_weights_is_said_in_the_report(factory, out):
    import json

    result = run("convert", factory, "--input-shape", "1,3,24,40", "-o", out / "m.tflite", "--json")
    assert result.exit_code == 0, result.output
    notes = json.loads(result.stdout)["notes"]
    assert any("no --weights state dict was given: random initial weights" in n for n in notes), notes


def test_an_input_shape_the_onnx_graph_cannot_run_is_bad_input(tmp_path, out):
    """It reached onnx2tf, which failed with exit 1 and advice about --keep-nchw."""
    import torch

    from examples.torch_zoo import build

    path = tmp_path / "net.onnx"
    torch.onnx.export(build("non_square"), (torch.rand(1, 3, 24, 40),), str(path), opset_version=17,
                      input_names=["image"], dynamic_axes={"image": {2: "h", 3: "w"}}, dynamo=False)
    assert_bad_input(run("convert", path, "-o", out / "m.tflite", "--input-shape", "1,5,24,40"),
                     "the model cannot run on inputs of shape image (1, 5, 24, 40)", out)


def test_sdk_inspect_raises_an_sdk_error(tmp_path):
    import sdk

    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\0" * 64)
    with pytest.raises(sdk.SDKError):
        sdk.inspect(bad)
    with pytest.raises(sdk.SDKError, match="not found"):
        sdk.inspect(tmp_path / "missing.tflite")


def test_bench_prints_a_tiny_invoke_in_significant_digits():
    from device_runtime.bench import render

    row = {"threads": 1, "p50_ms": 0.0191, "p90_ms": 0.02, "p99_ms": 0.03, "throughput_per_s": 50000.0,
           "peak_rss_mb": 80.0, "invoke_p50_ms": 0.0042, "overhead_p50_ms": 0.0149, "overhead_share": 3.553}
    text = render({"model": "m.tflite", "backend": "ai-edge-litert", "xnnpack": True, "runs": 10, "warmup": 1,
                   "results": [row]})
    assert "0.0042" in text and " 0.00 " not in text and "355.3% of invoke" in text


def test_plot_and_firmware_outputs_are_checked_before_converting(digits_model_path, digits_npz, tmp_path, out):
    train, _ = digits_npz
    blocker = tmp_path / "ro"
    blocker.write_text("a file")
    assert_bad_input(run("convert", digits_model_path, "-o", out / "m.tflite", "--plot", blocker / "l.png"),
                     f"{blocker} is a file, not a folder", out)
    firmware = out / "m_mcu"
    firmware.mkdir()
    (firmware / "main.cc").write_text("// mine")
    assert_bad_input(run("convert", digits_model_path, "-o", out / "m.tflite", "--quantize", "int8", "--io-type",
                         "int8", "--calib", train, "--target", "mcu"), "exists and is not empty; pass --force", out)
    assert (firmware / "main.cc").read_text() == "// mine"


def test_an_image_folder_with_the_wrong_class_count_is_refused_before_converting(digits_model_path, tmp_path):
    """Its sub-folders become the metadata's labels; a 3-class folder for a 10-class model used to fail
    after the conversion, when the metadata was written."""
    import time

    from PIL import Image

    import sdk
    from converters.labels import LabelsError

    folder = tmp_path / "images"
    for name in ("cat", "dog", "fox"):
        (folder / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(folder / name / f"{i}.png")
    started = time.perf_counter()
    with pytest.raises(LabelsError, match=r"the model scores 10 classes but the image folder .* has 3 class "
                                          r"sub-folders, whose names would be its labels"):
        sdk.convert(digits_model_path, tmp_path / "m.tflite", {"quantize": {"mode": "int8"}}, calib_data=folder)
    assert not (tmp_path / "m.tflite").exists() and time.perf_counter() - started < 60
