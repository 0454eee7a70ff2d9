"""device_runtime.Model against the raw interpreter, on models built here."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from converters import _tf
from converters.recipe import QuantizeSettings
from converters.targets.tflite.convert import to_tflite
from device_runtime import InputError, Model, ModelFormatError, UnsupportedModelError
from device_runtime.preprocess import ImageSpec

ROOT = Path(__file__).resolve().parents[1]
COLD_START_LIMIT_S = 0.5


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A float and an int8-I/O image classifier (16x16x3 -> 5 classes), and a fixed-batch one.

    The classifiers carry the metadata `sdk convert` writes for their [0, 1] inputs, (pixel - 0) / 255: without
    a normalisation, classify() refuses a model."""
    from converters.targets.tflite.metadata import MetadataSpec, populate, standard_metadata
    from device_runtime.metadata import METADATA_NAME
    from device_runtime.tflite_format import read_model

    keras = _tf.keras()
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.layers.Input((16, 16, 3)), keras.layers.Conv2D(8, 3, activation="relu"),
                            keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(5, activation="softmax")])
    calib = np.random.default_rng(0).random((32, 16, 16, 3), dtype=np.float32)
    folder = tmp_path_factory.mktemp("runtime_models")
    paths = {}
    for name, settings in (("float", QuantizeSettings()),
                           ("int8", QuantizeSettings(mode="int8", io_type="int8"))):
        paths[name] = folder / f"{name}.tflite"
        plain = to_tflite(net, settings, calib)
        buffer, _ = standard_metadata(read_model(plain), MetadataSpec(mean=(0.0,), std=(255.0,)))
        paths[name].write_bytes(populate(plain, {METADATA_NAME: buffer}))
    tf = _tf.tensorflow()
    fixed = tf.function(lambda x: net(x)).get_concrete_function(tf.TensorSpec((1, 16, 16, 3), tf.float32))
    paths["fixed"] = folder / "fixed.tflite"
    paths["fixed"].write_bytes(tf.lite.TFLiteConverter.from_concrete_functions([fixed], net).convert())
    return paths, calib


