"""The command line: one-line errors with exit code 2 for bad input, nothing written, no traceback."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from sdk.cli import main


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_bad_input(result, message: str, out_dir=None):
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0], lines[0]
    assert "Traceback" not in result.output
    if out_dir is not None:
        assert not [p for p in out_dir.iterdir() if p.suffix in (".tmp", ".tflite", ".json")
                    and p.name != "exists.tflite"], list(out_dir.iterdir())


@pytest.fixture()
def out(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def test_missing_source(out):
    assert_bad_input(run("convert", out / "nope.h5", "-o", out / "m.tflite"), "source model not found", out)


def test_empty_truncated_and_wrong_files(digits_model_path, tmp_path, out):
    empty = tmp_path / "empty.h5"
    empty.write_bytes(b"")
    assert_bad_input(run("convert", empty, "-o", out / "m.tflite"), "is empty", out)
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(digits_model_path.read_bytes()[:4096])
    assert_bad_input(run("convert", truncated, "-o", out / "m.tflite"), "cannot load Keras model", out)
    not_zip = tmp_path / "text.keras"
    not_zip.write_text("hello")
    assert_bad_input(run("convert", not_zip, "-o", out / "m.tflite"), "not a valid .keras archive", out)
    not_hdf5 = tmp_path / "text.h5"
    not_hdf5.write_text("hello")
    assert_bad_input(run("convert", not_hdf5, "-o", out / "m.tflite"), "not an HDF5 file", out)
    other = tmp_path / "model.bin"
    other.write_bytes(b"\0" * 10)
    assert_bad_input(run("convert", other, "-o", out / "m.tflite"), "unknown source model kind", out)


def test_output_is_input_or_exists(digits_model_path, out):
    original = digits_model_path.read_bytes()
    assert_bad_input(run("convert", digits_model_path, "-o", digits_model_path), "is the input model")
    assert digits_model_path.read_bytes() == original
    existing = out / "exists.tflite"
    existing.write_bytes(b"keep me")
    assert_bad_input(run("convert", digits_model_path, "-o", existing), "pass --force", out)
    assert existing.read_bytes() == b"keep me"


def test_outputs_that_cannot_be_written(digits_model_path, out):
    """Refused in one line, before any conversion; these were tracebacks ("internal error") after it."""
    blocker = out / "a_file"
    blocker.write_text("not a folder")
    assert_bad_input(run("convert", digits_model_path, "-o", blocker / "m.tflite"),
                     f"cannot write {blocker / 'm.tflite'}: {blocker} is a file, not a folder")
    assert_bad_input(run("keygen", "-o", blocker / "sub" / "key"), f"cannot write {blocker / 'sub' / 'key.pem'}")
    assert blocker.read_text() == "not a folder" and sorted(p.name for p in out.iterdir()) == ["a_file"]


def test_bad_flags_and_recipes(digits_model_path, tmp_path, out):
    assert_bad_input(run("convert", digits_model_path, "-o", out / "m.tflite", "--prune", "1.5"),
                     "prune.sparsity must be in [0, 1); got 1.5", out)
    assert_bad_input(run("convert", digits_model_path, "-o", out / "m.tflite", "--cluster", "1"),
                     "cluster.clusters must be an integer >= 2; got 1", out)
    assert_bad_input(run("convert", digits_model_path, "-o", out / "m.tflite", "--quantize", "int8"),
                     "needs calibration data", out)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("prune: {sparsity: 0.5}\nclusterr: {clusters: 8}\n")
    assert_bad_input(run("convert", digits_model_path, "-o", out / "m.tflite", "--recipe", recipe),
                     "unknown key 'clusterr' in recipe (did you mean 'cluster'?)", out)
    result = run("convert", digits_model_path, "-o", out / "m.tflite", "--quantize", "int4")
    assert result.exit_code == 2 and "int4" in result.output and "Traceback" not in result.output


def test_data_that_does_not_fit(digits, digits_model_path, tmp_path, out):
    flat = tmp_path / "flat.npz"
    np.savez(flat, x=digits.x_train.reshape(len(digits.x_train), 64), y=digits.y_train)
    assert_bad_input(run("convert", digits_model_path, "-o", out / "m.tflite", "--quantize", "int8",
                         "--calib", flat), "reshape it with x.reshape(-1, 8, 8, 1)", out)
    no_x = tmp_path / "nox.npz"
    np.savez(no_x, images=digits.x_train)
    assert_bad_input(run("convert", digits_model_path, "-o", out / "m.tflite", "--prune", "0.5",
                         "--finetune", no_x), "it needs 'x'", out)
    assert_bad_input(run("convert", digits_model_path, "-o", out / "m.tflite", "--prune", "0.5",
                         "--finetune", tmp_path / "missing.npz"), "fine-tuning data not found", out)


def test_convert_json_and_inspect(digits_npz, digits_model_path, out):
    train, test = digits_npz
    target = out / "m.tflite"
    result = run("convert", digits_model_path, "-o", target, "--quantize", "int8", "--calib", train,
                 "--eval", test, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["fidelity"]["top1_agreement"] >= 98.0
    assert target.exists() and (out / "m.report.json").exists()
    assert not list(out.glob(".*.tmp"))

    shown = run("inspect", target)
    assert shown.exit_code == 0 and "FULLY_CONNECTED x2" in shown.stdout
    data = json.loads(run("inspect", target, "--json").stdout)
    assert data["stats"]["file_size"] == target.stat().st_size
    assert len(data["stats"]["weights"]) == 5
    from device_runtime.tflite_format import read_model

    spec = read_model(target.read_bytes())
    build = len(spec.buffers[spec.metadata["EDGE_SDK_BUILD"]])
    assert data["metadata_bytes"]["EDGE_SDK_BUILD"] == build and f"EDGE_SDK_BUILD ({build:,} bytes)" in shown.stdout


def test_inspect_bad_files(tmp_path, digits_model_path):
    assert_bad_input(run("inspect", tmp_path / "none.tflite"), "model file not found")
    h5_copy = tmp_path / "model.tflite"
    shutil.copy(digits_model_path, h5_copy)
    assert_bad_input(run("inspect", h5_copy), "not a TFLite model")


def test_bench_reports_percentiles_per_thread_count(digits_model_path, tmp_path):
    target = tmp_path / "m.tflite"
    assert run("convert", digits_model_path, "-o", target).exit_code == 0
    result = run("bench", target, "--threads", "1", "--threads", "2", "--runs", "20", "--warmup", "2", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [r["threads"] for r in report["results"]] == [1, 2]
    for r in report["results"]:
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["throughput_per_s"] > 0 and r["peak_rss_mb"] > 10
    assert_bad_input(run("bench", tmp_path / "missing.tflite"), "model file not found")
    task = run("bench", target, "--task", "classify", "--runs", "10", "--json")
    assert task.exit_code == 0, task.output
    row = json.loads(task.stdout)["results"][0]
    assert json.loads(task.stdout)["frame"] == "random 8x8 frame" and 0 < row["invoke_p50_ms"] <= row["p50_ms"]
    zero = run("bench", target, "--threads", "0")  # was "internal error (ValueError)", exit 1
    assert zero.exit_code == 2 and "'--threads': 0 is not in the range x>=1" in zero.output


def test_labels_files_follow_one_set_of_rules_in_every_command(digits_model_path, tmp_path, out):
    """One reader for convert, metadata add, export mcu and export android: a non-UTF-8 file was an
    "internal error (UnicodeDecodeError)" with exit 1 in all four, a blank line silently shifted the names
    after it, and a file without names gave a model without labels."""
    from converters import _tf
    from converters.recipe import QuantizeSettings
    from converters.targets.tflite.convert import to_tflite

    keras = _tf.keras()
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.layers.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    model = tmp_path / "ten.tflite"
    model.write_bytes(to_tflite(net, QuantizeSettings()))
    project = tmp_path / "android_demo"
    (project / "app/src/main").mkdir(parents=True)
    files = {"latin1.txt": ("z\u00e9ro\n".encode("latin-1"), "latin1.txt is not UTF-8 text (byte 0xe9 at offset 1)"),
             "blank.txt": (b"0\n\n1\n2\n3\n4\n5\n6\n7\n8\n", "blank.txt line 2 is empty, which would shift the names"),
             "empty.txt": (b" \n\n", "empty.txt has no labels; give one label per class"),
             "three.txt": (b"a\nb\nc\n", "the model scores 10 classes but there are 3 labels")}
    for name, (data, _) in files.items():
        (tmp_path / name).write_bytes(data)
    commands = {"convert": ["convert", digits_model_path, "-o", out / "m.tflite"],
                "metadata add": ["metadata", "add", model, "-o", out / "m.tflite"],
                "export mcu": ["export", "mcu", model, "-o", out / "fw", "--allow-float"],
                "export android": ["export", "android", model, "-o", project, "--task", "image_classifier"]}
    for command, args in commands.items():
        for name, (_, message) in files.items():
            if command == "convert" and name == "three.txt":
                continue  # counted against the model once it is loaded (targets/tflite/embed.py check_folder_labels)
            assert_bad_input(run(*args, "--labels", tmp_path / name), message, out)
            assert list(out.iterdir()) == [] and not (project / "app/src/main/assets").exists(), (command, name)
