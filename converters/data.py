"""Fine-tuning, calibration and evaluation data: one ``Dataset`` type from many sources.

Accepted: a ``.npz`` with ``x`` (and optionally ``y``), a ``.npy`` of inputs,
an image folder (one sub-folder per class gives labels; images directly in the
folder give unlabelled data), or in-memory arrays.  A model with several inputs,
or integer inputs (token ids, attention masks), takes a ``.npz`` (or a dict) with
one array per input, keyed by the input's name.  Names, dtypes, shapes and token
id ranges are checked against the model inputs before any work starts.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence, Union

import numpy as np

from .errors import DataError, first_line

if TYPE_CHECKING:
    from .targets.tflite.normalisation import Normalisation

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


@dataclass(frozen=True)
class InputSpec:
    """One model input as data must fit it: name, per-sample shape (batch excluded), dtype, and for token
    ids the size of the embedding table they index (ids must be below it)."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype = np.dtype(np.float32)
    id_limit: int | None = None
    needs_data: bool = False  # an integer input whose valid values the model does not show (an index)

    @property
    def integer(self) -> bool:
        return np.issubdtype(self.dtype, np.integer) or self.dtype == np.bool_

    def describe(self) -> str:
        return f"{self.name} ({self.dtype}, {'x'.join(str(d or 'N') for d in self.shape)} per sample)"


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray | dict[str, np.ndarray]  # one array, or one per input name (multi-input/integer models)
    y: np.ndarray | None
    source: str
    class_names: tuple[str, ...] = ()
    images: bool = False  # loaded from an image folder as (pixel - mean) / std: the normalisation is known

    def __len__(self) -> int:
        return len(self.x) if isinstance(self.x, np.ndarray) else len(next(iter(self.x.values())))

    @property
    def labelled(self) -> bool:
        return self.y is not None

    def columns(self, names: Sequence[str]) -> list[np.ndarray]:
        """The inputs in the order of ``names`` (a single-array dataset serves a single input)."""
        if isinstance(self.x, np.ndarray):
            return [self.x]
        return [self.x[name] for name in names]

    def subset(self, index: np.ndarray, what: str) -> Dataset:
        x = self.x[index] if isinstance(self.x, np.ndarray) else {k: v[index] for k, v in self.x.items()}
        return dataclasses.replace(self, x=x, y=None if self.y is None else self.y[index],
                                   source=f"{self.source} ({what})")

    def split(self, held_out_fraction: float, seed: int = 0) -> tuple[Dataset, Dataset]:
        """Disjoint (train, held-out) parts, so evaluation never sees training samples."""
        order = np.random.default_rng(seed).permutation(len(self))
        n_held = max(1, int(round(len(self) * held_out_fraction)))
        return self.subset(order[n_held:], "train split"), self.subset(order[:n_held], "held-out split")

    def take(self, n: int) -> Dataset:
        return self if n >= len(self) else self.subset(np.arange(n), f"first {n}")


DataSource = Union[str, os.PathLike, np.ndarray, tuple, Dataset]


PIXELS_TO_UNIT = ((0.0,), (255.0,))  # how image folders load unless the model's normalisation says otherwise


def load_data(source: DataSource, input_shape: Sequence[int | None], what: str,
              channels_first: bool = False,
              pixels: tuple[Sequence[float], Sequence[float]] = PIXELS_TO_UNIT) -> Dataset:
    """Load ``source`` and check it fits a model input of ``input_shape`` (batch excluded).

    ``channels_first``: the model takes (C, H, W) images (PyTorch), so image folders load as such.
    ``pixels``: (mean, std) image folders are normalised with, ``(pixel - mean) / std`` on 0..255 pixels.
    """
    if isinstance(source, Dataset):
        dataset = source
    elif isinstance(source, np.ndarray):
        dataset = Dataset(source, None, "array")
    elif isinstance(source, tuple):
        if len(source) != 2:
            raise DataError(f"{what} data as a tuple must be (x, y); got {len(source)} items")
        dataset = Dataset(np.asarray(source[0]), np.asarray(source[1]), "arrays")
    else:
        dataset = _load_path(Path(source), input_shape, what, channels_first, pixels)
    return _checked(dataset, input_shape, what)


def _load_path(path: Path, input_shape: Sequence[int | None], what: str, channels_first: bool,
               pixels: tuple[Sequence[float], Sequence[float]]) -> Dataset:
    if not path.exists():
        raise DataError(f"{what} data not found: {path}")
    if path.is_dir():
        if channels_first and len(input_shape) == 3:
            images = _load_image_folder(path, (*input_shape[1:], input_shape[0]), what, pixels)
            return dataclasses.replace(images, x=images.x.transpose(0, 3, 1, 2))
        return _load_image_folder(path, input_shape, what, pixels)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                if "x" not in archive.files:
                    raise DataError(f"{what} data {path} has arrays {archive.files}; it needs 'x' "
                                    "(inputs) and optionally 'y' (integer labels)")
                return Dataset(archive["x"], archive["y"] if "y" in archive.files else None, str(path))
        if suffix == ".npy":
            return Dataset(np.load(path, allow_pickle=False), None, str(path))
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"cannot read {what} data {path}: {first_line(exc)}") from None
    raise DataError(f"{what} data must be a .npz (x, y), a .npy or an image folder; got {path.name}")


