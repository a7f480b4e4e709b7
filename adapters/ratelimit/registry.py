"""One limiter per process for each (backend, key, rate), handed to every job that asks."""

from __future__ import annotations

import threading

from adapters.ratelimit.backends import build_limiter
from adapters.ratelimit.limiter import SharedRateLimiter

_registry: dict[tuple[str, str, float], SharedRateLimiter] = {}
_registry_lock = threading.Lock()


def shared_limiter(key: str, per_second: float, backend: str = "memory") -> SharedRateLimiter:
    """The process-wide limiter for ``key``, created once per (backend, key, rate); closing
    it removes it, so the next call builds a fresh one. ``backend`` as for
    ``build_limiter``."""
    ident = (backend, key, per_second)
    with _registry_lock:
        if ident not in _registry:
            limiter = build_limiter(key, per_second, backend)
            limiter.on_close(_forget)
            _registry[ident] = limiter
        return _registry[ident]


def _forget(limiter: SharedRateLimiter) -> None:
    with _registry_lock:
        for ident in [i for i, known in _registry.items() if known is limiter]:
            del _registry[ident]
