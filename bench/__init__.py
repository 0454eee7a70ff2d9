"""Measurements that print a table and write it to bench/results/ (run each as ``python -m bench.NAME``)."""

from __future__ import annotations

import argparse


def arguments(doc: str) -> argparse.ArgumentParser:
    """A bench's parser, whose --help prints the bench's docstring.

    A bench runs for minutes and then rewrites its committed results, so ``--help`` or a
    mistyped flag must stop it before it starts (argparse exits 2 on an unknown flag).
    """
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
