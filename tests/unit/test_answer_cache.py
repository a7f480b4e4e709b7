"""The dispatcher's answer cache: the same frame is never sent (or paid for) twice within a
job; the ledger counts only what was sent; hits are counted; memory stays bounded."""

from __future__ import annotations

import numpy as np
import pytest

from adapters.base import Answer, Oracle
from adapters.dispatch import AnswerCache, Dispatcher
from adapters.errors import BadInput, QuotaExhausted
from app.jobs.accounting import MemoryLedger

K = 5


class Counting(Oracle):
    """Answers from the mean colour; remembers every image it received."""

    provider = "torch"
    max_images_per_request = 4

    def __init__(self, refuse: float | None = None) -> None:
        self.received: list[np.ndarray] = []
        self.refuse = refuse  # refuse an image whose first pixel has this value

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(f"l{i}" for i in range(K))

    def predict(self, images: np.ndarray) -> Answer:
        for i, img in enumerate(images):
            if self.refuse is not None and img[0, 0, 0] == np.float32(self.refuse):
                raise BadInput("cannot decode", index=i)
        self.received.extend(images.copy())
        m = images.reshape(len(images), -1).mean(axis=1)
        z = np.stack([m * (j + 1) for j in range(K)], axis=1)
        e = np.exp(z)
        return Answer(e / e.sum(axis=1, keepdims=True))


def frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 6, 6, 3), dtype=np.float32)


def test_a_frame_is_sent_once_and_answered_the_same() -> None:
    oracle, ledger = Counting(), MemoryLedger(price=0.001, max_queries=1000)
    d = Dispatcher(oracle, ledger=ledger)
    a = frames(6)
    first = d.query(a, "mapping")
    again = d.query(a[[5, 0, 3]], "validation")  # the same frames, another purpose
    np.testing.assert_array_equal(again, first[[5, 0, 3]])
    both = d.query(np.concatenate([a[:2], frames(3, seed=1)]), "test")
    np.testing.assert_array_equal(both[:2], first[:2])
    assert len(oracle.received) == 6 + 3
    assert ledger.totals.queries == 9  # only what was sent is paid for
    assert d.cache_hits == {"validation": 3, "test": 2}


def test_a_frame_twice_in_one_query_is_sent_once() -> None:
    oracle = Counting()
    d = Dispatcher(oracle, ledger=MemoryLedger(price=0.0))
    a = frames(3)
    out = d.query(np.concatenate([a, a[::-1], a[:1]]), "training")
    assert len(oracle.received) == 3
    np.testing.assert_array_equal(out[3:6], out[2::-1])
    np.testing.assert_array_equal(out[6], out[0])
    assert d.cache_hits == {"training": 4}


def test_without_the_cache_every_frame_is_sent() -> None:
    oracle = Counting()
    d = Dispatcher(oracle, cache_bytes=0)
    a = frames(3)
    d.query(a, "mapping")
    d.query(a, "mapping")
    assert len(oracle.received) == 6 and d.cache_hits == {}


def test_the_cache_is_bounded_and_forgets_the_oldest() -> None:
    row = 8 * K  # bytes of one answer
    cache = AnswerCache(max_bytes=3 * row)
    keys = [AnswerCache.key(f) for f in frames(5)]
    for k in keys:
        cache.put(k, np.ones(K))
    assert len(cache) == 3 and cache.bytes == 3 * row
    assert cache.get(keys[0]) is None and cache.get(keys[4]) is not None
    oracle = Counting()
    d = Dispatcher(oracle, cache_bytes=2 * row)
    a = frames(4)
    d.query(a, "mapping")
    d.query(a[:2], "mapping")  # evicted: sent again
    d.query(a[2:], "mapping")  # evicted in turn by the line above
    assert len(oracle.received) == 8 and d.cache.bytes <= 2 * row


def test_keys_are_exact_bytes() -> None:
    a = frames(1)[0]
    b = a.copy()
    b[0, 0, 0] = np.nextafter(b[0, 0, 0], np.float32(2))
    assert AnswerCache.key(a) == AnswerCache.key(a.copy())
    assert AnswerCache.key(a) != AnswerCache.key(b)
    assert AnswerCache.key(a) != AnswerCache.key(a.reshape(3, 12, 3))


def test_a_refused_image_is_named_by_its_place_in_the_query() -> None:
    a = frames(5)
    a[3, 0, 0, 0] = 0.123
    oracle = Counting(refuse=0.123)
    d = Dispatcher(oracle)
    d.query(a[:2], "mapping")  # cached: only a[2:] is sent next
    with pytest.raises(BadInput) as err:
        d.query(a, "mapping")
    assert err.value.index == 3 and str(err.value).startswith("input 3 of the query")


class Rationed(Counting):
    """Answers ``quota`` requests, then refuses every one until ``renew()``."""

    def __init__(self, quota: int) -> None:
        super().__init__()
        self.quota = quota

    def predict(self, images: np.ndarray) -> Answer:
        if self.quota == 0:
            raise QuotaExhausted("used up")
        self.quota -= 1
        return super().predict(images)