def raw_interpreter_output(path: Path, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def test_outputs_equal_raw_interpreter_bitwise(models):
    paths, calib = models
    x = calib[:4]
    ours = Model(paths["float"])(x)
    np.testing.assert_array_equal(ours, raw_interpreter_output(paths["float"], x))
    model = Model(paths["int8"])
    spec = model.inputs[0]
    q = spec.quantize(x)
    raw = raw_interpreter_output(paths["int8"], q)
    np.testing.assert_array_equal(model.run({spec.name: q}, raw=True)[model.outputs[0].name], raw)
    np.testing.assert_array_equal(model(x), model.outputs[0].dequantize(raw))


def test_int8_io_is_quantized_for_the_caller(models):
    paths, calib = models
    float_out = Model(paths["float"])(calib)
    int8 = Model(paths["int8"])
    assert int8.inputs[0].dtype == np.int8 and int8.inputs[0].quantized
    out = int8(calib)
    assert out.dtype == np.float32
    assert np.abs(out - float_out).max() < 0.05  # int8 steps of a softmax in [0, 1]
    assert (out.argmax(1) == float_out.argmax(1)).mean() >= 0.9


def test_batches_resize_or_loop(models):
    paths, calib = models
    one_by_one = np.concatenate([Model(paths["float"])(calib[i:i + 1]) for i in range(8)])
    np.testing.assert_allclose(Model(paths["float"])(calib[:8]), one_by_one, atol=1e-6)
    fixed = Model(paths["fixed"])
    assert fixed.inputs[0].shape_signature[0] == 1
    np.testing.assert_allclose(fixed(calib[:8]), one_by_one, atol=1e-6)  # looped per sample


def test_bad_inputs_raise_one_line_input_errors(models):
    paths, calib = models
    model = Model(paths["float"])
    name = model.inputs[0].name
    cases = [
        (lambda: model(calib[0]), "must have rank 4"),
        (lambda: model(np.zeros((1, 16, 15, 3), np.float32)), "must have shape (N, 16, 16, 3)"),
        (lambda: model(np.full((1, 16, 16, 3), np.nan, np.float32)), "contains NaN or infinity"),
        (lambda: model.run({"nope": calib[:1]}), "unknown input name(s) ['nope']"),
        (lambda: model.run({}), f"missing input(s) ['{name}']"),
        (lambda: model(np.array([["a"]])), "must have rank 4"),
        (lambda: model(np.full((1, 16, 16, 3), "x")), "must be numeric"),
        (lambda: model(calib[:1], calib[:1]), "takes 1 input(s)"),
    ]
    for call, message in cases:
        with pytest.raises(InputError) as error:
            call()
        assert message in str(error.value) and "\n" not in str(error.value)


def test_bad_files(tmp_path, models):
    paths, _ = models
    with pytest.raises(ModelFormatError, match="model file not found"):
        Model(tmp_path / "missing.tflite")
    (tmp_path / "empty.tflite").write_bytes(b"")
    with pytest.raises(ModelFormatError, match="is empty"):
        Model(tmp_path / "empty.tflite")
    with pytest.raises(ModelFormatError, match="not a TFLite model"):
        Model(b"PK\x03\x04 this is a zip file, not a model")
    with pytest.raises(ModelFormatError):
        Model(paths["float"].read_bytes()[:300])


def test_custom_op_model_is_refused_clearly(tmp_path):
    tf = _tf.tensorflow()
    fn = tf.function(lambda x: tf.math.bessel_i0e(x)).get_concrete_function(tf.TensorSpec((1, 8), tf.float32))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn])
    converter.allow_custom_ops = True  # BesselI0e has no TFLite kernel: it becomes a custom op
    data = converter.convert()
    with pytest.raises(UnsupportedModelError, match="custom ops BesselI0e"):
        Model(data)


def test_tflite_runtime_backend_gives_same_outputs(models):
    paths, calib = models
    pi = Model(paths["float"], backend="tflite-runtime")
    assert pi.backend.name == "tflite-runtime"
    np.testing.assert_allclose(pi(calib[:4]), Model(paths["float"])(calib[:4]), atol=1e-6)


@pytest.mark.parametrize("backend", ["ai-edge-litert", "tflite-runtime"])
def test_cold_start(models, backend):
    paths, _ = models
    code = ("import time; t = time.perf_counter()\n"
            "import numpy as np, device_runtime\n"
            f"m = device_runtime.Model({str(paths['float'])!r}, backend={backend!r})\n"
            "m(np.zeros((1, 16, 16, 3), np.float32))\n"
            "print(time.perf_counter() - t)")
    times = []
    for _ in range(3):  # best of three: the machine is shared
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
        assert done.returncode == 0, done.stderr
        times.append(float(done.stdout.split()[-1]))
    assert min(times) <= COLD_START_LIMIT_S, times


