"""Files under the data directory, written so that a reader sees the whole file or none,
and removed when what they belong to is deleted."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger("reprogram.files")


def write_atomic(path: Path, content: bytes) -> None:
    """Write ``content`` to ``path`` through a temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(content)
    os.replace(tmp, path)


def remove(data_dir: Path, rel: Path | str) -> None:
    """Remove a file or a folder under the data directory (gone already is fine). A failure
    is logged, not raised: the database change it follows is committed."""
    path = data_dir / rel
    try:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError as err:
        log.error("could not remove %s (%s)", rel, type(err).__name__)
