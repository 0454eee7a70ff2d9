"""Device runtime overhead and cold start, as ratios measured in one run.

- Classifier: MobileNetV2 (224x224, int8, random weights), frame -> top-5.
- Detector: MobileNetV2-0.5 backbone at 320x320 with a YOLO-style head
  (2100 anchors x 80 classes, boxes normalised as int8 exports keep them), whose
  output carries 5 planted objects with 20 overlapping candidates each, so
  letterbox + decode + class-aware NMS do the work of a real scene; the bench
  checks that the 5 objects come back.
- Each against raw interpreter set_tensor + invoke + get_tensor of the ready
  tensor; with float I/O (the converter's default) and int8 I/O; the numpy and
  the OpenCV image engines; a 640x480 frame resized on the CPU and a frame the
  camera delivers at the model's size; 1 and 2 interpreter threads.
- Both are written by `sdk convert`, as an app gets them: with build info, whose calibration
  statistics make the Model monitor input drift on every call, and (the classifier) standard
  metadata.  The bench's models once came straight from the TFLite converter and so never showed
  the monitor's cost, which was then more than all the rest of the overhead.
- The camera-size int8 cases once more on tflite-runtime 2.14 (the Pi images' interpreter), whose
  int8 invoke is many times slower: what the same overhead amounts to beside a slow invoke.
- Cold start: import device_runtime + load + first inference, per backend, and
  the same with a first classify() of a frame (which imports OpenCV).

Iterations alternate between the two sides so machine noise hits both alike, and every case is
measured in 3 passes over all cases; the median pass is reported with the range.
Run: .venv/bin/python -m bench.runtime   (writes bench/results/runtime.{json,md})
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from bench import arguments, publish
from converters import _tf
from sdk import convert

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 200
PASSES = 3
FRAME_SHAPE = (480, 640, 3)
OBJECTS, CANDIDATES_PER_OBJECT, ANCHORS, CLASSES = 5, 20, 2100, 80
LIMITS = {"classifier": 0.10, "detector": 0.15}  # #5's goals: overhead as a share of the raw invoke


def calibration(size: int, count: int = 8) -> np.ndarray:
    """Images in [0, 1] that reach both ends, so int8 inputs get scale 1/255 and zero point -128."""
    images = np.random.default_rng(0).random((count, size, size, 3), dtype=np.float32)
    images[:, 0, 0], images[:, 0, 1] = 0.0, 1.0
    return images


def build_classifier(io_type: str = "float32") -> bytes:
    keras = _tf.keras()
    keras.utils.set_random_seed(0)
    net = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3), classes=1000)
    return converted(net, io_type, calibration(224))


def converted(net, io_type: str, calib: np.ndarray) -> bytes:
    """int8 weights, ``io_type`` I/O, as `sdk convert` writes the model: with the build info whose
    calibration statistics make the Model monitor input drift on every call, as an app's model does."""
    with tempfile.TemporaryDirectory() as folder:
        result = convert(net, Path(folder) / "model.tflite", {"quantize": {"mode": "int8", "io_type": io_type}},
                         calib_data=calib)
        return result.path.read_bytes()


