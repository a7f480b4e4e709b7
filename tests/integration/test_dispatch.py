"""The Dispatcher with the real SDK adapters against both fakes on 127.0.0.1: throttling,
mixed batches, refusals, transient faults, budgets and shared pauses, each checked against
what the fake counted (nothing lost, nothing answered or paid twice)."""

from __future__ import annotations

import itertools
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pytest

from adapters import customvision
from adapters.base import Oracle, to_uint8
from adapters.clarifai import ClarifaiOracle
from adapters.customvision import CustomVisionOracle
from adapters.dispatch import Dispatcher
from adapters.errors import AuthFailed, BadInput, BudgetExceeded, QuotaExhausted
from adapters.ratelimit import SharedRateLimiter, shared_limiter
from adapters.retry import RetryPolicy
from app.jobs.accounting import MemoryLedger
from tests.fakes.clarifai import FakeClarifai
from tests.fakes.customvision import MODERATION_PROJECT, PUBLISHED, FakeCustomVision
from tests.fakes.model import CheapModel

KEY = "sk-dispatch-0123456789"
BAD_KEY = "sk-not-a-key"
FAST = {"base_delay": 0.02, "max_delay": 0.2, "max_attempts": 12}


def colours(n: int, seed: int = 0) -> np.ndarray:
    """n small images of distinct flat colours, so each has its own answer (the fakes'
    cheap model looks at mean colour)."""
    rgb = np.random.default_rng(seed).random((n, 1, 1, 3), dtype=np.float32)
    return np.ascontiguousarray(np.broadcast_to(rgb, (n, 32, 32, 3)))


def expected(oracle: Oracle, images: np.ndarray) -> np.ndarray:
    """What the fake's model says about ``images``, in the oracle's column order."""
    model = CheapModel("moderation")
    probs = model.probs(list(to_uint8(images)))
    return probs[:, [model.labels.index(label) for label in oracle.labels]]


def policy() -> RetryPolicy:
    return RetryPolicy(rng=random.Random(0), **FAST)  # type: ignore[arg-type]


class CorruptingClarifai(ClarifaiOracle):
    """Sends bytes no decoder accepts in place of every all-black image."""

    def _encode_all(self, pixels: np.ndarray) -> list[bytes]:
        blobs = super()._encode_all(pixels)
        return [blob if p.any() else b"not an image" for p, blob in zip(pixels, blobs, strict=True)]


@dataclass
class Provider:
    """One fake and how to reach it, so each behaviour is written once for both."""

    name: str
    fake: FakeClarifai | FakeCustomVision

    def oracle(self, key: str = KEY, *, corrupt_black: bool = False, **kwargs: object) -> Oracle:
        if isinstance(self.fake, FakeClarifai):
            cls = CorruptingClarifai if corrupt_black else ClarifaiOracle
            args = {"model_id": "moderation-recognition", "max_images_per_request": 4}
            return cls(api_key=key, endpoint=self.fake.endpoint, timeout=5.0, **(args | kwargs))
        kwargs.pop("max_images_per_request", None)  # Custom Vision takes one image, always
        return CustomVisionOracle(
            project_id=MODERATION_PROJECT,
            published_name=PUBLISHED,
            endpoint=self.fake.endpoint,
            api_key=key,
            timeout=5.0,
            **kwargs,  # type: ignore[arg-type]
        )

    def counts(self, key: str = KEY) -> dict[str, int]:
        """requests, images, billable, throttled, failed: as the fake counted them."""
        if isinstance(self.fake, FakeClarifai):
            c = self.fake.counts(key)
            return dict(requests=c.requests, images=c.images, billable=c.billable,
                        throttled=c.throttled, failed=c.failed)  # fmt: skip
        counts = self.fake.counts(key)
        counts["billable"] = counts.pop("answered")
        return counts

    def fail_transiently(self, rate: float) -> None:
        if isinstance(self.fake, FakeClarifai):
            self.fake.set_faults(transient_rate=rate, transient_kind="unavailable")
        else:
            self.fake.set_faults(error_rate=rate, error_statuses=[500, 503])


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, Provider]]:
    with (
        FakeClarifai(keys={KEY}, rate_limit=None, model="cheap") as clarifai,
        FakeCustomVision(keys=[KEY], rate_limit=None, model="cheap") as cv,
    ):
        yield {
            "clarifai": Provider("clarifai", clarifai),
            "customvision": Provider("customvision", cv),
        }


