"""Class names for `sdk convert`, `metadata add`, `export mcu` and `export android`: one reader, one check.

Files are read by the runtime's reader (``device_runtime.labels``: the rules live there, since the runtime
never imports the converters); here its error becomes the SDK's ``LabelsError`` and the names are checked
against the model's classes.
"""

from __future__ import annotations

import os
from typing import Sequence

from device_runtime.errors import InputError
from device_runtime.labels import FIX, read_labels_file

from .errors import UserInputError


class LabelsError(UserInputError):
    """A labels file cannot be read, names a class with nothing, or does not give one name per class."""


def read_labels(source: str | os.PathLike | Sequence[str] | None, classes: int | None = None, *,
                what: str | None = None) -> list[str]:
    """The class names in ``source`` (a labels file or a list; None gives []), checked against ``classes``.

    ``what`` describes where ``classes`` comes from in the message, e.g. "the YOLO output (1, 7, 16) holds
    3 classes"; by default "the model scores N classes".
    """
    if source is None:
        return []
    if isinstance(source, (str, os.PathLike)):
        labels, origin = _read_file(source), f" in {os.fspath(source)}"
    else:
        labels, origin = [str(label) for label in source], ""
        for number, label in enumerate(labels, 1):
            if not label.strip() or "\n" in label or "\r" in label:
                raise LabelsError(f"label {number} ({label!r}) is empty or spans lines; {FIX}")
    if classes is not None and labels:
        check_label_count(labels, classes, what=what, origin=origin)
    return labels


def check_label_count(labels: Sequence[str], classes: int, *, what: str | None = None, origin: str = "") -> None:
    """Refuse labels that are not exactly one per class (a label table read past its end, names shifted)."""
    if len(labels) != classes:
        what = what or f"the model scores {classes} classes"
        raise LabelsError(f"{what} but there are {len(labels)} labels{origin}; {FIX}")


def _read_file(path: str | os.PathLike) -> list[str]:
    try:
        return read_labels_file(path)
    except InputError as exc:
        raise LabelsError(str(exc)) from None
