"""The README's first command: train a digits CNN with Keras 3, save it as .keras, then compress and verify
it with `sdk convert`.

Writes demo_out/ (model, data, .tflite, report) and prints the report. Keras 3 (`import keras`) is what
TensorFlow 2.16+ and `pip install keras` give users today; the SDK translates it to tf_keras for tfmot.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from converters import _tf
from examples.digits_cnn import accuracy, load_digits_splits, train_digits_cnn

OUT = Path("demo_out")


def main() -> int:
    OUT.mkdir(exist_ok=True)
    splits = load_digits_splits()
    model_path = OUT / "digits_cnn.keras"
    if not model_path.exists():
        keras = _tf.keras3()
        print(f"training a digits CNN with Keras {keras.__version__} (scikit-learn's digits, 1437 train / 360 test "
              "images)...")
        model = train_digits_cnn(splits, keras=keras)
        print(f"float model test accuracy: {accuracy(model.predict(splits.x_test, verbose=0), splits.y_test):.2f}%")
        model.save(model_path)
    np.savez(OUT / "train.npz", x=splits.x_train, y=splits.y_train)
    np.savez(OUT / "test.npz", x=splits.x_test, y=splits.y_test)
    sdk = shutil.which("sdk", path=str(Path(sys.executable).parent)) or "sdk"
    command = [sdk, "convert", str(model_path), "-o", str(OUT / "digits_small.tflite"),
               "--prune", "0.75", "--cluster", "16", "--quantize", "int8",
               "--finetune", str(OUT / "train.npz"), "--eval", str(OUT / "test.npz"), "--force"]
    print("$ " + " ".join(command), flush=True)
    return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main())
