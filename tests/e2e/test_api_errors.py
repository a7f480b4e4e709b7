"""Bad input at every endpoint: 401 without a valid token, 422 naming the field, 404 for
unknown ids, 400/413 naming the problem with an upload; never 500, and nothing stored (every
table and every file under the data directory compared before and after each request).

One service per backend (SQLite, PostgreSQL) serves the whole module; no job ever runs
(``run_jobs=False``, and no worker on PostgreSQL).
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from app.storage.db import Database
from app.storage.models import Base, Job
from tests.helpers import (
    World,
    add_credential,
    api,
    bearer,
    create_database,
    drop_database,
    give_program,
    png,
    post_job,
    service_settings,
    upload,
)

UPLOAD_LIMIT = 64 * 1024  # small, so that "oversize" is cheap to build
PREDICT_LIMIT = 4 * UPLOAD_LIMIT  # room for 257 small images (one too many)


def make_zip(entries: dict[str, bytes], compress: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip of ``entries``; a name ending in ``/`` is a folder entry."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compress) as zf:
        for name, data in entries.items():
            zf.writestr(zipfile.ZipInfo(name) if name.endswith("/") else name, data)
    return buf.getvalue()


def make_npz(compressed: bool = False, **arrays: Any) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def world(request, tmp_path_factory, small_npz) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp(request.param)
    url = create_database() if request.param == "postgres" else None
    settings = service_settings(
        tmp, url, max_upload_bytes=UPLOAD_LIMIT, max_predict_bytes=PREDICT_LIMIT
    )
    try:
        with api(settings, run_jobs=False, raise_server_exceptions=False) as (client, db):
            w = World(client, db, settings, bearer(db, "acme"))
            ds = upload(client, w.headers, small_npz, "d.npz")
            w.ids["ds"] = ds["id"]
            w.ids["cred"] = add_credential(client, w.headers, "k1")
            torch = {"dataset_id": w.ids["ds"], "oracle": {"kind": "torch"}}
            cloud = {
                "dataset_id": w.ids["ds"],
                "oracle": {"kind": "clarifai", "credential_id": w.ids["cred"]},
            }
            for name, spec in (("queued", torch), ("done", torch), ("cloud", cloud)):
                w.ids[name] = post_job(client, w.headers, spec)
            give_program(db, settings.data_dir, w.ids["done"], ds["classes"])
            yield w
    finally:
        if url is not None:
            drop_database(url)


def snapshot(world: World) -> tuple[dict[str, list[str]], list[tuple[str, int]]]:
    """Every row of every table, and every file under the data directory (the SQLite
    database files aside: their size changes with reads)."""
    with world.db.engine.connect() as conn:
        rows = {
            t.name: sorted(repr(tuple(r)) for r in conn.execute(select(t)))
            for t in Base.metadata.sorted_tables
        }
    root = world.settings.data_dir
    files = sorted(
        (str(p.relative_to(root)), p.stat().st_size)
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith("reprogram.db")
    )
    return rows, files


def refused(
    world: World,
    method: str,
    path: str,
    status: int,
    *,
    field: str | None = None,
    says: str | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Send a request that must be refused with ``status`` and store nothing."""
    kwargs.setdefault("headers", world.headers)
    before = snapshot(world)
    r = world.client.request(method, path.format(**world.ids), **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    if field is not None:
        named = [e["field"] for e in body["detail"]]
        assert field in named, body
    if says is not None:
        assert says in json.dumps(body["detail"]), body
    assert snapshot(world) == before, "a refused request changed what is stored"
    return body


def refused_body(
    world: World, path: str, content: bytes, field: str, content_type: str = "application/json"
) -> dict[str, Any]:
    """POST ``content`` as it is to ``path``: refused with 422 naming ``field``, nothing
    stored."""
    headers = {**world.headers, "Content-Type": content_type}
    return refused(world, "POST", path, 422, field=field, content=content, headers=headers)


# --- 401: every endpoint, every way of not being authenticated -------------------------------

ENDPOINTS: dict[str, tuple[str, str, Callable[[dict[str, str]], dict[str, Any]]]] = {
    "upload": ("POST", "/v1/datasets", lambda ids: {"files": {"file": ("d.zip", b"PK")}}),
    "list datasets": ("GET", "/v1/datasets", lambda ids: {}),
    "get dataset": ("GET", "/v1/datasets/{ds}", lambda ids: {}),
    "delete dataset": ("DELETE", "/v1/datasets/{ds}", lambda ids: {}),
    "create credential": (
        "POST",
        "/v1/credentials",
        lambda ids: {"json": {"provider": "clarifai", "secret": "k"}},
    ),
    "list credentials": ("GET", "/v1/credentials", lambda ids: {}),
    "delete credential": ("DELETE", "/v1/credentials/{cred}", lambda ids: {}),
    "create job": (
        "POST",
        "/v1/jobs",
        lambda ids: {"json": {"dataset_id": ids["ds"], "oracle": {"kind": "torch"}}},
    ),
    "list jobs": ("GET", "/v1/jobs", lambda ids: {}),
    "get job": ("GET", "/v1/jobs/{queued}", lambda ids: {}),
    "cancel": ("POST", "/v1/jobs/{queued}/cancel", lambda ids: {}),
    "delete job": ("DELETE", "/v1/jobs/{done}", lambda ids: {}),
    "program": ("GET", "/v1/jobs/{done}/program", lambda ids: {}),
    "metrics": ("GET", "/v1/jobs/{done}/metrics", lambda ids: {}),
    "curve": ("GET", "/v1/jobs/{done}/curve", lambda ids: {}),
    "predict": (
        "POST",
        "/v1/jobs/{done}/predict",
        lambda ids: {"files": [("files", ("a.png", png()))]},
    ),
    "spend": ("GET", "/v1/spend", lambda ids: {}),
}
BAD_AUTH = {
    "no header": {},
    "unknown token": {"Authorization": "Bearer rp_not-a-token"},
    "basic auth": {"Authorization": "Basic YWxpY2U6cGFzc3dvcmQ="},
    "scheme only": {"Authorization": "Bearer"},
    "token without scheme": {"Authorization": "rp_not-a-token"},
}


@pytest.mark.parametrize("auth", BAD_AUTH)
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_without_a_valid_token_every_endpoint_answers_401(world, endpoint, auth):
    method, path, kwargs = ENDPOINTS[endpoint]
    before = snapshot(world)
    r = world.client.request(
        method, path.format(**world.ids), headers=BAD_AUTH[auth], **kwargs(world.ids)
    )
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == "Bearer"
    assert snapshot(world) == before


def test_the_same_requests_with_a_token_succeed(world):
    """The 401s above are about the token: with one, the read-only endpoints answer."""
    for name in ("list datasets", "get dataset", "list jobs", "get job", "program", "spend"):
        method, path, kwargs = ENDPOINTS[name]
        r = world.client.request(
            method, path.format(**world.ids), headers=world.headers, **kwargs(world.ids)
        )
        assert r.status_code == 200, (name, r.text)


# --- 422: the JSON bodies --------------------------------------------------------------------

NOT_JSON = {
    "truncated": b'{"provider": "clarifai"',
    "trailing comma": b'{"provider": "clarifai",}',
    "single quotes": b"{'provider': 'clarifai'}",
    "empty": b"",
    "a list": b'[{"provider": "clarifai"}]',
    "a string": b'"clarifai"',
    "null": b"null",
    "binary": b"\xff\xfe\x00garbage",
}


@pytest.mark.parametrize("path", ["/v1/credentials", "/v1/jobs"])
@pytest.mark.parametrize("body", NOT_JSON)
def test_a_body_that_is_not_a_json_object_is_422_naming_the_body(world, path, body):
    refused_body(world, path, NOT_JSON[body], "body")


@pytest.mark.parametrize("path", ["/v1/credentials", "/v1/jobs"])
def test_a_body_that_is_not_json_at_all_is_422(world, path):
    form = "application/x-www-form-urlencoded"
    refused_body(world, path, b"provider=clarifai&secret=k", "body", form)


def test_invalid_json_says_where(world):
    body = refused_body(world, "/v1/jobs", b'{\n  "seed": 1,\n  "oracle": }', "body")
    assert "invalid JSON" in body["detail"][0]["message"]
    assert "line 3" in body["detail"][0]["message"]


CREDENTIALS = {
    "unknown field": ({"provider": "clarifai", "secret": "k", "colour": "red"}, "colour"),
    "provider missing": ({"secret": "k"}, "provider"),
    "secret missing": ({"provider": "clarifai"}, "secret"),
    "unknown provider": ({"provider": "aws", "secret": "k"}, "provider"),
    "provider not a string": ({"provider": 5, "secret": "k"}, "provider"),
    "secret not a string": ({"provider": "clarifai", "secret": 5}, "secret"),
    "secret empty": ({"provider": "clarifai", "secret": ""}, "secret"),
    "secret too long": ({"provider": "clarifai", "secret": "k" * 5000}, "secret"),
    "name not a string": ({"provider": "clarifai", "secret": "k", "name": ["a"]}, "name"),
    "name too long": ({"provider": "clarifai", "secret": "k", "name": "n" * 201}, "name"),
    "NUL in name": ({"provider": "clarifai", "secret": "k", "name": "a\x00b"}, "name"),
}


@pytest.mark.parametrize("case", CREDENTIALS)
def test_bad_credentials_are_422_naming_the_field(world, case):
    body, name = CREDENTIALS[case]
    refused(world, "POST", "/v1/credentials", 422, field=name, json=body)


def torch_job(ids: dict[str, str], **fields: Any) -> dict[str, Any]:
    return {"dataset_id": ids["ds"], "oracle": {"kind": "torch"}, **fields}


def cloud(ids: dict[str, str], **oracle: Any) -> dict[str, Any]:
    return {"dataset_id": ids["ds"], "oracle": {"kind": "clarifai", **oracle}}


JOBS: dict[str, tuple[Callable[[dict[str, str]], dict[str, Any]], str]] = {
    # unknown fields, at every depth
    "unknown top-level field": (lambda i: torch_job(i, colour=1), "colour"),
    "unknown optimizer field": (lambda i: torch_job(i, optimizer={"nope": 1}), "optimizer.nope"),
    "unknown oracle field": (
        lambda i: {"dataset_id": i["ds"], "oracle": {"kind": "torch", "nope": 1}},
        "oracle.nope",
    ),
    # wrong types
    "seed a string": (lambda i: torch_job(i, seed="x"), "seed"),
    "seed a fraction": (lambda i: torch_job(i, seed=1.5), "seed"),
    "q a word": (lambda i: torch_job(i, optimizer={"q": "many"}), "optimizer.q"),
    "budget a string": (lambda i: torch_job(i, budget="lots"), "budget"),
    "dataset_id a number": (lambda i: {"dataset_id": 5, "oracle": {"kind": "torch"}}, "dataset_id"),
    "label a number": (
        lambda i: {"dataset_id": i["ds"], "oracle": {"kind": "torch", "labels": ["a", 1]}},
        "oracle.labels.1",
    ),
    "model a number": (
        lambda i: {"dataset_id": i["ds"], "oracle": {"kind": "torch", "model": 5}},
        "oracle.model",
    ),
    # out of range
    "negative seed": (lambda i: torch_job(i, seed=-1), "seed"),
    "seed beyond 32 bits": (lambda i: torch_job(i, seed=2**40), "seed"),
    "q zero": (lambda i: torch_job(i, optimizer={"q": 0}), "optimizer.q"),
    "lr huge": (lambda i: torch_job(i, optimizer={"lr": 1000}), "optimizer.lr"),
    "input size tiny": (lambda i: torch_job(i, program={"input_size": 8}), "program.input_size"),
    "target above input": (
        lambda i: torch_job(i, program={"input_size": 64, "target_size": 80}),
        "program",
    ),
    "no labels per class": (
        lambda i: torch_job(i, mapping={"labels_per_class": 0}),
        "mapping.labels_per_class",
    ),
    "unknown view": (lambda i: torch_job(i, mapping={"views": ["crop"]}), "mapping.views.0"),
    "a view twice": (lambda i: torch_job(i, mapping={"views": ["full"] * 2}), "mapping.views"),
    "a view without the learned read-out": (
        lambda i: torch_job(i, mapping={"method": "frequency", "views": ["full"]}),
        "mapping.views",
    ),
    "a step-size race without cross-fitting": (
        lambda i: torch_job(i, optimizer={"lr_race": [0.003]}, data={"validation": "holdout"}),
        "optimizer.lr_race",
    ),
    "a step-size race for CMA-ES": (
        lambda i: torch_job(i, optimizer={"estimator": "cma", "lr_race": [0.003]}),
        "optimizer.lr_race",
    ),
    "a CMA-ES population of one": (
        lambda i: torch_job(i, optimizer={"estimator": "cma", "q": 1}),
        "optimizer.q",
    ),
    "an iteration too large to hold": (
        lambda i: torch_job(i, optimizer={"q": 1000, "batch_size": 1024}),
        "optimizer.q",
    ),
    "gamma huge": (lambda i: torch_job(i, loss={"gamma": 11}), "loss.gamma"),
    "zero queries": (lambda i: torch_job(i, budget={"max_queries": 0}), "budget.max_queries"),
    "queries beyond 64 bits": (
        lambda i: torch_job(i, budget={"max_queries": 2**70}),
        "budget.max_queries",
    ),
    "negative cost": (lambda i: torch_job(i, budget={"max_cost_usd": -1}), "budget.max_cost_usd"),
    "fractions above 1": (
        lambda i: torch_job(i, data={"val_fraction": 0.6, "test_fraction": 0.6}),
        "data",
    ),
    # the oracle
    "oracle missing": (lambda i: {"dataset_id": i["ds"]}, "oracle"),
    "unknown oracle kind": (lambda i: {"dataset_id": i["ds"], "oracle": {"kind": "x"}}, "oracle"),
    "a TorchScript file over REST": (
        lambda i: {"dataset_id": i["ds"], "oracle": {"kind": "torch", "model": "net.pt"}},
        "oracle.model",
    ),
    "NUL in model": (
        lambda i: {"dataset_id": i["ds"], "oracle": {"kind": "torch", "model": "a\x00"}},
        "oracle.model",
    ),
    "cloud without credential": (lambda i: cloud(i), "oracle.credential_id"),
    "unknown credential": (lambda i: cloud(i, credential_id="cr_0000"), "oracle.credential_id"),
    "key from the environment": (
        lambda i: cloud(i, api_key_env="CLARIFAI_KEY"),
        "oracle.api_key_env",
    ),
    "endpoint not http": (
        lambda i: cloud(i, credential_id=i["cred"], endpoint="ftp://x"),
        "oracle.endpoint",
    ),
    "credential of another provider": (
        lambda i: {
            "dataset_id": i["ds"],
            "oracle": {
                "kind": "customvision",
                "project_id": "p",
                "published_name": "n",
                "endpoint": "https://cv.example.com",
                "credential_id": i["cred"],
            },
        },
        "oracle.credential_id",
    ),
    # the data set
    "dataset_id missing": (lambda i: {"oracle": {"kind": "torch"}}, "dataset_id"),
    "unknown dataset": (
        lambda i: {"dataset_id": "ds_0000000000000000", "oracle": {"kind": "torch"}},
        "dataset_id",
    ),
    "NUL in dataset_id": (
        lambda i: {"dataset_id": "ds_\x00", "oracle": {"kind": "torch"}},
        "dataset_id",
    ),
}


@pytest.mark.parametrize("case", JOBS)
def test_bad_job_specs_are_422_naming_the_field(world, case):
    build, name = JOBS[case]
    refused(world, "POST", "/v1/jobs", 422, field=name, json=build(world.ids))


@pytest.mark.parametrize(
    "raw,name",
    [
        ('"budget": {"max_cost_usd": Infinity}', "budget.max_cost_usd"),
        ('"optimizer": {"clip": Infinity}', "optimizer.clip"),
        ('"optimizer": {"lr": NaN}', "optimizer.lr"),
        ('"budget": {"max_queries": 1e400}', "budget.max_queries"),
    ],
)
def test_non_finite_numbers_are_422(world, raw, name):
    content = f'{{"dataset_id": "{world.ids["ds"]}", "oracle": {{"kind": "torch"}}, {raw}}}'
    refused_body(world, "/v1/jobs", content.encode(), name)


def test_a_valid_spec_is_accepted_so_the_refusals_are_about_the_fields(world):
    before = snapshot(world)
    r = world.client.post("/v1/jobs", headers=world.headers, json=torch_job(world.ids, seed=7))
    assert r.status_code == 202, r.text
    assert snapshot(world) != before  # the snapshot sees a stored job


def test_the_openapi_schema_documents_the_422_shape(world):
    schemas = world.client.get("/openapi.json").json()["components"]["schemas"]
    assert set(schemas["ValidationError"]["properties"]) == {"field", "message"}
    assert schemas["HTTPValidationError"]["properties"]["detail"]["items"] == {
        "$ref": "#/components/schemas/ValidationError"
    }


def test_query_parameters_are_checked(world):
    refused(world, "GET", "/v1/jobs/{done}/program?format=gif", 422, field="format")


# --- 404 / 409: ids ---------------------------------------------------------------------------

ID_PATHS = {
    "get dataset": ("GET", "/v1/datasets/{x}"),
    "delete dataset": ("DELETE", "/v1/datasets/{x}"),
    "delete credential": ("DELETE", "/v1/credentials/{x}"),
    "get job": ("GET", "/v1/jobs/{x}"),
    "cancel": ("POST", "/v1/jobs/{x}/cancel"),
    "delete job": ("DELETE", "/v1/jobs/{x}"),
    "program": ("GET", "/v1/jobs/{x}/program"),
    "metrics": ("GET", "/v1/jobs/{x}/metrics"),
    "curve": ("GET", "/v1/jobs/{x}/curve"),
    "predict": ("POST", "/v1/jobs/{x}/predict"),
}
UNKNOWN_IDS = {
    "well-formed": "job_0000000000000000",
    "short": "nope",
    "NUL": "%00",
    "very long": "x" * 3000,
    "non-ASCII": "j%C3%B6b",
    "a dataset's id": "{ds}",  # ids do not cross types
}


@pytest.mark.parametrize("unknown", UNKNOWN_IDS)
@pytest.mark.parametrize("endpoint", ID_PATHS)
def test_unknown_ids_are_404(world, endpoint, unknown):
    method, path = ID_PATHS[endpoint]
    x = UNKNOWN_IDS[unknown].format(**world.ids)
    if endpoint in ("get dataset", "delete dataset") and unknown == "a dataset's id":
        x = world.ids["queued"]
    files = [("files", ("a.png", png()))] if endpoint == "predict" else None
    body = refused(world, method, path.replace("{x}", x), 404, says="not found", files=files)
    assert len(json.dumps(body)) < 500  # an absurd id is not echoed back whole


def test_a_job_without_a_program_is_409(world):
    refused(world, "GET", "/v1/jobs/{queued}/program", 409, says="no program")
    files = [("files", ("a.png", png()))]
    refused(world, "POST", "/v1/jobs/{queued}/predict", 409, says="no program", files=files)


def test_a_credential_in_use_is_not_deleted(world):
    refused(world, "DELETE", "/v1/credentials/{cred}", 409, says=world.ids["cloud"])


def test_what_a_queued_job_needs_is_not_deleted(world):
    refused(world, "DELETE", "/v1/datasets/{ds}", 409, says=world.ids["queued"])
    refused(world, "DELETE", "/v1/jobs/{queued}", 409, says="cancel it first")


# --- predict: the images ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "files,status,says",
    [
        ([], 422, "files"),
        ([("files", (f"{i}.png", png())) for i in range(257)], 422, "files"),
        ([("files", ("a.png", png())), ("files", ("b.png", b"not an image"))], 400, "b.png"),
        ([("files", ("a.gif", png(fmt="GIF")))], 400, "GIF"),
        ([("files", ("a.png", b""))], 400, "a.png"),
        ([("files", ("big.png", b"\x89PNG" + bytes(PREDICT_LIMIT)))], 413, "larger than"),
    ],
    ids=["none", "too many", "not an image", "gif", "empty", "oversize"],
)
def test_bad_images_to_predict_are_refused_before_any_query(world, files, status, says):
    kwargs: dict[str, Any] = {"files": files} if files else {"data": {"x": "1"}}
    body = refused(world, "POST", "/v1/jobs/{done}/predict", status, says=says, **kwargs)
    if status == 422:
        assert "files" in [e["field"] for e in body["detail"]]


