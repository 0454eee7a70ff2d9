"""Class names for `sdk convert`, `metadata add`, `export mcu` and `export android`: one reader, one check.

A labels file is UTF-8 text (a byte-order mark is allowed), one class name per
line in class-id order.  Blank lines at the end are ignored; a blank line
before the last name is refused, because dropping it would shift every later
name onto the wrong class.  (``device_runtime`` reads labels on its own: it
never imports the converters.)
"""

from __future__ import annotations

import os
from typing import Sequence

from .errors import UserInputError


class LabelsError(UserInputError):
    """A labels file cannot be read, names a class with nothing, or does not give one name per class."""


FIX = "give one label per class, one per line, in class-id order"


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
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except UnicodeDecodeError as exc:
        raise LabelsError(f"labels file {os.fspath(path)} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} "
                          f"at offset {exc.start}); save it as UTF-8, one class name per line") from None
    except OSError as exc:
        raise LabelsError(f"cannot read labels file {os.fspath(path)}: {exc.strerror or exc}") from None
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise LabelsError(f"labels file {os.fspath(path)} has no labels; {FIX}")
    if "" in lines:
        number = lines.index("") + 1
        raise LabelsError(f"labels file {os.fspath(path)} line {number} is empty, which would shift the names "
                          "after it onto the wrong classes; name that class or delete the line")
    return lines
