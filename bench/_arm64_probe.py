"""What the device runtime answers on this machine: run by bench/arm64.py on the host and under qemu.

Imports only the runtime and numpy, as a Pi has them.  Writes the answers to OUT.npz and prints facts
as JSON.  Usage: python bench/_arm64_probe.py FOLDER OUT.npz BACKEND   (FOLDER holds the models and data)
"""

import json
import platform
import sys
from pathlib import Path

import numpy as np


def main() -> None:
    folder, out, backend = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    from device_runtime import Model
    from device_runtime.preprocess import ImagePreprocessor, ImageSpec

    facts = {"machine": platform.machine(), "python": platform.python_version(),
             "glibc": platform.libc_ver()[1], "tensorflow_imported": "tensorflow" in sys.modules}
    answers = {}
    photo = np.load(folder / "photo.npy")
    for engine in ("numpy", "opencv"):  # the camera path: a photo to a 224x224 int8 tensor
        prepare = ImagePreprocessor(ImageSpec(224, 224, resize="crop"), scale=1 / 255, zero_point=-128,
                                    dtype=np.int8, engine=engine)
        answers[f"preprocess_{engine}"] = prepare(photo)[0]
    digits = np.load(folder / "digits.npy")
    for name in ("digits_int8", "digits_float32"):
        model = Model(folder / f"{name}.tflite", backend=backend, num_threads=1)
        answers[name] = model.run(digits)[model.outputs[0].name]
        facts["backend"] = model.backend.name
    detector = Model(folder / "detector_int8.tflite", backend=backend, num_threads=1)
    frame = np.load(folder / "frame.npy")
    tensor, _ = detector.preprocess(frame, resize="letterbox")
    answers["detector_int8"] = detector.run(tensor, raw=True)[detector.outputs[0].name]
    answers["detections"] = np.array([[d.class_id, d.score, *d.box] for d in detector.detect(frame)], np.float64)
    np.savez(out, **answers)
    print(json.dumps(facts))


if __name__ == "__main__":
    main()
