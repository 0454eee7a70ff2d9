"""A small table of common microcontroller boards: RAM for the arena, flash for the model."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from ...errors import UserInputError

KIB = 1024


@dataclass(frozen=True)
class Board:
    name: str
    description: str
    ram_bytes: int
    flash_bytes: int


BOARDS = {b.name: b for b in (
    Board("cortex-m0-32k", "Cortex-M0+, 32 KiB RAM / 256 KiB flash (e.g. SAMD21)", 32 * KIB, 256 * KIB),
    Board("cortex-m4-256k", "Cortex-M4F, 256 KiB RAM / 1 MiB flash (e.g. STM32F4, nRF52840)", 256 * KIB, 1024 * KIB),
    Board("cortex-m7-512k", "Cortex-M7, 512 KiB RAM / 2 MiB flash (e.g. STM32F7/H7)", 512 * KIB, 2048 * KIB),
    Board("rp2040", "Raspberry Pi RP2040, 264 KiB RAM / 2 MiB flash", 264 * KIB, 2048 * KIB),
    Board("esp32-s3", "ESP32-S3, 512 KiB SRAM / 8 MiB flash (PSRAM not counted)", 512 * KIB, 8192 * KIB),
    Board("arduino-nano-33-ble", "Arduino Nano 33 BLE (nRF52840), 256 KiB RAM / 1 MiB flash", 256 * KIB, 1024 * KIB),
)}


def board_named(name: str | None) -> Board | None:
    """The board called ``name`` (None for none); an unknown name is refused with the close match."""
    if name is None:
        return None
    if name not in BOARDS:
        hint = difflib.get_close_matches(name, BOARDS, n=1)
        raise UserInputError(f"unknown board {name!r}{f' (did you mean {hint[0]!r}?)' if hint else ''}; "
                             f"known: {', '.join(BOARDS)}")
    return BOARDS[name]
