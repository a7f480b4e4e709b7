"""From "answer these N images" to provider requests, each one accounted, rate-limited and
retried: the path every query takes (docs/architecture.md: budget reservation → shared rate
limiter → call → retry policy → ledger commit).

The dispatcher splits a batch into requests of at most ``oracle.max_images_per_request``
images and keeps up to ``oracle.max_concurrency`` of them in flight on a thread pool. Each
attempt of each request first reserves its images with the ledger (which refuses with
``BudgetExceeded`` when the budget cannot cover them), waits for the shared rate limiter,
calls the oracle, and settles the reservation with what the provider answered. A mixed batch
keeps its answered rows and retries only the failed inputs, so no answer is lost or paid twice.

Errors reach the caller by meaning: a refused image is a ``BadInput`` whose ``index`` is its
position in the query (not in the request that carried it), and the first error no retry
can fix stops the query's other requests before they are sent.

Answers are cached by the exact bytes of the frame (``AnswerCache``, bounded, least recently
used first out): a frame the dispatcher has had answered before, or that appears twice in one
query, is not sent again, so the ledger never pays for the same frame twice. Hits are counted
by purpose (``cache_hits``). An oracle's answer to an image does not depend on the other
images of its request (docs/architecture.md, "Invariants"), so a cached answer is the answer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from adapters.base import GradientOracle, Oracle
from adapters.errors import BadInput, OracleError, PartialFailure, Throttled
from adapters.ratelimit import SharedRateLimiter
from adapters.retry import RetryPolicy

_KEY_BYTES = 16  # an answer's cache key: a blake2b digest of its frame

log = logging.getLogger("reprogram.dispatch")

NOT_SENT = "not_sent"  # outcome of a request abandoned before it left (nothing billed)


@dataclass(frozen=True)
class RequestRecord:
    """One request as sent: what the ledger stores."""

    purpose: str
    images: int  # images sent
    answered: int  # images the provider answered (what it bills)
    outcome: str  # "ok", "partial", "not_sent", or the error class name
    request_id: str | None
    seconds: float
    attempt: int = 1  # 2 and up: a retry of the same request
    waited: float = 0.0  # seconds the shared rate limiter held it back


class Reservation(Protocol):
    """Images held against a budget until the request they were held for is settled."""

    def settle(self, record: RequestRecord) -> None: ...


class Ledger(Protocol):
    """Accounting supplied by the caller (the service's database, or memory for the CLI)."""

    def reserve(self, purpose: str, images: int) -> Reservation:
        """Hold ``images`` against the budget before sending; raises BudgetExceeded."""
        ...


class NullLedger:
    """Counts nothing; for tests and benchmarks that measure the oracle alone."""

    class _Null:
        def settle(self, record: RequestRecord) -> None:
            pass

    def reserve(self, purpose: str, images: int) -> Reservation:
        return self._Null()


class _Stopped(Exception):
    """Another request of the same query failed for good; this one is not sent."""


def blame(failed: dict[int, OracleError]) -> OracleError:
    """The error to report for a request whose inputs ``failed`` (query positions → error)
    can not all be retried: the first one no retry fixes, naming its input if it is one."""
    index, err = next((i, e) for i, e in sorted(failed.items()) if not e.retryable)
    return _input_refused(err, index) if isinstance(err, BadInput) else err


_REFUSED = "input {} of the query was refused: "


def _input_refused(err: BadInput, index: int) -> BadInput:
    """``err`` as the refusal of the query's input ``index`` (named in its message)."""
    prefix = _REFUSED.format(err.index)
    message = err.message[len(prefix) :] if err.message.startswith(prefix) else err.message
    return BadInput(
        _REFUSED.format(index) + message,
        index=index,
        provider=err.provider,
        request_id=err.request_id,
        status=err.status,
    )


class AnswerCache:
    """Answers by the exact bytes of their frame, at most ``max_bytes`` of answers kept
    (least recently used evicted first). Thread-safe.

    With a ``journal`` (the service's table ``paid_answers``), it also hands each answer on
    as soon as its request is settled: ``flush()`` (the dispatcher's, after every request)
    packs the answers put since the last flush as one .npz and gives it to the journal.
    ``restore()`` puts a journal's packs back in a new execution's cache, so a job whose
    process dies mid-step, or that waits in the queue for its quota, does not pay again for
    what it had received. ``mark()`` (the service's, at every checkpoint: the checkpoint
    holds what those answers taught) forgets the answers not yet handed on."""

    def __init__(self, max_bytes: int, journal: Callable[[bytes], object] | None = None) -> None:
        self.max_bytes = max_bytes
        self.journal = journal
        self.bytes = 0
        self._rows: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._unsaved: dict[bytes, None] = {}  # keys put since the last flush or mark
        self._lock = threading.Lock()

    @staticmethod
    def key(frame: np.ndarray) -> bytes:
        """A digest of the frame's shape, dtype and bytes."""
        h = hashlib.blake2b(digest_size=_KEY_BYTES)
        h.update(repr((frame.shape, frame.dtype.str)).encode())
        h.update(np.ascontiguousarray(frame).tobytes())
        return h.digest()

    def get(self, key: bytes) -> np.ndarray | None:
        with self._lock:
            row = self._rows.get(key)
            if row is not None:
                self._rows.move_to_end(key)
            return row

    def put(self, key: bytes, row: np.ndarray, *, saved: bool = False) -> None:
        """``saved``: the journal holds it already (a restored answer)."""
        row = np.array(row, dtype=np.float64)  # a copy: the caller may change its own
        with self._lock:
            if key in self._rows or row.nbytes > self.max_bytes:
                return
            self._rows[key] = row
            if self.journal is not None and not saved:
                self._unsaved[key] = None
            self.bytes += row.nbytes
            while self.bytes > self.max_bytes:
                gone, old = self._rows.popitem(last=False)
                self._unsaved.pop(gone, None)
                self.bytes -= old.nbytes

    def __len__(self) -> int:
        return len(self._rows)

    def mark(self) -> None:
        """Everything answered so far is held elsewhere (a checkpoint): hand none of it on."""
        with self._lock:
            self._unsaved.clear()

    def flush(self) -> int:
        """Hand the answers put since the last flush to the journal; how many. A journal
        that fails (a database hiccup) gets them again at the next flush: the job goes on,
        and at worst a crash before then pays for them once more."""
        if self.journal is None:
            return 0
        with self._lock:
            rows = [(k, self._rows[k]) for k in self._unsaved if k in self._rows]
            self._unsaved.clear()
        if not rows:
            return 0
        try:
            self.journal(pack_answers(rows))
        except Exception:
            log.warning("could not save %d answers; trying again at the next flush", len(rows))
            with self._lock:
                self._unsaved.update(dict.fromkeys(k for k, _ in rows))
            return 0
        return len(rows)

    def restore(self, blob: bytes) -> int:
        """Put back the answers of one pack (``pack_answers``) as saved; returns how many."""
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            keys, lengths, values = z["keys"], z["lengths"], z["values"]
        ends = np.cumsum(lengths)
        for key, end, length in zip(keys, ends, lengths, strict=True):
            self.put(bytes(key).ljust(_KEY_BYTES, b"\0"), values[end - length : end], saved=True)
        return len(keys)


def pack_answers(rows: list[tuple[bytes, np.ndarray]]) -> bytes:
    """Answers (cache key, row) as one .npz: exact float64 rows, no pickle."""
    buf = io.BytesIO()
    np.savez(
        buf,
        keys=np.array([k for k, _ in rows], dtype=f"S{_KEY_BYTES}"),
        lengths=np.array([len(r) for _, r in rows], dtype=np.int64),
        values=np.concatenate([r for _, r in rows]),
    )
    return buf.getvalue()


#: told each answer as it arrives: (its position among the images sent, its row)
Keep = Callable[[int, np.ndarray], None]

DEFAULT_CACHE_BYTES = 64 * 1024**2  # 16,000 answers of 1,000 labels


class Dispatcher:
    """Answers queries through one oracle: splitting, concurrency, accounting, rate limiting,
    retries and the answer cache. Thread-safe; one per (job, oracle)."""

    def __init__(
        self,
        oracle: Oracle,
        *,
        ledger: Ledger | None = None,
        limiter: SharedRateLimiter | None = None,
        limit_unit: str = "request",  # what the provider counts: "request" or "image"
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        cache_bytes: int = DEFAULT_CACHE_BYTES,  # 0: no answer cache
    ) -> None:
        if limit_unit not in ("request", "image"):
            raise ValueError("limit_unit is 'request' or 'image'")
        self.oracle, self.ledger = oracle, ledger or NullLedger()
        self.limiter, self.limit_unit = limiter, limit_unit
        self.retry, self.sleep = retry or RetryPolicy(), sleep
        self.cache = AnswerCache(cache_bytes) if cache_bytes > 0 else None
        self.cache_hits: dict[str, int] = {}  # answers taken from the cache, by purpose
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    # ----------------------------------------------------------------- public
    def query(self, images: np.ndarray, purpose: str) -> np.ndarray:
        """Probabilities (N×K) for ``images`` (N×H×W×3 in [0, 1]), in order. Frames answered
        before (or twice in ``images``) are taken from the cache and not sent.

        Raises the first error no retry could fix (``BadInput`` naming the query position of
        the refused image), or ``BudgetExceeded`` before sending what the budget lacks."""
        images = np.asarray(images, dtype=np.float32)
        if self.cache is None or not len(images):
            return self._send(images, purpose)
        keys = [self.cache.key(frame) for frame in images]
        rows: list[np.ndarray | None] = [self.cache.get(k) for k in keys]
        first: dict[bytes, int] = {}  # key -> the position that will be sent
        for i, k in enumerate(keys):
            if rows[i] is None and k not in first:
                first[k] = i
        todo = list(first.values())
        hits = len(images) - len(todo)
        if todo:
            cache = self.cache

            def keep(sent: int, row: np.ndarray) -> None:
                # as each answer arrives: a query that fails later (a quota used up halfway)
                # has paid for it, and the same frames asked again take it from here
                cache.put(keys[todo[sent]], row)

            try:
                answers = self._send(images[todo], purpose, keep)
            except BadInput as err:
                raise _reindexed(err, todo) from err
            for i, row in zip(todo, answers, strict=True):
                rows[i] = row
        if hits:
            self.cache_hits[purpose] = self.cache_hits.get(purpose, 0) + hits
        out = [row if row is not None else rows[first[keys[i]]] for i, row in enumerate(rows)]
        return np.stack(out).astype(np.float64)

    def _send(self, images: np.ndarray, purpose: str, keep: Keep | None = None) -> np.ndarray:
        """Answer ``images`` through the oracle: every one is sent (and paid for); ``keep``
        is told each answer (its position in ``images``, its row) as soon as it is in."""
        step = self.oracle.max_images_per_request
        offsets = range(0, len(images), step)
        stop = threading.Event()
        keep = keep or (lambda sent, row: None)
        if len(offsets) <= 1 or self.oracle.max_concurrency <= 1:
            parts = [self._request(images[i : i + step], i, purpose, stop, keep) for i in offsets]
        else:
            parts = self._in_parallel(images, offsets, step, purpose, stop, keep)
        if not parts:
            return np.zeros((0, len(self.oracle.labels) if self.oracle.labels_known else 0))
        return np.concatenate(parts)

    def query_with_gradient(
        self,
        images: np.ndarray,
        loss_grad: Callable[[np.ndarray], tuple[float, np.ndarray]],
        purpose: str,
    ) -> tuple[np.ndarray, np.ndarray]:
        """White-box baseline only: one accounted forward + backward pass per image."""
        if not isinstance(self.oracle, GradientOracle):
            raise TypeError("this oracle offers no gradients (the white-box baseline needs one)")
        oracle = self.oracle
        reservation = self.ledger.reserve(purpose, len(images))
        start = time.perf_counter()
        probs, grad = oracle.predict_with_input_grad(images, loss_grad)
        reservation.settle(_record(purpose, len(images), len(images), "ok", None, start))
        return probs, grad

    def _flush(self) -> None:
        # after the ledger has recorded the payment: a crash in between pays again (the
        # ledger never undercounts), one the other way round would not be counted
        if self.cache is not None:
            self.cache.flush()

    def close(self) -> None:
        """Wait for requests in flight and release the thread pool."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # ----------------------------------------------------------------- requests
    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=self.oracle.max_concurrency, thread_name_prefix="oracle"
                )
            return self._pool

    def _in_parallel(
        self,
        images: np.ndarray,
        offsets: range,
        step: int,
        purpose: str,
        stop: threading.Event,
        keep: Keep,
    ) -> list[np.ndarray]:
        def run(offset: int) -> np.ndarray:
            try:
                return self._request(images[offset : offset + step], offset, purpose, stop, keep)
            except BaseException:
                stop.set()  # requests not yet sent stay unsent: they would fail or be wasted
                raise

        futures = [self._executor().submit(run, offset) for offset in offsets]
        wait(futures)
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            raise next((e for e in errors if not isinstance(e, _Stopped)), errors[0])
        return [f.result() for f in futures]

    def _request(
        self, images: np.ndarray, offset: int, purpose: str, stop: threading.Event, keep: Keep
    ) -> np.ndarray:
        """Answer one request's images (query positions ``offset``...), retrying per policy;
        only unanswered inputs are sent again."""
        rows: dict[int, np.ndarray] = {}
        pending = list(range(len(images)))
        tries = 0

        def attempt() -> None:
            nonlocal pending, tries
            if stop.is_set():
                raise _Stopped()
            tries += 1
            batch = images[pending]
            encoded = self.oracle.encode(batch)  # before the budget hold and the slot
            reservation = _Attempt(self.ledger.reserve(purpose, len(batch)), tries)
            try:
                if self.limiter is not None:
                    weight = 1 if self.limit_unit == "request" else len(batch)
                    reservation.waited = self.limiter.acquire(weight)
            except BaseException:
                reservation.settle(_record(purpose, 0, 0, NOT_SENT, None, time.perf_counter()))
                raise
            start = time.perf_counter()
            try:
                answer = self.oracle.predict_encoded(batch, encoded)
            except PartialFailure as err:
                for pos, row in err.answered.items():
                    rows[pending[pos]] = np.asarray(row, dtype=np.float64)
                    keep(offset + pending[pos], rows[pending[pos]])
                record = _record(purpose, len(batch), len(err.answered), "partial", err, start)
                reservation.settle(record)
                self._flush()
                failed = {pending[pos]: e for pos, e in err.failed.items()}
                pending = sorted(failed)
                if not err.retryable:
                    raise blame({offset + i: e for i, e in failed.items()}) from err
                raise
            except OracleError as err:
                reservation.settle(_record(purpose, len(batch), 0, type(err).__name__, err, start))
                if isinstance(err, BadInput) and err.index is not None and err.index < len(batch):
                    raise blame({offset + pending[err.index]: err}) from err
                raise
            except BaseException:
                # Not an answer we understand: assume the provider may have billed it.
                reservation.settle(_record(purpose, len(batch), len(batch), "unknown", None, start))
                raise
            reservation.settle(_record(purpose, len(batch), len(batch), "ok", answer, start))
            for pos, row in zip(pending, answer.probs, strict=True):
                rows[pos] = row
                keep(offset + pos, row)
            self._flush()
            pending = []

        def before_sleep(err: BaseException, seconds: float) -> None:
            if isinstance(err, Throttled) and self.limiter is not None:
                self.limiter.pause(seconds)  # everyone on this credential waits, not just us

        try:
            self.retry.call(attempt, sleep=self.sleep, before_sleep=before_sleep)
        except PartialFailure as err:  # attempts ran out with inputs still failing
            raise min(err.failed.items())[1] from err
        return np.stack([rows[i] for i in range(len(images))])


def _reindexed(err: BadInput, positions: list[int]) -> BadInput:
    """``err`` about the i-th image sent, renamed after that image's position in the query
    (the cache sent only some of the query's images)."""
    if err.index is None or err.index >= len(positions):
        return err
    return _input_refused(err, positions[err.index])


@dataclass
class _Attempt:
    """A reservation that stamps its attempt number and rate-limit wait on the record."""

    reservation: Reservation
    attempt: int
    waited: float = 0.0

    def settle(self, record: RequestRecord) -> None:
        self.reservation.settle(
            dataclasses.replace(record, attempt=self.attempt, waited=self.waited)
        )


def _record(
    purpose: str, images: int, answered: int, outcome: str, source: object, start: float
) -> RequestRecord:
    """The ledger's record of one attempt; ``source`` is the answer or error carrying the
    provider's request id (or None)."""
    request_id = getattr(source, "request_id", None)
    return RequestRecord(
        purpose, images, answered, outcome, request_id, time.perf_counter() - start
    )
