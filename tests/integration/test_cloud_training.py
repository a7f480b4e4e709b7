"""Reprogramming through the fake cloud APIs from the CLI path (`reprogram train`): it learns
(beats chance), and the queries it reports equal what the "provider" billed."""

from __future__ import annotations

import json

import pytest

from tests.fakes.clarifai import FakeClarifai
from tests.fakes.customvision import FakeCustomVision
from tests.helpers import clarifai_oracle, cli_train, customvision_oracle, digits_npz, write_spec

KEY = "cloud-training-key-0c1d"
RUN = {
    "program": {"input_size": 64, "target_size": 24},
    "optimizer": {"iterations": 10, "q": 2, "batch_size": 6, "eval_every": 5},
    "budget": {"max_queries": 3000},
    "seed": 1,
}


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
