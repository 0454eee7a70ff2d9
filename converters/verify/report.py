"""The conversion report: JSON beside the model, and a readable table for the terminal."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .fidelity import Fidelity
from ..techniques.base import PassRecord
from .analysis import ModelStats


@dataclass
class Report:
    source: str
    source_sha256: str
    output: str
    output_sha256: str
    recipe: dict[str, Any]
    baseline: ModelStats
    compressed: ModelStats
    passes: dict[str, PassRecord]
    fidelity: Fidelity | None
    float_fidelity: Fidelity | None
    timings: dict[str, float]
    notes: list[str] = field(default_factory=list)
    io_layout: list[dict[str, Any]] = field(default_factory=list)  # PyTorch/ONNX: source vs .tflite layout
    output_fidelity: dict[str, Fidelity] = field(default_factory=dict)  # every output, for multi-output models
    layer_errors: Any = None  # verify.layers.LayerReport: int8/int16x8/dynamic files
    mixed_precision: Any = None  # search.mixed_precision.MixedPrecisionRecord: when a fidelity target was set
    warnings: list[str] = field(default_factory=list)

    @property
    def size_ratio(self) -> float:
        return self.baseline.file_size / self.compressed.file_size

    @property
    def gzip_ratio(self) -> float:
        return self.baseline.gzip_size / self.compressed.gzip_size

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "source_sha256": self.source_sha256,
            "output": self.output, "output_sha256": self.output_sha256,
            "recipe": self.recipe,
            "baseline_float32": self.baseline.to_dict(),
            "compressed": self.compressed.to_dict(),
            "size_ratio": self.size_ratio, "gzip_ratio": self.gzip_ratio,
            "passes": {name: record.to_dict() for name, record in self.passes.items()},
            "fidelity": self.fidelity.to_dict() if self.fidelity else None,
            "float_fidelity": self.float_fidelity.to_dict() if self.float_fidelity else None,
            "timings_s": self.timings,
            "notes": self.notes,
            "io_layout": self.io_layout,
            "output_fidelity": {name: f.to_dict() for name, f in self.output_fidelity.items()},
            "layer_errors": self.layer_errors.to_dict() if self.layer_errors else None,
            "mixed_precision": self.mixed_precision.to_dict() if self.mixed_precision else None,
            "warnings": self.warnings,
        }

    def render(self) -> str:
        lines = [f"{self.output}  <-  {self.source}",
                 f"recipe: {describe_recipe(self.recipe)}", *[f"warning: {w}" for w in self.warnings], ""]
        lines += _table(["", "float32", "compressed", "ratio"], [
            ["file size", _kb(self.baseline.file_size), _kb(self.compressed.file_size),
             f"{self.size_ratio:.2f}x"],
            ["gzip size", _kb(self.baseline.gzip_size), _kb(self.compressed.gzip_size),
             f"{self.gzip_ratio:.2f}x"],
            ["weight sparsity", f"{self.baseline.overall_sparsity:.1%}",
             f"{self.compressed.overall_sparsity:.1%}", ""],
        ])
        lines += ["", render_ops(self.compressed), ""]
        for row in self.io_layout:
            if "input" in row:
                lines.append(f"input {row['input']}: {row['source_shape']} in the source -> "
                             f"{row['tflite_shape']} in the .tflite ({row['layout']})")
            else:
                lines.append(f"output {row['output']}: {row['layout']}")
        if self.output_fidelity:
            for name, fid in self.output_fidelity.items():
                lines += render_fidelity(f"fidelity vs source, output {name}", fid)
        else:
            lines += render_fidelity("fidelity vs source", self.fidelity)
        if self.float_fidelity:
            lines += render_fidelity("float32 .tflite vs source", self.float_fidelity)
        if self.layer_errors:
            lines += ["", *self.layer_errors.render()]
        if self.mixed_precision:
            lines += ["", *self.mixed_precision.render()]
        lines += ["", "per-layer weights (measured in the written .tflite):"]
        lines += render_weights(self.compressed)
        for record in self.passes.values():
            if record.summary:
                lines.append(f"{record.name}: " + ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}"
                                                            for k, v in record.summary.items()))
            for layer, reason in record.skipped.items():
                lines.append(f"skipped by {record.name}: {layer}: {reason}")
        lines += [f"note: {n}" for n in self.notes]
        lines.append("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items()))
        return "\n".join(lines)


def describe_recipe(recipe: dict[str, Any]) -> str:
    parts = []
    if recipe.get("prune"):
        p = recipe["prune"]
        parts.append("prune 2:4" if p["structure"] == "2:4" else f"prune {p['sparsity']:.0%}")
    if recipe.get("cluster"):
        parts.append(f"cluster {recipe['cluster']['clusters']}")
    if recipe.get("channels"):
        parts.append(f"remove {recipe['channels']['fraction']:.0%} of channels")
    if recipe.get("low_rank"):
        low_rank = recipe["low_rank"]
        parts.append(f"low-rank (rank ratio {low_rank['rank_ratio']})" if low_rank.get("rank_ratio")
                     else f"low-rank (energy {low_rank['energy']})")
    q = recipe["quantize"]
    parts.append(f"quantize {q['mode']}" + (f" (io {q['io_type']})" if q["mode"] == "int8" else "")
                 + (" with QAT" if q.get("qat") else ""))
    if recipe.get("layers") or recipe.get("layer_types"):
        parts.append(f"{len(recipe['layers']) + len(recipe['layer_types'])} per-layer override(s)")
    return ", ".join(parts)


def render_ops(stats: ModelStats) -> str:
    ops = ", ".join(f"{name} x{n}" for name, n in stats.ops.counts.items())
    floats = ", ".join(f"{name} x{n}" for name, n in stats.ops.float_ops.items()) or "none"
    io = "; ".join(f"{t['name']} {t['shape']} {t['dtype']}" for t in stats.inputs + stats.outputs)
    return f"ops: {ops}\nops computing in float: {floats}\ninputs/outputs: {io}"


def render_fidelity(title: str, fid: Fidelity | None) -> list[str]:
    if fid is None:
        return [f"{title}: not measured"]
    if fid.mismatch:
        return [f"{title}: MISMATCH, {fid.mismatch}"]
    line = (f"{title} ({fid.samples} samples, {fid.data}): max abs error {fid.max_abs_error:.3g} "
            f"(output scale {fid.output_scale:.3g}), cosine {fid.cosine:.6f}")
    if fid.top1_agreement is not None:
        line += f", top-1 agreement {fid.top1_agreement:.2f}%"
    if fid.accuracy_source is not None:
        line += (f", accuracy {fid.accuracy_source:.2f}% -> {fid.accuracy_tflite:.2f}% "
                 f"({fid.accuracy_tflite - fid.accuracy_source:+.2f})")
    return [line]


def render_weights(stats: ModelStats) -> list[str]:
    rows = [[w.layer, w.op, "x".join(map(str, w.shape)), w.dtype, w.stored_as, f"{w.sparsity:.1%}",
             str(w.unique_values) + (f" ({w.unique_per_channel_max}/ch)" if w.unique_per_channel_max else ""),
             _kb(w.bytes)] for w in stats.weights]
    return _table(["layer", "op", "shape", "dtype", "stored", "sparsity", "unique", "bytes"], rows)


def _kb(n: int) -> str:
    return f"{n / 1024:.1f} KiB"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    return [fmt.format(*header).rstrip()] + [fmt.format(*r).rstrip() for r in rows]