def _load_image_folder(folder: Path, input_shape: Sequence[int | None], what: str,
                       pixels: tuple[Sequence[float], Sequence[float]] = PIXELS_TO_UNIT) -> Dataset:
    if len(input_shape) != 3 or input_shape[-1] not in (1, 3):
        raise DataError(f"an image folder needs a model input of shape (H, W, 1 or 3); "
                        f"the model takes {tuple(input_shape)}")
    height, width, channels = input_shape
    if height is None or width is None:
        raise DataError("an image folder needs a model input with a fixed height and width")
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir())
    if class_dirs:
        files = [(f, label) for label, d in enumerate(class_dirs) for f in sorted(d.iterdir())
                 if f.suffix.lower() in IMAGE_SUFFIXES]
        names = tuple(d.name for d in class_dirs)
    else:
        files = [(f, -1) for f in sorted(folder.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
        names = ()
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {what} folder {folder}")
    from PIL import Image, UnidentifiedImageError

    images = np.empty((len(files), height, width, channels), np.float32)
    mean, std = (np.asarray(v, np.float32) for v in pixels)  # one value, or one per channel (checked before)
    for i, (file, _) in enumerate(files):
        try:
            with Image.open(file) as img:
                img = img.convert("L" if channels == 1 else "RGB").resize((width, height), Image.BILINEAR)
                images[i] = (np.asarray(img, np.float32).reshape(height, width, channels) - mean) / std
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"cannot read image {file}: {first_line(exc)}") from None
    labels = np.array([label for _, label in files], np.int64) if names else None
    return Dataset(images, labels, str(folder), names, images=True)


def _layout_hint(got: tuple[int, ...], expected: tuple[int | None, ...]) -> str:
    """How to make ``got`` samples fit: a transpose when only the axis order differs, else a reshape.

    A reshape of channels-last images into a channels-first shape keeps the element count but
    scrambles the pixels, so it is suggested only when no axis permutation fits.
    """
    import itertools

    if len(got) == len(expected) and None not in expected and sorted(got) == sorted(expected):
        for perm in itertools.permutations(range(len(got))):
            if tuple(got[i] for i in perm) == expected:
                axes = ", ".join(str(a) for a in (0, *(i + 1 for i in perm)))
                return f"; the axes are in another order: use x.transpose({axes})"
    if int(np.prod(got)) == int(np.prod([e or 0 for e in expected])):
        return f"; reshape it with x.reshape(-1, {', '.join(str(e) for e in expected)})"
    return ""


def _checked(dataset: Dataset, input_shape: Sequence[int | None], what: str) -> Dataset:
    x = dataset.x
    if len(x) == 0:
        raise DataError(f"{what} data {dataset.source} is empty")
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(f"{what} data must be numeric; got dtype {x.dtype}")
    expected = tuple(input_shape)
    got = tuple(x.shape[1:])
    if len(got) != len(expected) or any(e is not None and e != g for e, g in zip(expected, got)):
        hint = _layout_hint(got, expected)
        raise DataError(f"{what} data samples have shape {got} but the model input is "
                        f"{tuple('N' if e is None else e for e in expected)}{hint}")
    y = _labels(dataset.y, len(x), what)
    if not np.isfinite(x).all():
        raise DataError(f"{what} data {dataset.source} contains NaN or infinity")
    return dataclasses.replace(dataset, x=x.astype(np.float32, copy=False), y=y)


def _labels(y, count: int, what: str) -> np.ndarray | None:
    """Integer class ids, one per sample (one-hot rows become ids)."""
    if y is None:
        return None
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:
        y = y.argmax(axis=1)  # one-hot labels
    y = y.reshape(-1)
    if len(y) != count:
        raise DataError(f"{what} data has {count} inputs but {len(y)} labels")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.mod(y, 1) == 0):
            raise DataError(f"{what} labels must be integer class ids; got dtype {y.dtype}")
        y = y.astype(np.int64)
    return y


