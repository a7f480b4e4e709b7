"""A name → class registry that refuses duplicates (the nevergrad pattern)."""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(dict[str, type[T]], Generic[T]):
    """Classes by their ``name`` attribute; a name can be registered once."""

    def register(self, cls: type[T]) -> type[T]:
        """Class decorator: add ``cls`` under ``cls.name``."""
        name = cls.name  # type: ignore[attr-defined]
        if name in self:
            raise ValueError(f"{name!r} is already registered")
        self[name] = cls
        return cls
