"""A Raspberry Pi app in a few lines: classify or detect on images from a folder or a camera.

    python examples/pi_app.py model.tflite --images photos/ --labels labels.txt
    python examples/pi_app.py model.tflite --camera --task detect --frames 300

Needs only numpy, an interpreter (ai-edge-litert or tflite-runtime) and Pillow;
the camera uses picamera2 when installed, else OpenCV.  Imports nothing from
the workstation SDK.  Prefer ai-edge-litert (pip install ".[device]"): it runs
int8 models with XNNPACK, and tflite-runtime 2.14 leaves them to its builtin kernels.

picamera2 is asked for frames at the size the model takes (Model.camera_size):
the camera's ISP scales them for free, so the CPU only normalises.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from device_runtime import DeviceRuntimeError, Model

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def folder_frames(folder: Path) -> Iterator[tuple[str, object, str]]:
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            yield path.name, path, "RGB"


def camera_frames(count: int, size: tuple[int, int]) -> Iterator[tuple[str, np.ndarray, str]]:
    """Frames from picamera2 at ``size`` (width, height; BGR888 in memory) or OpenCV (BGR, its own size)."""
    try:
        from picamera2 import Picamera2
    except ImportError:
        Picamera2 = None
    if Picamera2 is not None:
        camera = Picamera2()
        camera.configure(camera.create_preview_configuration(main={"format": "RGB888", "size": size}))
        camera.start()
        try:
            for i in range(count):
                yield f"frame {i}", camera.capture_array(), "BGR"
        finally:
            camera.stop()
        return
    try:
        import cv2
    except ImportError:
        raise SystemExit("error: --camera needs picamera2 or OpenCV (pip install opencv-python-headless)")
    capture = cv2.VideoCapture(0)
    if not capture.isOpened():
        raise SystemExit("error: no camera found at index 0")
    try:
        for i in range(count):
            ok, frame = capture.read()
            if not ok:
                break
            yield f"frame {i}", frame, "BGR"
    finally:
        capture.release()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, help="a folder of images")
    source.add_argument("--camera", action="store_true", help="read frames from the camera")
    parser.add_argument("--task", choices=("classify", "detect"), default="classify")
    parser.add_argument("--labels", help="a text file with one class name per line")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--top", type=int, default=3)
    parser.add_argument("--frames", type=int, default=100, help="camera frames to process")
    args = parser.parse_args(argv)
    try:
        model = Model(args.model, num_threads=args.threads, labels=args.labels)
    except DeviceRuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.camera:
        frames = camera_frames(args.frames, model.camera_size("letterbox" if args.task == "detect" else None))
    else:
        frames = folder_frames(args.images)
    count, started = 0, time.perf_counter()
    for name, frame, order in frames:
        try:
            if args.task == "classify":
                found = model.classify(frame, top_k=args.top, color_order=order)
                text = ", ".join(f"{c.label} {c.score:.2f}" for c in found)
            else:
                found = model.detect(frame, color_order=order)
                text = "; ".join(f"{d.label} {d.score:.2f} at {tuple(round(v) for v in d.box)}" for d in found)
        except DeviceRuntimeError as exc:
            print(f"{name}: skipped: {exc}", file=sys.stderr)
            continue
        count += 1
        print(f"{name}: {text or 'nothing found'}")
    elapsed = time.perf_counter() - started
    print(f"{count} frames in {elapsed:.2f} s: {count / elapsed if elapsed else 0:.1f} FPS "
          f"({model.backend.name}, {args.threads} threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
