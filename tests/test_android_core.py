"""`sdk export android` and the Android app's Kotlin core, tested against the Python runtime.

The Python device runtime writes golden fixtures (frames -> input tensors,
raw outputs -> top-k and detections, exported model cards), and
android_demo/core/test.sh compiles the pure-Kotlin core and runs its JUnit
tests on them in the same run.  The APK itself needs Google's Maven
repository and is not built here.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from converters import _tf
from converters.targets.android import CARD_FILE, export_android
from converters.errors import OutputPathError, UserInputError
from converters.targets.tflite.metadata import MetadataSpec, add_metadata
from converters.recipe import QuantizeSettings
from converters.targets.tflite.convert import to_tflite
from device_runtime import Model
from device_runtime import postprocess as post
from device_runtime.preprocess import ImagePreprocessor, ImageSpec, Letterbox, yuv420_to_rgb
from sdk.cli import main
from tests.test_metadata import _detector_and_audio

ROOT = Path(__file__).resolve().parents[1]
CORE_TESTS = ROOT / "android_demo" / "core" / "test.sh"
YOLO_LABELS = ["person", "bicycle", "car"]


def _project(folder: Path) -> Path:
    (folder / "app" / "src" / "main").mkdir(parents=True, exist_ok=True)
    return folder


def _tensor_json(array: np.ndarray) -> dict:
    return {"shape": list(array.shape), "dtype": array.dtype.name, "values": array.reshape(-1).tolist()}


def _box_json(box: Letterbox) -> dict:
    return {"scale_x": box.scale_x, "scale_y": box.scale_y, "pad_x": box.pad_x, "pad_y": box.pad_y,
            "source_width": box.source_width, "source_height": box.source_height}


def _detections_json(found) -> list[dict]:
    return [{"box": list(d.box), "score": d.score, "class_id": d.class_id, "label": d.label} for d in found]


def _classes_json(found) -> list[dict]:
    return [{"index": c.index, "score": c.score, "label": c.label} for c in found]


PREPROCESS_SPECS = [  # (name, spec, scale, zero point, dtype)
    ("float stretch [-1,1]", ImageSpec(24, 32, mean=(127.5,), std=(127.5,)), 0.0, 0, np.float32),
    ("int8 letterbox", ImageSpec(32, 32, resize="letterbox"), 1 / 255, -128, np.int8),
    ("uint8 crop NCHW", ImageSpec(20, 16, layout="NCHW", resize="crop"), 1 / 255, 0, np.uint8),
    ("gray float letterbox", ImageSpec(8, 8, channels=1, resize="letterbox"), 0.0, 0, np.float32),
    ("imagenet NCHW crop", ImageSpec(28, 28, layout="NCHW", resize="crop", mean=(123.675, 116.28, 103.53),
                                     std=(58.395, 57.12, 57.375)), 0.0, 0, np.float32),
    ("int8 stretch [-1,1] odd scale", ImageSpec(17, 23, mean=(127.5,), std=(127.5,)), 0.0078431, 3, np.int8),
]


def _preprocess_cases(rng) -> list[dict]:
    cases = []
    for (height, width) in ((37, 29), (48, 64), (20, 20)):
        frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        for name, spec, scale, zero, dtype in PREPROCESS_SPECS:
            tensor, box = ImagePreprocessor(spec, scale, zero, dtype, engine="numpy")(frame)
            cases.append({"name": f"{name} from {width}x{height}", "width": width, "height": height,
                          "rgb": frame.reshape(-1).tolist(),
                          "spec": {"height": spec.height, "width": spec.width, "channels": spec.channels,
                                   "layout": spec.layout, "mean": list(spec.mean), "std": list(spec.std),
                                   "resize": spec.resize},
                          "quantization": {"scale": scale, "zero_point": zero},
                          "expected": _tensor_json(tensor), "letterbox": _box_json(box)})
    return cases


def _yuv_cases(rng) -> list[dict]:
    cases = []
    for width, height in ((8, 6), (7, 5)):
        y = rng.integers(0, 256, (height, width), dtype=np.uint8)
        u, v = (rng.integers(0, 256, ((height + 1) // 2, (width + 1) // 2), dtype=np.uint8) for _ in range(2))
        cases.append({"name": f"yuv {width}x{height}", "width": width, "height": height,
                      "y": y.reshape(-1).tolist(), "u": u.reshape(-1).tolist(), "v": v.reshape(-1).tolist(),
                      "expected": yuv420_to_rgb(y, u, v).reshape(-1).tolist()})
    return cases


def _yolo_raw(rng, anchors: int, classes: int, objectness: bool, channels_first: bool) -> np.ndarray:
    """Clustered boxes (so NMS has work) around three centres, in 64x64 model pixels."""
    centres = rng.uniform(10, 54, (3, 2))[rng.integers(0, 3, anchors)] + rng.normal(0, 1.5, (anchors, 2))
    sizes = rng.uniform(8, 20, (anchors, 2))
    scores = rng.uniform(0, 1, (anchors, classes + int(objectness)))
    rows = np.concatenate([centres, sizes, scores], axis=1).astype(np.float32)
    return (rows.T if channels_first else rows)[None]


def _decode_cases(rng) -> dict:
    box = Letterbox(0.5, 0.5, 0.0, 8.0, 128, 96)
    yolo = []
    float_raw = _yolo_raw(rng, 60, 3, False, True)
    yolo.append({"name": "yolo float channels-first", "output": _tensor_json(float_raw), "quantization": None,
                 "has_objectness": False, "score_threshold": 0.3, "iou_threshold": 0.45,
                 "expected": _detections_json(post.decode_yolo(float_raw, box, score_threshold=0.3,
                                                               labels=YOLO_LABELS)),
                 "letterbox": _box_json(box), "input_size": [64, 64], "labels": YOLO_LABELS})
    real = _yolo_raw(rng, 50, 3, True, False)
    scale, zero = float(np.float32(real.max() / 255)), -128
    stored = np.clip(np.round(real / scale) + zero, -128, 127).astype(np.int8)
    yolo.append({"name": "yolo int8 channels-last with objectness", "output": _tensor_json(stored),
                 "quantization": {"scale": scale, "zero_point": zero}, "has_objectness": True,
                 "score_threshold": 0.2, "iou_threshold": 0.5,
                 "expected": _detections_json(post.decode_yolo(stored, box, score_threshold=0.2, iou_threshold=0.5,
                                                               has_objectness=True, labels=YOLO_LABELS,
                                                               quantization=(scale, zero))),
                 "letterbox": _box_json(box), "input_size": [64, 64], "labels": YOLO_LABELS})
    normalized = float_raw.copy()
    normalized[0, :4] /= 64.0
    yolo.append({"name": "yolo normalized boxes", "output": _tensor_json(normalized), "quantization": None,
                 "has_objectness": False, "score_threshold": 0.5, "iou_threshold": 0.3,
                 "expected": _detections_json(post.decode_yolo(normalized, box, score_threshold=0.5,
                                                               iou_threshold=0.3, input_size=(64, 64),
                                                               labels=YOLO_LABELS)),
                 "letterbox": _box_json(box), "input_size": [64, 64], "labels": YOLO_LABELS})
    ssd = []
    for order in ((1, 0, 3, 2), (0, 1, 2, 3)):
        boxes = np.sort(rng.uniform(0, 1, (1, 10, 2, 2)), axis=2).transpose(0, 1, 3, 2).reshape(1, 10, 4)
        classes = rng.integers(0, 3, (1, 10)).astype(np.float32)
        scores = rng.uniform(0, 1, (1, 10)).astype(np.float32)
        found = post.decode_ssd(boxes.astype(np.float32), classes, scores, np.float32([7]), box, (64, 64),
                                score_threshold=0.3, labels=YOLO_LABELS, box_index=order)
        ssd.append({"name": f"ssd box order {order}", "boxes": boxes.astype(np.float32).reshape(-1).tolist(),
                    "classes": classes.reshape(-1).tolist(), "scores": scores.reshape(-1).tolist(), "count": 7,
                    "letterbox": _box_json(box), "input_size": [64, 64], "score_threshold": 0.3,
                    "box_index": list(order), "labels": YOLO_LABELS, "expected": _detections_json(found)})
    scores = np.float32([0.1, 0.7, 0.3, 0.7, 0.05, 0.9])  # a tie: the lower index comes first
    top = [{"name": "top-k with a tie", "scores": scores.tolist(), "k": 4, "labels": list("abcdef"),
            "expected": _classes_json(post.top_k(scores, 4, list("abcdef")))}]
    return {"yolo": yolo, "ssd": ssd, "top_k": top}


def _yolo_model(folder: Path) -> Path:
    """An int8 YOLO-style detector: 32x32 RGB -> (1, 4 + 3 classes, 16 anchors), boxes in model pixels."""
    keras = _tf.keras()
    keras.utils.set_random_seed(5)
    image = keras.layers.Input((32, 32, 3), name="image")
    features = keras.layers.Flatten()(keras.layers.Conv2D(4, 3, strides=4, activation="relu")(image))
    boxes = keras.layers.Rescaling(32.0)(keras.layers.Dense(4 * 16, activation="sigmoid")(features))
    scores = keras.layers.Dense(3 * 16, activation="sigmoid")(features)
    rows = keras.layers.Concatenate(axis=1)([keras.layers.Reshape((4, 16))(boxes),
                                             keras.layers.Reshape((3, 16))(scores)])
    calib = np.random.default_rng(6).random((64, 32, 32, 3), dtype=np.float32)
    path = folder / "yolo_int8.tflite"
    path.write_bytes(to_tflite(keras.Model(image, rows), QuantizeSettings(mode="int8", io_type="int8"), calib))
    return path


def _model_case(name: str, project: Path, frame: np.ndarray, *, k: int = 3, score_threshold: float = 0.0,
                has_objectness: bool = False) -> dict:
    """Run the exported model in the Python runtime; record what the Kotlin core must reproduce."""
    assets = project / "app" / "src" / "main" / "assets"
    card = json.loads((assets / CARD_FILE).read_text())
    # As the app does: labels from the card.  The numpy engine is the reference the Kotlin core reproduces.
    model = Model(assets / "model.tflite", labels=card["labels"], image_engine="numpy")
    resize = card["input"]["resize"]
    tensor, box = model.preprocess(frame, resize=resize)
    raw = model.run(tensor, raw=True)
    outputs = [_tensor_json(raw[o["name"]]) for o in card["outputs"]]
    if card["task"] == "image_classifier":
        expected = _classes_json(model.classify(frame, top_k=k))
    else:
        expected = _detections_json(model.detect(frame, score_threshold=score_threshold,
                                                 has_objectness=has_objectness))
    return {"name": name, "card": str(assets / CARD_FILE), "width": frame.shape[1], "height": frame.shape[0],
            "rgb": frame.reshape(-1).tolist(), "expected_input": _tensor_json(tensor), "outputs": outputs,
            "expected": expected, "k": k, "score_threshold": score_threshold,
            "expected_card": {"task": card["task"], "labels": card["labels"], "input_dtype": tensor.dtype.name,
                              "output_roles": [o["role"] for o in card["outputs"]]}}


@pytest.fixture(scope="module")
def exported(digits, digits_model_path, digits_npz, tmp_path_factory):
    """Three models exported with `sdk export android`: digits int8 classifier, SSD and int8 YOLO detectors."""
    folder = tmp_path_factory.mktemp("android")
    train, _ = digits_npz
    labels = folder / "digits.txt"
    labels.write_text("\n".join(f"digit {i}" for i in range(10)))
    digits_tflite = folder / "digits_int8.tflite"
    runner = CliRunner()
    done = runner.invoke(main, ["convert", str(digits_model_path), "-o", str(digits_tflite), "--quantize", "int8",
                                "--io-type", "int8", "--calib", str(train), "--labels", str(labels),
                                "--mean", "0", "--std", "255"])  # the digits arrays are [0, 1]: say so
    assert done.exit_code == 0, done.output
    ssd_plain, _ = _detector_and_audio(folder)
    ssd = folder / "ssd_meta.tflite"
    add_metadata(ssd_plain, ssd, MetadataSpec(task="object_detector", labels=["person", "car"], mean=(127.5,),
                                              std=(127.5,)))
    (folder / "yolo.txt").write_text("\n".join(YOLO_LABELS))
    commands = {"digits": [str(digits_tflite)], "ssd": [str(ssd)],
                "yolo": [str(_yolo_model(folder)), "--task", "object_detector", "--labels",
                         str(folder / "yolo.txt")]}
    projects = {}
    for name, args in commands.items():
        projects[name] = _project(folder / f"app_{name}")
        done = runner.invoke(main, ["export", "android", *args, "-o", str(projects[name])])
        assert done.exit_code == 0, done.output
        assert "wrote model.tflite, labels.txt, model_card.json" in done.output
    rng = np.random.default_rng(11)
    digit_frame = np.repeat((digits.x_test[3] * 255).round().astype(np.uint8), 3, axis=2)
    cases = [_model_case("digits int8 classifier", projects["digits"], digit_frame),
             _model_case("ssd detector", projects["ssd"], rng.integers(0, 256, (30, 40, 3), dtype=np.uint8),
                         score_threshold=0.3),
             _model_case("yolo int8 detector", projects["yolo"],
                         rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), score_threshold=0.5)]
    return folder, projects, cases


def test_export_writes_a_card_that_describes_the_model(exported):
    _, projects, _ = exported
    card = json.loads((projects["digits"] / "app/src/main/assets" / CARD_FILE).read_text())
    assert card["task"] == "image_classifier" and card["labels"][3] == "digit 3"
    assert {k: card["input"][k] for k in ("height", "width", "channels", "layout", "dtype", "resize")} == \
        {"height": 8, "width": 8, "channels": 1, "layout": "NHWC", "dtype": "int8", "resize": "stretch"}
    assert (card["input"]["mean"], card["input"]["std"]) == ([0.0], [255.0])
    assert card["input"]["quantization"]["zero_point"] == -128 and card["outputs"][0]["role"] == "scores"
    ssd = json.loads((projects["ssd"] / "app/src/main/assets" / CARD_FILE).read_text())
    assert sorted(o["role"] for o in ssd["outputs"]) == ["category", "location", "number of detections", "score"]
    assert ssd["detection"]["format"] == "ssd" and ssd["input"]["resize"] == "letterbox"
    yolo = json.loads((projects["yolo"] / "app/src/main/assets" / CARD_FILE).read_text())
    assert yolo["detection"]["format"] == "yolo" and yolo["outputs"][0]["shape"] == [1, 7, 16]
    assert yolo["outputs"][0]["quantization"]["scale"] > 0


def test_kotlin_core_reproduces_the_python_runtime(exported):
    folder, _, models = exported
    rng = np.random.default_rng(7)
    fixtures = {"preprocess": _preprocess_cases(rng), "yuv": _yuv_cases(rng), **_decode_cases(rng), "models": models}
    assert any(c["expected"] for c in fixtures["yolo"]) and all(m["expected"] for m in models)
    path = folder / "golden.json"
    path.write_text(json.dumps(fixtures))
    run = subprocess.run(["bash", str(CORE_TESTS), str(path)], capture_output=True, text=True, timeout=900)
    if run.returncode == 77:
        pytest.skip(run.stderr.strip())
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "OK (14 tests)" in run.stdout


def test_yuv_matches_pillow_within_rounding():
    from PIL import Image

    rng = np.random.default_rng(3)
    y = rng.integers(0, 256, (6, 8), dtype=np.uint8)
    u, v = (rng.integers(0, 256, (3, 4), dtype=np.uint8) for _ in range(2))
    full = [np.repeat(np.repeat(p, 2, axis=0), 2, axis=1) for p in (u, v)]
    reference = np.asarray(Image.fromarray(np.stack([y, *full], axis=2), "YCbCr").convert("RGB")).astype(int)
    assert np.abs(reference - yuv420_to_rgb(y, u, v).astype(int)).max() <= 1
    packed = np.concatenate([y.reshape(-1), u.reshape(-1), v.reshape(-1)]).reshape(9, 8)  # I420, as picamera2
    np.testing.assert_array_equal(yuv420_to_rgb(packed), yuv420_to_rgb(y, u, v))


def test_export_refuses_what_the_app_cannot_run(exported, tmp_path):
    folder, projects, _ = exported
    digits = projects["digits"] / "app/src/main/assets/model.tflite"
    before = digits.read_bytes()
    with pytest.raises(OutputPathError, match="already has model.tflite.*--force"):
        export_android(digits, projects["digits"])
    assert digits.read_bytes() == before
    with pytest.raises(UserInputError, match="not the Android demo project"):
        export_android(digits, tmp_path)
    _, audio = _detector_and_audio(tmp_path)
    with pytest.raises(UserInputError, match="no task metadata. Pass --task"):
        export_android(audio, _project(tmp_path / "a"))
    with pytest.raises(UserInputError, match="not an image model the app can feed"):
        export_android(audio, _project(tmp_path / "a"), task="image_classifier", labels=["x", "y", "z"])
    yolo = folder / "yolo_int8.tflite"
    with pytest.raises(UserInputError, match="has no labels"):
        export_android(yolo, _project(tmp_path / "b"), task="object_detector")
    with pytest.raises(UserInputError, match="holds 3 classes but there are 2 labels"):
        export_android(yolo, _project(tmp_path / "b"), task="object_detector", labels=["a", "b"])
    with pytest.raises(UserInputError, match="scores 10 classes but there are 2 labels"):
        export_android(digits, _project(tmp_path / "c"), labels=["a", "b"])
    assert not list((tmp_path / "b").rglob("*.json")) and not list((tmp_path / "c").rglob("*.tflite"))
    from converters import _tf
    from converters.recipe import QuantizeSettings
    from converters.targets.tflite.convert import to_tflite

    keras = _tf.keras()  # a classifier whose metadata gives no normalisation: the app must not guess one
    bare = tmp_path / "bare.tflite"
    bare.write_bytes(to_tflite(keras.Sequential([keras.layers.Input((8, 8, 3)), keras.layers.Flatten(),
                                                 keras.layers.Dense(3)]), QuantizeSettings()))
    with pytest.raises(UserInputError, match="gives no input normalisation, so the app would have to guess it; "
                                             "pass --mean M --std S"):
        export_android(bare, _project(tmp_path / "e"), task="image_classifier", labels=["a", "b", "c"])
    assert not list((tmp_path / "e").rglob("*.tflite"))
    export_android(bare, _project(tmp_path / "e"), task="image_classifier", labels=["a", "b", "c"],
                   mean=(0.0,), std=(255.0,))
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(before[: len(before) // 3])
    done = CliRunner().invoke(main, ["export", "android", str(truncated), "-o", str(_project(tmp_path / "d"))])
    assert done.exit_code == 2 and done.output.startswith("error: ") and len(done.output.strip().splitlines()) == 1


def test_core_module_stays_free_of_android():
    """The core must compile and run on any JVM: no android.* or androidx.* imports."""
    sources = list((ROOT / "android_demo" / "core" / "src").rglob("*.kt"))
    assert len(sources) >= 6
    offenders = [f"{path.name}: {line.strip()}" for path in sources for line in path.read_text().splitlines()
                 if line.startswith("import android") or line.startswith("import androidx")]
    assert offenders == []
    app = (ROOT / "android_demo" / "app" / "src" / "main" / "java" / "dev" / "edgesdk" / "demo" / "MainActivity.kt")
    assert "import dev.edgesdk.core.ModelPipeline" in app.read_text()  # the app uses the tested core
