"""PNG plots for sweeps, benchmarks and `sdk convert --plot` (matplotlib, drawn off-screen)."""

from __future__ import annotations

import io
import os
from typing import Sequence

from converters.files import atomic_write


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        from converters.errors import UserInputError

        raise UserInputError("plots need matplotlib: pip install 'edge-deploy-sdk[sweep]'") from None
    matplotlib.use("Agg")  # no display on build machines; chosen at the first plot, not at import
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    fig.clf()
    atomic_write(path, buffer.getvalue())


def tradeoff_plot(rows: Sequence[dict], path: str | os.PathLike, title: str = "") -> None:
    """Quality vs gzip size (Pareto front highlighted) and, when measured, latency vs size."""
    from .sweep import pareto_front, quality

    plt = _pyplot()
    with_latency = [r for r in rows if (r.get("latency") or {}).get("1")]
    fig, axes = plt.subplots(1, 2 if with_latency else 1, figsize=(12 if with_latency else 6.5, 4.8))
    axes = axes if with_latency else [axes]
    sizes = [r["gzip_size"] / 1024 for r in rows]
    scores = [quality(r)[0] for r in rows]
    front = set(pareto_front(list(zip(sizes, scores))))
    ax = axes[0]
    ax.scatter(sizes, scores, c=["tab:red" if i in front else "tab:gray" for i in range(len(rows))], zorder=3)
    ordered = sorted(front, key=lambda i: sizes[i])
    ax.plot([sizes[i] for i in ordered], [scores[i] for i in ordered], "r--", lw=1, label="Pareto front")
    for i, row in enumerate(rows):
        ax.annotate(row["name"], (sizes[i], scores[i]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("gzip size (KiB, log scale)")
    ax.set_ylabel(quality(rows[0])[2])
    ax.set_title(f"{title}: quality vs size".strip(": "))
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    if with_latency:
        ax = axes[1]
        for threads, marker in (("1", "o"), ("2", "s")):
            measured = [r for r in with_latency if threads in r["latency"]]
            ax.scatter([r["file_size"] / 1024 for r in measured], [r["latency"][threads]["p50_ms"] for r in measured],
                       marker=marker, label=f"{threads} thread{'s' if threads != '1' else ''}")
        for r in with_latency:
            ax.annotate(r["name"], (r["file_size"] / 1024, r["latency"]["1"]["p50_ms"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("file size (KiB, log scale)")
        ax.set_ylabel("p50 latency (ms)")
        ax.set_title("latency vs size")
        ax.legend()
        ax.grid(alpha=0.3)
    _save(fig, path)
    plt.close(fig)


def layer_plot(report: dict, path: str | os.PathLike) -> None:
    """Per-layer sparsity and unique-value bars of a conversion report's compressed model."""
    plt = _pyplot()
    weights = report["compressed"]["weights"]
    if not weights:
        from converters.errors import UserInputError

        raise UserInputError("the model has no weight tensors to plot")
    names = [w["layer"] or w["tensor"] for w in weights]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6.0, 0.6 * len(names) + 2), 6), sharex=True)
    top.bar(range(len(names)), [100 * w["sparsity"] for w in weights], color="tab:blue")
    top.set_ylabel("sparsity (%)")
    top.set_ylim(0, 100)
    top.set_title(f"{os.path.basename(report['output'])}: per-layer weights")
    bottom.bar(range(len(names)), [w["unique_values"] for w in weights], color="tab:orange")
    bottom.set_yscale("log")
    bottom.set_ylabel("unique values (log)")
    bottom.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    for ax in (top, bottom):
        ax.grid(axis="y", alpha=0.3)
    _save(fig, path)
    plt.close(fig)


def layer_error_plot(layers: dict, path: str | os.PathLike, title: str) -> None:
    """Per-op output SNR and the error each op adds (a report's ``layer_errors``), so the layers that lose
    stand out: bars at or above the 99 dB cap are exact."""
    plt = _pyplot()
    rows = layers["rows"]
    if not rows:
        from converters.errors import UserInputError

        raise UserInputError("no quantized op could be paired with the float file; nothing to plot")
    names = [r["layer"] or r["tensor"].split(";")[0][-40:] for r in rows]  # as LayerError.label
    worst = set(layers.get("worst", []))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(names) + 2), 4.5))
    positions = range(len(names))
    ax.bar([p - 0.2 for p in positions], [r["snr_db"] for r in rows], width=0.4, label="output SNR", color="tab:blue")
    ax.bar([p + 0.2 for p in positions], [r["added_db"] for r in rows], width=0.4, label="added error (SNR)",
           color=["tab:red" if n in worst else "tab:orange" for n in names])
    ax.set_ylabel("dB (higher is better; 99 = exact)")
    ax.set_ylim(0, 100)
    ax.set_xticks(list(positions), names, rotation=60, ha="right", fontsize=7)
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)
    plt.close(fig)
