"""POST /v1/jobs refuses a data set too small to validate, naming the minimum, before
anything runs (issue 9); the plan's minimum budget counts the validation it will do."""

from __future__ import annotations

from tests.helpers import service, service_settings, split_digits_npz, upload


def test_a_class_too_small_to_validate_is_refused_at_post(tmp_path):
    with service(service_settings(tmp_path), run_jobs=False) as (client, h):
        ds = upload(client, h, split_digits_npz([6, 1, 6]))
        r = client.post(
            "/v1/jobs",
            headers=h,
            json={"dataset_id": ds["id"], "oracle": {"kind": "torch"}},
        )
        assert r.status_code == 422, r.text
        (error,) = r.json()["detail"]
        assert error["field"] == "dataset_id"
        assert "class '1' has 1 labelled image" in error["message"]
        assert "at least 2 per class" in error["message"]


def test_the_minimum_budget_includes_the_held_out_validation(tmp_path):
    """10 training images per class, no val/, data.validation 'holdout': 6 are held out;
    the minimum is every image once (24 training, 6 validation, 24 test)."""
    with service(service_settings(tmp_path), run_jobs=False) as (client, h):
        ds = upload(client, h, split_digits_npz([10, 10, 10]))
        job = {
            "dataset_id": ds["id"],
            "oracle": {"kind": "torch"},
            "data": {"validation": "holdout"},
        }
        r = client.post("/v1/jobs", headers=h, json=job | {"budget": {"max_queries": 53}})
        assert r.status_code == 422, r.text
        assert "the minimum is 54 queries" in r.json()["detail"][0]["message"]
        r = client.post("/v1/jobs", headers=h, json=job | {"budget": {"max_queries": 54}})
        assert r.status_code == 202, r.text


def test_cross_fitted_programs_are_accepted_and_cost_the_probe_at_least(tmp_path):
    """data.validation 'cross_fit' (the default here): nothing held out; its minimum is the
    probe's (every image once), and it needs the learned read-out."""
    with service(service_settings(tmp_path), run_jobs=False) as (client, h):
        ds = upload(client, h, split_digits_npz([10, 10, 10]))
        job = {
            "dataset_id": ds["id"],
            "oracle": {"kind": "torch"},
            "data": {"validation": "cross_fit"},
        }
        r = client.post("/v1/jobs", headers=h, json=job | {"budget": {"max_queries": 53}})
        assert r.status_code == 422, r.text
        assert "the minimum is 54 queries" in r.json()["detail"][0]["message"]
        r = client.post("/v1/jobs", headers=h, json=job | {"budget": {"max_queries": 54}})
        assert r.status_code == 202, r.text
        r = client.post("/v1/jobs", headers=h, json=job | {"mapping": {"method": "frequency"}})
        assert r.status_code == 422, r.text
        assert "cross_fit scores programs through the learned read-out" in r.text


def test_a_service_job_that_cannot_beat_the_probe_returns_it_and_says_so(tmp_path):
    """Through the service: the job stops early, succeeds, reports what it did not spend in
    its result and in the job's choices, and serves the probe as its program (P = 0)."""
    import io

    import numpy as np

    from tests.helpers import post_job, small_torch_job, wait_final

    with service(service_settings(tmp_path)) as (client, h):
        ds = upload(client, h, split_digits_npz([10, 10, 10]))
        job = wait_final(client, h, post_job(client, h, small_torch_job(ds["id"], 20_000)))
        assert job["status"] == "succeeded", job["error"]
        result = job["result"]
        assert result["returned"] == "linear_probe" and result["stopped_early"]
        assert result["unspent_queries"] == 20_000 - job["spend"]["queries"] > 19_000
        assert any(c.startswith("Stopped early after iteration 0") for c in job["choices"])
        assert result["validation"]["method"] == "cross_fit"  # the default without val/
        program = client.get(f"/v1/jobs/{job['id']}/program", headers=h)
        with np.load(io.BytesIO(program.content)) as npz:
            assert not npz["P"].any() and str(npz["classifier"]) == "readout"
