"""Serialisation of engine state: nested dicts of numpy arrays and JSON scalars to bytes and
back, exactly (arrays keep dtype and shape; floats are never rounded through text)."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

_ARRAY = "__array__"


def _split(obj: Any, arrays: dict[str, np.ndarray], path: str) -> Any:
    if isinstance(obj, np.ndarray):
        key = f"a{len(arrays)}"
        arrays[key] = obj
        return {_ARRAY: key}
    if isinstance(obj, dict):
        return {str(k): _split(v, arrays, f"{path}.{k}") for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_split(v, arrays, f"{path}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _join(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_ARRAY}:
            return arrays[obj[_ARRAY]]
        return {k: _join(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join(v, arrays) for v in obj]
    return obj


def dumps(tree: dict[str, Any]) -> bytes:
    """Serialise a tree of dicts/lists/arrays/scalars (Python ints of any size included)."""
    arrays: dict[str, np.ndarray] = {}
    meta = _split(tree, arrays, "")
    buf = io.BytesIO()
    np.savez(buf, __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
    return buf.getvalue()


def loads(data: bytes) -> dict[str, Any]:
    """Inverse of ``dumps``."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files if k != "__meta__"}
        meta = json.loads(npz["__meta__"].tobytes().decode())
    return _join(meta, arrays)
