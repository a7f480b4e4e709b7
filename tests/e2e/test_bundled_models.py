"""POST /v1/jobs takes either bundled ImageNet model, and runs the one it was given; any other
model (a TorchScript path on the server's disk) stays `reprogram train`'s alone."""

from __future__ import annotations

import pytest

from app.storage.db import Database
from app.storage.models import Job
from tests.helpers import (
    post_job,
    service,
    service_settings,
    small_torch_job,
    split_digits_npz,
    upload,
    wait_final,
)


def test_a_service_job_runs_the_larger_bundled_model(tmp_path):
    settings = service_settings(tmp_path)
    with service(settings) as (client, h):
        ds = upload(client, h, split_digits_npz([6, 6, 6]))
        spec = small_torch_job(ds["id"], 400, model="efficientnet-lite2")
        job = wait_final(client, h, post_job(client, h, spec))
        assert job["status"] == "succeeded", job["error"]
    with Database(settings.db_url).session() as s:
        stored = s.get(Job, job["id"])
        assert stored is not None and stored.resolved_spec is not None
        assert stored.resolved_spec["oracle"]["model"] == "efficientnet-lite2"
        assert 0 < job["spend"]["queries"] <= 400


@pytest.mark.parametrize("model", ["efficientnet-lite9", "/etc/passwd", "net.pt"])
def test_a_model_that_is_not_bundled_is_refused(tmp_path, model):
    with service(service_settings(tmp_path), run_jobs=False) as (client, h):
        ds = upload(client, h, split_digits_npz([6, 6, 6]))
        spec = {"dataset_id": ds["id"], "oracle": {"kind": "torch", "model": model}}
        r = client.post("/v1/jobs", headers=h, json=spec)
        assert r.status_code == 422, r.text
        (error,) = r.json()["detail"]
        assert error["field"] == "oracle.model"
        assert "efficientnet-lite0, efficientnet-lite2" in error["message"]
