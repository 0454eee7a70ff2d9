"""Which int8 op types lose all-MiniLM-L6-v2's embedding: the float .tflite of the mask-bounded export
(``converters/lowering/mask_fill.py``) is calibrated once with TensorFlow's calibrator on the 68
calibration sentences of bench/text_quant.py, then quantized by TensorFlow's MLIR quantizer with one set of
op types kept float at a time (``denylisted_ops``); cosine of the embeddings vs PyTorch on the 24 sentences.

    python -m bench.text_quant_ops      (writes bench/results/text_quant_ops.*)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from bench import arguments, publish
from bench.text_quant import calibration_sentences, classifier_sentences
from bench.text_encoder import model_folder, sentence_encoder, sentences, tokenized

VARIANTS = {"all int8": [], "SOFTMAX float": ["SOFTMAX"],
            "LayerNorm (MEAN, SQUARED_DIFFERENCE, RSQRT) float": ["MEAN", "SQUARED_DIFFERENCE", "RSQRT"],
            "SOFTMAX + LayerNorm float": ["SOFTMAX", "MEAN", "SQUARED_DIFFERENCE", "RSQRT"],
            "BATCH_MATMUL (attention) float": ["BATCH_MATMUL"], "FULLY_CONNECTED float": ["FULLY_CONNECTED"],
            "ADD float": ["ADD"], "GELU float": ["GELU"]}


def main(argv: list[str] | None = None) -> None:
    import onnx
    import tensorflow as tf
    import torch
    from tensorflow.lite.python import convert as lite_convert
    from tensorflow.lite.python.optimize import calibrator

    import sdk
    from converters.lowering.mask_fill import bound_mask_fills
    from converters.sources.onnx import TensorSpec, simplify
    from device_runtime import Model

    arguments(__doc__).parse_args(argv)
    texts = sentences()
    calib_texts = calibration_sentences(texts + classifier_sentences()[0])
    with tempfile.TemporaryDirectory(prefix="bench-text-ops-") as tmp:
        work = Path(tmp)
        folder = model_folder(work)
        encoder = sentence_encoder(folder)
        data, calib = tokenized(folder, texts, 128), tokenized(folder, calib_texts, 128)
        with torch.no_grad():
            reference = encoder(*(torch.from_numpy(data[k]) for k in ("input_ids", "attention_mask"))).numpy()
        example = tuple(torch.from_numpy(data[k][:1]) for k in ("input_ids", "attention_mask"))
        torch.onnx.export(encoder, example, str(work / "e.onnx"), input_names=["input_ids", "attention_mask"],
                          output_names=["embedding"], opset_version=17, dynamo=False)
        graph = simplify(onnx.load(str(work / "e.onnx")))[0]
        bound_mask_fills(graph, calib, [TensorSpec(k, (1, 128), np.dtype(np.int64)) for k in calib])
        onnx.save(graph, str(work / "bounded.onnx"))
        float_bytes = sdk.convert(work / "bounded.onnx", work / "f.tflite", eval_data=data).path.read_bytes()
        order = [d["name"] for d in tf.lite.Interpreter(model_content=float_bytes).get_input_details()]

        def samples():
            for i in range(len(calib["input_ids"])):
                yield [calib["input_ids" if "input_ids" in name else "attention_mask"][i:i + 1] for name in order]

        calibrated = calibrator.Calibrator(float_bytes).calibrate(samples)
        rows = []
        for name, ops in VARIANTS.items():
            path = work / "q.tflite"
            path.write_bytes(lite_convert.mlir_quantize(calibrated, denylisted_ops=ops or None))
            got = next(iter(Model(path).run(data).values()))
            cos = (got * reference).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1))
            rows.append({"variant": name, "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
                         "mb": path.stat().st_size / 1e6})
            print(rows[-1], flush=True)
    lines = ["# all-MiniLM-L6-v2 int8, op types kept float (python -m bench.text_quant_ops)", "",
             "| kept float | cosine mean | cosine min | MB |", "|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['cosine_mean']:.4f} | {r['cosine_min']:.4f} | {r['mb']:.1f} |" for r in rows]
    publish("text_quant_ops", "\n".join(lines), {"rows": rows})


if __name__ == "__main__":
    main()