def test_pi_app_classifies_a_folder_of_real_images(models, tmp_path):
    """The example app on scikit-learn's bundled photos (china.jpg, flower.jpg), as a user runs it."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, image in enumerate(load_sample_images().images):
        Image.fromarray(image).save(photos / f"photo{i}.jpg")
    (photos / "notes.txt").write_text("not an image")
    (tmp_path / "labels.txt").write_text("\n".join(["cat", "dog", "bird", "fish", "tree"]))
    paths, _ = models
    done = subprocess.run([sys.executable, "examples/pi_app.py", str(paths["int8"]), "--images", str(photos),
                           "--labels", str(tmp_path / "labels.txt"), "--threads", "1"],
                          capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("photo0.jpg: ") and lines[1].startswith("photo1.jpg: ")
    expected = Model(paths["int8"], labels=["cat", "dog", "bird", "fish", "tree"]).classify(photos / "photo0.jpg", 3)
    assert lines[0] == "photo0.jpg: " + ", ".join(f"{c.label} {c.score:.2f}" for c in expected)
    assert lines[2].startswith("2 frames in") and "FPS" in lines[2]


def test_pi_app_refuses_a_broken_model(tmp_path):
    (tmp_path / "bad.tflite").write_bytes(b"garbage!" * 10)
    done = subprocess.run([sys.executable, "examples/pi_app.py", str(tmp_path / "bad.tflite"), "--images",
                           str(tmp_path)], capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT)})
    assert done.returncode == 2 and done.stderr.startswith("error: not a TFLite model")


def _bgr_photo(size: tuple[int, int]) -> np.ndarray:
    """china.jpg at (width, height), B, G, R in memory, as a camera delivers it."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    return np.ascontiguousarray(np.asarray(Image.fromarray(load_sample_image("china.jpg")).resize(size))[..., ::-1])


def _expected_lines(path: Path, frames: list[np.ndarray]) -> list[str]:
    model = Model(path)
    return [f"frame {i}: " + ", ".join(f"{c.label} {c.score:.2f}" for c in model.classify(frame[..., ::-1], 3))
            for i, frame in enumerate(frames)]


class FakePicamera2:
    """picamera2's calls the app makes; frames are row-padded views, as libcamera's strides give."""

    opened: list[FakePicamera2] = []

    def __init__(self):
        self.config, self.started, self.stopped, self.frames = None, False, False, []
        FakePicamera2.opened.append(self)

    def create_preview_configuration(self, main):
        return {"main": dict(main)}

    def configure(self, config):
        self.config = config

    def start(self):
        self.started = True

    def capture_array(self):
        width, height = self.config["main"]["size"]
        padded = np.zeros((height, width + 8, 3), np.uint8)  # a 32-byte aligned stride
        padded[:, :width] = _bgr_photo((width, height))
        padded[:, :width, 0] += np.uint8(len(self.frames))  # each frame differs a little
        self.frames.append(padded[:, :width])
        return self.frames[-1]

    def stop(self):
        self.stopped = True


