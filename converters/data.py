"""Fine-tuning, calibration and evaluation data: one ``Dataset`` type from many sources.

Accepted: a ``.npz`` with ``x`` (and optionally ``y``), a ``.npy`` of inputs,
an image folder (one sub-folder per class gives labels; images directly in the
folder give unlabelled data), or in-memory arrays.  Shapes are checked against
the model input before any work starts.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from .errors import DataError, first_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray
    y: np.ndarray | None
    source: str
    class_names: tuple[str, ...] = ()
    images: bool = False  # loaded from an image folder as (pixel - mean) / std: the normalisation is known

    def __len__(self) -> int:
        return len(self.x)

    @property
    def labelled(self) -> bool:
        return self.y is not None

    def subset(self, index: np.ndarray, what: str) -> Dataset:
        return dataclasses.replace(self, x=self.x[index], y=None if self.y is None else self.y[index],
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
    y = dataset.y
    if y is not None:
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] > 1:
            y = y.argmax(axis=1)  # one-hot labels
        y = y.reshape(-1)
        if len(y) != len(x):
            raise DataError(f"{what} data has {len(x)} inputs but {len(y)} labels")
        if not np.issubdtype(y.dtype, np.integer):
            if not np.all(np.mod(y, 1) == 0):
                raise DataError(f"{what} labels must be integer class ids; got dtype {y.dtype}")
            y = y.astype(np.int64)
    if not np.isfinite(x).all():
        raise DataError(f"{what} data {dataset.source} contains NaN or infinity")
    return dataclasses.replace(dataset, x=x.astype(np.float32, copy=False), y=y)
