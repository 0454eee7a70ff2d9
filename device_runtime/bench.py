"""Latency, throughput and memory of a .tflite on this device, and what an app's image task adds.

``python -m device_runtime.bench model.tflite --threads 1 2 --json`` (also ``sdk bench``):
warm-up runs, then p50/p90/p99 latency, throughput and peak RSS per thread count, and the
invoke's own p50 with the pre- and post-processing around it.  ``--task classify`` or
``--task detect`` times the whole frame -> answer call an app makes (on ``--image``, or a random
frame at the size a camera is asked for), so the runtime's overhead is measured on the device
itself: the figure the overhead goals are about, with nothing but the runtime installed.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Callable, Sequence

import numpy as np

from .errors import ArgumentError, DeviceRuntimeError
from .integrity import key_for_command
from .model import Model
from .preprocess import ImageSpec, load_image


def _peak_rss_mb() -> float:
    """This process's peak resident memory.  Linux's VmHWM starts afresh at exec, whereas ru_maxrss
    carries over the peak of the parent that forked it (a benchmark started by a 1 GB converter
    would report 1 GB)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux and BSD report KiB


TASKS = ("run", "classify", "detect")


def benchmark(source, threads: Sequence[int] = (1,), warmup: int = 10, runs: int = 100,
              backend: str = "auto", use_xnnpack: bool = True, task: str = "run", image=None,
              color_order: str = "RGB", decryption_key: bytes | str | None = None) -> dict:
    """Time ``runs`` calls per thread count, after ``warmup`` calls.

    ``task`` "run" calls ``Model.run`` on random inputs of the model's own shapes; "classify" and
    "detect" call the image task on ``image`` (a path, a PIL image or an HxWxC uint8 frame in
    ``color_order``), by default a random frame of ``Model.camera_size()``.  ``decryption_key`` opens a
    model written by ``sdk encrypt`` (as ``Model`` takes it).
    """
    if warmup < 0 or runs < 1:
        raise ArgumentError(f"warmup must be >= 0 and runs >= 1; got {warmup}, {runs}")
    if task not in TASKS:
        raise ArgumentError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
    if not threads:
        raise ArgumentError("threads needs at least one thread count, such as (1, 2); got none")
    results, untold = [], []
    for n in threads:
        model = Model(source, num_threads=n, backend=backend, use_xnnpack=use_xnnpack,
                      decryption_key=decryption_key)
        if task == "classify" and not model.knows_normalisation:  # the time does not depend on the values
            model = Model(source, num_threads=n, backend=backend, use_xnnpack=use_xnnpack,
                          decryption_key=decryption_key, image=ImageSpec.from_input_shape(model.inputs[0].shape))
            untold = ["the model's metadata has no input normalisation: timed with (pixel - 0) / 255, which costs "
                      "the same; Model.classify refuses the model until it is set (sdk metadata add --mean --std)"]
        call, frame = _call(model, task, image, color_order)
        for _ in range(warmup):
            call()
        model.reset_stats()  # the monitor's invoke and overhead figures then cover the timed calls only
        times = np.empty(runs)
        for i in range(runs):
            start = time.perf_counter()
            call()
            times[i] = time.perf_counter() - start
        ms = times * 1000
        stats = model.stats()
        results.append({"threads": n, "p50_ms": float(np.percentile(ms, 50)),
                        "p90_ms": float(np.percentile(ms, 90)), "p99_ms": float(np.percentile(ms, 99)),
                        "mean_ms": float(ms.mean()), "throughput_per_s": float(runs / times.sum()),
                        "peak_rss_mb": _peak_rss_mb(), "invoke_p50_ms": stats["invoke_ms"]["p50"],
                        "overhead_p50_ms": stats["overhead_ms"]["p50"], "overhead_share": stats["overhead_share"]})
    return {"model": str(source) if not isinstance(source, bytes) else "<bytes>",
            "backend": model.backend.name, "xnnpack": use_xnnpack, "warmup": warmup, "runs": runs,
            "task": task, "frame": frame, "results": results, "notes": _notes(model, use_xnnpack) + untold}