@pytest.fixture(params=["clarifai", "customvision"])
def provider(request, fakes) -> Provider:
    """Each provider's fake, with fresh counts, no faults and no rate limit."""
    fake = fakes[request.param].fake
    fake.reset()
    if isinstance(fake, FakeCustomVision):
        fake.set_rate_limit(None)
    return fakes[request.param]


@pytest.fixture
def dispatch() -> Iterator[Callable[..., Dispatcher]]:
    """Build dispatchers (fast retries by default); close them and their oracles after."""
    made: list[Dispatcher] = []

    def make(oracle: Oracle, **kwargs: object) -> Dispatcher:
        made.append(Dispatcher(oracle, **({"retry": policy()} | kwargs)))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for dispatcher in made:
        dispatcher.close()
        dispatcher.oracle.close()


def limited_customvision(
    fakes: dict[str, Provider], per_second: float
) -> tuple[Provider, FakeCustomVision]:
    """The Custom Vision fake with fresh counts, allowing ``per_second`` images, no burst."""
    provider = fakes["customvision"]
    fake = provider.fake
    assert isinstance(fake, FakeCustomVision)
    fake.reset()
    fake.set_rate_limit(per_second, burst=1)
    return provider, fake


def fresh_limiter(provider: str, per_second: float) -> SharedRateLimiter:
    """A shared limiter no other test uses (a fresh key, so no pause or unit carries over)."""
    return shared_limiter(f"{provider}_{uuid.uuid4().hex[:12]}", per_second)


def ledger(max_queries: int | None = None) -> MemoryLedger:
    return MemoryLedger(price=0.001, max_queries=max_queries)


def assert_accounted(book: MemoryLedger, counts: dict[str, int]) -> None:
    """The ledger saw every request the fake saw, and bills what the fake bills."""
    assert book.totals.queries == counts["billable"]
    assert book.totals.requests == counts["requests"]
    assert book.totals.images_sent == counts["images"]


# -- throttling -----------------------------------------------------------------------------
def test_clarifai_throttling_waits_and_every_answer_arrives_once(dispatch):
    images = colours(16)
    book = ledger()
    # The limiter believes 40 requests/s while the account allows 10 (as when another tool
    # shares the key): throttles happen, and each pauses every user of the limiter.
    limiter = fresh_limiter("clarifai", 40)
    with FakeClarifai(keys={KEY}, rate_limit=10, burst=1, model="cheap") as fake:
        oracle = ClarifaiOracle(
            api_key=KEY, endpoint=fake.endpoint, model_id="moderation-recognition",
            max_images_per_request=2, max_concurrency=4,
        )  # fmt: skip
        probs = dispatch(oracle, ledger=book, limiter=limiter).query(images, "train")
        c = fake.counts(KEY)
    np.testing.assert_allclose(probs, expected(oracle, images), atol=1e-6)
    assert c.throttled > 0  # the test did meet throttling
    assert c.billable == 16 == book.totals.queries  # answered once each, billed once each
    counts = dict(requests=c.requests, images=c.images, billable=c.billable)
    assert_accounted(book, counts)