def planted_detections(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A (4 + classes, anchors) YOLO output in [0, 1] holding OBJECTS objects, and their true boxes.

    Each object owns CANDIDATES_PER_OBJECT anchors whose boxes jitter around it, scored 0.3-0.9
    for its class, as a trained detector's neighbouring anchors fire on one object; the other
    anchors score 0-0.02 everywhere.  Returns the output and the objects' x1y1x2y2 in [0, 1].
    """
    rng = np.random.default_rng(seed)
    output = rng.uniform(0.0, 0.02, (4 + CLASSES, ANCHORS)).astype(np.float32)
    output[:4] = rng.uniform(0.2, 0.8, (4, ANCHORS))
    centres, sizes = rng.uniform(0.25, 0.75, (OBJECTS, 2)), rng.uniform(0.1, 0.25, (OBJECTS, 2))
    anchors = rng.choice(ANCHORS, (OBJECTS, CANDIDATES_PER_OBJECT), replace=False)
    for obj in range(OBJECTS):
        jitter = rng.normal(0.0, 0.004, (CANDIDATES_PER_OBJECT, 4))
        output[:4, anchors[obj]] = (np.concatenate([centres[obj], sizes[obj]]) + jitter).T
        output[4 + obj * 13, anchors[obj]] = rng.uniform(0.3, 0.9, CANDIDATES_PER_OBJECT)
    truth = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)
    return output, truth


def build_detector(io_type: str = "float32") -> bytes:
    """A YOLO-style detector: 3 feature levels (40, 20, 10) -> (1, 84, 2100), cx, cy, w, h + 80 scores.

    Random weights score nothing above a threshold, so the head's own output enters at 1% on top of
    the planted scene: the whole backbone runs, and decoding sees a realistic set of candidates.
    """
    keras = _tf.keras()
    keras.utils.set_random_seed(0)
    backbone = keras.applications.MobileNetV2(weights=None, input_shape=(320, 320, 3), include_top=False,
                                              alpha=0.5)
    levels = [backbone.get_layer(n).output for n in ("block_6_expand_relu", "block_13_expand_relu", "out_relu")]
    heads = [keras.layers.Reshape((-1, 4 + CLASSES))(keras.layers.Conv2D(4 + CLASSES, 1, activation="sigmoid")(f))
             for f in levels]
    head = keras.layers.Permute((2, 1))(keras.layers.Concatenate(axis=1)(heads))
    planted = planted_detections()[0]
    out = keras.layers.Lambda(lambda t: 0.01 * t + planted[None], name="planted_scene")(head)
    return converted(keras.Model(backbone.input, out), io_type, calibration(320))


def raw_invoke_timer(data: bytes, tensor: np.ndarray, threads: int, backend: str = "ai-edge-litert"):
    """set_tensor + invoke + get_tensor of every output on the raw interpreter of ``backend``."""
    from device_runtime.backend import get_backend

    interpreter = get_backend(backend).interpreter_class(model_content=data, num_threads=threads)
    interpreter.allocate_tensors()
    index = interpreter.get_input_details()[0]["index"]
    outputs = [d["index"] for d in interpreter.get_output_details()]

    def run():
        interpreter.set_tensor(index, tensor)
        interpreter.invoke()
        return [interpreter.get_tensor(i) for i in outputs]

    return run


def interleaved(a, b, rounds: int = ROUNDS) -> tuple[float, float]:
    """Median seconds of a() and b(), alternating calls after a warm-up."""
    for _ in range(10):
        a(), b()
    ta, tb = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        a()
        ta.append(time.perf_counter() - start)
        start = time.perf_counter()
        b()
        tb.append(time.perf_counter() - start)
    return float(np.median(ta)), float(np.median(tb))


def overhead_row(case: str, ours, raw, limit: float | None, rounds: int = ROUNDS) -> dict:
    """One case to measure: ``ours`` and ``raw`` are timed in PASSES passes over all the cases."""
    return {"case": case, "ours": ours, "raw": raw, "limit": limit, "rounds": rounds}


def measure(rows: list[dict], passes: int = PASSES) -> list[dict]:
    """Every case once per pass, the passes one after another, so a noisy minute on this shared machine
    touches one pass of every case rather than all passes of a few; the median pass is reported."""
    timings = [[interleaved(row["ours"], row["raw"], row["rounds"]) for row in rows] for _ in range(passes)]
    results = []
    for i, row in enumerate(rows):
        passes_of_case = [(ours / raw - 1, ours, raw) for ours, raw in (t[i] for t in timings)]
        (overhead, ours, raw), spread = median_pass(passes_of_case)
        results.append({"case": row["case"], "ours_ms": ours * 1e3, "raw_ms": raw * 1e3, "overhead": overhead,
                        "overhead_us": (ours - raw) * 1e6, "range": spread, "limit": row["limit"]})
    return results


def median_pass(passes: list[tuple]) -> tuple[tuple, list[float]]:
    """The pass whose first figure is the median, and the range of that figure across passes."""
    ordered = sorted(passes)
    return ordered[len(ordered) // 2], [ordered[0][0], ordered[-1][0]]


def frames(detector: bool) -> dict[str, np.ndarray]:
    """A 640x480 camera frame to resize on the CPU, and one the camera already delivers at the model's
    size (picamera2's low-resolution stream, scaled by the ISP): 224x224, or 320x240 to letterbox."""
    rng = np.random.default_rng(0)
    small = (240, 320, 3) if detector else (224, 224, 3)
    return {f"{FRAME_SHAPE[1]}x{FRAME_SHAPE[0]} frame": rng.integers(0, 256, FRAME_SHAPE, dtype=np.uint8),
            f"{small[1]}x{small[0]} frame from the camera": rng.integers(0, 256, small, dtype=np.uint8)}


def check_planted(found: list, box) -> None:
    expected = box.to_original(planted_detections()[1] * 320.0)
    matched = sum(any(np.abs(np.array(d.box) - e).max() < 12.0 for d in found) for e in expected)
    if len(found) != OBJECTS or matched != OBJECTS:
        raise RuntimeError(f"the detector bench expects its {OBJECTS} planted objects; "
                           f"found {len(found)}, {matched} matching")


class FrameTask(NamedTuple):
    """A model's task on one frame, and the raw interpreter given the tensor it makes of that frame."""

    model: object
    tensor: np.ndarray
    task: Callable  # task(frame, **options) -> answer
    raw: Callable
    what: str
    limit: float


def frame_task(kind: str, data: bytes, frame: np.ndarray, threads: int, engine: str = "opencv",
               backend: str = "ai-edge-litert") -> FrameTask:
    from device_runtime import Model

    detector = kind == "detector"
    model = Model(data, num_threads=threads, image_engine=engine, backend=backend)
    tensor, box = model.preprocess(frame, resize="letterbox" if detector else None)
    raw = raw_invoke_timer(data, tensor, threads, backend)  # the raw side gets the ready tensor
    if detector:
        check_planted(model.detect(frame), box)
        return FrameTask(model, tensor, model.detect, raw,
                         f"letterbox, decode {OBJECTS * CANDIDATES_PER_OBJECT} candidates, NMS -> {OBJECTS} objects",
                         LIMITS[kind])
    return FrameTask(model, tensor, partial(model.classify, top_k=5), raw, "top-5", LIMITS[kind])


def task_rows(kind: str, io_type: str, data: bytes, threads: int) -> list[dict]:
    """Frame -> answer through the runtime vs raw invoke of the ready tensor, per frame source and engine."""
    rows = []
    for frame_name, frame in frames(kind == "detector").items():
        for engine in ("numpy", "opencv"):
            case = frame_task(kind, data, frame, threads, engine)
            name = f"{kind}, {io_type} I/O, {engine}, {threads} thread(s)"
            rows.append(overhead_row(f"{name}: {frame_name} -> {case.what}", partial(case.task, frame), case.raw,
                                     case.limit))
            if engine == "opencv" and io_type == "int8":
                bgr = np.ascontiguousarray(frame[..., ::-1])  # as cv2.VideoCapture and picamera2's RGB888 deliver
                rows.append(overhead_row(f"{name}: BGR {frame_name} -> {case.what}",
                                         partial(case.task, bgr, color_order="BGR"), case.raw, case.limit))
            if engine == "opencv" and io_type == "int8" and kind == "classifier" and frame.shape == FRAME_SHAPE:
                rows.append(overhead_row(f"{kind}, {io_type} I/O, {threads} thread(s): Model.run(tensor) only",
                                         partial(case.model.run, case.tensor), case.raw, None))
    return rows


def backend_rows(kind: str, data: bytes) -> list[dict]:
    """The camera-size int8 case on tflite-runtime 2.14, the Pi images' interpreter, at 1 thread.

    Its XNNPACK leaves int8 operators to the builtin kernels (quantized XNNPACK is off in its
    default delegate), so its invoke is many times slower here, as a Pi's is: the same runtime
    overhead is then a few tenths of a percent.  Fewer rounds, as each takes tens of ms.
    """
    frame_name, frame = list(frames(kind == "detector").items())[1]
    case = frame_task(kind, data, frame, 1, backend="tflite-runtime")
    return [overhead_row(f"{kind}, int8 I/O, opencv, tflite-runtime 2.14, 1 thread(s): {frame_name}",
                         partial(case.task, frame), case.raw, case.limit, rounds=30)]


def in_app_rows(models: dict, passes: int = PASSES) -> list[dict]:
    """pre + post around the invoke as an app's loop of image tasks sees it: one interpreter, calls back to
    back, each call's own invoke subtracted (Model.stats(), what ``device_runtime.bench --task`` reports on a
    device).  The interleaved rows above also carry a second interpreter's cache traffic, which an app has not."""
    from device_runtime.bench import benchmark

    cases = [(kind, threads, name, frame) for threads in (1, 2) for kind in ("classifier", "detector")
             for name, frame in frames(kind == "detector").items()]
    shares: dict[int, list] = {i: [] for i in range(len(cases))}
    for _ in range(passes):  # every case once per pass, as measure() does
        for i, (kind, threads, _name, frame) in enumerate(cases):
            report = benchmark(models[kind, "int8"], (threads,), warmup=20, runs=ROUNDS * 2,
                               task="detect" if kind == "detector" else "classify", image=frame)
            row = report["results"][0]
            shares[i].append((row["overhead_share"], row["overhead_p50_ms"] * 1e3, row["invoke_p50_ms"]))
    rows = []
    for i, (kind, threads, name, _frame) in enumerate(cases):
        (share, overhead_us, invoke_ms), spread = median_pass(shares[i])
        rows.append({"case": f"{kind}, int8 I/O, opencv, {threads} thread(s): {name}", "invoke_ms": invoke_ms,
                     "overhead_us": overhead_us, "share": share, "range": spread, "limit": LIMITS[kind]})
    return rows


def cold_start(path: Path, backend: str, first: str) -> float:
    """Seconds from a fresh interpreter process to the first answer, median of 5."""
    inference = ("m.run({s.name: np.zeros(s.shape, s.dtype) for s in m.inputs}, raw=True)" if first == "run" else
                 "m.classify(np.zeros((480, 640, 3), np.uint8))")
    code = ("import time; t = time.perf_counter()\nimport numpy as np, device_runtime\n"
            f"m = device_runtime.Model({str(path)!r}, backend={backend!r})\n{inference}\n"
            "print(time.perf_counter() - t)")
    runs = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                                 check=True).stdout.split()[-1]) for _ in range(5)]
    return float(np.median(runs))


