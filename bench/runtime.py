"""Device runtime overhead and cold start, as ratios measured in one run.

- Classifier: MobileNetV2 (224x224, int8, random weights) from a 640x480 camera
  frame to top-5, against raw interpreter set_tensor + invoke + get_tensor.
- Detector: MobileNetV2 backbone at 320x320 with a YOLO-style head (2100
  anchors x 80 classes), letterbox + decode + class-aware NMS, against raw invoke.
- Cold start: import device_runtime + load + first inference, per backend.

Iterations alternate between the two sides so machine noise hits both alike.
Run: .venv/bin/python -m bench.runtime   (writes bench/results/runtime.{json,md})
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from converters import _tf
from converters.recipe import QuantizeSettings
from converters.tflite_export import to_tflite

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 60


def build_classifier() -> bytes:
    keras = _tf.keras()
    keras.utils.set_random_seed(0)
    net = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3), classes=1000)
    return to_tflite(net, QuantizeSettings(mode="int8", samples=8, allow_random_calibration=True))


def build_detector() -> bytes:
    """A YOLO-style detector: 3 feature levels (40, 20, 10) -> (1, 84, 2100) cx, cy, w, h + 80 scores."""
    keras = _tf.keras()
    keras.utils.set_random_seed(0)
    backbone = keras.applications.MobileNetV2(weights=None, input_shape=(320, 320, 3), include_top=False,
                                              alpha=0.5)
    levels = [backbone.get_layer(n).output for n in ("block_6_expand_relu", "block_13_expand_relu", "out_relu")]
    heads = []
    for feature in levels:
        box = keras.layers.Conv2D(4, 1, activation="sigmoid")(feature)
        cls = keras.layers.Conv2D(80, 1, activation="sigmoid",
                                  bias_initializer=keras.initializers.Constant(-4.0))(feature)
        heads.append(keras.layers.Reshape((-1, 84))(keras.layers.Concatenate()([box * 320.0, cls])))
    out = keras.layers.Permute((2, 1))(keras.layers.Concatenate(axis=1)(heads))
    model = keras.Model(backbone.input, out)
    return to_tflite(model, QuantizeSettings(mode="int8", samples=8, allow_random_calibration=True))


def raw_invoke_timer(data: bytes, tensor: np.ndarray, threads: int):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=data, num_threads=threads)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    scale, zero = inp["quantization"]
    ready = np.clip(np.round(tensor / scale) + zero, -128, 127).astype(inp["dtype"]) if scale else tensor
    outputs = [d["index"] for d in interpreter.get_output_details()]

    def run():
        interpreter.set_tensor(inp["index"], ready)
        interpreter.invoke()
        return [interpreter.get_tensor(i) for i in outputs]

    return run


def interleaved(a, b, rounds: int = ROUNDS) -> tuple[float, float]:
    """Median seconds of a() and b(), alternating calls after a warm-up."""
    for _ in range(5):
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


def cold_start(path: Path, backend: str) -> float:
    code = ("import time; t = time.perf_counter()\nimport numpy as np, device_runtime\n"
            f"m = device_runtime.Model({str(path)!r}, backend={backend!r})\n"
            "m.run({s.name: np.zeros(s.shape, s.dtype) for s in m.inputs}, raw=True)\n"
            "print(time.perf_counter() - t)")
    runs = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                                 check=True).stdout.split()[-1]) for _ in range(5)]
    return float(np.median(runs))


def overhead_rows(classifier: bytes, detector: bytes, frame: np.ndarray, threads: int) -> list[dict]:
    from device_runtime import Model

    rows = []
    model = Model(classifier, num_threads=threads)
    tensor, _ = model.preprocess(frame)
    raw = raw_invoke_timer(classifier, tensor, threads)
    end_to_end, raw_time = interleaved(lambda: model.classify(frame, top_k=5), raw)
    run_only, raw_time2 = interleaved(lambda: model.run(tensor), raw)
    rows.append({"case": f"classifier 224x224 int8, {threads} thread(s): 640x480 frame -> top-5",
                 "ours_ms": end_to_end * 1e3, "raw_ms": raw_time * 1e3,
                 "overhead": end_to_end / raw_time - 1, "limit": 0.10})
    rows.append({"case": f"classifier, {threads} thread(s): Model.run(tensor) only", "ours_ms": run_only * 1e3,
                 "raw_ms": raw_time2 * 1e3, "overhead": run_only / raw_time2 - 1, "limit": None})
    model = Model(detector, num_threads=threads)
    tensor, _ = model.preprocess(frame, resize="letterbox")
    raw = raw_invoke_timer(detector, tensor, threads)
    end_to_end, raw_time = interleaved(lambda: model.detect(frame), raw)
    rows.append({"case": f"detector 320x320 int8 (2100 anchors x 80 classes), {threads} thread(s): "
                         "frame -> letterbox -> decode -> NMS", "ours_ms": end_to_end * 1e3,
                 "raw_ms": raw_time * 1e3, "overhead": end_to_end / raw_time - 1, "limit": 0.15})
    return rows


def main() -> None:
    frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    work = Path(tempfile.mkdtemp(prefix="bench_runtime_"))
    classifier, detector = build_classifier(), build_detector()
    (work / "classifier.tflite").write_bytes(classifier)
    rows = [row for threads in (1, 2) for row in overhead_rows(classifier, detector, frame, threads)]
    cold = {backend: cold_start(work / "classifier.tflite", backend)
            for backend in ("ai-edge-litert", "tflite-runtime")}

    lines = [f"Device runtime overhead vs raw interpreter (medians of {ROUNDS} interleaved rounds, one run)", "",
             "| case | device_runtime ms | raw interpreter ms | overhead | limit |", "|---|---|---|---|---|"]
    for r in rows:
        limit = f"{r['limit']:.0%}" if r["limit"] is not None else "-"
        lines.append(f"| {r['case']} | {r['ours_ms']:.2f} | {r['raw_ms']:.2f} | {r['overhead']:+.1%} | {limit} |")
    lines += ["", "| cold start (import + load + first inference, MobileNetV2 int8, median of 5) | seconds |",
              "|---|---|"]
    lines += [f"| {backend} | {seconds:.3f} |" for backend, seconds in cold.items()]
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "runtime.md").write_text(text + "\n")
    (RESULTS / "runtime.json").write_text(json.dumps({"rows": rows, "cold_start_s": cold}, indent=2) + "\n")


if __name__ == "__main__":
    main()
