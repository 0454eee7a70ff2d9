"""Measurements that print a table and write it to bench/results/ (run each as ``python -m bench.NAME``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def arguments(doc: str) -> argparse.ArgumentParser:
    """A bench's parser, whose --help prints the bench's docstring.

    A bench runs for minutes and then rewrites its committed results, so ``--help`` or a
    mistyped flag must stop it before it starts (argparse exits 2 on an unknown flag).
    """
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def publish(stem: str, text: str, data) -> None:
    """Print a bench's table and write it, with its data, to bench/results/STEM.{md,json}, atomically:
    an interrupted bench leaves the committed results as they were."""
    from converters.files import atomic_write

    print(text)
    atomic_write(RESULTS / f"{stem}.md", (text if text.endswith("\n") else text + "\n").encode())
    atomic_write(RESULTS / f"{stem}.json", (json.dumps(data, indent=2, default=str) + "\n").encode())