def _call(model: Model, task: str, image, color_order: str) -> tuple[Callable[[], object], str | None]:
    """The call to time, and what it is fed (None for run)."""
    if task == "run":
        rng = np.random.default_rng(0)
        feed = {s.name: (rng.integers(np.iinfo(s.dtype).min, np.iinfo(s.dtype).max, s.shape, s.dtype)
                         if s.quantized else rng.random(s.shape).astype(s.dtype)) for s in model.inputs}
        return (lambda: model.run(feed, raw=True)), None
    answer = model.classify if task == "classify" else model.detect
    if image is None:  # what Model.camera_size() asks a camera for: no CPU resize, as the Pi app runs
        width, height = model.camera_size("letterbox" if task == "detect" else None)
        image = np.random.default_rng(0).integers(0, 256, (height, width, 3), np.uint8)
        frame = f"random {width}x{height} frame"
    else:
        image = load_image(image, color_order)
        frame = f"{image.shape[1]}x{image.shape[0]} image"
        color_order = "RGB"  # load_image gave RGB (a view of the BGR frame, read in place)
    answer(image, color_order=color_order)  # a model that cannot do the task says so before timing
    return (lambda: answer(image, color_order=color_order)), frame


def _notes(model: Model, use_xnnpack: bool) -> list[str]:
    """What the figures owe to the interpreter rather than to the model."""
    graph = model.spec.main
    computes_in_int8 = any(graph.tensors[t].dtype_name in ("int8", "uint8")
                           for op in graph.operators for t in op.outputs)
    if model.backend.name == "tflite-runtime" and computes_in_int8 and use_xnnpack:
        return ["tflite-runtime 2.14's XNNPACK leaves int8 operators to the builtin kernels; ai-edge-litert "
                "runs them with XNNPACK (pip install ai-edge-litert): 23x faster for int8 MobileNetV2 on "
                "an x86 machine, measured by bench/runtime.py"]
    return []


def _ms(value: float, width: int) -> str:
    """Milliseconds with two decimals, or three significant digits below 0.1 ms (a tiny model's invoke
    printed as 0.00 beside its share)."""
    return f"{value:{width}.2f}" if value >= 0.1 else f"{value:{width}.3g}"


def render(report: dict) -> str:
    fed = f", {report['task']} on a {report['frame']}" if report.get("frame") else ""
    lines = [f"{report['model']}  backend {report['backend']}, xnnpack {'on' if report['xnnpack'] else 'off'}, "
             f"{report['runs']} runs after {report['warmup']} warm-up{fed}",
             "threads  p50 ms  p90 ms  p99 ms  throughput/s  peak RSS MB  invoke p50 ms  pre+post p50 us"]
    for r in report["results"]:
        share = f" ({r['overhead_share']:.1%} of invoke)" if r["overhead_share"] is not None else ""
        lines.append(f"{r['threads']:>7}  {_ms(r['p50_ms'], 6)}  {_ms(r['p90_ms'], 6)}  {_ms(r['p99_ms'], 6)}  "
                     f"{r['throughput_per_s']:12.1f}  {r['peak_rss_mb']:11.1f}  {_ms(r['invoke_p50_ms'], 13)}  "
                     f"{r['overhead_p50_ms'] * 1000:8.0f}{share}")
    lines += [f"note: {note}" for note in report.get("notes", [])]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m device_runtime.bench", description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--task", choices=TASKS, default="run",
                        help="time model.run (default), or an app's classify/detect call on a frame")
    parser.add_argument("--image", help="the image for --task (default: a random frame of the camera size)")
    parser.add_argument("--color-order", choices=("RGB", "BGR"), default="RGB")
    parser.add_argument("--decryption-key", metavar="FILE",
                        help="the AES key file (`sdk keygen --aes`) of a model written by `sdk encrypt`")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        key = key_for_command(args.model, args.decryption_key)
        report = benchmark(args.model, args.threads, args.warmup, args.runs, args.backend, task=args.task,
                           image=args.image, color_order=args.color_order, decryption_key=key)
    except (DeviceRuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
