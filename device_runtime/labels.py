"""Labels files: UTF-8 text (a byte-order mark is allowed), one class name per line in class-id order.

The one reader of the project: the runtime's ``Model(labels=...)`` and every SDK command (which wraps it with its
own error type and the check against the model's classes). Blank lines at the end are ignored; a blank line
before the last name is refused, because dropping it would shift every later name onto the wrong class.
"""

from __future__ import annotations

import os

from .errors import InputError

FIX = "give one label per class, one per line, in class-id order"


def read_labels_file(path: str | os.PathLike) -> list[str]:
    """The class names in the labels file at ``path``."""
    name = os.fspath(path)
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except UnicodeDecodeError as exc:
        raise InputError(f"labels file {name} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                         f"{exc.start}); save it as UTF-8, one class name per line") from None
    except OSError as exc:
        raise InputError(f"cannot read labels file {name}: {exc.strerror or exc}") from None
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise InputError(f"labels file {name} has no labels; {FIX}")
    if "" in lines:
        raise InputError(f"labels file {name} line {lines.index('') + 1} is empty, which would shift the names "
                         "after it onto the wrong classes; name that class or delete the line")
    return lines