# --- uploads -----------------------------------------------------------------------------------

GOOD = {
    f"{c}/{i}.png": png(seed=seed)
    for seed, (c, i) in enumerate((c, i) for c in ("cats", "dogs") for i in "abc")
}


def bomb_zip() -> bytes:
    """A few kB that expand to 8 MB: a ratio far above the limit."""
    return make_zip({"cats/a.png": png(), "dogs/b.png": bytes(8 * 1024**2)})


def bomb_npz() -> bytes:
    x = np.zeros((500, 64, 64, 3), np.uint8)  # 6 MB of zeros in a few kB
    return make_npz(compressed=True, x=x, y=np.arange(500) % 2)


def mono_png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, format="PNG")
    return buf.getvalue()


def digits(**changes: Any) -> bytes:
    arrays: dict[str, Any] = {
        "x": np.zeros((4, 8, 8, 1), np.uint8),
        "y": np.array([0, 1, 0, 1]),
        "classes": np.array(["a", "b"]),
    }
    arrays.update(changes)
    return make_npz(**{k: v for k, v in arrays.items() if v is not None})


BAD_UPLOADS: dict[str, tuple[str, Callable[[], bytes], int, str]] = {
    "corrupt zip": ("d.zip", lambda: b"PK\x03\x04" + bytes(40) + b"garbage", 400, "zip"),
    "not a zip": ("d.zip", lambda: b"hello, world", 400, "zip"),
    "truncated zip": ("d.zip", lambda: make_zip(GOOD)[:-30], 400, "zip"),
    "../ in a path": ("d.zip", lambda: make_zip({**GOOD, "../evil.png": png()}), 400, "unsafe"),
    "absolute path": ("d.zip", lambda: make_zip({**GOOD, "/etc/evil.png": png()}), 400, "unsafe"),
    "backslash path": (
        "d.zip",
        lambda: make_zip({**GOOD, "cats\\..\\x.png": png()}),
        400,
        "unsafe",
    ),
    "zip bomb": ("d.zip", bomb_zip, 400, "zip bomb"),
    "text in a class": ("d.zip", lambda: make_zip({**GOOD, "cats/notes.txt": b"hi"}), 400, "notes"),
    "not really a png": (
        "d.zip",
        lambda: make_zip({**GOOD, "dogs/c.png": b"not an image"}),
        400,
        "dogs/c.png",
    ),
    "a gif": ("d.zip", lambda: make_zip({**GOOD, "dogs/c.png": png(fmt="GIF")}), 400, "GIF"),
    "pixel bomb image": (
        "d.zip",
        lambda: make_zip({**GOOD, "dogs/c.png": mono_png(7000)}),
        413,
        "too large",
    ),
    "empty class folder": ("d.zip", lambda: make_zip({**GOOD, "birds/": b""}), 400, "'birds'"),
    "class of litter only": (
        "d.zip",
        lambda: make_zip({**GOOD, "birds/.DS_Store": b"\x00"}),
        400,
        "'birds'",
    ),
    "empty split folder": (
        "d.zip",
        lambda: make_zip({"train/cats/a.png": png(), "train/dogs/b.png": png(), "test/": b""}),
        400,
        "'test/'",
    ),
    "split without train": (
        "d.zip",
        lambda: make_zip({"val/cats/a.png": png(), "test/dogs/b.png": png()}),
        400,
        "train/",
    ),
    "images outside class folders": (
        "d.zip",
        lambda: make_zip({**GOOD, "loose.png": png()}),
        400,
        "layout",
    ),
    "empty zip": ("d.zip", lambda: make_zip({}), 400, "no files"),
    "npz of floats": ("d.npz", lambda: digits(x=np.zeros((4, 8, 8, 1), np.float32)), 400, "uint8"),
    "npz without labels": ("d.npz", lambda: digits(y=None), 400, "'y'"),
    "npz labels of another length": ("d.npz", lambda: digits(y=np.array([0, 1])), 400, "y must"),
    "npz negative labels": ("d.npz", lambda: digits(y=np.array([0, -1, 0, 1])), 400, "negative"),
    "npz too few class names": ("d.npz", lambda: digits(classes=np.array(["a"])), 400, "class"),
    "npz empty class": (
        "d.npz",
        lambda: digits(classes=np.array(["a", "b", "c"])),
        400,
        "'c' has no images",
    ),
    "npz 2 channels": ("d.npz", lambda: digits(x=np.zeros((4, 8, 8, 2), np.uint8)), 400, "C in"),
    "npz of pickles": (
        "d.npz",
        lambda: digits(classes=np.array([{"a": 1}, {"b": 2}], dtype=object)),
        400,
        "npz",
    ),
    "npz bomb": ("d.npz", bomb_npz, 400, "zip bomb"),
    "npz that is not a zip": ("d.npz", lambda: b"\x93NUMPY not really", 400, "npz"),
    "empty file": ("d.npz", lambda: b"", 400, "npz"),
    "another format": ("d.tar", lambda: make_zip(GOOD), 400, ".zip"),
    "oversize": ("d.zip", lambda: make_zip(GOOD, zipfile.ZIP_STORED) * 200, 413, "larger than"),
}


