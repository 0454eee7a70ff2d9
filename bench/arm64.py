"""The device runtime on emulated Raspberry Pi CPUs: the same answers as on this machine, bit for bit?

Debian Bookworm arm64 (Raspberry Pi OS's base) with its Python 3.11, each interpreter's aarch64 wheel
as `pip install ".[device]"` and `".[pi]"` install them (ai-edge-litert 2.1.0, tflite-runtime 2.14.0),
run under qemu-user as a Cortex-A72 (Pi 4) and a Cortex-A76 (Pi 5).  Compared with this machine on the
same backend: preprocessing (numpy and OpenCV engines), a trained digits CNN in int8 and in float32,
the planted-scene int8 detector of bench/runtime.py, its detections, and what examples/pi_app.py
prints for a folder of photos (against this machine's run with ai-edge-litert: the int8 model's answers
are the same on both interpreters).  Timing under emulation says nothing about a Pi, so only the
answers are compared.

Needs qemu-user and mmdebstrap (apt-get install qemu-user mmdebstrap), and the Debian and PyPI
registries once: the root file system and the wheels are kept in --cache.
Run: .venv/bin/python -m bench.arm64   (writes bench/results/arm64.{md,json})
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import numpy as np

from bench import arguments, publish
from bench.runtime import ROOT, build_detector

CPUS = {"cortex-a72": "Raspberry Pi 4", "cortex-a76": "Raspberry Pi 5"}
EXTRAS = {"ai-edge-litert": "device", "tflite-runtime": "pi"}
ROOTFS_PACKAGES = "python3.11,libpython3.11-stdlib,libstdc++6,libgcc-s1,zlib1g,libffi8,libexpat1"
WHEEL_PLATFORMS = [f"manylinux_2_{v}_aarch64" for v in (36, 34, 31, 28, 27, 17)] + ["manylinux2014_aarch64"]


def root_filesystem(cache: Path) -> Path:
    """Bookworm arm64, only the packages Python needs, extracted without running anything."""
    rootfs = cache / "bookworm-arm64"
    if not (rootfs / "usr/bin/python3.11").exists():
        subprocess.run(["mmdebstrap", "--arch=arm64", "--variant=extract", f"--include={ROOTFS_PACKAGES}",
                        "bookworm", str(rootfs), "http://deb.debian.org/debian"], check=True)
    return rootfs


def wheels(cache: Path, extra: str) -> Path:
    """The aarch64 wheels of the project's dependencies plus one extra, as pip resolves them on a Pi."""
    target = cache / f"wheels-{extra}"
    if not target.exists():
        project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
        requirements = project["dependencies"] + project["optional-dependencies"][extra]
        platforms = [arg for p in WHEEL_PLATFORMS for arg in ("--platform", p)]
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-warn-conflicts",
                        "--target", str(target), *platforms, "--python-version", "3.11", "--implementation", "cp",
                        "--abi", "cp311", "--only-binary=:all:", *requirements], check=True)
    return target


def models(folder: Path) -> None:
    """The probe's models and data, built here with the SDK."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    from examples.digits_cnn import load_digits_splits, train_digits_cnn
    from sdk import convert

    splits = load_digits_splits()
    net = train_digits_cnn(splits)
    convert(net, folder / "digits_float32.tflite")
    convert(net, folder / "digits_int8.tflite", {"quantize": {"mode": "int8", "io_type": "int8"}},
            calib_data=splits.x_train)
    np.save(folder / "digits.npy", splits.x_test)
    (folder / "detector_int8.tflite").write_bytes(build_detector("int8"))
    np.save(folder / "photo.npy", load_sample_image("china.jpg"))
    (folder / "photos").mkdir()
    for name in ("china.jpg", "flower.jpg"):
        Image.fromarray(load_sample_image(name)).save(folder / "photos" / name)
    np.save(folder / "frame.npy", np.random.default_rng(0).integers(0, 256, (240, 320, 3), np.uint8))


def run_python(args: list[str], what: str, site: Path | None = None, rootfs: Path | None = None,
               cpu: str | None = None) -> str:
    """The output of ``python ARGS`` here, or under qemu as ``cpu`` with the aarch64 ``site`` packages."""
    if cpu is None:
        command, path = [sys.executable, *args], str(ROOT)
    else:
        command = ["qemu-aarch64", "-cpu", cpu, "-L", str(rootfs), str(rootfs / "usr/bin/python3.11"), *args]
        path = f"{ROOT}:{site}"
    done = subprocess.run(command, capture_output=True, text=True, env={"PYTHONPATH": path}, check=False)
    if done.returncode:
        raise RuntimeError(f"{what} failed on {cpu or 'this machine'}: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout


def probe(folder: Path, out: Path, backend: str, **where) -> dict:
    """bench/_arm64_probe.py's facts; its answers go to ``out``."""
    script = [str(ROOT / "bench" / "_arm64_probe.py"), str(folder), str(out), backend]
    return json.loads(run_python(script, f"the probe with {backend}", **where).strip().splitlines()[-1])


