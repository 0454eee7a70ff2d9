"""A Raspberry Pi text app in a few lines: sentence embeddings (and the closest pair) or text classes.

    python examples/pi_text_app.py encoder.tflite "A cat sat on the mat." "A dog lay on the rug." "Stocks fell."
    python examples/pi_text_app.py sentiment.tflite --classify "What a lovely day!"

The .tflite carries its tokenizer's vocabulary (`sdk convert ... --vocab vocab.txt`, or
`sdk metadata add MODEL -o OUT --vocab vocab.txt`); the app needs only numpy and an interpreter
(ai-edge-litert or tflite-runtime), and imports nothing from the workstation SDK.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from device_runtime import DeviceRuntimeError, Model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("texts", nargs="+")
    parser.add_argument("--classify", action="store_true", help="Print the top classes instead of embeddings.")
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args(argv)
    try:
        model = Model(args.model, num_threads=args.threads)
        if args.classify:
            for text, classes in zip(args.texts, model.classify_text(args.texts, top_k=3)):
                print(f"{text!r}: " + ", ".join(f"{c.label or c.index} {c.score:.3f}" for c in classes))
            return 0
        vectors = model.embed_text(args.texts)
    except DeviceRuntimeError as exc:  # a file without a vocabulary, a non-text model: one line, exit 2
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for text, vector in zip(args.texts, vectors):
        print(f"{text!r}: {len(vector)} values, first {vector[:4].round(3).tolist()}")
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    similarity = unit @ unit.T  # cosine similarity
    if len(args.texts) > 1:
        similarity[range(len(args.texts)), range(len(args.texts))] = -2
        i, j = divmod(int(similarity.argmax()), len(args.texts))
        print(f"closest pair: {args.texts[i]!r} ~ {args.texts[j]!r} (cosine {similarity[i, j]:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
