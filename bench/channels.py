"""Channel removal makes int8 inference faster: MobileNetV2 at 224, unpruned vs half the channels, in one run.

Both models are converted to int8 (calibrated on crops of scikit-learn's
sample photos) and timed through device_runtime.Model, alternating between
them for several rounds so machine load hits both alike.  Random weights:
this measures speed and structure; accuracy is tested on digits
(tests/test_channel_removal.py).  Run: .venv/bin/python -m bench.channels
Writes bench/results/channels.{md,json}.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from bench import arguments, publish

ROUNDS, RUNS = 5, 30


def _p50(model, x) -> float:
    model.run(x)
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        model.run(x)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def main(argv: list[str] | None = None) -> None:
    arguments(__doc__).parse_args(argv)
    import torch

    import sdk
    from bench.suite import _sample_crops
    from device_runtime import Model
    from examples.mobilenet_v2 import build

    work = Path(tempfile.mkdtemp(prefix="bench_channels_"))
    model = build(width=1.0)
    calib = _sample_crops(32, 224).transpose(0, 3, 1, 2).copy()  # NCHW, as the PyTorch model takes it
    quantize = {"mode": "int8", "samples": 32}
    results = {}
    for name, recipe in (("unpruned", {"quantize": quantize}),
                         ("half the channels", {"channels": {"fraction": 0.5, "multiple_of": 8},
                                                "quantize": quantize})):
        result = sdk.convert(model, work / f"{len(results)}.tflite", recipe, example_input=torch.zeros(1, 3, 224, 224),
                             calib_data=calib, force=True)
        record = result.report.passes.get("channels")
        results[name] = {"path": str(result.path), "file_size": result.report.compressed.file_size,
                         "cosine_vs_source": result.report.fidelity.cosine,
                         "summary": record.summary if record else None, "p50_ms": []}
    models = {name: Model(r["path"], num_threads=1) for name, r in results.items()}
    x = np.random.default_rng(0).random((1, 224, 224, 3), dtype=np.float32)  # float I/O, int8 inside
    for _ in range(ROUNDS):
        for name, m in models.items():
            results[name]["p50_ms"].append(_p50(m, x))
    base, thin = (np.median(results[n]["p50_ms"]) for n in results)
    summary = results["half the channels"]["summary"]
    lines = ["# Channel removal: MobileNetV2 1.0 at 224, int8, 1 thread", "",
             "| model | MACs | parameters | file KiB | p50 ms (median of rounds) |", "|---|---|---|---|---|"]
    for name, r in results.items():
        macs = summary["macs_before"] if name == "unpruned" else summary["macs_after"]
        params = summary["params_before"] if name == "unpruned" else summary["params_after"]
        lines.append(f"| {name} | {macs / 1e6:.0f} M | {params / 1e6:.2f} M | {r['file_size'] / 1024:.0f} | "
                     f"{np.median(r['p50_ms']):.2f} |")
    lines += ["", f"**{base / thin:.2f}x faster** with half the channels (int8 vs int8, {ROUNDS} alternating "
                  f"rounds of {RUNS} runs, same run); MACs {summary['mac_ratio']:.2f}x fewer.",
              "Every Conv loses half its channels except the classifier, whose outputs are the model's; "
              "residual groups keep the same channels on both sides of each add."]
    text = "\n".join(lines)
    publish("channels", text, {"speedup": base / thin, **results})


if __name__ == "__main__":
    main()
