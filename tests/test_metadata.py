"""Standard TFLite metadata: written by the SDK, read back by our reader, by the runtime and by MediaPipe."""

from __future__ import annotations

import json
import subprocess
import venv

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from converters import _tf
from converters.errors import OutputPathError, UserInputError
from converters.targets.tflite.metadata import MetadataSpec, add_metadata
from converters.recipe import QuantizeSettings
from converters.targets.tflite.convert import to_tflite
from device_runtime import Model
from device_runtime.metadata import associated_files, read_info
from device_runtime.preprocess import ImageSpec
from device_runtime.tflite_format import read_model
from sdk.cli import main

LABELS = ["cat", "dog", "bird", "fish"]
MEDIAPIPE = "mediapipe==1.2.2"


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A float RGB image classifier (16x16x3 -> 4) without and with metadata, and a 16x16 test image."""
    keras = _tf.keras()
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.layers.Input((16, 16, 3)), keras.layers.Conv2D(8, 3, activation="relu"),
                            keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(4, activation="softmax")])
    folder = tmp_path_factory.mktemp("metadata")
    plain, with_meta, image = folder / "plain.tflite", folder / "meta.tflite", folder / "img16.png"
    plain.write_bytes(to_tflite(net, QuantizeSettings()))
    add_metadata(plain, with_meta, MetadataSpec(name="tiny", description="four classes", version="7",
                                                author="team", license="Apache-2.0", mean=(127.5,),
                                                std=(127.5,), labels=LABELS))
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(image)
    return plain, with_meta, image


def test_round_trip_through_our_reader(classifier):
    plain, with_meta, _ = classifier
    info = read_info(read_model(with_meta.read_bytes()))
    assert (info.name, info.description, info.version, info.author, info.license) == \
        ("tiny", "four classes", "7", "team", "Apache-2.0")
    assert info.color_space == "RGB" and info.mean == (127.5,) and info.std == (127.5,)
    assert info.labels == tuple(LABELS) and info.label_file == "labels.txt"
    assert associated_files(with_meta.read_bytes()) == {"labels.txt": b"cat\ndog\nbird\nfish\n"}
    assert read_info(read_model(plain.read_bytes())) is None


def test_written_file_runs_identically_in_the_plain_interpreter(classifier):
    from ai_edge_litert.interpreter import Interpreter

    plain, with_meta, _ = classifier
    x = np.random.default_rng(1).random((1, 16, 16, 3), dtype=np.float32)
    outputs = []
    for path in (plain, with_meta):
        interpreter = Interpreter(model_path=str(path))
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_runtime_configures_itself_from_metadata(classifier):
    plain, with_meta, image = classifier
    found = Model(with_meta).classify(image, top_k=4)  # no labels, no normalisation given
    assert sorted(c.label for c in found) == sorted(LABELS)
    explicit = Model(plain, labels=LABELS, image=ImageSpec(16, 16, mean=(127.5,), std=(127.5,))).classify(image, 4)
    assert [(c.label, c.score) for c in found] == [(c.label, c.score) for c in explicit]


def test_bad_requests_change_nothing(classifier, tmp_path):
    plain, with_meta, _ = classifier
    before = plain.read_bytes()
    with pytest.raises(UserInputError, match="the model scores 4 classes but there are 3 labels"):
        add_metadata(plain, tmp_path / "x.tflite", MetadataSpec(labels=["a", "b", "c"]))
    with pytest.raises(OutputPathError, match="pass --force"):
        add_metadata(plain, with_meta, MetadataSpec())
    with pytest.raises(OutputPathError, match="is the input model"):
        add_metadata(plain, plain, MetadataSpec(), force=True)
    assert plain.read_bytes() == before and not (tmp_path / "x.tflite").exists()


def test_adding_again_replaces_metadata_and_labels(classifier, tmp_path):
    _, with_meta, _ = classifier
    again = tmp_path / "again.tflite"
    add_metadata(with_meta, again, MetadataSpec(name="renamed", labels=["a", "b", "c", "d"]))
    model = read_model(again.read_bytes())
    assert sorted(model.metadata).count("TFLITE_METADATA") == 1
    info = read_info(model)
    assert info.name == "renamed" and info.labels == ("a", "b", "c", "d")


def test_cli_metadata_add_and_inspect(classifier, tmp_path):
    plain, _, _ = classifier
    (tmp_path / "labels.txt").write_text("\n".join(LABELS))
    runner = CliRunner()
    done = runner.invoke(main, ["metadata", "add", str(plain), "-o", str(tmp_path / "m.tflite"), "--labels",
                                str(tmp_path / "labels.txt"), "--mean", "127.5", "--std", "127.5", "--name", "tiny"])
    assert done.exit_code == 0, done.output
    shown = json.loads(runner.invoke(main, ["inspect", str(tmp_path / "m.tflite"), "--json"]).stdout)
    assert shown["info"]["labels"] == LABELS and shown["info"]["name"] == "tiny"
    assert "4 labels (cat, dog, bird, fish)" in runner.invoke(main, ["inspect", str(tmp_path / "m.tflite")]).stdout


@pytest.fixture(scope="module")
def grayscale(tmp_path_factory):
    """A float 8x8x1 image classifier (3 classes) without metadata."""
    keras = _tf.keras()
    keras.utils.set_random_seed(1)
    net = keras.Sequential([keras.layers.Input((8, 8, 1)), keras.layers.Flatten(),
                            keras.layers.Dense(3, activation="softmax")])
    path = tmp_path_factory.mktemp("gray") / "gray.tflite"
    path.write_bytes(to_tflite(net, QuantizeSettings()))
    return path


def _refused(result, message: str):
    """Exit 2, exactly one stderr line starting "error: " that contains ``message``, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0], lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize("flags, message", [
    (["--mean", "127.5", "--mean", "127.5", "--mean", "127.5", "--std", "127.5"],
     "--mean/--std give 3/1 values but the model's input (1, 8, 8, 1) has 1 channel. Fix: one --mean and one --std"),
    (["--color-space", "RGB"], "--color-space RGB does not fit the model's input (1, 8, 8, 1): it has 1 channel. "
                               "Fix: --color-space GRAYSCALE"),
    (["--task", "audio_classifier"], "--task audio_classifier needs a waveform input such as (1, samples); the "
                                     "model's input (1, 8, 8, 1) is an image's. Fix: --task image_classifier"),
])
def test_metadata_that_does_not_fit_the_input_is_refused(grayscale, tmp_path, flags, message):
    """Each was written and then failed in the app (ValueError in classify) or misled it (RGB for gray)."""
    before = grayscale.read_bytes()
    out = tmp_path / "m.tflite"
    _refused(CliRunner().invoke(main, ["metadata", "add", str(grayscale), "-o", str(out), *flags]), message)
    assert not out.exists() and list(tmp_path.iterdir()) == [] and grayscale.read_bytes() == before


