"""`sdk sweep`: many recipes for one model, in parallel on Ray, cached, with a Pareto table and a pick.

Each recipe is one Ray task converting into its own temporary folder, which
is renamed into ``OUT/runs/<key>/`` only when the conversion succeeded, so an
interrupted sweep leaves finished results intact and nothing half-written.
The key hashes the source, the data, the options and the recipe: re-running
skips what is done and retries what failed.  Latency is measured afterwards,
one model at a time in the driver, so parallel conversions cannot skew it.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from converters.errors import RecipeError, UserInputError, first_line
from converters.files import atomic_write
from converters.recipe import Recipe

ROW_FILE = "row.json"
MODEL_FILE = "model.tflite"
GRID_AXES = ("prune", "cluster", "quantize")


@dataclass(frozen=True)
class SweepEntry:
    """One named recipe of a sweep, in recipe-dict form (what `--recipe` files hold)."""

    name: str
    recipe: dict


def load_grid(source: str | os.PathLike | dict) -> list[SweepEntry]:
    """Recipes from a grid file or dict: ``recipes`` (a named list), ``grid`` (a product of axes), ``base``.

    ``grid`` axes: ``prune`` (sparsities, 0 for none), ``cluster`` (cluster
    counts, 0 for none) and ``quantize`` (modes).  ``base`` holds settings
    every recipe shares, such as ``finetune: {epochs: 4}``.
    """
    data = _read_grid(source) if not isinstance(source, dict) else source
    if not isinstance(data, dict):
        raise UserInputError(f"a sweep grid must be a mapping with recipes and/or grid; got {type(data).__name__}")
    unknown = sorted(set(data) - {"recipes", "grid", "base"})
    if unknown:
        raise UserInputError(f"unknown sweep grid key(s) {unknown}; allowed: recipes, grid, base")
    base = data.get("base") or {}
    entries = []
    for i, item in enumerate(data.get("recipes") or []):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise UserInputError(f"sweep recipe #{i + 1} needs a name: {{name: int8, quantize: {{mode: int8}}}}")
        entries.append(SweepEntry(item["name"], _merge(base, {k: v for k, v in item.items() if k != "name"})))
    entries += [SweepEntry(name, _merge(base, recipe)) for name, recipe in _expand(data.get("grid") or {})]
    if not entries:
        raise UserInputError("the sweep grid lists no recipes: give `recipes:` and/or `grid:`")
    names = [e.name for e in entries]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserInputError(f"sweep recipe names must be unique; repeated: {duplicates}")
    for entry in entries:
        try:
            Recipe.from_dict(entry.recipe)
        except RecipeError as exc:
            raise UserInputError(f"sweep recipe {entry.name!r}: {exc}") from None
    return entries


def _read_grid(path: str | os.PathLike) -> Any:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"sweep grid file not found: {path}")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))  # YAML is a superset of JSON
    except yaml.YAMLError as exc:
        raise UserInputError(f"cannot parse sweep grid {path}: {first_line(exc)}") from None


def _expand(grid: dict) -> list[tuple[str, dict]]:
    unknown = sorted(set(grid) - set(GRID_AXES))
    if unknown:
        raise UserInputError(f"unknown grid axis {unknown}; allowed: {', '.join(GRID_AXES)}")
    axes = [grid.get(axis) or [None] for axis in GRID_AXES]
    if any(not isinstance(values, list) for values in axes):
        raise UserInputError("each grid axis must be a list, e.g. prune: [0, 0.5, 0.75]")
    out = []
    for prune, cluster, quantize in itertools.product(*axes):
        recipe, parts = {}, []
        if prune:
            recipe["prune"] = {"sparsity": prune}
            parts.append(f"prune{round(prune * 100)}")
        if cluster:
            recipe["cluster"] = {"clusters": cluster}
            parts.append(f"cluster{cluster}")
        if quantize and quantize != "none":
            recipe["quantize"] = {"mode": quantize}
            parts.append(quantize)
        out.append(("+".join(parts) or "float32", recipe))
    return out


def _merge(base: dict, recipe: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in recipe.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else copy.deepcopy(value)
    return merged


# -- one recipe (runs inside a Ray worker) ---------------------------------------------------
def convert_one(source: str, recipe: dict, run_dir: str, data: str | None, eval_data: str | None,
                finetune: bool, options: dict) -> dict:
    """Convert one recipe into ``run_dir``; never raises: a failure is a row with its error."""
    from sdk.api import convert

    final = Path(run_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    started = time.perf_counter()
    try:
        result = convert(source, work / MODEL_FILE, recipe, finetune_data=data if finetune else None,
                         calib_data=data, eval_data=eval_data or data, **options)
        row = {"status": "ok", **summarize(result.report.to_dict()), "convert_s": time.perf_counter() - started}
        atomic_write(work / ROW_FILE, json.dumps(row, indent=2).encode())
        shutil.rmtree(final, ignore_errors=True)
        os.replace(work, final)
        return row
    except Exception as exc:  # noqa: BLE001 - every failure becomes a row; the sweep goes on
        return {"status": "failed", "error": f"{type(exc).__name__}: {first_line(exc)}",
                "convert_s": time.perf_counter() - started}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def summarize(report: dict) -> dict:
    """The numbers a sweep table shows, taken from a conversion report."""
    fidelity = report.get("fidelity") or {}
    compressed = report["compressed"]
    weights = compressed.get("weights") or []
    return {
        "file_size": compressed["file_size"], "gzip_size": compressed["gzip_size"],
        "float32_file_size": report["baseline_float32"]["file_size"],
        "size_ratio": report["size_ratio"], "gzip_ratio": report["gzip_ratio"],
        "sparsity": compressed["overall_sparsity"],
        "max_unique_weights": max((w["unique_values"] for w in weights), default=None),
        "accuracy": fidelity.get("accuracy_tflite"), "accuracy_source": fidelity.get("accuracy_source"),
        "top1_agreement": fidelity.get("top1_agreement"), "cosine": fidelity.get("cosine"),
        "float_ops": compressed["ops"].get("float_ops") if isinstance(compressed.get("ops"), dict) else None,
    }


# -- the sweep ---------------------------------------------------------------------------------
@dataclass
class SweepResult:
    rows: list[dict]
    out_dir: Path
    wall_s: float
    workers: int
    recommended: str | None
    budget: str
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"rows": self.rows, "wall_s": self.wall_s, "workers": self.workers,
                "recommended": self.recommended, "budget": self.budget, "files": self.files}


def fingerprint(path: str | os.PathLike | None) -> str:
    """sha256 of a file, or of every file in a folder (names and bytes); '' for None."""
    if path is None:
        return ""
    p = Path(path)
    digest = hashlib.sha256()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        digest.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
        with open(f, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def run_sweep(source: str | os.PathLike, entries: Sequence[SweepEntry], out_dir: str | os.PathLike, *,
              data: str | os.PathLike | None = None, eval_data: str | os.PathLike | None = None,
              finetune: bool = True, address: str | None = None, workers: int | None = None,
              max_drop: float = 1.0, latency_threads: Sequence[int] = (1, 2), latency_runs: int = 50,
              options: dict | None = None, plot: bool = True,
              progress: Callable[[str, int, int], None] | None = None) -> SweepResult:
    """Run every recipe (cached ones are skipped), measure latency, write sweep.{json,md} and a plot."""
    source = str(source)
    if not Path(source).exists() and ":" not in source:
        raise UserInputError(f"source model not found: {source}")
    for what, path in (("--data", data), ("--eval", eval_data)):
        if path is not None and not Path(path).exists():
            raise UserInputError(f"{what} not found: {path}")
    if workers is not None and workers < 1:
        raise UserInputError(f"--workers must be >= 1; got {workers}")
    options = options or {}
    out = Path(out_dir)
    runs = out / "runs"
    shared = json.dumps({"source": fingerprint(source) if Path(source).exists() else source,
                         "weights": fingerprint(options.get("weights")),
                         "data": fingerprint(data), "eval": fingerprint(eval_data), "finetune": finetune,
                         "options": options}, sort_keys=True, default=str)
    keys = {e.name: hashlib.sha256((shared + json.dumps(e.recipe, sort_keys=True)).encode()).hexdigest()[:20]
            for e in entries}
    rows: dict[str, dict] = {}
    for entry in entries:
        cached = runs / keys[entry.name] / ROW_FILE
        if cached.is_file():
            rows[entry.name] = {**json.loads(cached.read_text()), "cached": True}
    pending = [e for e in entries if e.name not in rows]
    started = time.perf_counter()
    used_workers = _run_on_ray(source, pending, runs, keys, rows, data, eval_data, finetune, options, address,
                               workers, progress, len(entries)) if pending else 0
    wall = time.perf_counter() - started
    for entry in entries:
        row = rows[entry.name]
        row.update(name=entry.name, recipe=entry.recipe, path=str(runs / keys[entry.name] / MODEL_FILE)
                   if row["status"] == "ok" else None)
        if row["status"] == "ok" and latency_threads and "latency" not in row:
            row["latency"] = _latency(row["path"], latency_threads, latency_runs)
            cached = {k: v for k, v in row.items() if k not in ("cached", "name", "recipe", "path")}
            atomic_write(runs / keys[entry.name] / ROW_FILE, json.dumps(cached, indent=2).encode())
    ordered = [rows[e.name] for e in entries]
    recommended, budget = recommend(ordered, max_drop)
    result = SweepResult(ordered, out, wall, used_workers, recommended, budget)
    write_tables(result, plot)
    return result


def _run_on_ray(source, pending, runs, keys, rows, data, eval_data, finetune, options, address, workers,
                progress, total) -> int:
    try:
        import ray
    except ImportError:
        raise UserInputError("sdk sweep needs Ray: pip install 'edge-deploy-sdk[sweep]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        settings = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if address:
            ray.init(address=address, **settings)
        else:
            ray.init(num_cpus=workers or os.cpu_count() or 1, object_store_memory=200 * 1024 * 1024, **settings)
    try:
        capacity = int(ray.cluster_resources().get("CPU", 1))
        task = ray.remote(num_cpus=1, max_retries=0)(convert_one)
        futures = {task.remote(source, e.recipe, str(runs / keys[e.name]),
                               None if data is None else str(data), None if eval_data is None else str(eval_data),
                               finetune, options): e.name for e in pending}
        done_count = total - len(pending)
        try:
            while futures:
                ready, _ = ray.wait(list(futures), num_returns=1)
                name = futures.pop(ready[0])
                try:
                    rows[name] = ray.get(ready[0])
                except ray.exceptions.RayError as exc:  # the worker died (a converter crash), not the sweep
                    rows[name] = {"status": "failed", "error": f"worker crashed: {first_line(exc)}"}
                done_count += 1
                if progress:
                    progress(f"sweep ({name}: {rows[name]['status']})", done_count, total)
        except KeyboardInterrupt:
            for future in futures:
                ray.cancel(future, force=True)
            raise
        return capacity
    finally:
        if started_here:
            ray.shutdown()


def _latency(path: str, threads: Sequence[int], runs: int) -> dict:
    """p50/p90/throughput per thread count, in a fresh process so that peak RSS is this model's own."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "device_runtime.bench", path, "--threads", *map(str, threads),
               "--warmup", "5", "--runs", str(runs), "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["benchmark failed"])[-1]}
    report = json.loads(done.stdout)
    return {str(r["threads"]): {"p50_ms": r["p50_ms"], "p90_ms": r["p90_ms"],
                                "throughput_per_s": r["throughput_per_s"], "peak_rss_mb": r["peak_rss_mb"]}
            for r in report["results"]}