def main(argv: list[str] | None = None) -> None:
    arguments(__doc__).parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench_runtime_"))
    models = {("classifier", io): build_classifier(io) for io in ("float32", "int8")}
    models.update({("detector", io): build_detector(io) for io in ("float32", "int8")})
    (work / "classifier.tflite").write_bytes(models["classifier", "int8"])
    rows = measure([row for threads in (1, 2) for (kind, io), data in models.items()
                    for row in task_rows(kind, io, data, threads)]
                   + [row for kind in ("classifier", "detector") for row in backend_rows(kind, models[kind, "int8"])])
    in_app = in_app_rows(models)
    cold = {f"{backend}, {first}": cold_start(work / "classifier.tflite", backend, first)
            for backend in ("ai-edge-litert", "tflite-runtime") for first in ("run", "classify")}

    lines = [f"Device runtime overhead vs raw interpreter (ai-edge-litert unless named): medians of {ROUNDS} "
             f"interleaved rounds (30 for tflite-runtime), the median of {PASSES} passes over all cases (range "
             "across passes), one run", "",
             "| case | device_runtime ms | raw interpreter ms | overhead | range | overhead us | limit | within |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        limit = f"{r['limit']:.0%}" if r["limit"] is not None else "-"
        within = "-" if r["limit"] is None else ("yes" if r["overhead"] <= r["limit"] else "no")
        lines.append(f"| {r['case']} | {r['ours_ms']:.3f} | {r['raw_ms']:.3f} | {r['overhead']:+.1%} "
                     f"| {r['range'][0]:+.0%}..{r['range'][1]:+.0%} | {r['overhead_us']:.0f} | {limit} | {within} |")
    lines += ["", f"In an app's loop: pre + post around the invoke, per call, {ROUNDS * 2} image tasks back to back on "
              f"one interpreter, each call's own invoke subtracted (Model.stats(); `python -m device_runtime.bench "
              f"--task` measures the same on a device); the median of {PASSES} passes (range across passes)", "",
              "| case | invoke p50 ms | pre + post p50 us | share of invoke | range | limit | within |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['invoke_ms']:.3f} | {r['overhead_us']:.0f} | {r['share']:.1%} | "
              f"{r['range'][0]:.0%}..{r['range'][1]:.0%} | {r['limit']:.0%} | "
              f"{'yes' if r['share'] <= r['limit'] else 'no'} |" for r in in_app]
    lines += ["", "| cold start: import + load + first answer (MobileNetV2 int8, median of 5; limit 0.5 s) | seconds |",
              "|---|---|"]
    lines += [f"| {case} | {seconds:.3f} |" for case, seconds in cold.items()]
    text = "\n".join(lines)
    publish("runtime", text, {"rows": rows, "in_app": in_app, "cold_start_s": cold})


if __name__ == "__main__":
    main()