@pytest.mark.parametrize("case", BAD_UPLOADS)
def test_bad_uploads_are_refused_naming_the_problem(world, case):
    name, build, status, says = BAD_UPLOADS[case]
    refused(world, "POST", "/v1/datasets", status, says=says, files={"file": (name, build())})


def test_a_good_upload_is_stored_so_the_refusals_are_about_the_content(world):
    before = snapshot(world)
    r = world.client.post(
        "/v1/datasets", headers=world.headers, files={"file": ("../../pets.zip", make_zip(GOOD))}
    )
    assert r.status_code == 201, r.text
    assert r.json()["classes"] == ["cats", "dogs"]
    assert r.json()["filename"] == "pets.zip"  # no folders from the client's name
    rows, files = snapshot(world)
    assert len(rows["datasets"]) == len(before[0]["datasets"]) + 1
    assert len(files) == len(before[1]) + 1


def test_a_failed_insert_leaves_no_file_behind(world, monkeypatch):
    """Fault injection: the dataset row cannot be written (its tenant vanished), after the
    file was. The request fails and takes the file back."""
    import app.data.store as service

    real = service.store_upload

    def orphan(*args: Any, **kwargs: Any) -> Any:
        row = real(*args, **kwargs)
        row.tenant_id = "tn_vanished"
        return row

    monkeypatch.setattr(service, "store_upload", orphan)
    before = snapshot(world)
    r = world.client.post(
        "/v1/datasets", headers=world.headers, files={"file": ("pets.zip", make_zip(GOOD))}
    )
    assert r.status_code == 500
    assert snapshot(world) == before


