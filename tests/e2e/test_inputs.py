"""Strict inputs and the limits on what a request may make the server decode, in process:
strict numbers and flags in the job spec, caps on strings, lists and bodies, answers that
quote at most an excerpt of the input, devices the machine has, data sets with enough
classes and images, budgets that cover the plan (refused at submission naming the
minimum), pixel budgets checked from headers before anything is decoded, and an OpenAPI
document that lists every status with its shape.

One service (SQLite, no job ever runs) serves the module; its pixel budgets are small so that
"too many pixels" is cheap to build.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import (
    World,
    add_credential,
    api,
    bearer,
    give_program,
    png,
    post_job,
    service_settings,
    upload,
)

UPLOAD_PIXELS = 20_000  # the small data set below holds 36 × 16 × 16 = 9,216
PREDICT_PIXELS = 20_000


@pytest.fixture(scope="module")
def world(tmp_path_factory, small_npz) -> Iterator[World]:
    settings = service_settings(
        tmp_path_factory.mktemp("inputs"),
        max_upload_pixels=UPLOAD_PIXELS,
        max_predict_pixels=PREDICT_PIXELS,
    )
    with api(settings, run_jobs=False, raise_server_exceptions=False) as (client, db):
        w = World(client, db, settings, bearer(db, "acme"))
        ds = upload(client, w.headers, small_npz, "d.npz")
        w.ids["ds"] = ds["id"]
        w.ids["done"] = post_job(client, w.headers, spec(w))
        give_program(db, settings.data_dir, w.ids["done"], ds["classes"])
        w.ids["cred"] = add_credential(client, w.headers, "k")
        yield w


def spec(world: World, **fields: Any) -> dict[str, Any]:
    return {"dataset_id": world.ids["ds"], "oracle": {"kind": "torch"}, **fields}


def fields_of(body: dict[str, Any]) -> list[str]:
    return [e["field"] for e in body["detail"]]


def make_zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def post_upload(world: World, name: str, content: bytes) -> Any:
    return world.client.post("/v1/datasets", headers=world.headers, files={"file": (name, content)})


# --- strict types -------------------------------------------------------------------------------

NOT_AN_INTEGER = {
    "true": True,
    "a string of digits": "300",
    "a float": 300.0,
    "a list": [300],
}


@pytest.mark.parametrize("value", NOT_AN_INTEGER)
@pytest.mark.parametrize(
    "where",
    ["budget.max_queries", "seed", "optimizer.q", "optimizer.iterations", "data.max_train"],
)
def test_an_integer_field_takes_only_an_integer(world, where, value):
    section, _, name = where.rpartition(".")
    body = spec(world, **({section: {name: NOT_AN_INTEGER[value]}} if section else {}))
    if not section:
        body[name] = NOT_AN_INTEGER[value]
    r = world.client.post("/v1/jobs", headers=world.headers, json=body)
    assert r.status_code == 422, r.text
    assert where in fields_of(r.json())


@pytest.mark.parametrize(
    "body,where",
    [
        ({"loss": {"class_balance": 1}}, "loss.class_balance"),
        ({"loss": {"class_balance": "true"}}, "loss.class_balance"),
        ({"data": {"baselines": 0}}, "data.baselines"),
        ({"optimizer": {"lr": "0.01"}}, "optimizer.lr"),
        ({"budget": {"max_cost_usd": True}}, "budget.max_cost_usd"),
        ({"loss": {"gamma": "2"}}, "loss.gamma"),
    ],
)
def test_flags_take_booleans_and_numbers_take_numbers(world, body, where):
    r = world.client.post("/v1/jobs", headers=world.headers, json=spec(world, **body))
    assert r.status_code == 422, r.text
    assert where in fields_of(r.json())


def test_a_float_field_takes_an_integer(world):
    """Strict, not pedantic: 5 is a number of dollars."""
    body = spec(world, budget={"max_cost_usd": 5, "max_queries": 5000}, seed=11)
    assert world.client.post("/v1/jobs", headers=world.headers, json=body).status_code == 202


# --- caps ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "oracle,where",
    [
        ({"kind": "torch", "labels": ["x"] * 10_001}, "oracle.labels"),
        ({"kind": "torch", "labels": ["x" * 201]}, "oracle.labels.0"),
        ({"kind": "torch", "labels": [""]}, "oracle.labels.0"),
        ({"kind": "clarifai", "model_id": "m" * 201}, "oracle.model_id"),
        ({"kind": "clarifai", "credential_id": "c" * 65}, "oracle.credential_id"),
        ({"kind": "torch", "model": "m" * 4097}, "oracle.model"),
    ],
)
def test_strings_and_lists_have_caps(world, oracle, where):
    r = world.client.post(
        "/v1/jobs", headers=world.headers, json={"dataset_id": world.ids["ds"], "oracle": oracle}
    )
    assert r.status_code == 422, r.text[:300]
    assert where in fields_of(r.json())


def test_a_dataset_id_beyond_any_real_one_is_refused_by_its_length(world):
    r = world.client.post(
        "/v1/jobs",
        headers=world.headers,
        json={"dataset_id": "d" * 65, "oracle": {"kind": "torch"}},
    )
    assert r.status_code == 422 and fields_of(r.json()) == ["dataset_id"]


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/credentials"])
def test_a_json_body_over_64_kib_is_413(world, path):
    body = spec(world, oracle={"kind": "torch", "labels": ["x" * 100] * 700})
    r = world.client.post(path, headers=world.headers, json=body)
    assert r.status_code == 413
    assert "REPROGRAM_MAX_JSON_BYTES" in r.json()["detail"]


# --- answers quote at most an excerpt -----------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"oracle": {"kind": "torch"}, "k" * 50_000: 1},  # an unknown field's name
        {"oracle": {"kind": "q" * 50_000}},  # a discriminator value pydantic quotes
        {"oracle": {"kind": "torch"}, "dataset_id": "ds_" + "x" * 60},  # an id quoted back
        {"oracle": {"kind": "torch", "device": "z" * 50_000}},
    ],
    ids=["field name", "oracle kind", "unknown id", "device"],
)
def test_a_refusal_quotes_no_more_than_an_excerpt(world, body):
    r = world.client.post("/v1/jobs", headers=world.headers, json=body)
    assert r.status_code == 422, r.text[:300]
    assert len(r.content) < 1000, r.text[:300]


def test_a_refused_archive_quotes_no_more_than_an_excerpt_of_a_name(world):
    evil = "../" + "a" * 5000 + ".png"
    r = post_upload(world, "d.zip", make_zip({"cats/a.png": png(), evil: png()}))
    assert r.status_code == 400
    assert "unsafe path" in r.json()["detail"] and len(r.content) < 1000


# --- devices ------------------------------------------------------------------------------------


def test_a_device_the_machine_lacks_is_refused_at_submission(world):
    missing = f"cuda:{torch.cuda.device_count()}"
    oracle = {"kind": "torch", "device": missing}
    r = world.client.post("/v1/jobs", headers=world.headers, json=spec(world, oracle=oracle))
    assert r.status_code == 422, r.text
    assert fields_of(r.json()) == ["oracle.device"]
    assert "does not exist here" in r.json()["detail"][0]["message"]


def test_the_cpu_is_always_there(world):
    body = spec(world, oracle={"kind": "torch", "device": "cpu"}, seed=12)
    assert world.client.post("/v1/jobs", headers=world.headers, json=body).status_code == 202


# --- data sets: enough classes and images -------------------------------------------------------


def npz(x: np.ndarray, y: list[int]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=x, y=np.array(y))
    return buf.getvalue()


TOO_LITTLE = {
    "one class (zip)": (
        "d.zip",
        lambda: make_zip({f"cats/{i}.png": png(seed=i) for i in range(4)}),
    ),
    "one class (npz)": ("d.npz", lambda: npz(np.zeros((4, 8, 8, 1), np.uint8), [0, 0, 0, 0])),
    "one image in a class": (
        "d.zip",
        lambda: make_zip({f"cats/{i}.png": png(seed=i) for i in range(3)} | {"dogs/a.png": png()}),
    ),
}


@pytest.mark.parametrize("case", TOO_LITTLE)
def test_too_little_data_is_refused_at_upload_naming_the_minimum(world, case):
    name, build = TOO_LITTLE[case]
    r = post_upload(world, name, build())
    assert r.status_code == 422, r.text
    assert fields_of(r.json()) == ["file"]
    assert ("at least 2" if "one class" in case else "at least 3") in r.json()["detail"][0][
        "message"
    ]


def test_a_split_without_test_images_is_refused_at_submission(world):
    """Three images per class can be uploaded, but a 10 % test fraction takes none of them."""
    content = make_zip({f"{c}/{i}.png": png(seed=i) for c in ("cats", "dogs") for i in range(3)})
    ds = upload(world.client, world.headers, content, "trios.zip")
    body = {"dataset_id": ds["id"], "oracle": {"kind": "torch"}, "data": {"test_fraction": 0.1}}
    r = world.client.post("/v1/jobs", headers=world.headers, json=body)
    assert r.status_code == 422, r.text
    assert fields_of(r.json()) == ["data.test_fraction"]
    assert "at least 6 images" in r.json()["detail"][0]["message"]
    body["data"] = {"test_fraction": 0.2}
    assert world.client.post("/v1/jobs", headers=world.headers, json=body).status_code == 202


# --- budgets below the plan's minimum -----------------------------------------------------------


def plan_minimum(small_npz: bytes) -> int:
    """The plan's minimum for the module's data set (3 classes × 12 images) and a torch job:
    one pass of the training images (the read-out's mapping) and one of the test images.
    ``test_the_minimum_is_the_one_the_runner_enforces`` shows it is what prepare enforces."""
    from app.config.spec import JobSpec
    from app.data.loading import load_bytes
    from app.jobs.runner import minimum_queries

    job_spec = JobSpec.model_validate({"oracle": {"kind": "torch"}})
    data = load_bytes(small_npz, "d.npz")
    return minimum_queries(job_spec, data, n_labels=1000, provider="torch")


@pytest.fixture(scope="module")
def minimum(small_npz) -> int:
    n = plan_minimum(small_npz)
    assert 30 <= n <= 36  # 24–30 training images (with or without validation) and 6 test
    return n


def test_a_budget_below_the_plans_minimum_is_refused_naming_it(world, minimum):
    r = world.client.post(
        "/v1/jobs", headers=world.headers, json=spec(world, budget={"max_queries": minimum - 1})
    )
    assert r.status_code == 422, r.text
    assert fields_of(r.json()) == ["budget.max_queries"]
    assert f"the minimum is {minimum} queries" in r.json()["detail"][0]["message"]
    body = spec(world, budget={"max_queries": minimum}, seed=13)
    assert world.client.post("/v1/jobs", headers=world.headers, json=body).status_code == 202


def test_a_cost_budget_below_the_minimum_names_the_cost(world, minimum):
    oracle = {"kind": "clarifai", "credential_id": world.ids["cred"]}
    price = world.settings.price_clarifai
    budget = {"max_cost_usd": round((minimum - 1) * price, 6)}
    r = world.client.post(
        "/v1/jobs", headers=world.headers, json=spec(world, oracle=oracle, budget=budget)
    )
    assert r.status_code == 422, r.text
    assert fields_of(r.json()) == ["budget.max_cost_usd"]
    assert f"the minimum is {minimum} queries" in r.json()["detail"][0]["message"]


def test_the_minimum_is_the_one_the_runner_enforces(small_npz, minimum):
    """minimum_queries and prepare share the plan: prepare refuses a cap of minimum - 1 and
    takes minimum, for the stored data set's labels and for the data itself."""
    from app.config.spec import JobSpec
    from app.data.loading import load_bytes
    from app.jobs.runner import PlanError, minimum_queries, prepare

    data = load_bytes(small_npz, "d.npz")
    job_spec = JobSpec.model_validate({"oracle": {"kind": "torch"}, "budget": {"max_queries": 99}})
    assert minimum_queries(job_spec, data, n_labels=1000, provider="torch") == minimum

    class Labels:  # an oracle as far as prepare looks before any query
        labels = tuple(str(i) for i in range(1000))
        provider = "torch"

    with pytest.raises(PlanError, match=f"below the {minimum}"):
        prepare(job_spec, data, Labels(), query_cap=minimum - 1)  # type: ignore[arg-type]
    assert prepare(job_spec, data, Labels(), query_cap=minimum).trainer.config.iterations == 0  # type: ignore[arg-type]


def test_a_default_view_gives_way_to_a_budget_checked_before_the_labels_were_known(small_npz):
    """A view the defaults choose is not part of the minimum (a cloud model's label count is
    learned from its first answer, so the check at submission could not count it): a model
    of 1,000 labels gets the view by default only when the budget covers it, and says so
    when it does not. A view the user asked for is part of the minimum and never dropped."""
    from app.config.spec import JobSpec
    from app.data.loading import load_bytes
    from app.jobs.runner import PlanError, minimum_queries, prepare

    data = load_bytes(small_npz, "d.npz")
    oracle = {"kind": "clarifai", "credential_id": "cred_x", "model_id": "general"}
    job_spec = JobSpec.model_validate({"oracle": oracle})
    floor = minimum_queries(job_spec, data, n_labels=3, provider="clarifai")  # as at POST
    assert floor == 36 == minimum_queries(job_spec, data, n_labels=1000, provider="clarifai")

    class Labels:  # the model's answer showed 1,000 concepts
        labels = tuple(str(i) for i in range(1000))
        provider = "clarifai"

    job = prepare(job_spec, data, Labels(), query_cap=floor)  # type: ignore[arg-type]
    assert job.spec.mapping.views == []
    assert any("does not cover the full view's queries" in n for n in job.notes)
    job = prepare(job_spec, data, Labels(), query_cap=2 * floor)  # type: ignore[arg-type]
    assert job.spec.mapping.views == ["full"]
    asked = JobSpec.model_validate({"oracle": oracle, "mapping": {"views": ["full"]}})
    assert minimum_queries(asked, data, n_labels=1000, provider="clarifai") == 2 * floor
    with pytest.raises(PlanError, match=f"below the {2 * floor}"):
        prepare(asked, data, Labels(), query_cap=floor)  # type: ignore[arg-type]


def test_a_budget_refused_without_a_default_view_is_refused_at_once(small_npz, monkeypatch):
    """Only a view the defaults chose is retried without: a budget too small for a model of
    3 labels (no view chosen) is refused after one plan, not split and resized twice."""
    from app.config.spec import JobSpec
    from app.data.loading import load_bytes
    from app.jobs import runner

    data = load_bytes(small_npz, "d.npz")
    job_spec = JobSpec.model_validate({"oracle": {"kind": "torch"}})
    floor = runner.minimum_queries(job_spec, data, n_labels=3, provider="torch")
    plans = []
    real = runner._prepare
    monkeypatch.setattr(runner, "_prepare", lambda *a, **k: plans.append(1) or real(*a, **k))

    class Labels:
        labels = ("a", "b", "c")
        provider = "torch"

    with pytest.raises(runner.PlanError, match=f"below the {floor}"):
        runner.prepare(job_spec, data, Labels(), query_cap=floor - 1)  # type: ignore[arg-type]
    assert len(plans) == 1
    Labels.labels = tuple(str(i) for i in range(1000))  # the view is chosen, then dropped
    with pytest.raises(runner.PlanError, match=f"below the {floor}"):
        runner.prepare(job_spec, data, Labels(), query_cap=floor - 1)  # type: ignore[arg-type]
    assert len(plans) == 3


# --- pixel budgets ------------------------------------------------------------------------------


def truncated_png(side: int) -> bytes:
    """A PNG whose header says side×side but whose pixels are cut off: decoding it fails, so
    a refusal for its size proves nothing was decoded first."""
    return png(side)[:100]


def test_an_upload_over_the_pixel_budget_is_413_before_any_image_is_decoded(world):
    side = 80  # 4 × 6,400 = 25,600 > 20,000
    images = {f"{c}/{i}.png": truncated_png(side) for c in ("cats", "dogs") for i in range(2)}
    r = post_upload(world, "d.zip", make_zip(images))
    assert r.status_code == 413, r.text
    assert "REPROGRAM_MAX_UPLOAD_PIXELS" in r.json()["detail"]
    assert "20,000" in r.json()["detail"]


def test_an_npz_over_the_pixel_budget_is_413(world):
    r = post_upload(world, "d.npz", npz(np.zeros((4, 80, 80, 1), np.uint8), [0, 1, 0, 1]))
    assert r.status_code == 413, r.text
    assert "REPROGRAM_MAX_UPLOAD_PIXELS" in r.json()["detail"]


def test_within_the_pixel_budget_the_same_images_are_checked_and_refused(world):
    """Under the budget the truncated images are decoded, and refused for what they are."""
    images = {f"{c}/{i}.png": truncated_png(40) for c in ("cats", "dogs") for i in range(3)}
    r = post_upload(world, "d.zip", make_zip(images))
    assert r.status_code == 400 and "not a readable image" in r.json()["detail"]


def test_a_predict_request_over_its_pixel_budget_is_413_before_any_decoding(world):
    files = [("files", (f"{i}.png", truncated_png(80))) for i in range(4)]
    r = world.client.post(
        f"/v1/jobs/{world.ids['done']}/predict", headers=world.headers, files=files
    )
    assert r.status_code == 413, r.text
    assert "REPROGRAM_MAX_PREDICT_PIXELS" in r.json()["detail"]


def test_one_image_over_the_per_image_cap_is_413(world):
    buf = io.BytesIO()
    Image.new("1", (7000, 7000)).save(buf, format="PNG")  # 49 Mpx in a few kB
    files = [("files", ("huge.png", buf.getvalue()))]
    r = world.client.post(
        f"/v1/jobs/{world.ids['done']}/predict", headers=world.headers, files=files
    )
    assert r.status_code == 413 and "huge.png" in r.json()["detail"]


# --- the OpenAPI document -----------------------------------------------------------------------


def operations(world: World) -> Iterator[tuple[str, str, dict[str, Any]]]:
    doc = world.client.get("/openapi.json").json()
    for path, item in doc["paths"].items():
        for method, op in item.items():
            yield method.upper(), path, op


def test_every_v1_operation_documents_401_with_the_error_shape(world):
    for method, path, op in operations(world):
        if path.startswith("/v1/"):
            assert "401" in op["responses"], (method, path)
            schema = op["responses"]["401"]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorOut"}


def test_operations_document_the_statuses_they_answer(world):
    documented = {(m, p): set(op["responses"]) for m, p, op in operations(world)}
    expect = {
        ("POST", "/v1/datasets"): {"201", "400", "401", "413", "422"},
        ("GET", "/v1/datasets/{dataset_id}"): {"200", "401", "404", "422"},
        ("POST", "/v1/jobs"): {"202", "401", "413", "422"},
        ("GET", "/v1/jobs/{job_id}"): {"200", "401", "404", "422"},
        ("GET", "/v1/jobs/{job_id}/program"): {"200", "401", "404", "409", "422"},
        ("POST", "/v1/jobs/{job_id}/predict"): {"200", "400", "401", "404", "409", "413", "422"},
        ("POST", "/v1/credentials"): {"201", "401", "413", "422"},
    }
    for key, statuses in expect.items():
        assert statuses <= documented[key], (key, documented[key])


def test_job_answers_have_a_response_schema_matching_the_contract(world):
    doc = world.client.get("/openapi.json").json()
    ok = doc["paths"]["/v1/jobs/{job_id}"]["get"]["responses"]["200"]
    assert ok["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/JobOut"}
    job = doc["components"]["schemas"]["JobOut"]
    assert {"id", "status", "progress", "spend", "metrics", "error"} <= set(job["required"])
    assert job["properties"]["status"]["enum"] == [
        "queued",
        "running",
        "succeeded",
        "failed",
        "cancelled",
        "budget_exhausted",
    ]


def test_the_typed_job_answer_is_the_services_view_unchanged(world):
    from app.services.jobs import view
    from app.storage.models import Job

    got = world.client.get(f"/v1/jobs/{world.ids['done']}", headers=world.headers).json()
    with world.db.session() as s:
        expected = json.loads(json.dumps(view(s.get(Job, world.ids["done"]))))
    assert got == expected
    listed = world.client.get("/v1/jobs", headers=world.headers).json()
    assert expected in listed
