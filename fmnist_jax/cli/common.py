"""What every command shares: the user-facing error, the one-line argument parser and JSON output."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

EXIT_USAGE = 2


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + message
        raise CliError(f"{self.prog}: {message}")


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(type(value).__name__)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def print_json(value: Any) -> None:
    """Print one JSON object on one line (NaN/inf become null)."""
    print(json.dumps(_clean(value), default=_json_default), flush=True)


def read_json_file(path: str, what: str) -> Any:
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise CliError(f"cannot read {what} {path}: {error.strerror or error}") from None
    if len(text) > 5_000_000:
        raise CliError(f"{what} {path} is larger than 5 MB")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise CliError(f"{what} {path} is not valid JSON: {error}") from None
