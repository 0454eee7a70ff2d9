"""This SDK vs the same recipe written by hand with tfmot + TFLiteConverter, in one run.

Recipe: 75% sparsity + 16 clusters + int8 on the digits CNN.  The hand-written
baseline follows the tfmot guides: polynomial pruning for 4 epochs, sparsity-
preserving clustering for 2 epochs, full-integer PTQ.  Prints a table and
writes bench/results/compression.{json,md}.

Run: .venv/bin/python -m bench.compression
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from bench import arguments, publish
from converters import _tf
from converters.verify.analysis import gzip_size
from examples.digits_cnn import accuracy, load_digits_splits, train_digits_cnn


def hand_written_tfmot(model_path: Path, splits) -> bytes:
    """What a user writes from the tfmot guides, kept as plain as those guides are."""
    tf, keras, mot = _tf.tensorflow(), _tf.keras(), _tf.tfmot()
    model = keras.models.load_model(model_path)
    steps = int(np.ceil(len(splits.x_train) / 32)) * 4
    schedule = mot.sparsity.keras.PolynomialDecay(0.0, 0.75, begin_step=0, end_step=steps, frequency=10)
    pruned = mot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
    pruned.compile(optimizer=keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy")
    pruned.fit(splits.x_train, splits.y_train, batch_size=32, epochs=4, verbose=0,
               callbacks=[mot.sparsity.keras.UpdatePruningStep()])
    stripped = mot.sparsity.keras.strip_pruning(pruned)
    clustered = mot.clustering.keras.cluster_weights(
        stripped, number_of_clusters=16, preserve_sparsity=True,
        cluster_centroids_init=mot.clustering.keras.CentroidInitialization.KMEANS_PLUS_PLUS)
    clustered.compile(optimizer=keras.optimizers.Adam(1e-5), loss="sparse_categorical_crossentropy")
    clustered.fit(splits.x_train, splits.y_train, batch_size=32, epochs=2, verbose=0)
    final = mot.clustering.keras.strip_clustering(clustered)
    converter = tf.lite.TFLiteConverter.from_keras_model(final)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([splits.x_train[i:i + 1]] for i in range(200))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def main(argv: list[str] | None = None) -> None:
    arguments(__doc__).parse_args(argv)
    from device_runtime import Model
    from sdk import convert

    splits = load_digits_splits()
    work = Path(tempfile.mkdtemp(prefix="bench_compression_"))
    model = train_digits_cnn(splits)
    model_path = work / "digits.h5"
    model.save(model_path)
    float_acc = accuracy(model.predict(splits.x_test, verbose=0), splits.y_test)

    def measure(name: str, data: bytes, seconds: float) -> dict:
        probs = next(iter(Model(data).run(splits.x_test).values()))
        return {"name": name, "size": len(data), "gzip": gzip_size(data),
                "accuracy": accuracy(probs, splits.y_test), "seconds": seconds}

    start = time.perf_counter()
    result = convert(model_path, work / "sdk.tflite",
                     {"prune": {"sparsity": 0.75}, "cluster": {"clusters": 16}, "quantize": {"mode": "int8"}},
                     finetune_data=(splits.x_train, splits.y_train), eval_data=(splits.x_test, splits.y_test))
    rows = [measure("sdk convert", result.path.read_bytes(), time.perf_counter() - start)]
    start = time.perf_counter()
    hand = hand_written_tfmot(model_path, splits)
    rows.append(measure("tfmot by hand", hand, time.perf_counter() - start))
    baseline_gzip = result.report.baseline.gzip_size
    for row in rows:
        row["gzip_ratio"] = baseline_gzip / row["gzip"]
        row["accuracy_change"] = row["accuracy"] - float_acc

    header = "| method | file bytes | gzip bytes | gzip ratio vs float32 | test accuracy | change | time s |"
    lines = [f"Digits CNN, 75% sparsity + 16 clusters + int8; float32 accuracy {float_acc:.2f}%, "
             f"float32 gzip {baseline_gzip} bytes", "", header, "|" + "---|" * 7]
    for r in rows:
        lines.append(f"| {r['name']} | {r['size']} | {r['gzip']} | {r['gzip_ratio']:.2f}x | "
                     f"{r['accuracy']:.2f}% | {r['accuracy_change']:+.2f} | {r['seconds']:.1f} |")
    sdk_row, hand_row = rows
    lines += ["", f"gzip size: sdk is {hand_row['gzip'] / sdk_row['gzip']:.2f}x smaller than by hand; "
                  f"accuracy: sdk {sdk_row['accuracy_change']:+.2f} vs by hand {hand_row['accuracy_change']:+.2f} "
                  "points (same run, same trained model)"]
    text = "\n".join(lines)
    publish("compression", text, {"float_accuracy": float_acc, "float_gzip": baseline_gzip, "rows": rows})


if __name__ == "__main__":
    main()