def _run_pi_app(*args) -> tuple[int, str, str]:
    """examples/pi_app.py's main() in this process, so a test can stand in for the camera."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from examples import pi_app

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = pi_app.main([*map(str, args)])
    return code, out.getvalue(), err.getvalue()


def test_pi_app_camera_reads_picamera2_at_the_model_size_as_bgr(models, monkeypatch):
    import types

    paths, _ = models
    FakePicamera2.opened = []
    monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=FakePicamera2))
    code, out, err = _run_pi_app(paths["int8"], "--camera", "--frames", 3, "--threads", 1)
    assert code == 0, err
    (camera,) = FakePicamera2.opened
    assert camera.config == {"main": {"format": "RGB888", "size": Model(paths["int8"]).camera_size()}}
    assert camera.started and camera.stopped and len(camera.frames) == 3
    lines = out.strip().splitlines()
    assert lines[:3] == _expected_lines(paths["int8"], camera.frames)  # read as BGR, the padding ignored
    assert lines[3].startswith("3 frames in") and "FPS" in lines[3]
    assert "; invoke p50 " in lines[3] and "of invoke)" in lines[3]  # the runtime's overhead on this device


def test_pi_app_ctrl_c_stops_the_camera_and_still_prints_the_summary(models, monkeypatch):
    import types

    class InterruptedCamera(FakePicamera2):
        def capture_array(self):
            if len(self.frames) == 2:
                raise KeyboardInterrupt
            return super().capture_array()

    paths, _ = models
    FakePicamera2.opened = []
    monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=InterruptedCamera))
    code, out, err = _run_pi_app(paths["int8"], "--camera", "--threads", 1)
    (camera,) = FakePicamera2.opened
    assert code == 0 and camera.stopped and err.strip().endswith("stopped")
    assert out.strip().splitlines()[-1].startswith("2 frames in")


def test_pi_app_camera_asks_opencv_for_a_covering_4_3_mode(models, monkeypatch):
    cv2 = pytest.importorskip("cv2")
    paths, _ = models
    delivered = [_bgr_photo((320, 240)), _bgr_photo((320, 240))[::-1].copy()]  # the driver's nearest mode
    asked = {}

    class FakeCapture:
        def __init__(self, index):
            asked["index"], self.frames = index, list(delivered)

        def isOpened(self):
            return True

        def set(self, prop, value):
            asked[prop] = value
            return True

        def read(self):
            return (True, self.frames.pop(0)) if self.frames else (False, None)

        def release(self):
            asked["released"] = True

    monkeypatch.setitem(sys.modules, "picamera2", None)  # not installed: import fails
    monkeypatch.setattr(cv2, "VideoCapture", FakeCapture)
    code, out, err = _run_pi_app(paths["int8"], "--camera", "--frames", 5, "--threads", 1)
    assert code == 0, err
    # A 16x16 input: the smallest 4:3 frame covering it, not the square that would get a smaller mode.
    assert (asked[cv2.CAP_PROP_FRAME_WIDTH], asked[cv2.CAP_PROP_FRAME_HEIGHT]) == (21, 16)
    assert asked["index"] == 0 and asked["released"]
    lines = out.strip().splitlines()
    assert lines[:2] == _expected_lines(paths["int8"], delivered)  # the camera ran dry after 2 of 5
    assert lines[2].startswith("2 frames in")


@pytest.mark.parametrize("camera", ["picamera2", "opencv"])
def test_pi_app_says_when_there_is_no_camera(models, monkeypatch, camera):
    import types

    paths, _ = models
    if camera == "picamera2":
        def no_camera():
            raise IndexError("list index out of range")  # what picamera2 raises with no camera connected
        monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=no_camera))
        message = "error: picamera2 could not start a camera (IndexError: list index out of range)"
    else:
        cv2 = pytest.importorskip("cv2")
        monkeypatch.setitem(sys.modules, "picamera2", None)
        monkeypatch.setattr(cv2, "VideoCapture", lambda index: types.SimpleNamespace(
            isOpened=lambda: False, release=lambda: None))
        message = "error: no camera found at index 0 (OpenCV): connect one, or pass --images FOLDER"
    code, out, err = _run_pi_app(paths["int8"], "--camera")
    assert code == 2 and out == "" and err.strip().splitlines()[-1].startswith(message)


def test_pi_app_refuses_a_missing_image_folder(models):
    paths, _ = models
    code, _, err = _run_pi_app(paths["int8"], "--images", "missing-folder")
    assert code == 2 and err.strip() == "error: --images needs a folder of images; missing-folder is not one"


def test_pi_app_refuses_a_bad_thread_count_in_one_line(models, capsys):
    paths, _ = models
    from examples import pi_app

    with pytest.raises(SystemExit) as stopped:  # argparse's usage error
        pi_app.main([str(paths["int8"]), "--images", ".", "--threads", "0"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        "argument --threads: must be a whole number >= 1; got '0'")


def test_tensorflow_fallback_backend_gives_same_outputs(models):
    paths, calib = models
    heavy = Model(paths["float"], backend="tensorflow")
    assert heavy.backend.name == "tensorflow" and heavy.backend.is_heavy
    np.testing.assert_allclose(heavy(calib[:4]), Model(paths["float"])(calib[:4]), atol=1e-6)


@pytest.mark.parametrize("engine", ["numpy", "opencv"])
def test_tasks_skip_rechecking_their_own_tensor_with_the_same_answer(models, engine):
    paths, _ = models
    frame = np.random.default_rng(9).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    for name in ("float", "int8"):
        model = Model(paths[name], image_engine=engine)
        tensor, _ = model.preprocess(frame)
        scores = next(iter(model.run(tensor).values()))[0]  # the public, checked path
        found = model.classify(frame, top_k=3)
        assert [c.index for c in found] == np.argsort(-scores, kind="stable")[:3].tolist()
        np.testing.assert_array_equal([c.score for c in found], np.sort(scores)[::-1][:3])


def test_image_tasks_on_a_two_input_model_say_how_to_run_it(tmp_path):
    keras = _tf.keras()
    a, b = keras.layers.Input((8, 8, 3), name="a"), keras.layers.Input((8, 8, 3), name="b")
    net = keras.Model([a, b], keras.layers.Flatten()(keras.layers.Add()([a, b])))
    path = tmp_path / "two.tflite"
    path.write_bytes(to_tflite(net, QuantizeSettings()))
    with pytest.raises(InputError, match="image tasks need a model with one input; this one has 2"):
        Model(path).classify(np.zeros((8, 8, 3), np.uint8))


def test_camera_size_asks_for_frames_that_need_no_resampling(models):
    paths, _ = models
    model = Model(paths["int8"], image_engine="numpy")  # a 16x16 input
    assert model.camera_size() == (16, 16)
    assert model.camera_size("letterbox") == (16, 12)  # a 4:3 sensor inside 16x16
    assert model.camera_size("crop") == (21, 16)  # the smallest 4:3 frame covering it
    assert model.camera_size("letterbox", aspect=(9, 16)) == (9, 16)
    for resize in ("stretch", "letterbox"):
        width, height = model.camera_size(resize)
        model.preprocess(np.zeros((height, width, 3), np.uint8), resize=resize)
        assert model._preprocessors[resize]._plans[(height, width, False)][1].identity
    with pytest.raises(ValueError, match="aspect must be two positive numbers"):
        model.camera_size(aspect=(4, 0))


def test_segment_and_embed_answer_at_the_frame_and_as_unit_vectors(tmp_path):
    from device_runtime.postprocess import l2_normalize, segmentation_mask

    keras = _tf.keras()
    keras.utils.set_random_seed(1)
    image = keras.layers.Input((16, 16, 3))
    per_pixel = keras.layers.Conv2D(2, 1)(image)  # two classes per pixel at the input's resolution
    path = tmp_path / "seg.tflite"
    path.write_bytes(to_tflite(keras.Model(image, per_pixel), QuantizeSettings()))
    model = Model(path, image_engine="numpy")
    frame = np.random.default_rng(10).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    mask = model.segment(frame)
    assert mask.shape == (24, 32)
    tensor, box = model.preprocess(frame, resize="letterbox")
    expected = segmentation_mask(next(iter(model.run(tensor).values())), box)
    np.testing.assert_array_equal(mask, expected)
    assert set(np.unique(mask)) == {0, 1}  # both classes appear: the comparison is not vacuous

    vector = model.embed(frame)
    assert vector.shape == (1, 16, 16, 2)
    np.testing.assert_allclose(np.linalg.norm(vector, axis=-1), 1.0, rtol=1e-5)
    tensor, _ = model.preprocess(frame)
    np.testing.assert_array_equal(vector, l2_normalize(next(iter(model.run(tensor).values()))))


def test_image_tasks_fill_the_interpreter_in_place_and_leave_it_runnable(models):
    """Tasks preprocess into the interpreter's input buffer and read its outputs in place: after a
    batch of 4 (the buffer reallocated) and after a failure with its traceback kept alive (as a REPL
    keeps the last one), every answer still equals the copying public path's."""
    paths, calib = models
    frame = np.random.default_rng(12).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    model = Model(paths["int8"], image_engine="numpy")
    tensor, _ = model.preprocess(frame)
    scores = next(iter(model.run(tensor).values()))[0]
    expected = [(int(i), float(scores[i])) for i in np.argsort(-scores, kind="stable")[:3]]
    batch = model(calib[:4])
    assert batch.shape == (4, 5)
    assert [(c.index, c.score) for c in model.classify(frame, top_k=3)] == expected
    with pytest.raises(InputError, match="detection needs rows of 4 box values.*is the model a classifier") as failure:
        model.detect(frame)  # a (1, 5) classifier output is no detector's: raised with the views in scope
    assert failure.value is not None  # the traceback is still referenced here
    assert [(c.index, c.score) for c in model.classify(frame, top_k=3)] == expected
    np.testing.assert_array_equal(model(calib[:4]), batch)


