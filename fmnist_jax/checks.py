"""Small validation helpers shared by the config objects: one-line, user-facing error messages.
"""
from __future__ import annotations

import math
import struct
from typing import Any

from PIL import Image


def _number(name: str, value: Any, low: float | None = None, high: float | None = None,
            whole: bool = False, low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if whole and int(value) != value:
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {'above' if low_open else 'at least'} {low:g}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be at most {high:g}, got {value!r}")


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


# What Pillow raises for crafted, damaged or truncated files (its own fuzzing reports these types); any other
# exception while decoding is a bug in this code and surfaces instead of becoming a "bad file" message.
PILLOW_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError, TypeError, ZeroDivisionError,
                 Image.DecompressionBombError)
