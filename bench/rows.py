"""Result rows as JSON lines, one a line: what a grid has written so far, and which of its
jobs are done (an interrupted grid skips them when it starts again)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def load_rows(path: Path) -> list[dict[str, Any]]:
    """Every row of ``path``; none when it does not exist yet."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def done(path: Path, fields: tuple[str, ...]) -> set[tuple]:
    """The jobs ``path`` holds rows of, each as its rows' values of ``fields``."""
    return {tuple(row[f] for f in fields) for row in load_rows(path)}