def load_inputs(source: DataSource | dict, specs: Sequence[InputSpec], what: str, channels_first: bool = False,
                pixels: tuple[Sequence[float], Sequence[float]] = PIXELS_TO_UNIT) -> Dataset:
    """Load ``source`` for a model with the inputs ``specs`` and check names, dtypes, shapes and id ranges.

    A single float input keeps every form ``load_data`` takes; otherwise the data is a .npz (or a dict,
    or (dict, labels)) with one array per input name, plus optional labels ``y``.
    """
    if len(specs) == 1 and not specs[0].integer:
        return load_data(source, specs[0].shape, what, channels_first, pixels)
    names = [s.name for s in specs]
    if isinstance(source, Dataset):
        arrays, y, name = (source.x if isinstance(source.x, dict) else {"x": source.x}), source.y, source.source
    elif isinstance(source, dict):
        arrays, y, name = dict(source), source.get("y"), "(dict)"
    elif isinstance(source, tuple) and len(source) == 2 and isinstance(source[0], dict):
        arrays, y, name = dict(source[0]), source[1], "(dict)"
    elif isinstance(source, (np.ndarray, tuple)):
        arrays, y, name = _single_array(source, specs, what), None, "array"
    else:
        path = Path(source)
        if not path.is_file() or path.suffix.lower() not in (".npz", ".npy"):
            if not path.exists():
                raise DataError(f"{what} data not found: {path}")
            raise DataError(f"{what} data for a model with inputs {', '.join(s.describe() for s in specs)} must "
                            f"be a .npz with one array per input name; got {path.name}")
        arrays, y, name = _read_arrays(path, what), None, str(path)
        y = arrays.get("y")
    if len(specs) == 1 and specs[0].name not in arrays and "x" in arrays:
        arrays[specs[0].name] = arrays["x"]
    missing = [n for n in names if n not in arrays]
    if missing:
        given = sorted(k for k in arrays if k != "y")
        raise DataError(f"{what} data {name} has no array for input(s) {', '.join(missing)} (it has "
                        f"{', '.join(given) or 'none'}); the model takes {', '.join(s.describe() for s in specs)}: "
                        f"save one array per input name, e.g. np.savez(path, {'=..., '.join(names)}=...)")
    checked = {spec.name: _checked_input(np.asarray(arrays[spec.name]), spec, what, name) for spec in specs}
    counts = {n: len(a) for n, a in checked.items()}
    if len(set(counts.values())) > 1:
        raise DataError(f"{what} data {name} has different sample counts per input: "
                        f"{', '.join(f'{n} {c}' for n, c in counts.items())}; give every input the same samples")
    return Dataset(checked, _labels(y, len(checked[names[0]]), what), name)


def _single_array(source, specs: Sequence[InputSpec], what: str) -> dict[str, np.ndarray]:
    if len(specs) != 1:
        raise DataError(f"{what} data for a model with inputs {', '.join(s.describe() for s in specs)} must be "
                        "a dict (or .npz) with one array per input name, not a single array")
    if isinstance(source, tuple):
        raise DataError(f"{what} data for a model with integer input {specs[0].describe()} must be an array, "
                        "a dict or a .npz; labels go in the .npz as y")
    return {specs[0].name: source}


def _read_arrays(path: Path, what: str) -> dict[str, np.ndarray]:
    try:
        if path.suffix.lower() == ".npy":
            return {"x": np.load(path, allow_pickle=False)}
        with np.load(path, allow_pickle=False) as archive:
            return {k: archive[k] for k in archive.files}
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"cannot read {what} data {path}: {str(exc).splitlines()[0]}") from None


def _checked_input(x: np.ndarray, spec: InputSpec, what: str, source: str) -> np.ndarray:
    """One input's array, checked against its spec and cast to its dtype."""
    label = f"{what} data {spec.name!r} ({source})"
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise DataError(f"{label} must be numeric; got dtype {x.dtype}")
    if len(x) == 0:
        raise DataError(f"{label} is empty")
    if spec.integer and not (np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_):
        raise DataError(f"{label} is {x.dtype} but the model input is {spec.dtype} (token ids or a mask): "
                        f"save integer arrays, e.g. x.astype(np.{spec.dtype})")
    expected, got = tuple(spec.shape), tuple(x.shape[1:])
    if len(got) != len(expected) or any(e is not None and e != g for e, g in zip(expected, got)):
        shown = tuple("N" if e is None else e for e in expected)
        if spec.integer and len(got) == len(expected) and got[:-1] == expected[:-1] and expected[-1]:
            fix = (f"truncate to {expected[-1]} tokens (tokenizer max_length={expected[-1]})" if got[-1] > expected[-1]
                   else f"pad to {expected[-1]} tokens (tokenizer padding='max_length')")
            longer = "longer" if got[-1] > expected[-1] else "shorter"
            raise DataError(f"{label} holds sequences of {got[-1]} tokens, {longer} than the model's "
                            f"{expected[-1]}: {fix}, or convert with --input-shape for that length")
        raise DataError(f"{label} samples have shape {got} but the model input is {shown}"
                        f"{_layout_hint(got, expected)}")
    if not spec.integer:
        if not np.isfinite(x).all():
            raise DataError(f"{label} contains NaN or infinity")
        return x.astype(spec.dtype, copy=False)
    if spec.id_limit is not None and x.size and (x.min() < 0 or x.max() >= spec.id_limit):
        raise DataError(f"{label} holds token ids from {x.min()} to {x.max()} but the model's embedding table has "
                        f"{spec.id_limit} rows (ids 0..{spec.id_limit - 1}): tokenize with the model's own "
                        "vocabulary")
    return x.astype(spec.dtype, copy=False)


