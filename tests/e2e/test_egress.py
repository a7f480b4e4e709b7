"""Where a tenant's cloud oracle may connect. By default only the providers' public hosts
over HTTPS: an endpoint on loopback, a private or a link-local address (or a name resolving
to one) is refused when the job is submitted (422 naming ``oracle.endpoint``), unless the
operator allowed it in ``REPROGRAM_ORACLE_ALLOWED_ENDPOINTS``. Jobs aimed at an allowed
endpoint that redirects, or answers with text of its own, fail without following the
redirect and without that text in the job's error."""

from __future__ import annotations

import json

import pytest

from adapters import egress
from tests.fakes.customvision import MODERATION_PROJECT, PUBLISHED
from tests.helpers import Listener, api, bearer, service_settings, upload, wait_final

KEY = "cv-egress-key-41d9c7"
SECRETISH = "sk-live-5e4d3c2b1a-from-an-internal-service"


def job_spec(ds: str, cred: str, kind: str, endpoint: str) -> dict:
    oracle = {"kind": kind, "credential_id": cred, "endpoint": endpoint}
    if kind == "customvision":
        oracle |= {"project_id": MODERATION_PROJECT, "published_name": PUBLISHED}
    return {
        "dataset_id": ds,
        "oracle": oracle,
        "program": {"input_size": 32, "target_size": 16},
        "optimizer": {"iterations": 2, "q": 1, "batch_size": 4},
        "budget": {"max_queries": 500},
    }


def tenant_setup(client, headers, small_npz) -> tuple[str, dict[str, str]]:
    ds = upload(client, headers, small_npz)["id"]
    creds = {
        kind: client.post(
            "/v1/credentials", headers=headers, json={"provider": kind, "secret": KEY}
        ).json()["id"]
        for kind in ("clarifai", "customvision")
    }
    return ds, creds


INSIDE = {
    "loopback": ("customvision", "http://127.0.0.1:8090"),
    "loopback over https": ("customvision", "https://127.0.0.1"),
    "private": ("customvision", "https://10.0.0.1"),
    "cloud metadata": ("customvision", "http://169.254.169.254"),
    "a name for loopback": ("customvision", "http://localhost:8090"),
    "loopback as one number": ("clarifai", "https://2130706433"),
    "clarifai on loopback": ("clarifai", "http://127.0.0.1:50051"),
    "clarifai on IPv6 loopback": ("clarifai", "http://[::1]:50051"),
    "clarifai on metadata": ("clarifai", "https://169.254.169.254"),
    "the provider on another port": ("clarifai", "https://api.clarifai.com:8443"),
}


@pytest.mark.parametrize("case", INSIDE)
def test_a_tenant_cannot_aim_an_oracle_inside(tmp_path, small_npz, case):
    kind, endpoint = INSIDE[case]
    with api(service_settings(tmp_path), run_jobs=False) as (client, db):
        headers = bearer(db, "acme")
        ds, creds = tenant_setup(client, headers, small_npz)
        r = client.post("/v1/jobs", headers=headers, json=job_spec(ds, creds[kind], kind, endpoint))
        assert r.status_code == 422, r.text
        [error] = r.json()["detail"]
        assert error["field"] == "oracle.endpoint"
        assert "REPROGRAM_ORACLE_ALLOWED_ENDPOINTS" in error["message"]
        assert client.get("/v1/jobs", headers=headers).json() == []  # nothing was created


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.1", "169.254.169.254", "::1"])
def test_a_provider_name_resolving_inside_is_refused(tmp_path, small_npz, monkeypatch, address):
    monkeypatch.setattr(egress, "resolve", lambda host, port: ["20.1.2.3", address])
    with api(service_settings(tmp_path), run_jobs=False) as (client, db):
        headers = bearer(db, "acme")
        ds, creds = tenant_setup(client, headers, small_npz)
        spec = job_spec(
            ds, creds["customvision"], "customvision", "https://acme.cognitiveservices.azure.com"
        )
        r = client.post("/v1/jobs", headers=headers, json=spec)
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["field"] == "oracle.endpoint"
        assert "resolves to a" in r.json()["detail"][0]["message"]
        # The same name resolving to public addresses only is the provider's: accepted.
        monkeypatch.setattr(egress, "resolve", lambda host, port: ["20.1.2.3"])
        assert client.post("/v1/jobs", headers=headers, json=spec).status_code == 202


def test_the_operator_allows_endpoints_the_tenants_cannot(tmp_path, small_npz):
    allowed = ["127.0.0.1:8090", "localhost:8090", "http://[::1]:50051"]
    settings = service_settings(tmp_path, oracle_allowed_endpoints=allowed)
    with api(settings, run_jobs=False) as (client, db):
        headers = bearer(db, "acme")
        ds, creds = tenant_setup(client, headers, small_npz)
        for kind, endpoint, status in (
            ("customvision", "http://127.0.0.1:8090", 202),
            ("customvision", "http://localhost:8090/prefix", 202),
            ("clarifai", "http://[::1]:50051", 202),
            ("customvision", "http://127.0.0.1:8091", 422),  # another port: not allowed
            ("clarifai", "https://[::1]:50051", 422),  # the entry names http
        ):
            spec = job_spec(ds, creds[kind], kind, endpoint)
            r = client.post("/v1/jobs", headers=headers, json=spec)
            assert r.status_code == status, (endpoint, r.text)


@pytest.mark.slow
def test_redirects_and_the_endpoints_words_stay_out_of_jobs(tmp_path, small_npz):
    """Two allowed endpoints on loopback: one redirects (307) to a third listener, one
    refuses with a body and a reason phrase of its own. Both jobs fail; the redirect target
    never hears from the worker (nor gets the key); no error carries the endpoint's text."""
    body = json.dumps({"error": {"code": "Unauthorized", "message": f"no: {SECRETISH}"}}).encode()
    with (
        Listener(200, b"{}") as target,
        Listener(307, b"", {"Location": f"{target.url}/collect"}) as redirector,
        Listener(403, body, {"Content-Type": "application/json"}, reason=SECRETISH) as talker,
    ):
        allowed = [redirector.url, talker.url, target.url]
        settings = service_settings(tmp_path, oracle_allowed_endpoints=allowed)
        with api(settings) as (client, db):
            headers = bearer(db, "acme")
            ds, creds = tenant_setup(client, headers, small_npz)
            ids = {}
            for name, listener in (("redirect", redirector), ("talk", talker)):
                spec = job_spec(ds, creds["customvision"], "customvision", listener.url)
                r = client.post("/v1/jobs", headers=headers, json=spec)
                assert r.status_code == 202, r.text
                ids[name] = r.json()["id"]
            jobs = {
                name: wait_final(client, headers, jid, timeout=120) for name, jid in ids.items()
            }
            texts = [client.get(f"/v1/jobs/{jid}", headers=headers).text for jid in ids.values()]
    assert jobs["redirect"]["status"] == "failed", jobs["redirect"]
    assert "HTTP 307" in jobs["redirect"]["error"] and "not followed" in jobs["redirect"]["error"]
    assert target.requests == []  # the redirect was not followed, with or without the key
    assert redirector.requests and redirector.requests[0][2]["prediction-key"] == KEY
    assert jobs["talk"]["status"] == "failed", jobs["talk"]
    assert jobs["talk"]["error"].startswith("AuthFailed: Custom Vision answered HTTP 403")
    for text in texts:
        assert SECRETISH not in text and KEY not in text