def test_image_tasks_refuse_an_image_spec_of_another_size(models):
    paths, _ = models
    model = Model(paths["float"], image=ImageSpec(20, 20))  # the model takes 16x16
    with pytest.raises(InputError, match=r"must have shape \(N, 16, 16, 3\); got \(1, 20, 20, 3\)"):
        model.classify(np.zeros((20, 20, 3), np.uint8))


def test_channels_first_input_is_filled_in_place_too(tmp_path):
    keras = _tf.keras()
    keras.utils.set_random_seed(3)
    image = keras.layers.Input((3, 12, 12))  # NCHW, as PyTorch exports keep it
    hidden = keras.layers.Conv2D(4, 3, activation="relu")(keras.layers.Permute((2, 3, 1))(image))
    net = keras.Model(image, keras.layers.Dense(6)(keras.layers.GlobalAveragePooling2D()(hidden)))
    path = tmp_path / "nchw.tflite"
    path.write_bytes(to_tflite(net, QuantizeSettings()))
    model = Model(path, image_engine="numpy", image=ImageSpec(12, 12, 3, "NCHW"))  # no metadata: say it
    frame = np.random.default_rng(13).integers(0, 256, (20, 16, 3), dtype=np.uint8)
    tensor, _ = model.preprocess(frame)
    assert tensor.shape == (1, 3, 12, 12)
    scores = next(iter(model.run(tensor).values()))[0]
    found = model.classify(frame, top_k=6)
    assert [c.index for c in found] == np.argsort(-scores, kind="stable").tolist()
    np.testing.assert_array_equal([c.score for c in found], np.sort(scores)[::-1])