def test_colour_space_follows_the_input_unless_given(classifier, grayscale, tmp_path):
    runner = CliRunner()
    assert runner.invoke(main, ["metadata", "add", str(grayscale), "-o", str(tmp_path / "g.tflite")]).exit_code == 0
    assert Model(tmp_path / "g.tflite").info.color_space == "GRAYSCALE"
    plain, _, image = classifier
    done = runner.invoke(main, ["metadata", "add", str(plain), "-o", str(tmp_path / "c.tflite"), "--mean", "120",
                                "--mean", "127.5", "--mean", "130", "--std", "127.5"])  # one mean per channel
    assert done.exit_code == 0, done.output
    model = Model(tmp_path / "c.tflite")
    assert model.info.color_space == "RGB" and model.info.mean == (120.0, 127.5, 130.0)
    assert len(model.classify(image, top_k=4)) == 4


def test_runtime_refuses_metadata_that_does_not_fit_with_a_typed_error(classifier, tmp_path):
    """A file written elsewhere (or by an older SDK) with two means for three channels: classify raised a
    plain ValueError from ImageSpec, and `sdk bench --task classify` an internal error."""
    from converters.targets.tflite.metadata import metadata_buffer, populate
    from device_runtime.errors import ModelFormatError
    from device_runtime.metadata import METADATA_NAME

    plain, _, image = classifier
    model = read_model(plain.read_bytes())
    sg = model.main
    buffer = metadata_buffer(MetadataSpec(mean=(127.5, 127.5), std=(127.5,)), sg.tensors[sg.inputs[0]].name,
                             [sg.tensors[sg.outputs[0]].name])
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(populate(plain.read_bytes(), {METADATA_NAME: buffer}))
    with pytest.raises(ModelFormatError, match=r"metadata normalises its input \(1, 16, 16, 3\) \(3 channels\) "
                                               r"with mean \[127.5, 127.5\]"):
        Model(bad).classify(image)
    _refused(CliRunner().invoke(main, ["bench", str(bad), "--task", "classify", "--runs", "1", "--warmup", "0"]),
             "the model's metadata normalises its input (1, 16, 16, 3)")


