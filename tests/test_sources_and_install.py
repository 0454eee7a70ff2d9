"""Source formats, image-folder data, failure exit codes, and the device-only install."""

from __future__ import annotations

import subprocess
import venv
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from converters import _tf
from converters.errors import SourceModelError
from sdk import convert
from sdk.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("kind", [".keras", "savedmodel"])
def test_keras_file_formats_convert_exactly(digits, digits_model, tmp_path, kind):
    source = tmp_path / ("model.keras" if kind == ".keras" else "saved")
    digits_model.save(source)
    result = convert(source, tmp_path / "m.tflite", eval_data=(digits.x_test, digits.y_test))
    assert result.report.fidelity.max_abs_error <= 1e-4
    assert result.report.fidelity.accuracy_tflite == result.report.fidelity.accuracy_source


def test_image_folder_calibration_and_labels(digits, digits_model_path, tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    for i, (x, y) in enumerate(zip(digits.x_train[:120], digits.y_train[:120])):
        (folder / f"class_{y}").mkdir(parents=True, exist_ok=True)
        Image.fromarray((x[..., 0] * 255).round().astype(np.uint8), "L").save(folder / f"class_{y}" / f"{i}.png")
    result = convert(digits_model_path, tmp_path / "m.tflite", {"quantize": {"mode": "int8"}},
                     calib_data=folder, eval_data=folder)
    fid = result.report.fidelity
    assert fid.samples == 120 and fid.data == str(folder)
    assert fid.accuracy_source is not None and fid.accuracy_source > 90  # labels came from folder names
    assert fid.top1_agreement >= 97


def test_custom_layer_is_a_clear_source_error(tmp_path):
    keras = _tf.keras()

    class Doubler(keras.layers.Layer):
        def call(self, x):
            return x * 2

    model = keras.Sequential([keras.layers.Input((4,)), Doubler(), keras.layers.Dense(2)])
    model.save(tmp_path / "custom.keras")
    with pytest.raises(SourceModelError, match="uses a custom layer 'Doubler' that Keras cannot rebuild"):
        convert(tmp_path / "custom.keras", tmp_path / "m.tflite")


def test_conversion_failure_exits_1(tmp_path):
    keras = _tf.keras()
    inputs = keras.layers.Input((4,))
    model = keras.Model(inputs, [keras.layers.Dense(3, name="a")(inputs), keras.layers.Dense(2, name="b")(inputs)])
    model.save(tmp_path / "two_heads.h5")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((64, 4), dtype=np.float32))
    result = CliRunner().invoke(main, ["convert", str(tmp_path / "two_heads.h5"), "-o", str(tmp_path / "m.tflite"),
                                       "--prune", "0.5", "--finetune", str(tmp_path / "x.npy")])
    assert result.exit_code == 1, result.output
    assert "fine-tuning supports single-output models" in result.stderr
    assert not (tmp_path / "m.tflite").exists()


def test_device_extra_installs_no_tensorflow(tmp_path):
    """What a Pi or phone gets from `pip install .[device]`: the runtime, an interpreter, no TensorFlow."""
    env_dir = tmp_path / "device_env"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", f"{ROOT}[device]"],
                             capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-2000:]
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=freeze"], capture_output=True,
                            text=True).stdout.lower()
    assert "ai-edge-litert" in listed
    for heavy in ("tensorflow", "tf-keras", "torch", "onnx2tf"):
        assert f"\n{heavy}==" not in "\n" + listed, heavy
    check = subprocess.run([str(python), "-c", "import device_runtime, sys; "
                            "from device_runtime.preprocess import resolve_engine; "
                            "print(device_runtime.Model.__name__, 'tensorflow' in sys.modules, resolve_engine('auto'))"],
                           capture_output=True, text=True, cwd=tmp_path)
    assert check.stdout.split() == ["Model", "False", "opencv"], check.stderr  # the fast image engine comes along
