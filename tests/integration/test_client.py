"""The typed client (app.client) and `reprogram jobs` against a real `reprogram serve`."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from app.cli.main import app
from app.client import ApiError, AuthError, Client, Job
from app.jobs.artifacts import ProgramFile
from tests.live import SMALL_RUN, LiveServer, live_server

pytestmark = pytest.mark.slow
runner = CliRunner()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(tmp_path_factory.mktemp("live")) as live:
        yield live


def png(seed: int) -> bytes:
    img = np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def test_client_uploads_submits_waits_downloads_predicts(server, small_npz_path, tmp_path):
    token = server.token("client-acme")
    updates: list[Job] = []
    with Client(server.url, token) as rp:
        ds = rp.upload(small_npz_path)
        assert ds.id.startswith("ds_") and ds.n_samples == 36
        assert ds.classes == ["digit0", "digit1", "digit2"]
        job = rp.submit({"oracle": {"kind": "torch"}, **SMALL_RUN}, ds.id)
        assert job.status in ("queued", "running")
        done = rp.wait(job.id, updates.append, interval=0.5, timeout=180)
        assert done.status == "succeeded", done.error
        assert updates and updates[-1] == done  # called with each new state, the last one final
        assert (done.iteration, done.iterations) == (6, 6)
        assert 0 < done.queries <= 3000 and done.test_accuracy is not None
        path = rp.download(job.id, tmp_path / "program.npz")
        arrays = ProgramFile.load(path.read_bytes()).arrays
        assert arrays["P"].shape == (64, 64, 3)
        assert rp.download(job.id, tmp_path / "p.png", format="png").read_bytes()[:4] == (
            b"\x89PNG"
        )
        preds = rp.predict(job.id, [png(0), png(1)])
        assert [p["class"] in ds.classes for p in preds] == [True, True]
        rows = rp.metrics(job.id)
        its = [(r["half"], r["iteration"]) for r in rows if r["kind"] == "iteration"]
        assert sorted(its) == [(h, i) for h in (0, 1) for i in range(1, 7)]  # cross-fitted
        page = rp.jobs(limit=1)
        assert page.total == 1 and page.items[0].id == job.id
        assert rp.spend()["total"]["queries"] == done.queries + 2
        # A second job cancelled before it ends.
        big = {**SMALL_RUN, "optimizer": {**SMALL_RUN["optimizer"], "iterations": 500}}
        other = rp.submit({"oracle": {"kind": "torch"}, **big, "budget": {}}, ds.id)
        assert rp.cancel(other.id).status in ("cancelled", "queued", "running")
        assert rp.wait(other.id, interval=0.5, timeout=120).status == "cancelled"
        # Refusals carry the API's own message.
        with pytest.raises(ApiError) as err:
            rp.upload(b"not a zip", "bad.zip")
        assert err.value.status == 400 and "zip" in str(err.value).lower()
        with pytest.raises(ApiError) as err:
            rp.submit({"oracle": {"kind": "torch"}, "budget": {"max_queries": -1}}, ds.id)
        assert err.value.status == 422 and str(err.value).startswith("budget.max_queries: ")
        with pytest.raises(ApiError) as err:
            rp.job("job_0000000000000000")
        assert err.value.status == 404
        cred = rp.add_credential("clarifai", "secret-value-1", name="prod")
        assert [c["id"] for c in rp.credentials().items] == [cred]
        rp.delete_credential(cred)
        assert rp.credentials().total == 0
    with Client(server.url, "wrong-token") as rp, pytest.raises(AuthError) as err:
        rp.jobs()
    assert err.value.status == 401 and str(err.value) == "invalid token"
    # Another tenant sees none of it.
    with Client(server.url, server.token("client-other")) as rp:
        assert rp.jobs().total == 0
        with pytest.raises(ApiError) as err:
            rp.job(job.id)
        assert err.value.status == 404


def test_cli_submits_watches_and_downloads(server, small_npz_path, tmp_path, monkeypatch):
    token = server.token("cli-acme")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"oracle": {"kind": "torch"}, **SMALL_RUN}))
    sub = runner.invoke(
        app,
        [
            *("jobs", "submit", "--data", str(small_npz_path), "--config", str(spec)),
            *("--server", server.url, "--token", token),
        ],
    )
    assert sub.exit_code == 0, sub.output
    job_id = sub.output.strip().splitlines()[-1]
    assert job_id.startswith("job_") and "36 images" in sub.output
    # Server and token from the environment.
    monkeypatch.setenv("REPROGRAM_SERVER", server.url)
    monkeypatch.setenv("REPROGRAM_TOKEN", token)
    watch = runner.invoke(app, ["jobs", "watch", job_id])
    assert watch.exit_code == 0, watch.output
    assert "it 6/6" in watch.output and "succeeded" in watch.output
    assert "reprogrammed (this job)" in watch.output and "linear probe" in watch.output
    assert "chose" in watch.output  # the defaults' choices, as train prints them
    out = tmp_path / "prog.npz"
    dl = runner.invoke(app, ["jobs", "download", job_id, "--out", str(out)])
    assert dl.exit_code == 0, dl.output
    assert ProgramFile.load(out.read_bytes()).arrays["P"].shape == (64, 64, 3)
    listed = runner.invoke(app, ["jobs", "list"])
    assert listed.exit_code == 0 and job_id in listed.output
    # A stored data set named by id; the API's refusal is the message, exit 2.
    with Client() as rp:  # REPROGRAM_SERVER / REPROGRAM_TOKEN
        ds_id = rp.datasets().items[0].id
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"oracle": {"kind": "torch"}, "budget": {"max_queries": 0}}))
    r = runner.invoke(app, ["jobs", "submit", "--data", ds_id, "--config", str(bad)])
    assert r.exit_code == 2 and "budget.max_queries: " in r.output, r.output
    r = runner.invoke(app, ["jobs", "watch", "job_0000000000000000"])
    assert r.exit_code == 2 and "not found" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["jobs", "watch", job_id, "--token", "nope"])
    assert r.exit_code == 2 and "refused the token" in r.output
    monkeypatch.delenv("REPROGRAM_TOKEN")
    r = runner.invoke(app, ["jobs", "watch", job_id])
    assert r.exit_code == 2 and "REPROGRAM_TOKEN" in r.output
    r = runner.invoke(
        app, ["jobs", "watch", job_id, "--token", token, "--server", "http://127.0.0.1:9"]
    )
    assert r.exit_code == 2 and "cannot reach" in r.output
