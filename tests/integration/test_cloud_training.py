"""Reprogramming through the fake cloud APIs from the CLI path (`reprogram train`): it learns
(beats chance), and the queries it reports equal what the "provider" billed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from adapters.clarifai import ClarifaiOracle
from tests.fakes.clarifai import FakeClarifai
from tests.fakes.customvision import FakeCustomVision
from tests.helpers import (
    CLOUD_RUN,
    clarifai_oracle,
    cli_train,
    customvision_oracle,
    digits_npz,
    write_spec,
)

KEY = "cloud-training-key-0c1d"
RUN = CLOUD_RUN


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "digits.npz"
    path.write_bytes(digits_npz(n_per_class=40, classes=3, size=20))
    return path


def train(tmp_path, data, oracle: dict) -> dict:
    out = tmp_path / "out"
    res = cli_train(write_spec(tmp_path, {"oracle": oracle, **RUN}), data, out)
    assert res.exit_code == 0, res.output
    assert KEY not in res.output
    return json.loads((out / "result.json").read_text())


def test_reprogramming_through_fake_clarifai(tmp_path, data, monkeypatch):
    monkeypatch.setenv("FAKE_CLARIFAI_KEY", KEY)
    with FakeClarifai(keys=[KEY], rate_limit=50) as fake:
        oracle = clarifai_oracle(fake, api_key_env="FAKE_CLARIFAI_KEY", rate_limit=40)
        result = train(tmp_path, data, oracle)
        counts = fake.counts(KEY)
    assert result["status"] == "succeeded"
    assert result["queries"] == counts.billable  # what the provider billed, exactly
    assert result["requests"] == counts.requests
    assert counts.throttled == 0  # the shared limiter kept us under the fake's limit
    assert result["cost_usd"] == pytest.approx(counts.billable * 0.0012)
    assert result["test_accuracy"] > result["baselines"]["chance"]["accuracy"] + 0.1


def test_reprogramming_through_fake_custom_vision(tmp_path, data, monkeypatch):
    monkeypatch.setenv("FAKE_CV_KEY", KEY)
    with FakeCustomVision(keys=[KEY], rate_limit=400) as fake:
        oracle = customvision_oracle(fake, api_key_env="FAKE_CV_KEY", rate_limit=300)
        result = train(tmp_path, data, oracle)
        counts = fake.counts(KEY)
    assert result["status"] == "succeeded"
    assert result["queries"] == counts["answered"]
    assert result["requests"] == counts["requests"] == result["queries"]  # one image each
    assert result["breakdown"]["discovery"]["queries"] == 1  # tags learned from one answer
    assert result["test_accuracy"] > result["baselines"]["chance"]["accuracy"] + 0.1


def test_a_wrong_key_fails_fast_with_a_clear_error(tmp_path, data, monkeypatch):
    monkeypatch.setenv("FAKE_CLARIFAI_KEY", "not-the-key")
    with FakeClarifai(keys=[KEY]) as fake:
        oracle = clarifai_oracle(fake, api_key_env="FAKE_CLARIFAI_KEY")
        res = cli_train(write_spec(tmp_path, {"oracle": oracle, **RUN}), data, tmp_path / "o")
        assert fake.counts().requests == 1  # no retries of an auth failure
    assert res.exit_code == 1
    assert "AuthFailed" in res.output and "not-the-key" not in res.output
    # nothing was validated and no probe measured: the summary claims neither
    assert "Cross-fitted programs validated on" not in res.output
    assert "the probe is returned" not in res.output
    assert "No validation ran" in res.output


def _run_with_hourly_limit(
    data,
    hourly_limit: int | None,
    sleeps: list[float],
    advance: bool,
    max_waits: int = 2,
    model_id: str = "moderation-recognition",
    used_by_others: int = 0,
    iterations: int = 10,
):
    """A job through ``run_local`` on a Clarifai fake admitting ``hourly_limit`` requests an
    hour; each wait for the quota is recorded, and moves the fake's clock on when
    ``advance`` (the hour passes) or not (the quota never renews). ``used_by_others``
    requests of the first hour go to another client of the same key, before the job."""
    from app.config.settings import Settings
    from app.config.spec import JobSpec
    from app.data.loading import load_dataset
    from app.jobs.local import run_local

    now = [0.0]

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds if advance else 0.0

    with FakeClarifai(
        keys=[KEY], rate_limit=None, hourly_limit=hourly_limit, clock=lambda: now[0]
    ) as fake:
        with ClarifaiOracle(api_key=KEY, endpoint=fake.endpoint) as other:
            for _ in range(used_by_others):
                other.predict(np.zeros((1, 32, 32, 3), np.float32))
        oracle = clarifai_oracle(fake, api_key_env="FAKE_CLARIFAI_KEY", model_id=model_id)
        optimizer = RUN["optimizer"] | {"iterations": iterations, "eval_every": iterations}
        spec = JobSpec.model_validate({"oracle": oracle, **RUN, "optimizer": optimizer})
        settings = Settings(quota_wait_seconds=3600, max_quota_waits=max_waits)
        run = run_local(spec, load_dataset(data), settings=settings, sleep=sleep)
        return run, fake.counts(KEY)


# The moderation job sends 31 requests. A model whose concepts the job must ask for, in an
# hour another client has used up: the quota runs out before training (that question), and
# then every hour answers 3 requests.
@pytest.mark.parametrize(
    ("hourly_limit", "model_id", "used_by_others", "iterations"),
    [(10, "moderation-recognition", 0, 10), (3, "my-moderation-model", 3, 4)],
)
def test_a_job_at_the_hourly_limit_waits_and_ends_as_if_it_had_not(
    data, monkeypatch, hourly_limit, model_id, used_by_others, iterations
):
    monkeypatch.setenv("FAKE_CLARIFAI_KEY", KEY)
    free, free_counts = _run_with_hourly_limit(
        data, None, [], True, model_id=model_id, iterations=iterations
    )
    sleeps: list[float] = []
    limited, counts = _run_with_hourly_limit(
        data, hourly_limit, sleeps, True, 10, model_id, used_by_others, iterations
    )
    assert limited.result["status"] == free.result["status"] == "succeeded"
    # (requests in flight when the hour ran out are refused together: one wait for them)
    assert len(sleeps) >= 2 and set(sleeps) == {3600} and counts.throttled >= len(sleeps)
    # resumed from the last tell each time: the same program, and nothing paid twice
    assert limited.result["queries"] == free.result["queries"] == counts.billable - used_by_others
    assert limited.result["test_accuracy"] == free.result["test_accuracy"]
    assert limited.arrays is not None and free.arrays is not None
    np.testing.assert_array_equal(limited.arrays["P"], free.arrays["P"])
    assert free_counts.throttled == 0


def test_a_quota_that_never_renews_fails_the_job_naming_it(data, monkeypatch):
    monkeypatch.setenv("FAKE_CLARIFAI_KEY", KEY)
    sleeps: list[float] = []
    run, counts = _run_with_hourly_limit(data, 20, sleeps, advance=False)
    assert run.result["status"] == "failed" and len(sleeps) == 2
    assert "CONN_EXCEED_HOURLY_LIMIT" in run.result["error"]
    assert "still used up after 2 waits of 3600 s" in run.result["error"]
    assert run.result["queries"] == counts.billable


def _run_with_monthly_quota(data, quota: int | None, period: float, sleeps: list[float]):
    """A job through ``run_local`` on a Custom Vision fake holding the key to ``quota``
    predictions a ``period``; each sleep moves the fake's clock on by as much."""
    from app.config.settings import Settings
    from app.config.spec import JobSpec
    from app.data.loading import load_dataset
    from app.jobs.local import run_local

    now = [0.0]

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    fake = FakeCustomVision(
        keys=[KEY],
        rate_limit=None,
        quota=quota,
        quota_period_seconds=period,
        clock=lambda: now[0],
        model="cheap",  # the answers' meaning does not matter here, their count does
    )
    with fake:
        oracle = customvision_oracle(fake, api_key_env="FAKE_CV_KEY", rate_limit=1000)
        spec = JobSpec.model_validate({"oracle": oracle, **RUN})
        settings = Settings(quota_wait_seconds=3600, max_quota_waits=2)
        run = run_local(spec, load_dataset(data), settings=settings, sleep=sleep)
        return run, fake.counts(KEY)


