"""`sdk sweep` on the digits CNN: 12 recipes on a local Ray instance, 1 worker vs 2, in one run.

Each run starts from an empty output folder (no cache), so both do all the
work; the ratio of their wall times is what parallel recipes buy on this
machine.  Run: .venv/bin/python -m bench.sweep   Writes bench/results/sweep.{md,json}.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from bench import arguments, publish
from bench.suite import RECIPES


def main(argv: list[str] | None = None) -> None:
    arguments(__doc__).parse_args(argv)
    from examples.digits_cnn import load_digits_splits, train_digits_cnn
    from sdk.sweep import SweepEntry, render, run_sweep

    work = Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    splits = load_digits_splits()
    np.savez(work / "train.npz", x=splits.x_train, y=splits.y_train)
    np.savez(work / "test.npz", x=splits.x_test, y=splits.y_test)
    train_digits_cnn(splits).save(work / "digits.h5")
    names = [n for n in RECIPES if n != "int16x8"]  # 12 recipes
    entries = [SweepEntry(n, {"finetune": {"epochs": 4}, **RECIPES[n]}) for n in names]
    runs = {}
    for workers in (1, 2):
        runs[workers] = run_sweep(work / "digits.h5", entries, work / f"out_{workers}", data=work / "train.npz",
                                  eval_data=work / "test.npz", workers=workers, latency_runs=20)
    speedup = runs[1].wall_s / runs[2].wall_s
    text = (f"# sdk sweep: digits CNN, {len(entries)} recipes, local Ray\n\n{render(runs[2])}\n\n"
            f"Wall time of the conversions: 1 worker {runs[1].wall_s:.1f} s, 2 workers {runs[2].wall_s:.1f} s: "
            f"**{speedup:.2f}x faster** with 2 (same run, empty caches).\n")
    publish("sweep", text, {"sequential_s": runs[1].wall_s, "parallel_s": runs[2].wall_s, "speedup": speedup,
                            "rows": runs[2].rows})


if __name__ == "__main__":
    main()
