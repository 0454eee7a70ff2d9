"""The size/accuracy/latency evidence: every recipe on five models, through `sdk sweep`, in one command.

Models: the digits CNN in Keras and in PyTorch (trained, real accuracy), a
MobileNetV2 (alpha 0.5) at 224x224 calibrated on crops of scikit-learn's
sample photos, a small transformer encoder and a 1-D keyword-spotting-style
audio CNN (random weights: size, latency and fidelity only).  Recipes run in
parallel on a local Ray instance; latency is measured afterwards, one model
at a time, through the device runtime.  Also measured in this run: int8 vs
float latency, the device runtime vs the raw interpreter, and this SDK vs
the same recipe written by hand with tfmot + TFLiteConverter.

Run: .venv/bin/python -m bench.suite   (about 20 minutes on 2 cores)
Writes bench/results/suite.{md,json} and suite_*.png.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import arguments

RESULTS = Path(__file__).parent / "results"
MODEL_KEYS = ("digits", "digits_torch", "mobilenetv2", "transformer_encoder", "audio_conv1d")
FINETUNE_EPOCHS = 8

RECIPES = {
    "float32": {},
    "dynamic": {"quantize": {"mode": "dynamic"}},
    "float16": {"quantize": {"mode": "float16"}},
    "int8": {"quantize": {"mode": "int8"}},
    "int16x8": {"quantize": {"mode": "int16x8"}},
    "prune50": {"prune": {"sparsity": 0.5}},
    "prune75": {"prune": {"sparsity": 0.75}},
    "prune90": {"prune": {"sparsity": 0.9}},
    "cluster8": {"cluster": {"clusters": 8}},
    "cluster16": {"cluster": {"clusters": 16}},
    "cluster32": {"cluster": {"clusters": 32}},
    "prune50+cluster32+int8": {"prune": {"sparsity": 0.5}, "cluster": {"clusters": 32}, "quantize": {"mode": "int8"}},
    "prune75+cluster16+int8": {"prune": {"sparsity": 0.75}, "cluster": {"clusters": 16}, "quantize": {"mode": "int8"}},
}


def _sample_crops(count: int, size: int) -> np.ndarray:
    """Random crops of scikit-learn's two bundled photos, resized to size x size, in [0, 1]."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(0)
    photos = load_sample_images().images
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        side = int(rng.integers(160, min(photo.shape[:2])))
        top, left = rng.integers(0, photo.shape[0] - side), rng.integers(0, photo.shape[1] - side)
        crop = Image.fromarray(photo[top:top + side, left:left + side]).resize((size, size), Image.BILINEAR)
        crops.append(np.asarray(crop, np.float32) / 255.0)
    return np.stack(crops)