def test_bench_says_when_tflite_runtime_runs_int8_without_xnnpack(models):
    from device_runtime.bench import benchmark, render

    paths, _ = models
    pi = benchmark(paths["int8"], runs=2, warmup=0, backend="tflite-runtime")
    assert len(pi["notes"]) == 1 and "builtin kernels" in pi["notes"][0]
    assert render(pi).splitlines()[-1].startswith("note: tflite-runtime 2.14's XNNPACK")
    assert benchmark(paths["int8"], runs=2, warmup=0, backend="ai-edge-litert")["notes"] == []
    assert benchmark(paths["float"], runs=2, warmup=0, backend="tflite-runtime")["notes"] == []  # float ops


def test_stats_tell_the_invoke_from_the_pre_and_post_processing_around_it(models, monkeypatch):
    """A task whose image reading is made 3 ms slower: the 3 ms show in the overhead, not in the invoke."""
    import time as clock

    import device_runtime.model as model_module

    paths, _ = models
    model = Model(paths["int8"])
    frame = np.random.default_rng(0).integers(0, 256, (16, 16, 3), np.uint8)
    for _ in range(5):
        model.classify(frame)
    model.reset_stats()
    assert model.stats()["calls"] == 0 and model.stats()["overhead_ms"] is None
    slow_read = model_module.load_image

    def slowly(image, color_order):
        clock.sleep(0.003)
        return slow_read(image, color_order)

    monkeypatch.setattr(model_module, "load_image", slowly)
    for _ in range(20):
        model.classify(frame)
    stats = model.stats()
    assert stats["calls"] == 20 and stats["invoke_ms"]["window"] == 20
    assert stats["overhead_ms"]["p50"] >= 3.0 and stats["invoke_ms"]["p50"] < 1.0, stats
    assert stats["latency_ms"]["p50"] >= stats["overhead_ms"]["p50"] + stats["invoke_ms"]["p50"] * 0.5
    assert stats["overhead_share"] == pytest.approx(stats["overhead_ms"]["p50"] / stats["invoke_ms"]["p50"])
    model.run(np.zeros((4, 16, 16, 3), np.float32))  # a batch: one call, its invokes summed
    assert model.stats()["calls"] == 21 and model.stats()["overhead_ms"]["window"] == 21


