"""A Raspberry Pi app in a few lines: classify or detect on images from a folder or a camera.

    python examples/pi_app.py model.tflite --images photos/ --labels labels.txt
    python examples/pi_app.py model.tflite --camera --task detect --frames 300

Needs only numpy, an interpreter (ai-edge-litert or tflite-runtime) and Pillow;
the camera uses picamera2 when installed, else OpenCV.  Imports nothing from
the workstation SDK.  Prefer ai-edge-litert (pip install ".[device]"): it runs
int8 models with XNNPACK, and tflite-runtime 2.14 leaves them to its builtin kernels.

picamera2 is asked for frames at the size the model takes (Model.camera_size):
the camera's ISP scales them for free, so the CPU only normalises.  A USB
camera (OpenCV) is asked for the smallest 4:3 frame covering the input, and
its driver picks the nearest mode it has, usually 320x240 instead of 640x480.
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


class CameraError(Exception):
    """No camera, or one that would not start: the app says so in one line instead of a traceback."""


def camera_frames(model: Model, resize: str | None, count: int) -> Iterator[tuple[str, np.ndarray, str]]:
    """Frames from picamera2 when it is installed, else from OpenCV's first camera; BGR in memory."""
    try:
        from picamera2 import Picamera2
    except ImportError:
        Picamera2 = None
    if Picamera2 is not None:
        return picamera2_frames(Picamera2, model.camera_size(resize), count)
    try:
        import cv2
    except ImportError:
        raise CameraError("--camera needs picamera2 or OpenCV (pip install opencv-python-headless)") from None
    # A USB camera's driver (uvcvideo) takes the mode nearest the request by non-overlapping area, so a
    # square request can get a smaller mode (176x144 for 224x224). A 4:3 request covering the input
    # gets one at least as large, and usually 320x240 rather than the default 640x480, which would
    # cost a CPU resize per frame. A letterbox's inner size (320x240 for a 320x320 detector) is 4:3 already.
    size = model.camera_size(resize if resize == "letterbox" else "crop")
    return opencv_frames(cv2, size, count)


def picamera2_frames(camera_class, size: tuple[int, int], count: int) -> Iterator[tuple[str, np.ndarray, str]]:
    """picamera2 frames at ``size``: the ISP scales them for free.  Its "RGB888" is B, G, R in memory."""
    try:
        camera = camera_class()
        camera.configure(camera.create_preview_configuration(main={"format": "RGB888", "size": size}))
        camera.start()
    except Exception as exc:  # picamera2 raises IndexError or RuntimeError when no camera is connected
        raise CameraError(f"picamera2 could not start a camera ({type(exc).__name__}: {exc}); "
                          "check the cable and that 'rpicam-hello' sees it") from None

    def frames() -> Iterator[tuple[str, np.ndarray, str]]:
        try:
            for i in range(count):
                yield f"frame {i}", camera.capture_array(), "BGR"
        finally:
            camera.stop()
    return frames()


def opencv_frames(cv2, size: tuple[int, int], count: int) -> Iterator[tuple[str, np.ndarray, str]]:
    """OpenCV frames from camera 0, asked for ``size``; the driver picks its nearest mode."""
    capture = cv2.VideoCapture(0)
    if not capture.isOpened():
        capture.release()
        raise CameraError("no camera found at index 0 (OpenCV): connect one, or pass --images FOLDER")
    capture.set(cv2.CAP_PROP_FRAME_WIDTH, size[0])
    capture.set(cv2.CAP_PROP_FRAME_HEIGHT, size[1])

    def frames() -> Iterator[tuple[str, np.ndarray, str]]:
        try:
            for i in range(count):
                ok, frame = capture.read()
                if not ok:
                    break
                yield f"frame {i}", frame, "BGR"
        finally:
            capture.release()
    return frames()


def positive(text: str) -> int:
    """A whole number >= 1, for argparse, which reports a bad one as a one-line usage error."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1; got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, help="a folder of images")
    source.add_argument("--camera", action="store_true", help="read frames from the camera")
    parser.add_argument("--task", choices=("classify", "detect"), default="classify")
    parser.add_argument("--labels", help="a text file with one class name per line")
    parser.add_argument("--threads", type=positive, default=4)
    parser.add_argument("--top", type=positive, default=3)
    parser.add_argument("--frames", type=positive, default=100, help="camera frames to process")
    args = parser.parse_args(argv)
    try:
        model = Model(args.model, num_threads=args.threads, labels=args.labels)
    except DeviceRuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.task == "classify" and not model.knows_normalisation:  # once, not once per frame
        print("error: the model has no input normalisation in its metadata; set it with `sdk metadata add MODEL "
              "-o OUT --mean M --std S` (0..255 pixels, e.g. --mean 0 --std 255 for [0, 1] inputs)", file=sys.stderr)
        return 2
    if args.images is not None and not args.images.is_dir():
        print(f"error: --images needs a folder of images; {args.images} is not one", file=sys.stderr)
        return 2
    try:
        frames = (camera_frames(model, "letterbox" if args.task == "detect" else None, args.frames) if args.camera
                  else folder_frames(args.images))
    except CameraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    count, started = 0, time.perf_counter()
    try:
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
    except KeyboardInterrupt:  # Ctrl-C ends a camera run; the camera is released and the summary printed
        print("stopped", file=sys.stderr)
    finally:
        frames.close()
    elapsed = time.perf_counter() - started
    stats = model.stats()  # what the runtime adds around the invoke, measured on this device
    around = "" if stats["overhead_share"] is None else (
        f"; invoke p50 {stats['invoke_ms']['p50']:.2f} ms, pre + post p50 {stats['overhead_ms']['p50'] * 1000:.0f} us "
        f"({stats['overhead_share']:.1%} of invoke)")
    print(f"{count} frames in {elapsed:.2f} s: {count / elapsed if elapsed else 0:.1f} FPS "
          f"({model.backend.name}, {args.threads} threads){around}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
