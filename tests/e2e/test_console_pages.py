"""The console's pages and files as the app serves them (no browser): shells without data,
locked down by their headers, files that ship in the package."""

from __future__ import annotations

import pytest

from app.config.settings import Settings
from tests.helpers import service


@pytest.fixture
def client(tmp_path):
    settings = Settings(
        data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path / 'console.db'}"
    )
    with service(settings, run_jobs=False) as (c, _):
        yield c


@pytest.mark.parametrize("path", ["/", "/signin", "/new", "/account", "/jobs/job_0123"])
def test_pages_are_shells_with_strict_headers(client, path):
    r = client.get(path)  # no token: the page itself holds nothing, its script asks /v1
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert '<script src="/static/console.js?v=' in r.text
    assert "<label" in r.text or path == "/"


def test_a_job_id_in_the_path_is_escaped(client):
    r = client.get('/jobs/"><img src=x onerror=alert(1)>')
    assert r.status_code == 200
    assert "<img src=x" not in r.text and "&#34;&gt;&lt;img src=x" in r.text


def test_static_files_and_the_vendored_chart_library(client):
    page = client.get("/jobs/job_1").text
    for name in ("console.js", "console.css", "vendor/uPlot.iife.min.js", "vendor/uPlot.min.css"):
        assert f"/static/{name}?v=" in page
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and len(r.content) > 500, name
    assert client.get("/static/../console.py").status_code == 404
    # The console is no part of the API's schema.
    assert not any(
        not p.startswith("/v1") and p != "/healthz" and p != "/readyz"
        for p in client.get("/openapi.json").json()["paths"]
    )
