"""The input normalisation `sdk convert` writes into the metadata: only when known, and then the right one.

Known from --mean/--std, from a Keras model's leading Rescaling/Normalization layers, or from image-folder
data; otherwise none is written and Model.classify refuses the model.  Each known case is checked
numerically: Model(p).classify(photo) gives the source model's scores on the correctly preprocessed photo.
"""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from converters import _tf
from converters.data import load_data
from converters.errors import UserInputError
from converters.targets.tflite.normalisation import keras_normalisation
from device_runtime import MissingMetadataError, Model
from device_runtime.preprocess import ImageSpec
from sdk import convert
from sdk.cli import main

SIZE = 16
IMAGENET_MEAN, IMAGENET_STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
TOLERANCE = 1e-5  # float32 model, same input: the interpreter and Keras differ by rounding only
UNKNOWN_REFUSAL = ("the model has no input normalisation in its metadata, so classify() cannot know how to scale "
                   "pixels; set it with `sdk metadata add MODEL -o OUT --mean M --std S` (0..255 pixels: --mean 0 "
                   "--std 255 for [0, 1] inputs, --mean 127.5 --std 127.5 for [-1, 1]), or pass "
                   "image=ImageSpec(height, width, mean=..., std=...)")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real photo (scikit-learn's china.jpg) at the models' 16x16, so classify() resamples nothing."""
    from sklearn.datasets import load_sample_image

    return np.asarray(Image.fromarray(load_sample_image("china.jpg")).resize((SIZE, SIZE), Image.BILINEAR))


def _net(*preprocessing, channels: int = 3, seed: int = 0):
    keras = _tf.keras()
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    return keras.Sequential([layers.Input((SIZE, SIZE, channels)), *preprocessing, layers.Conv2D(8, 3, activation="relu"),
                             layers.GlobalAveragePooling2D(), layers.Dense(5, activation="softmax")])


def _scores(model: Model, image: np.ndarray) -> np.ndarray:
    found = model.classify(image, top_k=5)
    scores = np.empty(5)
    for c in found:
        scores[c.index] = c.score
    return scores


def _source_scores(net, x: np.ndarray) -> np.ndarray:
    return net.predict(x[None].astype(np.float32), verbose=0)[0]


def test_rescaling_layer_means_the_model_takes_pixels(photo, tmp_path):
    """Rescaling(1/127.5, offset=-1) inside the model: it takes 0..255 pixels, so the metadata is mean 0, std 1.
    The old guess, (pixel - 0) / 255, fed it [0, 1] and changed its scores."""
    keras = _tf.keras()
    net = _net(keras.layers.Rescaling(1 / 127.5, offset=-1))
    result = convert(net, tmp_path / "r.tflite", calib_data=np.random.default_rng(0).random((8, SIZE, SIZE, 3)) * 255)
    model = Model(result.path)
    assert (model.info.mean, model.info.std) == ((0.0,), (1.0,))
    expected = _source_scores(net, photo.astype(np.float32))
    np.testing.assert_allclose(_scores(model, photo), expected, atol=TOLERANCE)
    guessed = _scores(Model(result.path, image=ImageSpec(SIZE, SIZE, mean=(0.0,), std=(255.0,))), photo)
    assert np.abs(guessed - expected).max() > 0.01  # what the guess cost
    assert any("the model's own Rescaling layers (x * 0.007843 - 1.0), so it takes 0..255 pixels" in n
               for n in result.report.notes)
    assert not any("check --mean/--std" in n for n in result.report.notes)  # calibrated on pixels, as it should


def test_image_folder_data_means_pixels_over_255(photo, tmp_path):
    """Data given as an image folder is loaded as pixel / 255, so that is the model's normalisation."""
    folder = tmp_path / "images"
    rng = np.random.default_rng(1)
    for label in "abcde":  # one folder per class the model scores
        (folder / label).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(folder / label / f"{i}.png")
    net = _net(seed=1)
    result = convert(net, tmp_path / "f.tflite", eval_data=folder)
    model = Model(result.path)
    assert (model.info.mean, model.info.std) == ((0.0,), (255.0,))
    np.testing.assert_allclose(_scores(model, photo), _source_scores(net, photo / 255.0), atol=TOLERANCE)
    assert any("from image-folder data, which the SDK loads as pixel / 255" in n for n in result.report.notes)


def test_explicit_mean_std_per_channel_on_the_cli(photo, tmp_path):
    """ImageNet mean/std given once per channel: classify() feeds (pixel - mean) / std, as training did."""
    net = _net(seed=2)
    source = tmp_path / "net.keras"
    net.save(source)
    out = tmp_path / "m.tflite"
    args = ["convert", str(source), "-o", str(out)]
    for m in IMAGENET_MEAN:
        args += ["--mean", str(m)]
    for s in IMAGENET_STD:
        args += ["--std", str(s)]
    done = CliRunner().invoke(main, args)
    assert done.exit_code == 0, done.output
    model = Model(out)
    np.testing.assert_allclose(model.info.mean, IMAGENET_MEAN, rtol=1e-6)
    np.testing.assert_allclose(model.info.std, IMAGENET_STD, rtol=1e-6)
    normalised = (photo - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(_scores(model, photo), _source_scores(net, normalised), atol=TOLERANCE)
    assert "from --mean/--std" in done.stdout


def test_unknown_normalisation_is_not_written_and_classify_refuses(photo, tmp_path):
    """Array data and no preprocessing layer: nothing is known, so nothing is written, the report says how to set
    it, classify() refuses in one typed line, and `sdk metadata add --mean --std` fixes the file."""
    net = _net(seed=3)
    out = tmp_path / "u.tflite"
    result = convert(net, out, calib_data=np.random.default_rng(3).random((8, SIZE, SIZE, 3)))
    model = Model(out)
    assert model.info is not None and model.info.mean is None and model.info.std is None
    note = next(n for n in result.report.notes if "input normalisation unknown" in n)
    assert "sdk metadata add MODEL -o OUT --mean M --std S" in note and "--mean 0 --std 255" in note
    from sdk import inspect

    assert "RGB image, normalisation unknown (Model.classify refuses it" in inspect(out).render()
    with pytest.raises(MissingMetadataError) as refused:
        model.classify(photo)
    assert str(refused.value) == UNKNOWN_REFUSAL
    explicit = Model(out, image=ImageSpec(SIZE, SIZE, mean=(0.0,), std=(255.0,)))  # the caller says it
    np.testing.assert_allclose(_scores(explicit, photo), _source_scores(net, photo / 255.0), atol=TOLERANCE)
    fixed = tmp_path / "fixed.tflite"
    done = CliRunner().invoke(main, ["metadata", "add", str(out), "-o", str(fixed), "--mean", "0", "--std", "255"])
    assert done.exit_code == 0, done.output
    np.testing.assert_allclose(_scores(Model(fixed), photo), _source_scores(net, photo / 255.0), atol=TOLERANCE)
    again = tmp_path / "again.tflite"  # a later rewrite (new version) keeps the normalisation now known
    assert CliRunner().invoke(main, ["metadata", "add", str(fixed), "-o", str(again), "--version", "2"]).exit_code == 0
    assert (Model(again).info.mean, Model(again).info.std) == ((0.0,), (255.0,))
    refused_bench = CliRunner().invoke(main, ["bench", str(out), "--task", "classify", "--runs", "1", "--warmup", "0"])
    assert refused_bench.exit_code == 0 and "has no input normalisation: timed with" in refused_bench.output


@pytest.mark.parametrize("flags, channels, message", [
    (["--mean", "1", "--mean", "2", "--std", "3"], 3,
     "--mean/--std give 2/1 values but the model's input (1, 16, 16, 3) has 3 channels. Fix: one --mean and one "
     "--std, or 3 of each (one per channel)"),
    (["--mean", "1", "--mean", "2", "--mean", "3", "--std", "3"], 1,
     "--mean/--std give 3/1 values but the model's input (1, 16, 16, 1) has 1 channel. Fix: one --mean and one --std"),
    (["--mean", "0"], 3, "mean and std go together (the normalisation is (pixel - mean) / std); got mean (0.0,) and "
                         "std None. Fix: give both, or neither"),
    (["--mean", "0", "--std", "0"], 3, "normalisation std values must be non-zero; got [0.0]. Fix: a positive std, "
                                       "e.g. 255 for inputs in [0, 1]"),
])
def test_mean_std_that_do_not_fit_are_refused_before_any_work(tmp_path, flags, channels, message):
    source = tmp_path / "net.keras"
    _net(channels=channels).save(source)
    out = tmp_path / "m.tflite"
    done = CliRunner().invoke(main, ["convert", str(source), "-o", str(out), *flags])
    assert done.exit_code == 2
    assert done.stderr == f"error: {message}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.keras"]


def test_mean_std_on_a_non_image_input_is_refused(tmp_path):
    keras = _tf.keras()
    net = keras.Sequential([keras.layers.Input((20,)), keras.layers.Dense(3, activation="softmax")])
    with pytest.raises(UserInputError, match=r"^--mean/--std describe an image input's normalisation; the model's "
                                             r"input \(1, 20\) is no image of 1 or 3 channels. Fix: drop --mean/--std$"):
        from converters.targets.tflite.metadata import MetadataSpec

        convert(net, tmp_path / "m.tflite", metadata=MetadataSpec(mean=(0.0,), std=(1.0,)))
    assert not list(tmp_path.iterdir())


def test_keras3_and_tf_keras_layers_compose_alike():
    """Matched by class name and composed numerically, so both Keras lines give the same answer."""
    import keras as keras3
    import tf_keras

    for k in (tf_keras, keras3):
        layers = k.layers
        inp = k.Input((SIZE, SIZE, 3))
        x = layers.Rescaling(1 / 255.0)(layers.RandomFlip()(inp))
        x = layers.Normalization(mean=[0.485, 0.456, 0.406], variance=[0.229 ** 2, 0.224 ** 2, 0.225 ** 2])(x)
        norm, note = keras_normalisation(k.Model(inp, layers.Dense(2)(layers.Flatten()(x))))
        assert (norm.mean, norm.std, note) == ((0.0,), (1.0,), None), k.__name__
        unit = k.Sequential([k.Input((SIZE, SIZE, 1)), layers.Rescaling(2.0, offset=-1.0), layers.Flatten()])
        assert keras_normalisation(unit)[0].std == (255.0,)  # it maps [0, 1] to [-1, 1]: it takes [0, 1]
        digits = k.Sequential([k.Input((SIZE, SIZE, 1)), layers.Rescaling(1 / 16.0), layers.Flatten()])
        assert keras_normalisation(digits)[0] is None  # 0..16 data: neither pixels nor [0, 1], so unknown


def test_image_folders_load_with_the_known_normalisation(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    pixels = np.random.default_rng(5).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "0.png")
    loaded = load_data(folder, (4, 4, 3), "calibration", pixels=(IMAGENET_MEAN, IMAGENET_STD))
    np.testing.assert_allclose(loaded.x[0], (pixels - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD), rtol=1e-5)
    assert loaded.images and not load_data(loaded.x, (4, 4, 3), "calibration").images


def test_pytorch_imagenet_model_with_mean_std_and_an_image_folder(photo, tmp_path):
    """The issue's case: a PyTorch model trained on ImageNet-normalised inputs.  --mean/--std go into the
    metadata, image-folder calibration data loads with them (channels-first), and classify() on the NHWC
    .tflite matches the module on the normalised NCHW photo."""
    import torch

    from converters.targets.tflite.metadata import MetadataSpec

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(8, 5), torch.nn.Softmax(dim=1)).eval()
    folder = tmp_path / "calib"
    folder.mkdir()
    rng = np.random.default_rng(6)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    result = convert(net, tmp_path / "t.tflite", example_input=torch.zeros(1, 3, SIZE, SIZE), calib_data=folder,
                     metadata=MetadataSpec(mean=IMAGENET_MEAN, std=IMAGENET_STD))
    model = Model(result.path)
    np.testing.assert_allclose(model.info.mean, IMAGENET_MEAN, rtol=1e-6)
    normalised = ((photo - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).transpose(2, 0, 1)[None]
    with torch.no_grad():
        expected = net(torch.tensor(normalised, dtype=torch.float32)).numpy()[0]
    np.testing.assert_allclose(_scores(model, photo), expected, atol=1e-5)
    assert not any("span" in n and "check --mean/--std" in n for n in result.report.notes)


def test_array_data_on_another_scale_than_the_normalisation_is_noted():
    """[0, 1] arrays for a model that takes 0..255 pixels: the model was calibrated on inputs an app never feeds."""
    from converters.data import Dataset
    from converters.targets.tflite.normalisation import Normalisation, range_note

    pixels = Normalisation((0.0,), (1.0,), "test")
    unit = Dataset(np.random.default_rng(0).random((4, SIZE, SIZE, 3), dtype=np.float32), None, "calib.npy")
    assert range_note(pixels, unit, "calibration") == (
        "the calibration data span [0.00019, 1], but images normalised as (pixel - [0.0]) / [1.0] span [0, 255]: "
        "an app feeding images will not match the data; check --mean/--std or the data's scale")
    assert range_note(Normalisation((0.0,), (255.0,), "test"), unit, "calibration") is None


def test_pi_app_refuses_a_model_without_normalisation_once(tmp_path):
    """The example app said "skipped: ..." for every frame; now one line before the first, exit 2."""
    import subprocess
    import sys
    from pathlib import Path

    from converters.recipe import QuantizeSettings
    from converters.targets.tflite.convert import to_tflite

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "m.tflite").write_bytes(to_tflite(_net(seed=4), QuantizeSettings()))
    (tmp_path / "photos").mkdir()
    for i in range(2):
        Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(tmp_path / "photos" / f"{i}.png")
    done = subprocess.run([sys.executable, "examples/pi_app.py", str(tmp_path / "m.tflite"), "--images",
                           str(tmp_path / "photos")], capture_output=True, text=True, cwd=root,
                          env={"PYTHONPATH": str(root)})
    assert done.returncode == 2 and done.stdout == ""
    errors = [line for line in done.stderr.splitlines() if not line.startswith("INFO: ")]  # the interpreter's own
    assert errors == ["error: the model has no input normalisation in its metadata; set it with `sdk metadata add "
                      "MODEL -o OUT --mean M --std S` (0..255 pixels, e.g. --mean 0 --std 255 for [0, 1] inputs)"]
