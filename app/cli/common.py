"""What every `reprogram` command shares: the consoles, how an error ends a command, and
reading a JSON file the user named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # messages stay greppable, unwrapped


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``message`` as an error; the exit to raise (code 2: bad input)."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def read_json(path: Path) -> Any:
    """The JSON document in ``path``, or a clean exit naming what is wrong with it."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise fail(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise fail(f"{path}: not valid JSON ({err})") from None