def random_inputs(specs: Sequence[InputSpec], count: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Valid inputs without data: floats uniform in [0, 1), token ids uniform below their embedding table's
    size, other integer inputs (attention masks) all ones."""
    unknown = [s for s in specs if s.needs_data]
    if unknown:
        raise DataError(f"input {unknown[0].describe()} indexes a tensor the model computes, so no valid values can "
                        f"be drawn for it: give --eval DATA (and --calib for int8), a .npz with arrays "
                        f"{', '.join(s.name for s in specs)}")
    rng = np.random.default_rng(seed)
    arrays = {}
    for spec in specs:
        shape = (count, *(d or 1 for d in spec.shape))
        if not spec.integer:
            arrays[spec.name] = rng.random(shape, dtype=np.float32).astype(spec.dtype, copy=False)
        elif spec.id_limit is not None:
            arrays[spec.name] = rng.integers(0, spec.id_limit, shape).astype(spec.dtype)
        else:
            arrays[spec.name] = np.ones(shape, spec.dtype)
    return arrays


HELD_OUT_FRACTION = 0.2
RANDOM_EVAL_SAMPLES = 64


def datasets(input_shape, finetune_data, calib_data, eval_data, channels_first: bool = False,
             pixels: Normalisation | None = None, specs: Sequence[InputSpec] | None = None):
    """(fine-tune, calibration, evaluation) sets; evaluation never overlaps the others.

    ``pixels``: the model's known input normalisation, which image folders load with (default: [0, 1]).
    ``specs`` (PyTorch/ONNX): every input's name, shape and dtype; data is then keyed by input name
    and, without data, drawn valid per input (token ids below the vocabulary size, masks of ones).
    """
    from .targets.tflite.normalisation import FOLDER

    notes = []
    pixels = pixels or FOLDER
    if specs is not None:
        load = functools.partial(load_inputs, specs=specs, channels_first=channels_first,
                                 pixels=(pixels.mean, pixels.std))
    else:
        load = functools.partial(load_data, input_shape=input_shape, channels_first=channels_first,
                                 pixels=(pixels.mean, pixels.std))
    tune = load(finetune_data, what="fine-tuning") if finetune_data is not None else None
    calib = load(calib_data, what="calibration") if calib_data is not None else None
    evaluation = load(eval_data, what="evaluation") if eval_data is not None else None
    if evaluation is None:
        pool_name, pool = ("fine-tuning", tune) if tune is not None else ("calibration", calib)
        if pool is not None and len(pool) >= 10:
            train_part, evaluation = pool.split(HELD_OUT_FRACTION)
            notes.append(f"no --eval data: {len(evaluation)} samples of the {pool_name} data were "
                         "held out for the fidelity check and not used otherwise")
            if tune is not None:
                tune = train_part
                calib = calib or train_part
            else:
                calib = train_part
        else:
            if specs is not None and any(s.integer for s in specs):
                evaluation = Dataset(random_inputs(specs, RANDOM_EVAL_SAMPLES), None, "random valid inputs")
                notes.append("no data given: fidelity measured on random inputs (floats in [0, 1), token ids "
                             "below each embedding table's size, other integer inputs all ones)")
            elif specs is not None and len(specs) > 1:
                evaluation = Dataset(random_inputs(specs, RANDOM_EVAL_SAMPLES), None, "random uniform inputs")
                notes.append("no data given: fidelity measured on random inputs in [0, 1)")
            else:
                shape = tuple(d or 1 for d in input_shape)
                x = np.random.default_rng(0).random((RANDOM_EVAL_SAMPLES, *shape), dtype=np.float32)
                span = "[0, 1)"
                if pixels is not FOLDER and len(shape) == 3:  # random images as the model takes them: 0..255 normalised
                    mean, std = (np.asarray(v, np.float32).reshape((-1, 1, 1) if channels_first else (-1,))
                                 for v in (pixels.mean, pixels.std))
                    x = ((x * 255.0 - mean) / std).astype(np.float32)
                    span = f"[{x.min():.3g}, {x.max():.3g}] (random pixels, normalised as {pixels.describe()})"
                evaluation = Dataset(x, None, "random uniform inputs")
                notes.append(f"no data given: fidelity measured on random inputs in {span}")
    if calib is None and tune is not None:
        calib = tune
    return tune, calib, evaluation, notes

