"""Run a model in the TFLite Micro interpreter in a child process; print JSON facts.

TFLM prints allocation failures to the C-level stderr and can abort on broken
models, so the SDK asks it questions from here, never in its own process.
Usage: python -m converters.targets.mcu._tflm_probe MODEL.tflite INPUTS.npy
"""

import json
import sys

import numpy as np


def main() -> None:
    from tflite_micro.python.tflite_micro import runtime as tflm

    data = open(sys.argv[1], "rb").read()
    inputs = np.load(sys.argv[2])
    ceiling = max(len(data) * 10, 4 << 20)

    def runs(arena: int) -> bool:
        try:
            interpreter = tflm.Interpreter.from_bytes(data, arena_size=arena)
            interpreter.set_input(inputs[:1], 0)
            interpreter.invoke()
            return True
        except RuntimeError:
            return False

    if not runs(ceiling):
        print(json.dumps({"loads": False}))
        return
    low, high = 0, ceiling
    while high - low > 16:
        middle = (low + high) // 2
        low, high = (low, middle) if runs(middle) else (middle, high)
    interpreter = tflm.Interpreter.from_bytes(data, arena_size=ceiling)
    outputs = []
    for i in range(len(inputs)):
        interpreter.set_input(inputs[i:i + 1], 0)
        interpreter.invoke()
        outputs.append(interpreter.get_output(0))
    np.save(sys.argv[2] + ".out.npy", np.concatenate(outputs))
    print(json.dumps({"loads": True, "min_arena": high}))


if __name__ == "__main__":
    main()
