"""Mutation fuzzing of model loading: bit flips, byte overwrites, truncation, random bytes.

Mutations run in a worker subprocess that reports each index before it tries
it; a worker killed by a signal is recorded as a crash of that mutation and a
new worker resumes after it.  Used by the test suite (>= 2,000 mutations) and
by bench/runtime_fuzz.py (more, and against the raw interpreter for contrast).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MEMORY_LIMIT_BYTES = 4 << 30  # a mutated shape must not take the machine down


def fuzz_models() -> list[bytes]:
    """The seeds to mutate: one small CNN (conv, pool, reshape, dense, softmax), int8 I/O and float."""
    from converters import _tf
    from converters.recipe import QuantizeSettings
    from converters.targets.tflite.convert import to_tflite

    keras = _tf.keras()
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.layers.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
                            keras.layers.MaxPooling2D(), keras.layers.Flatten(),
                            keras.layers.Dense(3, activation="softmax")])
    calib = np.random.default_rng(0).random((16, 8, 8, 1), dtype=np.float32)
    return [to_tflite(net, QuantizeSettings(mode="int8", io_type="int8"), calib),
            to_tflite(net, QuantizeSettings(), calib)]


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One random corruption of a model file."""
    buf = bytearray(data)
    kind = rng.integers(0, 5)
    if kind == 0:  # flip 1-8 bits
        for pos in rng.integers(0, len(buf), rng.integers(1, 9)):
            buf[pos] ^= 1 << int(rng.integers(0, 8))
    elif kind == 1:  # overwrite 1-4 bytes with random values
        for pos in rng.integers(0, len(buf), rng.integers(1, 5)):
            buf[pos] = int(rng.integers(0, 256))
    elif kind == 2:  # truncate
        del buf[int(rng.integers(0, len(buf))):]
    elif kind == 3:  # write an extreme 32-bit value at a 4-byte aligned position (offsets, sizes, dims)
        pos = int(rng.integers(0, len(buf) // 4)) * 4
        value = int(rng.choice([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, 0x80000000, 0xFFFF, len(buf)]))
        buf[pos:pos + 4] = value.to_bytes(4, "little")
    else:  # random bytes of the same length, keeping the header half the time
        noise = bytearray(rng.integers(0, 256, len(buf), dtype=np.uint8).tobytes())
        if rng.integers(0, 2):
            noise[:8] = buf[:8]
        buf = noise
    return bytes(buf)


@dataclass
class FuzzResult:
    cases: int = 0
    crashes: list[tuple[int, str]] = field(default_factory=list)  # (case index, signal name)
    unexpected: list[tuple[int, str]] = field(default_factory=list)  # non-runtime exceptions
    outcomes: dict[str, int] = field(default_factory=dict)


WORKER = r"""
import json, resource, sys
import numpy as np
limit = int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
cases = np.load(sys.argv[1], allow_pickle=False)
mode, start = sys.argv[2], int(sys.argv[4])
def run_runtime(data):
    import device_runtime as dr
    try:
        model = dr.Model(data)
        for spec in model.inputs:
            if int(np.prod(spec.shape)) > 1 << 24:
                return "input too large to feed"
        model.run({s.name: np.zeros(s.shape, s.dtype) for s in model.inputs}, raw=True)
        return "ran"
    except dr.DeviceRuntimeError as exc:
        return "refused:" + type(exc).__name__
def run_raw(data):
    from ai_edge_litert.interpreter import Interpreter
    try:
        it = Interpreter(model_content=data)
        it.allocate_tensors()
        for d in it.get_input_details():
            if int(np.prod(d["shape"])) > 1 << 24:
                return "input too large to feed"
            it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
        it.invoke()
        return "ran"
    except Exception as exc:
        return "refused:" + type(exc).__name__
run = run_runtime if mode == "runtime" else run_raw
for i in range(start, len(cases.files)):
    print("start", i, flush=True)
    data = cases["c%d" % i].tobytes()
    try:
        outcome = run(data)
    except Exception as exc:
        outcome = "unexpected:" + type(exc).__name__ + ": " + str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
    print("done", i, json.dumps(outcome), flush=True)
"""


def fuzz(models: list[bytes], count: int, seed: int = 0, mode: str = "runtime") -> FuzzResult:
    """Run ``count`` mutations of ``models`` through the runtime (or the raw interpreter)."""
    rng = np.random.default_rng(seed)
    result = FuzzResult(cases=count)
    with tempfile.TemporaryDirectory() as tmp:
        cases_path = Path(tmp) / "cases.npz"
        np.savez(cases_path, **{f"c{i}": np.frombuffer(mutate(models[i % len(models)], rng), np.uint8)
                                for i in range(count)})
        worker = Path(tmp) / "worker.py"
        worker.write_text(WORKER)
        start = 0
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        while start < count:
            proc = subprocess.run([sys.executable, str(worker), str(cases_path), mode,
                                   str(MEMORY_LIMIT_BYTES), str(start)],
                                  capture_output=True, text=True, cwd=ROOT, env=env)
            last_started = start
            for line in proc.stdout.splitlines():
                parts = line.split(" ", 2)
                if parts[0] == "start":
                    last_started = int(parts[1])
                elif parts[0] == "done":
                    outcome = json.loads(parts[2])
                    key = outcome.split(":")[0] if outcome.startswith("unexpected") else outcome
                    result.outcomes[key] = result.outcomes.get(key, 0) + 1
                    if outcome.startswith("unexpected"):
                        result.unexpected.append((int(parts[1]), outcome))
            if proc.returncode == 0:
                break
            name = signal.Signals(-proc.returncode).name if proc.returncode < 0 else f"exit {proc.returncode}"
            result.crashes.append((last_started, name))
            result.outcomes["crash"] = result.outcomes.get("crash", 0) + 1
            start = last_started + 1
    return result
