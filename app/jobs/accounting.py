"""Query accounting in memory: the ledger of a job run from the CLI, and the totals shape
every ledger reports (the service's database ledger reports the same shape).

``queries`` counts images the provider answered (what it bills), ``requests`` every request
sent, both broken down by purpose. A reservation holds a request's images against the budget
before it is sent, so concurrent requests can never overrun it together.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

from adapters.dispatch import NOT_SENT, RequestRecord
from adapters.errors import BudgetExceeded


@dataclass
class Totals:
    queries: int = 0
    requests: int = 0
    images_sent: int = 0
    cost_usd: float = 0.0
    by_purpose: dict[str, dict[str, float]] = field(default_factory=dict)

    def add(self, record: RequestRecord, price: float) -> None:
        cost = record.answered * price
        self.queries += record.answered
        self.requests += 1
        self.images_sent += record.images
        self.cost_usd += cost
        row = self.by_purpose.setdefault(
            record.purpose, {"queries": 0, "requests": 0, "cost_usd": 0.0}
        )
        row["queries"] += record.answered
        row["requests"] += 1
        row["cost_usd"] += cost

    def as_dict(self) -> dict[str, object]:
        return {
            "queries": self.queries,
            "requests": self.requests,
            "images_sent": self.images_sent,
            "cost_usd": round(self.cost_usd, 6),
            "by_purpose": {
                k: {**v, "cost_usd": round(v["cost_usd"], 6)} for k, v in self.by_purpose.items()
            },
        }


def query_cap(max_queries: int | None, max_cost_usd: float | None, price: float) -> int | None:
    """The most images a budget allows (None: unlimited)."""
    caps = []
    if max_queries is not None:
        caps.append(max_queries)
    if max_cost_usd is not None and price > 0:
        caps.append(math.floor(max_cost_usd / price + 1e-9))
    return min(caps) if caps else None


class MemoryLedger:
    """Thread-safe ledger for one job in one process."""

    def __init__(
        self, price: float, max_queries: int | None = None, max_cost_usd: float | None = None
    ) -> None:
        self.price = price
        self.cap = query_cap(max_queries, max_cost_usd, price)
        self.totals = Totals()
        self.records: list[RequestRecord] = []
        self._reserved = 0
        self._lock = threading.Lock()

    def reserve(self, purpose: str, images: int) -> _Reservation:
        with self._lock:
            if self.cap is not None and self.totals.queries + self._reserved + images > self.cap:
                raise BudgetExceeded(
                    f"{images} more images would exceed the budget of {self.cap} queries "
                    f"({self.totals.queries} spent)"
                )
            self._reserved += images
        return _Reservation(self, images)

    def _settle(self, held: int, record: RequestRecord) -> None:
        with self._lock:
            self._reserved -= held
            if record.outcome != NOT_SENT:  # a request never sent is no request
                self.totals.add(record, self.price)
                self.records.append(record)


@dataclass
class _Reservation:
    ledger: MemoryLedger
    images: int
    settled: bool = False

    def settle(self, record: RequestRecord) -> None:
        if self.settled:
            raise RuntimeError("a reservation is settled once")
        self.settled = True
        self.ledger._settle(self.images, record)