def test_bench_times_an_app_task_and_the_overhead_around_its_invoke(models, tmp_path):
    from PIL import Image
    from sklearn.datasets import load_sample_image

    from device_runtime.bench import benchmark, main, render

    paths, _ = models
    report = benchmark(paths["int8"], threads=(1, 2), runs=30, warmup=3, task="classify")
    assert report["task"] == "classify" and report["frame"] == "random 16x16 frame"  # Model.camera_size()
    for row in report["results"]:
        assert 0 < row["invoke_p50_ms"] <= row["p50_ms"] and 0 <= row["overhead_p50_ms"] <= row["p50_ms"]
        assert row["overhead_share"] == pytest.approx(row["overhead_p50_ms"] / row["invoke_p50_ms"])
    assert "classify on a random 16x16 frame" in render(report) and "of invoke)" in render(report)
    Image.fromarray(load_sample_image("china.jpg")).save(tmp_path / "china.jpg")
    photo = benchmark(paths["int8"], runs=5, warmup=1, task="classify", image=tmp_path / "china.jpg")
    assert photo["frame"] == "640x427 image"
    with pytest.raises(ValueError, match="task must be one of run, classify, detect; got 'segmentation'"):
        benchmark(paths["int8"], runs=1, task="segmentation")
    with pytest.raises(ValueError, match="threads needs at least one thread count"):
        benchmark(paths["int8"], threads=(), runs=1)
    assert main([str(paths["int8"]), "--task", "detect", "--runs", "1"]) == 2  # a classifier cannot detect


STUBS = Path(__file__).parent / "delegate_stub"


@pytest.mark.skipif(not shutil.which("gcc"), reason="no gcc to build the stub delegate")
@pytest.mark.parametrize("backend", ["ai-edge-litert", "tflite-runtime"])
def test_delegates_load_by_path_and_take_part(models, tmp_path, capfd, backend):
    """A stub external delegate (tests/delegate_stub) that claims no operators: the interpreter creates it
    and asks it to prepare the graph, and the answers are the builtin kernels' own."""
    import ctypes

    paths, calib = models
    library = tmp_path / "libcounting_delegate.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(library), str(STUBS / "counting_delegate.c")], check=True)
    model = Model(paths["int8"], delegates=[str(library)], backend=backend)
    counters = ctypes.CDLL(str(library))  # the same loaded library: its counters
    assert ctypes.c_int.in_dll(counters, "created").value == 1
    assert ctypes.c_int.in_dll(counters, "prepare_calls").value >= 1
    np.testing.assert_array_equal(model(calib[:4]), Model(paths["int8"], backend=backend)(calib[:4]))

    not_delegate = tmp_path / "libplain.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(not_delegate), str(STUBS / "no_entry_points.c")],
                   check=True)
    capfd.readouterr()
    for bad, message in ((tmp_path / "missing.so", "cannot load delegate .*missing.so"),
                         (paths["int8"], "cannot load delegate .*invalid ELF header"),
                         (not_delegate, "is not a TFLite delegate library: it has no tflite_plugin_create_delegate")):
        with pytest.raises(UnsupportedModelError, match=message):
            Model(paths["int8"], delegates=[str(bad)], backend=backend)
    assert "Traceback" not in capfd.readouterr().err  # load_delegate's half-built object used to print one