def pi_app(folder: Path, **where) -> list[str]:
    """examples/pi_app.py on the photos folder with the int8 digits CNN: its result lines (FPS aside)."""
    app = [str(ROOT / "examples" / "pi_app.py"), str(folder / "digits_int8.tflite"), "--images",
           str(folder / "photos"), "--threads", "1"]
    return [line for line in run_python(app, "the Pi app", **where).splitlines() if " frames in " not in line]


def compare(host: Path, other: Path) -> dict[str, str]:
    """Per answer: 'identical', or the largest difference and the share of values that differ."""
    a, b = np.load(host), np.load(other)
    verdicts = {}
    for name in a.files:
        x, y = a[name].astype(np.float64), b[name].astype(np.float64)
        if x.shape != y.shape:
            verdicts[name] = f"shape {x.shape} vs {y.shape}"
        elif np.array_equal(x, y):
            verdicts[name] = "identical"
        else:
            verdicts[name] = f"max diff {np.abs(x - y).max():.2g} ({np.mean(x != y):.1%} of values)"
    return verdicts


def main(argv: list[str] | None = None) -> None:
    parser = arguments(__doc__)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "edge-sdk-arm64",
                        help="where the arm64 root file system and wheels are kept (default: %(default)s)")
    args = parser.parse_args(argv)
    missing = [tool for tool in ("qemu-aarch64", "mmdebstrap") if shutil.which(tool) is None]
    if missing:
        parser.error(f"needs {' and '.join(missing)}: apt-get install qemu-user mmdebstrap")
    args.cache.mkdir(parents=True, exist_ok=True)
    rootfs = root_filesystem(args.cache)
    work = Path(tempfile.mkdtemp(prefix="bench_arm64_"))
    models(work)
    rows = []
    host_app = pi_app(work)  # the app takes the interpreter installed: here ai-edge-litert, and per extra below
    for backend, extra in EXTRAS.items():
        site = wheels(args.cache, extra)
        host_out = work / f"host-{extra}.npz"
        host = probe(work, host_out, backend)
        for cpu, board in CPUS.items():
            out = work / f"{cpu}-{extra}.npz"
            where = {"site": site, "rootfs": rootfs, "cpu": cpu}
            facts = probe(work, out, backend, **where)
            answers = compare(host_out, out)
            answers["pi_app"] = "same lines" if pi_app(work, **where) == host_app else "differs"
            rows.append({"cpu": cpu, "board": board, "backend": backend, "facts": facts, "host": host,
                         "answers": answers})
    names = list(dict.fromkeys(name for r in rows for name in r["answers"]))
    lines = ["Answers on emulated Raspberry Pi CPUs (qemu-user, Debian Bookworm arm64, Python "
             f"{rows[0]['facts']['python']}, glibc {rows[0]['facts']['glibc']}) against this machine "
             f"({rows[0]['host']['machine']}) on the same backend", "",
             "| CPU | backend | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    lines += [f"| {r['cpu']} ({r['board']}) | {r['backend']} | "
              + " | ".join(r["answers"].get(n, "-") for n in names) + " |" for r in rows]
    if any(r["facts"]["tensorflow_imported"] for r in rows):
        lines.append("\nwarning: TensorFlow was imported on the emulated device")
    text = "\n".join(lines)
    publish("arm64", text, rows)


if __name__ == "__main__":
    main()
