"""Several API processes on one database: a token revoked with ``reprogram token revoke`` is
refused at once by every one of them (no cache window), ``serve --workers 2`` shares one port
between processes, and its ``/metrics`` counts the requests of both. Real processes."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.helpers import digits_npz
from tests.live import cli, live_server, server_env

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def test_a_revoked_token_is_refused_at_once_by_every_process(tmp_path: Path, pg_url: str) -> None:
    production = {
        "REPROGRAM_DATABASE_URL": pg_url,
        "REPROGRAM_SECRET_KEY": "k",
        "REPROGRAM_MODE": "production",
    }
    env = server_env(tmp_path, env=production)
    token = cli(["token", "create", "--tenant", "acme"], env).splitlines()[-1]
    spare = cli(["token", "create", "--tenant", "acme"], env).splitlines()[-1]
    headers = {"Authorization": f"Bearer {token}"}
    with (
        live_server(tmp_path, env=production) as a,
        live_server(tmp_path, env=production, args=("--workers", "2")) as b,
    ):
        ds = httpx.post(
            f"{a.url}/v1/datasets",
            headers=headers,
            files={"file": ("d.npz", digits_npz())},
            timeout=60,
        ).json()["id"]
        job = httpx.post(
            f"{a.url}/v1/jobs",
            headers=headers,
            json={"dataset_id": ds, "oracle": {"kind": "torch"}},
        ).json()["id"]
        paths = (f"/v1/jobs/{job}", "/v1/jobs", "/v1/spend")
        with httpx.Client() as client:  # keep-alive: the same processes that answered before

            def statuses() -> set[int]:
                return {
                    client.get(f"{srv.url}{p}", headers=headers).status_code
                    for srv in (a, b)
                    for p in paths
                    for _ in range(4)  # b's two processes
                }

            assert statuses() == {200}
            listed = cli(["token", "list", "--tenant", "acme"], env)
            assert token[-4:] in listed and token[:-4] not in listed and spare[:-4] not in listed
            assert "revoked 1 token" in cli(["token", "revoke", token], env)
            assert statuses() == {401}
            # The other token still works; --tenant revokes it too.
            other = {"Authorization": f"Bearer {spare}"}
            assert client.get(f"{b.url}/v1/jobs/{job}", headers=other).status_code == 200
            assert "revoked 1 token" in cli(["token", "revoke", "--tenant", "acme"], env)
            assert client.get(f"{b.url}/v1/jobs/{job}", headers=other).status_code == 401

            # /metrics of the two-process server counts what both processes answered.
            text = client.get(f"{b.url}/metrics").text
        counted = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("reprogram_http_request_duration_seconds_count{")
            and 'route="/v1/jobs/{job_id}"' in line
        )
        assert counted >= 2 * 4 + 2  # 200s and 401s from both processes
        assert 'reprogram_jobs{status="queued"} 1.0' in text
