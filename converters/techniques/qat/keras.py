"""Quantization-aware training (Keras, tfmot): fine-tune with int8 fake quantization before conversion.

After pruning and clustering, the model is annotated for int8 and trained by
distillation from the original, as the other passes are.  The quantize
scheme preserves what came before: pruned models use tfmot's
prune-preserving scheme (PQAT), clustered ones the cluster-preserving scheme
with sparsity kept (CQAT / PCQAT), so zeros stay zero and shared values stay
shared through the fake-quant training.
"""

from __future__ import annotations

from typing import Any

from ... import _tf
from ...data import Dataset
from ...errors import ConversionError, first_line
from ...training.keras import finetune
from ..base import PassRecord
from ...recipe import Recipe


def quantization_aware_training(model, teacher, data: Dataset, recipe: Recipe, records: dict[str, PassRecord],
                                verbose: bool) -> tuple[Any, PassRecord]:
    """A QAT-trained copy of ``model`` (with fake-quant wrappers, which the TFLite converter folds)."""
    mot = _tf.tfmot()
    pruned = bool(records.get("prune") and records["prune"].layers)
    clustered = bool(records.get("cluster") and records["cluster"].layers)
    if clustered:
        scheme, name = mot.experimental.combine.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=pruned), \
            "cluster-preserving" + (" with sparsity (PCQAT)" if pruned else " (CQAT)")
    elif pruned:
        scheme, name = mot.experimental.combine.Default8BitPrunePreserveQuantizeScheme(), "prune-preserving (PQAT)"
    else:
        scheme, name = mot.quantization.keras.default_8bit.Default8BitQuantizeScheme(), "default 8-bit"
    try:
        annotated = mot.quantization.keras.quantize_annotate_model(model)
        with mot.quantization.keras.quantize_scope():
            trained = mot.quantization.keras.quantize_apply(annotated, scheme)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise ConversionError(f"quantization-aware training cannot wrap this model: {first_line(exc)}"
                              "; use post-training int8 (drop quantize.qat)") from None
    history = finetune(trained, teacher, data, recipe.finetune, [], verbose, step="qat")
    record = PassRecord("qat", fine_tuned=True)
    record.summary = {"scheme": name, **history}
    return trained, record
