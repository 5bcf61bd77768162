"""CLI commands for deployment: predict, serve, export."""
from __future__ import annotations

from typing import Any


def add_commands(sub: Any) -> None:
    """Register the deployment subcommands on the CLI's subparsers."""