def test_customvision_retry_after_is_honoured_and_pauses_the_credential(fakes, dispatch):
    provider, fake = limited_customvision(fakes, 5)
    fake.predict(KEY, MODERATION_PROJECT, PUBLISHED, b"")  # someone else spends the token
    images, book = colours(3), ledger()
    limiter = fresh_limiter("customvision", 5)
    dispatcher = dispatch(provider.oracle(), ledger=book, limiter=limiter, limit_unit="image")
    start = time.monotonic()
    probs = dispatcher.query(images, "train")
    elapsed = time.monotonic() - start
    counts = provider.counts()
    np.testing.assert_allclose(probs, expected(dispatcher.oracle, images), atol=1e-9)
    assert counts["throttled"] >= 1 and elapsed >= 1.0  # the fake said Retry-After: 1
    assert counts["billable"] == 3 == book.totals.queries
    counts["requests"] -= 1  # the token spender's request is not ours
    counts["failed"] -= 1
    assert_accounted(book, counts)


# -- mixed batches ----------------------------------------------------------------------------
def test_a_mixed_batch_retries_only_its_failed_inputs(fakes, dispatch):
    provider = fakes["clarifai"]
    provider.fake.reset(seed=3)
    provider.fake.set_faults(input_failure_rate=0.3)
    images, book = colours(24), ledger()
    oracle = provider.oracle(max_images_per_request=24)
    probs = dispatch(oracle, ledger=book).query(images, "train")
    counts = provider.counts()
    np.testing.assert_allclose(probs, expected(oracle, images), atol=1e-6)
    assert counts["failed"] > 0 and counts["images"] > 24  # some inputs did fail and return
    assert counts["billable"] == 24  # ...yet no image was answered twice
    assert_accounted(book, counts)
    # each attempt carried exactly the inputs the previous one left unanswered
    records = book.records
    assert records[0].images == 24
    for before, after in itertools.pairwise(records):
        assert after.images == before.images - before.answered


def test_clarifai_hourly_limit_is_not_retried_and_renews_with_the_hour(dispatch):
    now = [0.0]
    book = ledger()
    with FakeClarifai(
        keys={KEY}, rate_limit=None, hourly_limit=3, hour_seconds=3600, clock=lambda: now[0],
        model="cheap",
    ) as fake:  # fmt: skip
        oracle = ClarifaiOracle(
            api_key=KEY, endpoint=fake.endpoint, max_images_per_request=2, max_concurrency=1
        )
        dispatcher = dispatch(oracle, ledger=book)
        dispatcher.query(colours(6), "train")  # the hour's 3 requests
        start = time.monotonic()
        with pytest.raises(QuotaExhausted) as caught:
            dispatcher.query(colours(2, seed=1), "train")
        assert time.monotonic() - start < 1.0  # no backoff: seconds cannot renew an hour
        assert fake.counts(KEY).requests == 4  # and no retry
        now[0] = 3600.0  # the next hour
        dispatcher.query(colours(2, seed=1), "train")
        c = fake.counts(KEY)
    assert caught.value.status == 11003 and not caught.value.retryable
    assert "CONN_EXCEED_HOURLY_LIMIT" in str(caught.value) and KEY not in str(caught.value)
    assert (c.requests, c.throttled, c.billable) == (5, 1, 8) and book.totals.queries == 8


# -- refusals -----------------------------------------------------------------------------------
def test_a_bad_key_fails_fast_with_one_request(provider, dispatch):
    book = ledger()
    dispatcher = dispatch(provider.oracle(BAD_KEY, max_concurrency=1), ledger=book)
    start = time.monotonic()
    with pytest.raises(AuthFailed) as caught:
        dispatcher.query(colours(8), "train")  # several requests' worth
    assert time.monotonic() - start < 1.0
    assert provider.counts(BAD_KEY)["requests"] == 1  # no retry, and the rest never sent
    assert caught.value.request_id and BAD_KEY not in str(caught.value)
    assert book.totals.queries == 0 and book.totals.requests == 1


