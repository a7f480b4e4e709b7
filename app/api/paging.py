"""Paging of the list endpoints: ``?limit=&offset=``; the body stays a JSON list and the
``X-Total-Count`` header says how many there are in all."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from fastapi import Depends, Query, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.api.errors import INT64
from app.storage.models import Base

M = TypeVar("M", bound=Base)

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
TOTAL_HEADER = "X-Total-Count"

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"page size (at most {MAX_LIMIT})")]
Offset = Annotated[int, Query(ge=0, le=INT64[1], description="rows to skip")]


class Pager:
    """A list endpoint's ``?limit=&offset=`` (a FastAPI dependency: every list pages alike)."""

    def __init__(self, response: Response, limit: Limit = DEFAULT_LIMIT, offset: Offset = 0):
        self.response, self.limit, self.offset = response, limit, offset

    def rows(
        self, s: Session, model: type[M], tenant_id: str, *, newest_first: bool = False
    ) -> list[M]:
        """One page of the tenant's rows of ``model`` in creation order (ties broken by id,
        so pages neither repeat nor skip a row), and the total in ``X-Total-Count``. Deleted
        rows (tombstones) are not listed."""
        table: Any = model
        mine = table.tenant_id == tenant_id
        if hasattr(table, "deleted_at"):
            mine = mine & table.deleted_at.is_(None)
        total = s.scalar(select(func.count()).select_from(model).where(mine)) or 0
        self.response.headers[TOTAL_HEADER] = str(total)
        order = (table.created_at, table.id)
        if newest_first:
            order = tuple(c.desc() for c in order)
        q = select(model).where(mine).order_by(*order).limit(self.limit).offset(self.offset)
        return list(s.scalars(q))


PageDep = Annotated[Pager, Depends()]
