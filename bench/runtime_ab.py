"""Paired A/B of the device runtime: this working tree against a git revision, in one process.

bench/runtime.py measures the runtime against the raw interpreter, but its figures move by up to 2x
between runs on a shared machine, so it cannot tell whether a change saved 20 us. Here every round runs,
on the same frame, raw + one runtime + raw + the other (the two swap places every round), and the table
reports medians of per-call overheads (runtime minus the raw call just before it) and of their
per-round differences, which machine noise moves far less.

Cases: the int8 MobileNetV2 classifier and the int8 planted-scene detector of bench/runtime.py, each on
a 640x480 frame and on a frame at the camera size, with the OpenCV engine, in RGB or (--color-order
BGR) in the order OpenCV and picamera2's RGB888 deliver.
Run: .venv/bin/python -m bench.runtime_ab --base HEAD~1 [--threads 2] [--only detector] [--color-order BGR]
(about 3 minutes with the two sdk convert runs; writes bench/results/runtime_ab_<threads>t[_bgr].{json,md})
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import device_runtime
from bench import arguments, publish
from bench.runtime import ROOT, build_classifier, build_detector, frames, raw_invoke_timer

WARMUP = 50


def import_runtime_at(revision: str, folder: Path):
    """device_runtime as it was at ``revision``, importable beside this tree's as ``device_runtime_base``
    (the package's imports are relative, so a renamed copy works)."""
    target = folder / "device_runtime_base"
    target.mkdir()
    archive = subprocess.run(["git", "archive", revision, "device_runtime"], cwd=ROOT, capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "--strip-components=1", "-C", str(target)], input=archive, check=True)
    sys.path.insert(0, str(folder))
    return importlib.import_module("device_runtime_base")


def paired(raw, runtimes: dict, rounds: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per runtime, the seconds of each of its calls and of the raw call just before it, for ``rounds``
    rounds.  Every runtime call comes right after a raw call, and the runtimes swap places every round, so
    none runs after itself or after the other (a second call in a row finds its caches warm)."""
    names = list(runtimes)
    times = {name: ([], []) for name in names}
    for i in range(rounds + WARMUP):
        for name in (names if i % 2 else names[::-1]):
            start = time.perf_counter()
            raw()
            middle = time.perf_counter()
            runtimes[name]()
            end = time.perf_counter()
            if i >= WARMUP:
                times[name][0].append(middle - start)
                times[name][1].append(end - middle)
    return {name: (np.array(before), np.array(after)) for name, (before, after) in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = arguments(__doc__)
    parser.add_argument("--base", default="HEAD", help="git revision to compare against (default HEAD)")
    parser.add_argument("--rounds", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", choices=("classifier", "detector"), help="measure one model's cases")
    parser.add_argument("--color-order", choices=("RGB", "BGR"), default="RGB",
                        help="frames as RGB, or as BGR (what OpenCV and picamera2's RGB888 deliver)")
    args = parser.parse_args(argv)
    base = import_runtime_at(args.base, Path(tempfile.mkdtemp(prefix="runtime_ab_")))
    rows = []
    builders = {"classifier": build_classifier, "detector": build_detector}
    for kind in [args.only] if args.only else builders:
        data = builders[kind]("int8")
        for frame_name, frame in frames(kind == "detector").items():
            order = args.color_order
            frame = np.ascontiguousarray(frame[..., ::-1]) if order == "BGR" else frame
            models = {name: module.Model(data, num_threads=args.threads, image_engine="opencv")
                      for name, module in ((args.base, base), ("this tree", device_runtime))}
            resize = "letterbox" if kind == "detector" else None
            tensor, _ = models["this tree"].preprocess(frame, resize=resize, color_order=order)
            raw = raw_invoke_timer(data, tensor, args.threads)
            tasks = {name: (lambda m=model, f=frame: m.detect(f, color_order=order)) if kind == "detector" else (
                lambda m=model, f=frame: m.classify(f, top_k=5, color_order=order)) for name, model in models.items()}
            seconds = paired(raw, tasks, args.rounds)
            overhead = {name: after - before for name, (before, after) in seconds.items()}
            rows.append({"case": f"{kind}, {order} {frame_name}",
                         "raw_ms": float(np.median(np.concatenate([b for b, _ in seconds.values()]))) * 1e3,
                         "base_overhead_us": float(np.median(overhead[args.base])) * 1e6,
                         "overhead_us": float(np.median(overhead["this tree"])) * 1e6,
                         "change_us": float(np.median(overhead["this tree"] - overhead[args.base])) * 1e6})

    lines = [f"Paired A/B, {args.rounds} rounds, {args.threads} thread(s); base = {args.base}. Overheads are "
             "medians of each call minus the raw call just before it, in us; the change is the median of the "
             "per-round differences between the two overheads.", "",
             f"| case | raw ms | {args.base} overhead us | this tree overhead us | change us |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['raw_ms']:.3f} | {r['base_overhead_us']:.0f} | {r['overhead_us']:.0f} "
              f"| {r['change_us']:+.0f} |" for r in rows]
    text = "\n".join(lines)
    publish(f"runtime_ab_{args.threads}t" + ("_bgr" if args.color_order == "BGR" else ""), text,
            {"base": args.base, "threads": args.threads, "rounds": args.rounds, "rows": rows})


if __name__ == "__main__":
    main()