def test_a_fatal_error_stops_requests_not_yet_sent(provider, dispatch):
    dispatcher = dispatch(provider.oracle(BAD_KEY, max_images_per_request=1, max_concurrency=2))
    with pytest.raises(AuthFailed):
        dispatcher.query(colours(12), "train")
    assert provider.counts(BAD_KEY)["requests"] <= 2  # those already in flight, no more


def test_a_bad_image_is_bad_input_naming_its_place_in_the_query(provider, dispatch):
    images, book = colours(8), ledger()
    images[5] = 0.0  # all black: the oracle sends bytes no decoder accepts
    oracle = provider.oracle(corrupt_black=True, max_images_per_request=3, max_concurrency=1)
    if provider.name == "customvision":
        png = customvision.encode_png
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(customvision, "encode_png", lambda p: png(p) if p.any() else b"junk")
            with pytest.raises(BadInput) as caught:
                dispatch(oracle, ledger=book).query(images, "train")
    else:
        with pytest.raises(BadInput) as caught:
            dispatch(oracle, ledger=book).query(images, "train")
    assert caught.value.index == 5 and "input 5" in str(caught.value)
    assert not caught.value.retryable
    counts = provider.counts()
    assert counts["billable"] == book.totals.queries  # what was answered is on the books
    assert counts["images"] <= 6  # nothing after the bad image's request was sent


# -- transient faults ---------------------------------------------------------------------------
def test_transient_faults_recover(provider, dispatch):
    provider.fail_transiently(0.5)
    images, book = colours(10), ledger()
    dispatcher = dispatch(provider.oracle(), ledger=book)
    probs = dispatcher.query(images, "train")
    counts = provider.counts()
    np.testing.assert_allclose(probs, expected(dispatcher.oracle, images), atol=1e-6)
    assert counts["failed"] > 0  # faults were met...
    assert counts["billable"] == 10  # ...and overcome, each image answered once
    assert_accounted(book, counts)


# -- budget -------------------------------------------------------------------------------------
def test_budget_exceeded_stops_before_sending(provider, dispatch):
    book = ledger(max_queries=4)
    dispatcher = dispatch(provider.oracle(max_concurrency=1), ledger=book)
    dispatcher.query(colours(4), "train")
    with pytest.raises(BudgetExceeded):
        dispatcher.query(colours(4, seed=1), "train")
    counts = provider.counts()
    assert counts["images"] == 4 == book.totals.queries  # not one image past the budget
    assert_accounted(book, counts)


# -- a pause is shared --------------------------------------------------------------------------
def test_a_retry_after_pause_from_one_dispatcher_delays_another(fakes, dispatch):
    provider, fake = limited_customvision(fakes, 1)
    # Two jobs on one credential; the limiter allows far more than the fake: only the pause
    # set from the fake's Retry-After can hold the second job back.
    limiter = fresh_limiter("customvision", 100)
    first = dispatch(provider.oracle(), limiter=limiter, limit_unit="image")
    second = dispatch(provider.oracle(), limiter=limiter, limit_unit="image")
    first.query(colours(1), "train")  # spends the fake's only token
    worker = threading.Thread(target=first.query, args=(colours(1, seed=1), "train"))
    worker.start()  # ...so this one meets 429 Retry-After: 1 and pauses the credential
    # Wait for the pause itself, not the fake's count of 429s: the fake counts one before the
    # first dispatcher has read the answer and paused the credential.
    deadline = time.monotonic() + 5
    while limiter.paused_for() == 0 and time.monotonic() < deadline:
        time.sleep(0.002)
    fake.set_rate_limit(None)  # from now on only the pause can delay the second job
    start = time.monotonic()
    pause = limiter.paused_for()
    second.query(colours(1, seed=2), "train")
    waited = time.monotonic() - start
    worker.join()
    assert pause > 0.5  # Retry-After: 1, set moments ago
    assert waited >= pause - 0.05
    assert provider.counts()["throttled"] == 1 and provider.counts()["billable"] == 3