def quality(row: dict) -> tuple[float | None, float | None, str]:
    """(score, reference, metric): accuracy vs the source's when labels were given, else top-1 agreement."""
    if row.get("accuracy") is not None and row.get("accuracy_source") is not None:
        return row["accuracy"], row["accuracy_source"], "accuracy"
    if row.get("top1_agreement") is not None:
        return row["top1_agreement"], 100.0, "top-1 agreement with the source"
    return None, None, "none"


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of (size, score) points no other point beats: smaller-or-equal size and higher-or-equal score."""
    front = []
    for i, (size, score) in enumerate(points):
        beaten = any(s2 <= size and q2 >= score and (s2 < size or q2 > score)
                     for j, (s2, q2) in enumerate(points) if j != i)
        if not beaten:
            front.append(i)
    return front


def recommend(rows: Sequence[dict], max_drop: float) -> tuple[str | None, str]:
    """The smallest (gzip) successful recipe whose quality drop is within ``max_drop`` points."""
    best = None
    metric = "none"
    for row in rows:
        if row["status"] != "ok":
            continue
        score, reference, metric = quality(row)
        if score is None or reference - score > max_drop:
            continue
        if best is None or row["gzip_size"] < best["gzip_size"]:
            best = row
    points = "point" if max_drop == 1 else "points"
    return (best["name"] if best else None), f"{metric} within {max_drop:g} {points} of the source"


def write_tables(result: SweepResult, plot: bool = True) -> None:
    out = result.out_dir
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "sweep.json", json.dumps(result.to_dict(), indent=2, default=str).encode())
    atomic_write(out / "sweep.md", (render(result) + "\n").encode())
    result.files = [str(out / "sweep.json"), str(out / "sweep.md")]
    ok = [r for r in result.rows if r["status"] == "ok" and quality(r)[0] is not None]
    if plot and ok:
        from .plots import tradeoff_plot

        tradeoff_plot(ok, out / "pareto.png", title=f"{len(ok)} recipes")
        result.files.append(str(out / "pareto.png"))


def render(result: SweepResult) -> str:
    header = ["recipe", "status", "size KiB", "gzip KiB", "gzip ratio", "sparsity", "quality", "change", "cosine",
              "p50 ms (1t)", "p50 ms (2t)", "peak MB", "convert s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in result.rows:
        if row["status"] != "ok":
            error = row.get("error", "").replace("|", "/")
            lines.append(f"| {row['name']} | failed: {error} |" + " |" * (len(header) - 2))
            continue
        score, reference, _ = quality(row)
        latency = row.get("latency") or {}
        cells = [row["name"] + (" (cached)" if row.get("cached") else ""), "ok",
                 f"{row['file_size'] / 1024:.1f}", f"{row['gzip_size'] / 1024:.1f}", f"{row['gzip_ratio']:.2f}x",
                 f"{row['sparsity']:.1%}", "-" if score is None else f"{score:.2f}",
                 "-" if score is None else f"{score - reference:+.2f}",
                 "-" if row.get("cosine") is None else f"{row['cosine']:.4f}",
                 *(f"{latency[t]['p50_ms']:.3f}" if t in latency else "-" for t in ("1", "2")),
                 f"{max(v['peak_rss_mb'] for k, v in latency.items() if k != 'error'):.0f}"
                 if any(k != "error" for k in latency) else "-", f"{row.get('convert_s', 0):.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    pick = result.recommended or "none"
    lines += ["", f"Recommended ({result.budget}, smallest gzip size): **{pick}**",
              f"Wall time {result.wall_s:.1f} s on {result.workers} Ray worker CPU(s)."]
    return "\n".join(lines)