def test_runtime_reads_labels_files_by_the_same_rules(classifier, tmp_path):
    """device_runtime keeps its own reader (it never imports the converters), with the converters' rules:
    a non-UTF-8 file raised UnicodeDecodeError, and a blank line shifted the names after it."""
    from device_runtime.errors import InputError

    plain, _, _ = classifier
    (tmp_path / "latin1.txt").write_bytes("chat\nchi\u00e9n\n".encode("latin-1"))
    (tmp_path / "blank.txt").write_text("cat\n\ndog\nbird\n")
    (tmp_path / "ok.txt").write_text("\ufeffcat\ndog\nbird\nfish\n\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"latin1.txt is not UTF-8 text \(byte 0xe9 at offset 8\)"):
        Model(plain, labels=tmp_path / "latin1.txt")
    with pytest.raises(InputError, match="blank.txt line 2 is empty"):
        Model(plain, labels=tmp_path / "blank.txt")
    assert Model(plain, labels=tmp_path / "ok.txt").labels == LABELS


@pytest.fixture(scope="module")
def mediapipe_python(tmp_path_factory):
    """MediaPipe in its own virtual environment (it pulls opencv-contrib and numpy 2)."""
    env_dir = tmp_path_factory.mktemp("mediapipe") / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", MEDIAPIPE], capture_output=True,
                          text=True, timeout=900)
    if done.returncode != 0:
        pytest.skip(f"{MEDIAPIPE} could not be installed here: {done.stderr.strip().splitlines()[-1:]}")
    return python


MEDIAPIPE_CLASSIFY = """
import json, sys
import mediapipe as mp
from mediapipe.tasks import python as mp_python
from mediapipe.tasks.python import vision
options = vision.ImageClassifierOptions(base_options=mp_python.BaseOptions(model_asset_path=sys.argv[1]),
                                        max_results=4)
try:
    with vision.ImageClassifier.create_from_options(options) as classifier:
        result = classifier.classify(mp.Image.create_from_file(sys.argv[2]))
    print(json.dumps([[c.category_name, c.score] for c in result.classifications[0].categories]))
except Exception as exc:
    print(json.dumps({"refused": str(exc).splitlines()[0]}))
"""