def test_answers_paid_for_by_a_query_that_failed_are_not_paid_for_again() -> None:
    oracle, ledger = Rationed(quota=2), MemoryLedger(price=0.001, max_queries=1000)
    d = Dispatcher(oracle, ledger=ledger)
    a = frames(10)
    with pytest.raises(QuotaExhausted):
        d.query(a, "training")  # requests of 4, 4 answered, then 2 refused
    assert len(oracle.received) == 8 and ledger.totals.queries == 8
    oracle.quota = 1  # the quota renews: the same query again
    answers = d.query(a, "training")
    assert len(oracle.received) == 10 and ledger.totals.queries == 10
    assert d.cache_hits == {"training": 8}
    np.testing.assert_array_equal(answers, Dispatcher(Counting()).query(a, "training"))


def _rows(pack: bytes) -> int:
    probe = AnswerCache(max_bytes=10**6)
    return probe.restore(pack)


def test_each_request_s_answers_reach_the_journal_once_paid_and_restore_exactly() -> None:
    """What the service saves as it pays (``paid_answers``): each request's answers once,
    after the ledger has counted them, none from before the mark; a new dispatcher that
    restores the packs pays for none of them, and does not save them again."""
    a, b = frames(4), frames(6, seed=1)
    ledger = MemoryLedger(price=0.001, max_queries=1000)
    saved: list[tuple[bytes, int]] = []  # (pack, queries the ledger had counted by then)
    d = Dispatcher(Rationed(quota=2), ledger=ledger)  # requests of 4: a takes one, b's first
    d.cache.journal = lambda pack: saved.append((pack, ledger.totals.queries))
    d.query(a, "training")
    assert [(_rows(p), q) for p, q in saved] == [(4, 4)]
    d.cache.mark()  # a checkpoint: what a taught is held there
    assert d.cache.flush() == 0
    with pytest.raises(QuotaExhausted):
        d.query(b, "training")  # 4 answered, then the quota is used up
    assert [(_rows(p), q) for p, q in saved] == [(4, 4), (4, 8)]
    fresh, again = Counting(), MemoryLedger(price=0.001, max_queries=1000)
    resumed = Dispatcher(fresh, ledger=again)
    resaved: list[bytes] = []
    resumed.cache.journal = resaved.append
    assert resumed.cache.restore(saved[1][0]) == 4  # what the service restores: since the mark
    answers = resumed.query(b, "training")
    assert again.totals.queries == 2 and resumed.cache_hits == {"training": 4}
    np.testing.assert_array_equal(answers, Dispatcher(Counting()).query(b, "training"))
    assert [_rows(p) for p in resaved] == [2]  # only what it paid for itself
    resumed.query(a, "training")  # from before the mark, never restored: sent
    assert again.totals.queries == 2 + 4


def test_answers_a_failing_journal_missed_are_handed_on_at_the_next_flush() -> None:
    """A database hiccup does not fail the query; what it missed goes with the next
    request's answers, unless a checkpoint (the mark) holds them by then."""
    saved: list[bytes] = []
    fail = [True]

    def journal(pack: bytes) -> None:
        if fail.pop(0) if fail else False:
            raise OSError("database unreachable")
        saved.append(pack)

    d = Dispatcher(Counting())
    d.cache.journal = journal
    d.query(frames(3), "training")  # one request: its save fails, the answers stand
    assert saved == []
    d.query(frames(2, seed=1), "training")
    assert [_rows(p) for p in saved] == [3 + 2]
    fail.append(True)
    d.query(frames(4, seed=2), "training")  # missed again ...
    d.cache.mark()  # ... and then held by a checkpoint: never handed on
    d.query(frames(1, seed=3), "training")
    assert [_rows(p) for p in saved] == [5, 1]


def test_images_are_encoded_before_a_rate_limit_slot_is_taken() -> None:
    """A slot is spent sending, not encoding: the oracle's encode runs before the limiter
    is asked, and predict_encoded gets what encode made."""
    events: list[str] = []

    class Encoding(Counting):
        def encode(self, images: np.ndarray) -> object:
            events.append("encode")
            return len(images)

        def predict_encoded(self, images: np.ndarray, encoded: object) -> Answer:
            assert encoded == len(images)
            events.append("send")
            return self.predict(images)

    class Limiter:
        def acquire(self, weight: int) -> float:
            events.append("slot")
            return 0.0

        def pause(self, seconds: float) -> None:
            pass

    d = Dispatcher(Encoding(), limiter=Limiter())  # type: ignore[arg-type]
    d.query(frames(6), "mapping")  # two requests of at most 4
    assert events == ["encode", "slot", "send"] * 2


def test_the_cloud_adapters_encode_png_before_sending() -> None:
    from adapters.clarifai import ClarifaiOracle
    from adapters.customvision import CustomVisionOracle

    png = b"\x89PNG\r\n\x1a\n"
    img = frames(2)
    clarifai = ClarifaiOracle.__new__(ClarifaiOracle)
    clarifai.max_images_per_request = 4
    assert [b[:8] for b in clarifai.encode(img)] == [png, png]
    cv = CustomVisionOracle.__new__(CustomVisionOracle)
    cv.max_images_per_request = 1
    assert cv.encode(img[:1])[:8] == png and cv.encode(img[:0]) is None
