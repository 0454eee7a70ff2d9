"""Hostile model files: the raw interpreter vs device_runtime on the same mutations, in one run.

Mutations (bit flips, byte overwrites, extreme 32-bit values, truncation,
random bytes) of a small int8 and a float model; each load + allocate + invoke
runs in a worker subprocess, and a worker killed by a signal counts as a crash.
Run: .venv/bin/python -m bench.runtime_fuzz [N]   (writes bench/results/runtime_fuzz.{json,md})
"""

from __future__ import annotations

import time

from bench import arguments, publish
from tests.fuzzing import fuzz, fuzz_models


def main(argv: list[str] | None = None) -> None:
    parser = arguments(__doc__)
    parser.add_argument("count", nargs="?", type=int, default=20000, help="mutations per loader (default 20000)")
    count = parser.parse_args(argv).count
    if count < 1:
        parser.error(f"count must be a positive number of mutations; got {count}")
    models = fuzz_models()
    rows = []
    for mode in ("raw", "runtime"):
        start = time.perf_counter()
        result = fuzz(models, count, seed=11, mode=mode)
        rows.append({"loader": "ai-edge-litert Interpreter" if mode == "raw" else "device_runtime.Model",
                     "mutations": count, "crashes": len(result.crashes),
                     "crash_signals": sorted({name for _, name in result.crashes}),
                     "unexpected_exceptions": len(result.unexpected), "outcomes": result.outcomes,
                     "seconds": time.perf_counter() - start})
    lines = [f"{count} mutations of a small int8 and a float model (same mutations for both loaders)", "",
             "| loader | crashes (signals) | exceptions outside the runtime's error types | ran | refused | s |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        refused = sum(v for k, v in r["outcomes"].items() if k.startswith("refused"))
        lines.append(f"| {r['loader']} | {r['crashes']} {r['crash_signals'] or ''} | "
                     f"{r['unexpected_exceptions'] if r['loader'] != 'ai-edge-litert Interpreter' else 'n/a'} | "
                     f"{r['outcomes'].get('ran', 0)} | {refused} | {r['seconds']:.0f} |")
    text = "\n".join(lines)
    publish("runtime_fuzz", text, rows)


if __name__ == "__main__":
    main()
