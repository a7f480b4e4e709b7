"""The service as a user drives it, over HTTP: upload → job (local model, fake Clarifai, fake
Custom Vision) → poll → spend → program → predict; on SQLite (jobs run inside the API
process) and on PostgreSQL (jobs run in `reprogram worker` processes from the queue)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.jobs.artifacts import ProgramFile
from tests.fakes.clarifai import FakeClarifai
from tests.fakes.customvision import FakeCustomVision
from tests.helpers import (
    clarifai_oracle,
    customvision_oracle,
    png,
    post_job,
    service,
    service_settings,
    start_workers,
    upload,
    wait_final,
)
from tests.live import SMALL_RUN

CLARIFAI_KEY = "clarifai-secret-e2e-91c2"
CV_KEY = "customvision-secret-e2e-55aa"


def oracle_specs(clarifai: FakeClarifai, cv: FakeCustomVision, creds: dict[str, str]) -> dict:
    return {
        "torch": {"kind": "torch", "model": "efficientnet-lite0"},
        "clarifai": clarifai_oracle(clarifai, credential_id=creds["clarifai"]),
        "customvision": customvision_oracle(cv, credential_id=creds["customvision"]),
    }


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeClarifai, FakeCustomVision]]:
    with (
        FakeClarifai(keys=[CLARIFAI_KEY], rate_limit=200) as c,
        FakeCustomVision(keys=[CV_KEY], rate_limit=200) as v,
    ):
        yield c, v


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_whole_flow_over_http(backend, request, tmp_path, small_npz, fakes, capfd):
    clarifai, cv = fakes
    clarifai.reset()
    cv.reset()
    url = request.getfixturevalue("pg_url") if backend == "postgres" else None
    # The fakes listen on loopback: only the operator's allowlist lets tenants' jobs reach them.
    allowed = [clarifai.endpoint, cv.endpoint]
    # Custom Vision's default limit (10 images a second) would make its job most of this
    # test's minute; the limits themselves are tested in test_shared_limit and test_dispatch.
    settings = service_settings(
        tmp_path, url, oracle_allowed_endpoints=allowed, rate_limit_customvision=100.0
    )
    workers = start_workers(settings, 1, tmp_path) if backend == "postgres" else []
    try:
        with service(settings) as (client, headers):
            ds = upload(client, headers, small_npz, "digits.npz")
            assert ds["n_samples"] == 36 and ds["classes"] == ["digit0", "digit1", "digit2"]
            creds = {}
            for provider, secret in (("clarifai", CLARIFAI_KEY), ("customvision", CV_KEY)):
                r = client.post(
                    "/v1/credentials",
                    headers=headers,
                    json={"provider": provider, "secret": secret},
                )
                assert r.status_code == 201 and secret not in r.text
                creds[provider] = r.json()["id"]
            ids = {}
            for name, oracle in oracle_specs(clarifai, cv, creds).items():
                spec = {"dataset_id": ds["id"], "oracle": oracle, **SMALL_RUN}
                ids[name] = post_job(client, headers, spec)
            jobs = {name: wait_final(client, headers, jid) for name, jid in ids.items()}
            for name, job in jobs.items():
                assert job["status"] == "succeeded", (name, job)
                assert job["progress"] == {"iteration": 6, "iterations": 6}
                assert 0 < job["spend"]["queries"] <= 3000
                assert 0.0 <= job["result"]["test_accuracy"] <= 1.0
            spend = client.get("/v1/spend", headers=headers).json()
            assert spend["total"]["queries"] == sum(j["spend"]["queries"] for j in jobs.values())
            # The ledger's totals equal what the fake providers themselves received.
            c_counts = clarifai.counts(CLARIFAI_KEY)
            assert spend["by_oracle"]["clarifai"]["queries"] == c_counts.billable
            assert spend["by_oracle"]["clarifai"]["requests"] == c_counts.requests
            v_counts = cv.counts(CV_KEY)
            assert spend["by_oracle"]["customvision"]["queries"] == v_counts["answered"]
            assert spend["by_oracle"]["customvision"]["requests"] == v_counts["requests"]
            # Program download, as npz and as png, and predictions with it.
            for jid in ids.values():
                prog = client.get(f"/v1/jobs/{jid}/program", headers=headers)
                assert prog.status_code == 200
                arrays = ProgramFile.load(prog.content).arrays
                assert arrays["P"].shape == (64, 64, 3)
                assert list(arrays["target_classes"]) == ds["classes"]
                drawn = client.get(f"/v1/jobs/{jid}/program?format=png", headers=headers)
                assert drawn.headers["content-type"] == "image/png"
                metrics = client.get(f"/v1/jobs/{jid}/metrics", headers=headers).json()
                its = [(m["half"], m["iteration"]) for m in metrics if m["kind"] == "iteration"]
                assert sorted(its) == [(h, i) for h in (0, 1) for i in range(1, 7)]
            before = client.get("/v1/spend", headers=headers).json()["total"]["queries"]
            pred = client.post(
                f"/v1/jobs/{ids['customvision']}/predict",
                headers=headers,
                files=[("files", (f"x{i}.png", png(20, seed=i))) for i in range(3)],
            )
            assert pred.status_code == 200, pred.text
            assert {p["class"] for p in pred.json()["predictions"]} <= set(ds["classes"])
            after = client.get("/v1/spend", headers=headers).json()["total"]["queries"]
            assert after == before + 3
            # No secret in any response so far, nor in any log line.
            for job in jobs.values():
                assert CLARIFAI_KEY not in str(job) and CV_KEY not in str(job)
    finally:
        for w in workers:
            w.terminate()
            w.wait(timeout=20)
    logs = capfd.readouterr()
    worker_logs = "".join(p.read_text() for p in tmp_path.glob("worker*.log"))
    for secret in (CLARIFAI_KEY, CV_KEY):
        assert secret not in logs.out + logs.err + worker_logs