def test_a_custom_vision_quota_that_renews_in_time_is_waited_for_as_long_as_it_says(
    data, monkeypatch
):
    monkeypatch.setenv("FAKE_CV_KEY", KEY)
    free, _ = _run_with_monthly_quota(data, None, 0, [])
    sleeps: list[float] = []
    quota = free.result["queries"] // 3 + 1  # three periods' worth
    limited, counts = _run_with_monthly_quota(data, quota, 5000.0, sleeps)
    assert limited.result["status"] == "succeeded"
    # each wait is as long as the 403 said (the clock stood still in between), plus a second
    assert sleeps == [5001.0, 5001.0]
    # the answers of a step the quota cut short were kept: asked again, none was paid twice
    assert limited.result["queries"] == free.result["queries"] == counts["answered"]
    assert limited.result["cache_hits"] > free.result["cache_hits"]
    np.testing.assert_array_equal(limited.arrays["P"], free.arrays["P"])


def test_a_custom_vision_quota_that_renews_too_late_fails_at_once_naming_when(data, monkeypatch):
    monkeypatch.setenv("FAKE_CV_KEY", KEY)
    sleeps: list[float] = []
    run, counts = _run_with_monthly_quota(data, 100, 30 * 86400.0, sleeps)
    assert run.result["status"] == "failed" and sleeps == []
    error = run.result["error"]
    assert error.startswith("QuotaExhausted: Custom Vision answered HTTP 403: the prediction quota")
    assert "(renews in 30 d)" in error
    assert "later than a job waits for its oracle's quota (2 h" in error
    assert run.result["queries"] == counts["answered"] == 100
