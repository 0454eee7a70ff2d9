"""Importers, compression techniques and writers behind the SDK, laid out as the data flows.

    sources/     keras.py, torch.py, onnx.py: load a source model and run it as the reference;
                 keras3.py translates Keras 3 models to tf_keras (keras3_custom.py: custom layers)
    techniques/  registry.py lists them in run order; each holds its settings, its Technique entry and a
                 backend per framework: prune, cluster (Keras via tfmot; arrays.py on ONNX initializers),
                 channels/, low_rank.py (graph rewrites), qat/
    training/    fine-tuning by distillation, one trainer per framework
    lowering/    onnx2tf.py: ONNX -> tf_keras, offline and quiet; onnx_rewrites.py: valid ONNX onnx2tf
                 mis-converts, rewritten before it; onnx_layouts.py: which inputs/outputs it transposed;
                 onnx_io.py: the layouts the .tflite keeps, chosen on a run of the source
    targets/     tflite/ (convert, export.py: per-channel/sparse/mixed-precision choices, embed.py: provenance and
                 metadata in every file, normalisation, flex.py: ops with no builtin), mcu/, android.py
    verify/      fidelity.py, outputs.py (every output vs the source), analysis.py (facts read from a written
                 .tflite), layers.py (per-layer error), report.py
    search/      budget.py (accuracy-budget mode), mixed_precision.py, weight_effect.py
    routes/      what differs per framework at each stage: keras.py (Keras 3 and tf_keras), onnx.py
                 (PyTorch and ONNX, lowered through onnx2tf); base.py holds the Route interface
    pipeline.py  convert(): the one driver, the stage order written once

Shared pieces stay at the top: recipe.py, data.py, errors.py, files.py, labels.py, _tf.py. Heavy
frameworks (TensorFlow, tfmot, torch) are imported on first use, not here.
"""