def test_mediapipe_image_classifier_accepts_it_and_returns_our_labels(classifier, mediapipe_python):
    plain, with_meta, image = classifier
    results = {}
    for path in (plain, with_meta):
        done = subprocess.run([str(mediapipe_python), "-c", MEDIAPIPE_CLASSIFY, str(path), str(image)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-1000:]
        results[path.name] = json.loads(done.stdout.strip().splitlines()[-1])
    assert "NormalizationOptions" in results["plain.tflite"]["refused"]
    ours = Model(with_meta).classify(image, top_k=4)
    theirs = results["meta.tflite"]
    assert [name for name, _ in theirs] == [c.label for c in ours]
    np.testing.assert_allclose([score for _, score in theirs], [c.score for c in ours], atol=1e-5)


def _detector_and_audio(folder):
    keras = _tf.keras()
    keras.utils.set_random_seed(3)
    image = keras.layers.Input((16, 16, 3), name="image")
    flat = keras.layers.Flatten()(image)
    outputs = [keras.layers.Reshape((10, 4), name="a_boxes")(keras.layers.Dense(40, activation="sigmoid")(flat)),
               keras.layers.Dense(10, activation="relu", name="b_classes")(flat),
               keras.layers.Dense(10, activation="sigmoid", name="c_scores")(flat),
               keras.layers.Dense(1, name="d_count", kernel_initializer="zeros",
                                  bias_initializer=keras.initializers.Constant(10.0))(flat)]  # 10 boxes
    detector = folder / "detector.tflite"
    detector.write_bytes(to_tflite(keras.Model(image, outputs), QuantizeSettings()))
    audio = folder / "audio.tflite"
    wave = keras.layers.Input((16000,), name="waveform")
    audio.write_bytes(to_tflite(keras.Model(wave, keras.layers.Dense(3, activation="softmax")(wave)),
                                QuantizeSettings()))
    return detector, audio


def test_detector_and_audio_round_trip(tmp_path):
    detector, audio = _detector_and_audio(tmp_path)
    add_metadata(detector, tmp_path / "d.tflite", MetadataSpec(task="object_detector", labels=["person", "car"],
                                                               box_index=(0, 1, 2, 3)))
    add_metadata(audio, tmp_path / "a.tflite", MetadataSpec(task="audio_classifier", sample_rate=8000,
                                                            labels=["yes", "no", "silence"]))
    info = read_info(read_model((tmp_path / "d.tflite").read_bytes()))
    assert info.task == "object_detector" and info.box_index == (0, 1, 2, 3)
    # metadata is positional and this model keeps its outputs as scores, classes, count, boxes
    assert sorted(info.output_names) == sorted(("location", "category", "score", "number of detections"))
    shapes = {name: Model(detector).outputs[i].shape for i, name in enumerate(info.output_names)}
    assert shapes["location"] == (1, 10, 4) and shapes["number of detections"] == (1, 1)
    assert info.labels == ("person", "car")
    sound = read_info(read_model((tmp_path / "a.tflite").read_bytes()))
    assert (sound.task, sound.sample_rate, sound.channels) == ("audio_classifier", 8000, 1)
    assert sound.labels == ("yes", "no", "silence")
    wave = np.random.default_rng(2).uniform(-1, 1, (1, 16000)).astype(np.float32)
    np.testing.assert_array_equal(Model(tmp_path / "a.tflite")(wave), Model(audio)(wave))
    with pytest.raises(UserInputError, match="a object_detector needs 1 input and 4 output"):
        add_metadata(audio, tmp_path / "bad.tflite", MetadataSpec(task="object_detector"))


def test_detect_follows_the_box_order_in_metadata(tmp_path):
    from device_runtime.postprocess import decode_ssd, ssd_outputs

    detector, _ = _detector_and_audio(tmp_path)
    frame = np.random.default_rng(4).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    found = {}
    for order in ((1, 0, 3, 2), (0, 1, 2, 3)):
        path = tmp_path / f"d{order[0]}.tflite"
        add_metadata(detector, path, MetadataSpec(task="object_detector", box_index=order))
        model = Model(path)
        tensor, box = model.preprocess(frame, resize="letterbox")
        raw = ssd_outputs(list(model.run(tensor).values()), model.info.output_names)
        assert raw[0].shape == (1, 10, 4) and raw[3].size == 1
        expected = decode_ssd(*raw, box, (16, 16), score_threshold=0.0, box_index=order)
        found[order] = model.detect(frame, score_threshold=0.0)
        assert [d.box for d in found[order]] == [d.box for d in expected] and len(expected) == 10
    swapped = [(b[1], b[0], b[3], b[2]) for b in (d.box for d in found[(0, 1, 2, 3)])]
    assert swapped == [d.box for d in found[(1, 0, 3, 2)]]


def test_convert_writes_standard_metadata(digits, digits_npz, digits_model_path, tmp_path):
    train, test = digits_npz
    (tmp_path / "digits.txt").write_text("\n".join(f"digit {i}" for i in range(10)))
    out = tmp_path / "d.tflite"
    done = CliRunner().invoke(main, ["convert", str(digits_model_path), "-o", str(out), "--quantize", "int8",
                                     "--calib", str(train), "--eval", str(test), "--labels",
                                     str(tmp_path / "digits.txt"), "--model-version", "2", "--mean", "0", "--std",
                                     "255"])
    assert done.exit_code == 0, done.output
    model = Model(out)
    assert (model.info.name, model.info.version, model.info.color_space) == ("digits_cnn", "2", "GRAYSCALE")
    assert (model.info.mean, model.info.std) == ((0.0,), (255.0,))  # the [0, 1] inputs, as --mean/--std say
    frame = (digits.x_test[0, ..., 0] * 255).round().astype(np.uint8)
    assert model.classify(frame, top_k=1)[0].label == f"digit {digits.y_test[0]}"
    assert "standard TFLite metadata written" in done.stdout


def test_convert_writes_no_classifier_metadata_on_a_detector(tmp_path):
    """A YOLO-style head, (1, 4 + classes, anchors), is no class-score vector: it gets build info only."""
    from sdk import convert

    keras = _tf.keras()
    keras.utils.set_random_seed(4)
    image = keras.layers.Input((16, 16, 3))
    head = keras.layers.Conv2D(7, 3, strides=4, padding="same", activation="sigmoid")(image)  # 4 box + 3 classes
    net = keras.Model(image, keras.layers.Permute((2, 1))(keras.layers.Reshape((16, 7))(head)))
    result = convert(net, tmp_path / "yolo.tflite")
    model = Model(result.path)
    assert model.outputs[0].shape == (1, 7, 16) and model.info is None and model.build is not None
    assert any("not one score per class" in note for note in result.report.notes), result.report.notes


def test_schema_module_reads_back_what_we_wrote(classifier, tmp_path):
    """The schema's own generated reader (TFLite Support) agrees with ours, for all three tasks."""
    from tensorflow_lite_support.metadata import metadata_schema_py_generated as schema

    _, with_meta, _ = classifier
    detector, audio = _detector_and_audio(tmp_path)
    add_metadata(detector, tmp_path / "d.tflite", MetadataSpec(task="object_detector", labels=["person"],
                                                               mean=(127.5,), std=(127.5,)))
    add_metadata(audio, tmp_path / "a.tflite", MetadataSpec(task="audio_classifier", sample_rate=22050))
    for path in (with_meta, tmp_path / "d.tflite", tmp_path / "a.tflite"):
        raw = read_model(path.read_bytes()).metadata_bytes("TFLITE_METADATA")
        assert schema.ModelMetadata.ModelMetadataBufferHasIdentifier(raw, 0)
        meta = schema.ModelMetadataT.InitFromPackedBuf(bytearray(raw), 0)
        ours = read_info(read_model(path.read_bytes()))
        assert meta.name.decode() == ours.name and meta.version.decode() == ours.version
        assert meta.minParserVersion.decode() == "1.0.0"
        outputs = meta.subgraphMetadata[0].outputTensorMetadata
        assert tuple(o.name.decode() for o in outputs) == ours.output_names
        content = meta.subgraphMetadata[0].inputTensorMetadata[0].content
        if ours.task == "audio_classifier":
            assert content.contentProperties.sampleRate == 22050
        else:
            units = meta.subgraphMetadata[0].inputTensorMetadata[0].processUnits
            assert list(units[0].options.mean) == list(ours.mean)
        if ours.task == "object_detector":
            location = outputs[ours.output_names.index("location")]
            assert list(location.content.contentProperties.index) == [1, 0, 3, 2]
            assert meta.subgraphMetadata[0].outputTensorGroups[0].name.decode() == "detection_result"
