"""The database's clock, so that stamps from every machine come from one clock."""

from __future__ import annotations

import time
from collections.abc import Callable


class ServerClock:
    """The database's clock in milliseconds, read once and then followed on the local clock.

    Stamps from every machine must come from one clock, the database's; but reading it costs
    round trips at the very moment a slot opens. So the offset to the local clock is measured
    (to within half a round trip) and measured again every ``refresh_s``."""

    def __init__(
        self,
        read_ms: Callable[[], int],
        local: Callable[[], float] = time.time,
        refresh_s: float = 30.0,
    ) -> None:
        self._read_ms, self._local, self._refresh_s = read_ms, local, refresh_s
        self._offset_ms = 0.0
        self._measured: float | None = None

    def __call__(self) -> int:
        now = self._local()
        if self._measured is None or now - self._measured >= self._refresh_s:
            server = self._read_ms()
            after = self._local()
            self._offset_ms = server - 500.0 * (now + after)  # the read landed mid-way
            self._measured = now = after
        return int(now * 1000.0 + self._offset_ms)
