"""Fidelity of the PyTorch -> .tflite route over the architectures in ``examples.torch_zoo``.

For each: float32 .tflite vs PyTorch (max abs error relative to the output
scale, cosine) and int8 .tflite vs PyTorch (cosine, on uniform [0, 1) inputs
like the calibration data), plus where the conversion time goes: PyTorch's
ONNX export, onnx2tf, the TFLite converter, and the SDK's own work.

    python -m bench.fidelity [--only NAME ...]
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

from bench import arguments
from examples.torch_zoo import ZOO, build

RESULTS = Path(__file__).parent / "results"
FLOAT_RELATIVE_ERROR = 1e-4
FLOAT_COSINE = 0.9999
INT8_COSINE = 0.99
THIRD_PARTY = ("torch_onnx_export", "onnx2tf", "tflite_convert")
RECURRENT = {"lstm", "gru"}


def measure(name: str, workdir: Path) -> dict:
    """Convert one architecture to int8 (which also measures its float32 .tflite) and summarise."""
    import sdk
    from converters.errors import SDKError

    model = build(name)
    shapes = ZOO[name][1]
    mode = "dynamic" if name in RECURRENT else "int8"  # int8 calibration crashes TF on recurrent loops
    generator = torch.Generator().manual_seed(1)
    example = tuple(torch.rand(shape, generator=generator) for shape in shapes)
    started = time.perf_counter()
    try:
        result = sdk.convert(model, workdir / f"{name}.tflite", {"quantize": {"mode": mode, "samples": 64,
                                                                            "allow_random_calibration": True}},
                             example_input=example, force=True)
    except SDKError as exc:
        return {"model": name, "error": str(exc)}
    wall = time.perf_counter() - started
    report = result.report
    outputs = report.output_fidelity or {"output": report.fidelity}
    float_worst = max(f.max_abs_error / max(f.output_scale, 1e-12) for f in [report.float_fidelity])
    float_cos = report.float_fidelity.cosine
    if report.output_fidelity:  # float fidelity of every output: convert once more in float
        floats = sdk.convert(model, workdir / f"{name}_f32.tflite", None, example_input=example, force=True)
        float_worst = max(f.max_abs_error / max(f.output_scale, 1e-12)
                          for f in floats.report.output_fidelity.values())
        float_cos = min(f.cosine for f in floats.report.output_fidelity.values())
    timings = report.timings
    third_party = sum(timings.get(k, 0.0) for k in THIRD_PARTY)
    row = {"model": name, "inputs": [list(s) for s in shapes],
           "float_rel_error": float_worst, "float_cosine": float_cos,
           "quantized_mode": mode, "int8_cosine": min(f.cosine for f in outputs.values()),
           "float_ok": float_worst <= FLOAT_RELATIVE_ERROR and float_cos >= FLOAT_COSINE,
           "int8_ok": min(f.cosine for f in outputs.values()) >= INT8_COSINE,
           "float_kib": report.baseline.file_size / 1024, "int8_kib": report.compressed.file_size / 1024,
           "wall_s": wall, "timings_s": timings,
           "sdk_share": max(0.0, timings["total"] - third_party) / timings["total"]}
    row["ops"] = report.compressed.ops.counts
    return row


def render(rows: list[dict]) -> str:
    lines = ["| model | float rel. error | float cosine | int8 cosine | float KiB | quantized KiB | total s | "
             "torch export s | onnx2tf s | TFLite converter s | SDK s | pass |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | failed: {r['error']} |||||||||||")
            continue
        t = r["timings_s"]
        sdk_s = t["total"] - sum(t.get(k, 0.0) for k in THIRD_PARTY)
        lines.append(f"| {r['model']} | {r['float_rel_error']:.2e} | {r['float_cosine']:.6f} | "
                     f"{r['int8_cosine']:.6f}{'' if r['quantized_mode'] == 'int8' else ' (dynamic)'} | {r['float_kib']:.1f} | {r['int8_kib']:.1f} | {t['total']:.1f} | "
                     f"{t.get('torch_onnx_export', 0):.1f} | {t['onnx2tf']:.1f} | {t['tflite_convert']:.1f} | "
                     f"{sdk_s:.1f} | {'yes' if r['float_ok'] and r['int8_ok'] else 'NO'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = arguments(__doc__)
    parser.add_argument("--only", nargs="*", choices=sorted(ZOO), help="Architectures to run (default: all).")
    args = parser.parse_args(argv)
    names = args.only or list(ZOO)
    with tempfile.TemporaryDirectory() as work:
        rows = [measure(name, Path(work)) for name in names]
    table = render(rows)
    print(table)
    print(f"\nthresholds: float max abs error <= {FLOAT_RELATIVE_ERROR:g} x output scale and cosine >= "
          f"{FLOAT_COSINE}; int8 cosine >= {INT8_COSINE} on uniform [0, 1) inputs (the calibration distribution)")
    if not args.only:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "fidelity.json").write_text(json.dumps(rows, indent=2))
        (RESULTS / "fidelity.md").write_text("# PyTorch -> .tflite fidelity (python -m bench.fidelity)\n\n"
                                             + table + "\n")


if __name__ == "__main__":
    main()
