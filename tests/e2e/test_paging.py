"""Paging of the list endpoints: ``limit``/``offset``, ``X-Total-Count``, stable order."""

from __future__ import annotations

from app.config.settings import Settings
from tests.helpers import service, upload


def test_lists_page_with_a_total(tmp_path, small_npz):
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path / 'paging.db'}",
        secret_key="paging-key",
    )
    with service(settings, run_jobs=False) as (client, headers):
        ds = [upload(client, headers, small_npz, f"d{i}.npz")["id"] for i in range(3)]
        jobs = []
        for i in range(5):
            r = client.post(
                "/v1/jobs",
                headers=headers,
                json={"dataset_id": ds[0], "oracle": {"kind": "torch"}, "seed": i},
            )
            assert r.status_code == 202, r.text
            jobs.append(r.json()["id"])
        creds = [
            client.post(
                "/v1/credentials",
                headers=headers,
                json={"provider": "clarifai", "secret": f"s{i}"},
            ).json()["id"]
            for i in range(3)
        ]

        def pages(path: str, limit: int) -> list[str]:
            seen, offset = [], 0
            while True:
                r = client.get(f"{path}?limit={limit}&offset={offset}", headers=headers)
                assert r.status_code == 200, r.text
                assert isinstance(r.json(), list) and len(r.json()) <= limit
                total = int(r.headers["X-Total-Count"])
                seen += [x["id"] for x in r.json()]
                offset += limit
                if offset >= total:
                    return seen

        assert pages("/v1/jobs", 2) == jobs[::-1]  # newest first, no repeats, none skipped
        assert pages("/v1/datasets", 2) == ds  # oldest first
        assert pages("/v1/credentials", 1) == creds
        # Defaults: the first 50; the total counts everything.
        r = client.get("/v1/jobs", headers=headers)
        assert len(r.json()) == 5 and r.headers["X-Total-Count"] == "5"
        r = client.get("/v1/jobs?offset=10", headers=headers)
        assert r.json() == [] and r.headers["X-Total-Count"] == "5"
        # Out of range: a 422 naming the parameter.
        for query, field in (("limit=0", "limit"), ("limit=201", "limit"), ("offset=-1", "offset")):
            r = client.get(f"/v1/jobs?{query}", headers=headers)
            assert r.status_code == 422 and r.json()["detail"][0]["field"] == field, r.text
        # Another tenant's lists are empty.
    with service(settings, run_jobs=False, tenant="other") as (client, other):
        for path in ("/v1/jobs", "/v1/datasets", "/v1/credentials"):
            r = client.get(path, headers=other)
            assert r.json() == [] and r.headers["X-Total-Count"] == "0"
