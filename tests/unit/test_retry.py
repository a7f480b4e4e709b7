"""The retry policy as pure decisions: what is retried, how long it waits, when it stops."""

from __future__ import annotations

import random

import pytest

from adapters import customvision, retry
from adapters.errors import (
    AuthFailed,
    BadInput,
    BudgetExceeded,
    MalformedAnswer,
    NotFound,
    OracleError,
    PartialFailure,
    Throttled,
    TransientUpstreamError,
)
from adapters.retry import MAX_RETRY_AFTER_S, RetryPolicy, parse_retry_after

NEVER = [
    AuthFailed("no", status=401),
    BadInput("bad image", index=3),
    NotFound("no model"),
    MalformedAnswer("odd answer"),
    OracleError("unclassified"),
    BudgetExceeded("spent"),
    ValueError("a bug"),
]


def policy(**kwargs: object) -> RetryPolicy:
    return RetryPolicy(**({"rng": random.Random(7)} | kwargs))  # type: ignore[arg-type]


@pytest.mark.parametrize("error", [Throttled("slow down"), TransientUpstreamError("503")])
def test_throttling_and_transient_errors_are_retried_until_the_last_attempt(error):
    p = policy(max_attempts=4)
    assert [p.should_retry(error, attempt) for attempt in (1, 2, 3, 4)] == [True] * 3 + [False]


@pytest.mark.parametrize("error", NEVER, ids=lambda e: type(e).__name__)
def test_auth_bad_input_not_found_and_unknown_errors_are_never_retried(error):
    assert not policy().should_retry(error, 1)


def test_a_mixed_batch_is_retried_only_when_every_failure_may_pass():
    transient = PartialFailure(answered={0: [1.0]}, failed={1: TransientUpstreamError()})
    with_bad = PartialFailure(
        answered={}, failed={1: TransientUpstreamError(), 2: BadInput(index=2)}
    )
    assert policy().should_retry(transient, 1)
    assert not policy().should_retry(with_bad, 1)


def test_retry_after_is_honoured_and_capped():
    p = policy(max_retry_after=30.0)
    assert p.delay(Throttled(retry_after=2.5), 1) == 2.5
    assert p.delay(Throttled(retry_after=2.5), 6) == 2.5  # the provider's word, not backoff
    assert p.delay(Throttled(retry_after=3600.0), 1) == 30.0
    assert p.delay(Throttled(retry_after=-1.0), 1) == 0.0


@pytest.mark.parametrize("error", [Throttled(), TransientUpstreamError()])
def test_backoff_is_full_jitter_under_an_exponential_ceiling(error):
    p = policy(base_delay=0.5, max_delay=3.0)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (9, 3.0)]:
        draws = [p.delay(error, attempt) for _ in range(300)]
        assert all(0.0 <= d <= ceiling for d in draws)
        # spread over the whole range, not a constant: that is what de-synchronises clients
        assert min(draws) < 0.1 * ceiling and max(draws) > 0.9 * ceiling


def test_default_policies_do_not_back_off_in_lockstep():
    # Two workers sharing a credential, each with its own default policy.
    a, b = RetryPolicy(), RetryPolicy()
    draws = [(a.delay(Throttled(), 3), b.delay(Throttled(), 3)) for _ in range(5)]
    assert any(x != y for x, y in draws)


def test_call_sleeps_between_attempts_and_returns_the_answer():
    outcomes: list[Exception | str] = [Throttled(retry_after=1.5), TransientUpstreamError(), "ok"]
    slept: list[float] = []
    seen: list[tuple[str, float]] = []

    def fn() -> str:
        out = outcomes.pop(0)
        if isinstance(out, Exception):
            raise out
        return out

    result = policy(base_delay=0.2).call(
        fn, sleep=slept.append, before_sleep=lambda e, s: seen.append((type(e).__name__, s))
    )
    assert result == "ok" and not outcomes
    assert slept[0] == 1.5 and 0.0 <= slept[1] <= 0.4
    assert seen == [("Throttled", slept[0]), ("TransientUpstreamError", slept[1])]


def test_call_gives_up_after_max_attempts_with_the_last_error():
    calls: list[int] = []

    def fn() -> None:
        calls.append(1)
        raise TransientUpstreamError(f"failure {len(calls)}")

    slept: list[float] = []
    with pytest.raises(TransientUpstreamError, match="failure 3"):
        policy(max_attempts=3).call(fn, sleep=slept.append)
    assert len(calls) == 3 and len(slept) == 2


@pytest.mark.parametrize("error", NEVER[:3], ids=lambda e: type(e).__name__)
def test_call_fails_fast_on_errors_no_wait_fixes(error):
    calls: list[int] = []

    def fn() -> None:
        calls.append(1)
        raise error

    slept: list[float] = []
    with pytest.raises(type(error)):
        policy().call(fn, sleep=slept.append)
    assert calls == [1] and slept == []


@pytest.mark.parametrize(
    "kwargs", [{"max_attempts": 0}, {"base_delay": -1.0}, {"base_delay": 5.0, "max_delay": 1.0}]
)
def test_nonsense_policies_are_refused(kwargs):
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


def test_retry_after_parsing_lives_with_the_policy_and_is_capped():
    assert customvision.parse_retry_after is retry.parse_retry_after  # one parser, one cap
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(str(10 * MAX_RETRY_AFTER_S)) == MAX_RETRY_AFTER_S
    assert parse_retry_after("inf") is None and parse_retry_after("later") is None