def prepare_models(work: Path) -> list[dict]:
    """Each model as an `sdk sweep` source with its data and options."""
    import torch

    from converters import _tf
    from examples.digits_cnn import load_digits_splits, train_digits_cnn
    from examples.digits_torch import nchw_splits, train_digits_net
    from examples.torch_zoo import ZOO, build

    splits = load_digits_splits()
    np.savez(work / "digits_train.npz", x=splits.x_train, y=splits.y_train)
    np.savez(work / "digits_test.npz", x=splits.x_test, y=splits.y_test)
    train_digits_cnn(splits).save(work / "digits.h5")
    torch_splits = nchw_splits()
    np.savez(work / "digits_nchw_train.npz", x=torch_splits.x_train, y=torch_splits.y_train)
    np.savez(work / "digits_nchw_test.npz", x=torch_splits.x_test, y=torch_splits.y_test)
    torch.save(train_digits_net(torch_splits).state_dict(), work / "digits_torch.pth")
    keras = _tf.keras()
    keras.utils.set_random_seed(0)
    keras.applications.MobileNetV2(input_shape=(224, 224, 3), alpha=0.5, weights=None, classes=100).save(
        work / "mobilenetv2.h5")
    np.save(work / "photos_224.npy", _sample_crops(48, 224))
    models = [
        {"name": "digits CNN (Keras)", "key": "digits", "source": work / "digits.h5",
         "data": work / "digits_train.npz", "eval": work / "digits_test.npz", "finetune": True, "options": {}},
        {"name": "digits CNN (PyTorch)", "key": "digits_torch", "source": "examples.digits_torch:DigitsNet",
         "data": work / "digits_nchw_train.npz", "eval": work / "digits_nchw_test.npz", "finetune": True,
         "options": {"input_shapes": [(1, 1, 8, 8)], "weights": str(work / "digits_torch.pth")}},
        {"name": "MobileNetV2-0.5 224", "key": "mobilenetv2", "source": work / "mobilenetv2.h5",
         "data": work / "photos_224.npy", "eval": None, "finetune": False, "options": {}},
    ]
    rng = np.random.default_rng(1)
    for key, title in (("transformer_encoder", "transformer encoder"), ("audio_conv1d", "KWS audio 1-D CNN")):
        shape = ZOO[key][1][0]
        module = build(key)
        torch.jit.trace(module, torch.zeros(shape)).save(str(work / f"{key}.pt"))
        data = rng.standard_normal((64, *shape[1:])).astype(np.float32)
        if key == "audio_conv1d":
            data = np.clip(data * 0.3, -1, 1)  # waveform-like amplitudes
        np.save(work / f"{key}.npy", data)
        models.append({"name": title, "key": key, "source": work / f"{key}.pt", "data": work / f"{key}.npy",
                       "eval": None, "finetune": False, "options": {"input_shapes": [shape]}})
    return models


def runtime_vs_raw(path: str, rounds: int = 7, runs: int = 100) -> float:
    """Median over interleaved rounds of Model.run(tensor) time / raw set_tensor+invoke+get_tensor time."""
    from ai_edge_litert.interpreter import Interpreter

    from device_runtime import Model

    model = Model(path, num_threads=1)
    raw = Interpreter(model_path=path, num_threads=1)
    raw.allocate_tensors()
    spec, out = raw.get_input_details()[0], raw.get_output_details()[0]
    x = np.random.default_rng(0).random(spec["shape"]).astype(np.float32)
    if np.issubdtype(spec["dtype"], np.integer):
        x = model.inputs[0].quantize(x)

    def raw_call():
        raw.set_tensor(spec["index"], x)
        raw.invoke()
        return raw.get_tensor(out["index"])

    ratios = []
    for _ in range(rounds):
        timings = []
        for call in (raw_call, lambda: model.run(x)):
            call()
            start = time.perf_counter()
            for _ in range(runs):
                call()
            timings.append(time.perf_counter() - start)
        ratios.append(timings[1] / timings[0])
    return float(np.median(ratios))