# --- the queue ----------------------------------------------------------------------------------


class CheckingQueue:
    """Stands in for procrastinate: records whether the job row was committed (visible to
    another connection) when the job was deferred, and can be down."""

    def __init__(self, db: Database, down: bool = False) -> None:
        self.db, self.down, self.visible = db, down, []

    def configure_task(self, name: str) -> CheckingQueue:
        assert name == "run_job"
        return self

    def defer(self, *, job_id: str) -> None:
        with self.db.session() as s:
            self.visible.append(s.get(Job, job_id) is not None)
        if self.down:
            raise ConnectionError("queue down")


def test_a_job_is_committed_before_it_is_queued(world, monkeypatch):
    queue = CheckingQueue(world.db)
    monkeypatch.setattr(world.client.app.state.services, "queue", queue)
    r = world.client.post("/v1/jobs", headers=world.headers, json=torch_job(world.ids))
    assert r.status_code == 202, r.text
    assert queue.visible == [True]


def test_a_job_the_queue_refuses_is_not_kept(world, monkeypatch):
    queue = CheckingQueue(world.db, down=True)
    monkeypatch.setattr(world.client.app.state.services, "queue", queue)
    body = refused(world, "POST", "/v1/jobs", 503, says="queue", json=torch_job(world.ids))
    assert queue.visible == [True]
    assert "queue down" not in json.dumps(body)
