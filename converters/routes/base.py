"""What differs between frameworks in a conversion: one ``Route`` per framework, driven by ``pipeline.convert``.

The driver owns the order (check -> load -> compress -> lower -> float baseline -> export -> metadata -> verify
-> report -> write); a route owns only what its framework does differently at each stage: how the source is
read, where the techniques run (Keras layers, PyTorch modules, ONNX initializers), how the model becomes a
TensorFlow model the TFLite converter takes (nothing for Keras, onnx2tf for the others) and what the written
file is compared with (Keras's predictions, PyTorch or onnxruntime).
"""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from ..data import Dataset, DataSource
from ..recipe import Recipe
from ..targets.tflite.metadata import MetadataSpec
from ..targets.tflite.normalisation import Normalisation
from ..techniques.base import PassRecord
from ..verify.analysis import ModelStats
from ..verify.fidelity import Fidelity

Progress = Callable[[str, int, int], None]


@dataclass
class ConvertOptions:
    """Everything ``convert`` takes besides the source, the output and the recipe. The PyTorch/ONNX options
    (``example_input`` ... ``allow_flex``) are refused on a Keras source, ``custom_objects`` on the others."""

    finetune_data: DataSource | None = None
    calib_data: DataSource | None = None
    eval_data: DataSource | None = None
    force: bool = False
    progress: Progress | None = None
    verbose: bool = False
    metadata: MetadataSpec | None = None
    custom_objects: dict | None = None
    example_input: Any = None
    input_shapes: Sequence[Sequence[int]] | None = None
    weights: str | os.PathLike | None = None
    keep_nchw: bool = False
    keep_intermediates: bool = False
    input_dtypes: Sequence[str] | None = None
    allow_flex: bool = False


@dataclass
class Conversion:
    """One conversion's state, filled stage by stage: the data, the notes and timings the report gets."""

    recipe: Recipe
    options: ConvertOptions
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    tune: Dataset | None = None
    calib: Dataset | None = None
    evaluation: Dataset | None = None
    known: Normalisation | None = None  # the input normalisation known before the data was read

    @property
    def datasets(self) -> tuple[Dataset | None, Dataset | None, Dataset | None]:
        return self.tune, self.calib, self.evaluation

    @property
    def any_data(self) -> Dataset | None:
        return self.tune or self.calib or self.evaluation


@dataclass
class Lowered:
    """The compressed model as TensorFlow models the TFLite converter takes, and what exporting needs."""

    float_model: Any  # the source, unchanged: the float32 baseline
    plain: Any  # the compressed model (the float reference of a mixed-precision search)
    quantizable: Any  # what is written: ``plain``, or prepared for quantization (bias correction)
    calibration: Any  # calibration inputs as the converter takes them
    search_samples: Any  # one sample per .tflite run, for the mixed-precision search
    search_input_shapes: list[tuple]
    candidates: Mapping[str, np.ndarray]  # layers the search may keep float: their weights
    float_layers: Sequence[str] | Mapping[str, np.ndarray]  # kept float by the recipe (precision: float)
    all_clustered: bool
    changed: bool  # the compressed model differs from the source
    traced: bool = False  # convert a traced function of the model (onnx2tf's models)
    allow_flex: bool = False
    stats_input: np.ndarray | None = None  # the monitored input's calibration data, in the .tflite's layout
    io_order: dict[str, list[str]] | None = None
    with_source_biases: Callable | None = None  # see targets.tflite.export.export_tflite


@dataclass
class Verified:
    fidelity: Fidelity
    float_fidelity: Fidelity
    layer_errors: Any
    output_fidelity: dict[str, Fidelity] = field(default_factory=dict)


class Route(ABC):
    """One framework's side of every stage; state learned at one stage is kept on the route for the next."""

    framework: str
    lowering_step: str  # the timing key of ``lower``

    def __init__(self, source: Any, options: ConvertOptions):
        self.source, self.options = source, options

    @property
    @abstractmethod
    def source_files(self) -> list[Path]:
        """The user's files, never overwritten."""

    @abstractmethod
    def check(self, recipe: Recipe) -> None:
        """Refuse, before any work, what this framework cannot do with these options and this recipe."""

    @contextlib.contextmanager
    def workspace(self) -> Iterator[None]:
        yield

    @abstractmethod
    def load(self, run: Conversion) -> None:
        """Read the source and the data (``run.tune/calib/evaluation``); check what needs the model."""

    @abstractmethod
    def compress(self, run: Conversion) -> dict[str, PassRecord]:
        """Graph techniques, then weight techniques (one-shot, or fine-tuned on ``run.tune``), then QAT."""

    @abstractmethod
    def lower(self, run: Conversion, records: dict[str, PassRecord]) -> Lowered:
        """TensorFlow models for the float baseline and the output."""

    def rank_layers(self, search: Any, run: Conversion, progress: Progress | None) -> None:
        """Give the mixed-precision search its layer order, when the framework measures one."""

    @abstractmethod
    def verify(self, run: Conversion, lowered: Lowered, tflite_bytes: bytes, baseline_bytes: bytes,
               float_reference: bytes | None) -> Verified:
        """The written file and the float baseline against the source, and the per-layer error table."""

    @abstractmethod
    def analyse(self, baseline_bytes: bytes, tflite_bytes: bytes) -> tuple[ModelStats, ModelStats]:
        """Both files' statistics, their tensors named after the source's layers."""

    @abstractmethod
    def source_sha256(self) -> str:
        ...

    @property
    @abstractmethod
    def description(self) -> str:
        """The source as the report names it."""

    @property
    def metadata_name(self) -> str:
        return Path(self.source_files[0]).stem if self.source_files else "model"

    def io_layout(self) -> list[dict[str, Any]]:
        return []