def by_hand(work: Path) -> dict:
    """75% + 16 clusters + int8 on the digits CNN, written from the tfmot guides (bench.compression)."""
    from bench.compression import hand_written_tfmot
    from converters.verify.analysis import gzip_size
    from device_runtime import Model
    from examples.digits_cnn import accuracy, load_digits_splits

    splits = load_digits_splits()
    start = time.perf_counter()
    data = hand_written_tfmot(work / "digits.h5", splits)
    seconds = time.perf_counter() - start
    probs = next(iter(Model(data).run(splits.x_test).values()))
    return {"gzip_size": gzip_size(data), "accuracy": accuracy(probs, splits.y_test), "convert_s": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__)
    parser.add_argument("--only", nargs="+", choices=MODEL_KEYS,
                        help="models to run, for a quick partial run whose results go to a temporary folder, "
                             "not bench/results (default: all)")
    only = set(parser.parse_args(argv).only or ())
    from sdk.plots import layer_plot, tradeoff_plot
    from sdk.sweep import SweepEntry, quality, render, run_sweep

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench_suite_"))
    base = {"finetune": {"epochs": FINETUNE_EPOCHS}}
    entries = [SweepEntry(name, {**base, **recipe}) for name, recipe in RECIPES.items()]
    results = work / "results" if only else RESULTS  # a partial run keeps the committed results
    results.mkdir(exist_ok=True)
    sections, everything = [], {}
    for model in prepare_models(work):
        if only and model["key"] not in only:
            continue
        stem = model["key"]
        result = run_sweep(model["source"], entries, work / "sweeps" / stem, data=model["data"],
                           eval_data=model["eval"], finetune=model["finetune"], options=model["options"],
                           workers=2, latency_runs=30, plot=False,
                           progress=lambda stage, done, total: print(f"  {stage} {done}/{total}", flush=True))
        rows = {r["name"]: r for r in result.rows}
        ok = [r for r in result.rows if r["status"] == "ok" and quality(r)[0] is not None]
        if ok:
            tradeoff_plot(ok, results / f"suite_{stem}.png", title=model["name"])
        notes = []
        f32, i8 = rows["float32"], rows["int8"]
        if f32["status"] == i8["status"] == "ok" and "1" in f32.get("latency", {}) and "1" in i8.get("latency", {}):
            speedup = f32["latency"]["1"]["p50_ms"] / i8["latency"]["1"]["p50_ms"]
            verdict = "int8 faster" if speedup > 1 else "int8 not faster"
            notes.append(f"float32 p50 / int8 p50 at 1 thread: {speedup:.2f} ({verdict})")
            model["int8_speedup"] = speedup
        if i8["status"] == "ok":
            model["runtime_vs_raw"] = runtime_vs_raw(i8["path"])
            notes.append(f"device runtime Model.run vs raw interpreter on the int8 model: "
                         f"{(model['runtime_vs_raw'] - 1) * 100:+.1f}% time")
        combo = rows["prune75+cluster16+int8"]
        if stem == "digits" and combo["status"] == "ok":
            layer_plot(json.loads(Path(combo["path"]).with_name("model.report.json").read_text()),
                       results / "suite_digits_layers.png")
            hand = by_hand(work)
            model["by_hand"] = hand
            notes.append(f"same recipe (75% + 16 clusters + int8) by hand with tfmot + TFLiteConverter: gzip "
                         f"{hand['gzip_size']:,} vs sdk {combo['gzip_size']:,} bytes "
                         f"({hand['gzip_size'] / combo['gzip_size']:.2f}x), accuracy {hand['accuracy']:.2f}% vs "
                         f"sdk {combo['accuracy']:.2f}%, time {hand['convert_s']:.1f} s vs sdk "
                         f"{combo['convert_s']:.1f} s (sdk fine-tunes {FINETUNE_EPOCHS} epochs per pass)")
        sections.append(f"## {model['name']}\n\n{render(result)}\n\n" + "".join(f"- {n}\n" for n in notes))
        everything[model["name"]] = {**{k: str(v) if isinstance(v, Path) else v for k, v in model.items()},
                                     "result": result.to_dict()}
        print(sections[-1], flush=True)
    total = time.perf_counter() - started
    header = (f"# Benchmark suite\n\nOne run of `python -m bench.suite` on this 2-core machine: {total / 60:.1f} "
              f"minutes in all. Sizes in KiB; quality is test accuracy (%) where there are labels, else top-1 "
              f"agreement with the source model (%); change is against the source; latency is p50 through "
              f"device_runtime at 1 and 2 threads; peak MB is the benchmark process's peak RSS.\n")
    (results / "suite.md").write_text(header + "\n" + "\n".join(sections))
    (results / "suite.json").write_text(json.dumps({"total_s": total, "models": everything}, indent=2,
                                                   default=str) + "\n")
    print(f"total {total / 60:.1f} min; wrote {results / 'suite.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
