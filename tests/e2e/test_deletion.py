"""Owners delete what they stored: a credential (its secret is erased; the jobs that used it
keep their history), a finished job (its files, checkpoint, metrics, spec and results; its
spend stays in /v1/spend), a data set (its file). Anything a queued or running job still
needs answers 409 naming the job; another tenant's ids answer 404. On SQLite and PostgreSQL;
no job runs (``run_jobs=False``): finished jobs are made by hand, as a worker leaves them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update

from app.storage.models import Checkpoint, Credential, Dataset, Job, LedgerEntry, MetricRow
from tests.helpers import add_credential, api, bearer, give_program, png, post_job, upload

SECRET = "sk-live-deletion-test-0a9b8c7d"


def finish_with_history(db, data_dir, job_id: str, tenant_id: str, classes: list[str]) -> None:
    """What a worker leaves behind: a program file, a checkpoint, metrics rows, ledger rows."""
    give_program(db, data_dir, job_id, classes)
    with db.session() as s:
        s.add(Checkpoint(job_id=job_id, iteration=3, state=b"state"))
        for seq in range(3):
            s.add(MetricRow(job_id=job_id, seq=seq, row={"iteration": seq}))
        for answered in (30, 12):
            s.add(
                LedgerEntry(
                    job_id=job_id, tenant_id=tenant_id, provider="clarifai", purpose="train",
                    images=answered, answered=answered, outcome="ok",
                    cost_usd=answered * 0.0012, seconds=0.1,
                )
            )  # fmt: skip
        s.execute(update(Job).where(Job.id == job_id).values(queries=42, result={"x": 1}))


def rows(db, model: Any, job_id: str) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(model).where(model.job_id == job_id))


def test_owners_delete_credentials_jobs_and_data_sets(settings, small_npz):
    with api(settings, run_jobs=False, raise_server_exceptions=False) as (client, db):
        a, b = bearer(db, "acme"), bearer(db, "globex")
        ds = upload(client, a, small_npz)
        cred = add_credential(client, a, SECRET)
        cloud = {"dataset_id": ds["id"], "oracle": {"kind": "clarifai", "credential_id": cred}}
        queued = post_job(client, a, cloud)
        done = post_job(client, a, cloud)
        with db.session() as s:
            acme = s.get_one(Job, done).tenant_id
        finish_with_history(db, settings.data_dir, done, acme, ds["classes"])
        spend = client.get("/v1/spend", headers=a).json()
        assert spend["total"]["queries"] == 42 and set(spend["by_job"]) == {done}
        artifacts = settings.data_dir / "artifacts" / done
        stored = settings.data_dir / "datasets" / f"{ds['id']}.npz"
        assert (artifacts / "program.npz").is_file() and stored.is_file()

        # Another tenant: 404 for every one of acme's ids, and nothing changes.
        for path in (f"/v1/credentials/{cred}", f"/v1/jobs/{done}", f"/v1/datasets/{ds['id']}"):
            r = client.delete(path, headers=b)
            assert r.status_code == 404 and "not found" in r.json()["detail"], path

        # In use by a queued job: 409 naming it, and the job is not touched.
        for path in (f"/v1/credentials/{cred}", f"/v1/datasets/{ds['id']}", f"/v1/jobs/{queued}"):
            r = client.delete(path, headers=a)
            assert r.status_code == 409 and queued in r.json()["detail"], (path, r.text)
        with db.session() as s:  # a running job likewise
            s.execute(update(Job).where(Job.id == queued).values(status="running"))
        r = client.delete(f"/v1/jobs/{queued}", headers=a)
        assert r.status_code == 409 and "cancel it first" in r.json()["detail"]
        with db.session() as s:
            s.execute(update(Job).where(Job.id == queued).values(status="queued"))
        assert client.post(f"/v1/jobs/{queued}/cancel", headers=a).json()["status"] == "cancelled"

        # The credential: its secret is erased; the jobs that used it still name it.
        assert client.delete(f"/v1/credentials/{cred}", headers=a).status_code == 204
        assert client.get("/v1/credentials", headers=a).json() == []
        assert client.delete(f"/v1/credentials/{cred}", headers=a).status_code == 404
        with db.session() as s:
            row = s.get_one(Credential, cred)
            assert row.ciphertext == b"" and row.deleted_at is not None and row.name is None
            assert s.get_one(Job, done).credential_id == cred
        assert client.get(f"/v1/jobs/{done}", headers=a).json()["status"] == "succeeded"
        r = client.post(f"/v1/jobs/{done}/predict", headers=a, files=[("files", ("a.png", png()))])
        assert r.status_code == 409 and "credential was deleted" in r.json()["detail"]
        r = client.post("/v1/jobs", headers=a, json=cloud)
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "oracle.credential_id"

        # The data set: its file goes; the finished job keeps its program.
        assert client.delete(f"/v1/datasets/{ds['id']}", headers=a).status_code == 204
        assert not stored.exists()
        assert client.get(f"/v1/datasets/{ds['id']}", headers=a).status_code == 404
        assert client.get("/v1/datasets", headers=a).json() == []
        assert client.get(f"/v1/jobs/{done}/program", headers=a).status_code == 200
        torch = {"dataset_id": ds["id"], "oracle": {"kind": "torch"}}
        r = client.post("/v1/jobs", headers=a, json=torch)
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "dataset_id"
        with db.session() as s:
            assert s.get_one(Dataset, ds["id"]).classes == []

        # The finished job: files, checkpoint, metrics, results go; its spend stays.
        assert client.delete(f"/v1/jobs/{done}", headers=a).status_code == 204
        assert not artifacts.exists()
        assert rows(db, Checkpoint, done) == 0 and rows(db, MetricRow, done) == 0
        assert rows(db, LedgerEntry, done) == 2  # billing history
        for path in ("", "/program", "/metrics", "/curve"):
            assert client.get(f"/v1/jobs/{done}{path}", headers=a).status_code == 404, path
        assert client.delete(f"/v1/jobs/{done}", headers=a).status_code == 404
        assert [j["id"] for j in client.get("/v1/jobs", headers=a).json()] == [queued]
        assert client.get("/v1/jobs", headers=a).headers["X-Total-Count"] == "1"
        assert client.get("/v1/spend", headers=a).json() == spend
        with db.session() as s:
            job = s.get_one(Job, done)
            assert job.spec == {} and job.result is None and job.program_path is None
            assert job.queries == 42 and job.deleted_at is not None

        # The cancelled job can go too; then acme has nothing left to list.
        assert client.delete(f"/v1/jobs/{queued}", headers=a).status_code == 204
        assert client.get("/v1/jobs", headers=a).json() == []
        with db.session() as s:  # and the secret is nowhere in the database
            everything = [repr(tuple(r)) for t in (Credential, Job) for r in s.execute(select(t))]
    assert not any(SECRET in text for text in everything)


def test_the_openapi_document_lists_the_delete_statuses(settings):
    with api(settings, run_jobs=False) as (client, _):
        paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/v1/credentials/{credential_id}",
        "/v1/jobs/{job_id}",
        "/v1/datasets/{dataset_id}",
    ):
        assert {"204", "404", "409"} <= set(paths[path]["delete"]["responses"]), path
