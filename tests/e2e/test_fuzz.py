"""A bounded schemathesis run over the real app: every operation of the OpenAPI document,
with schema-valid and schema-invalid requests, authenticated, on a service that holds a data
set, a credential, a queued job and a finished one (path parameters are drawn from those
real ids as well as generated). No job trains (``run_jobs=False``).

The verdict: no 5xx, every status and body as the document says (status codes, content
types, headers, response schemas), and every schema-invalid request refused with a 4xx.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.api.app import create_app
from app.storage.db import Database
from tests.helpers import bearer, give_program, post_job, service_settings, upload

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
EXAMPLES = 30  # per operation and generation mode: the whole run stays near a minute


@pytest.mark.slow
def test_fuzzing_every_operation_finds_no_server_error_and_no_schema_violation(tmp_path, small_npz):
    settings_ = service_settings(tmp_path, max_upload_bytes=256 * 1024)
    app = create_app(settings_, run_jobs=False)
    # schemathesis starts the app's lifespan (migrations, services) and keeps it for the run;
    # the setup below talks to the same app without starting another.
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    db = Database(settings_.db_url)
    try:
        client = TestClient(app)
        headers = bearer(db, "acme")
        ds = upload(client, headers, small_npz, "d.npz")
        cred = client.post(
            "/v1/credentials", headers=headers, json={"provider": "clarifai", "secret": "k"}
        ).json()
        ids = {
            "dataset_id": [ds["id"]],
            "credential_id": [cred["id"]],
            "job_id": [
                post_job(client, headers, {"dataset_id": ds["id"], "oracle": {"kind": "torch"}})
                for _ in range(2)
            ],
        }
        give_program(db, settings_.data_dir, ids["job_id"][1], ds["classes"])
        statuses: Counter[int] = Counter()
        started = time.monotonic()
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                _fuzz(operation, mode, headers, ids, statuses)
        seconds = time.monotonic() - started
    finally:
        db.dispose()
        shutdown_lifespans()
    total = sum(statuses.values())
    print(f"\nfuzz: {total} requests in {seconds:.0f} s; statuses {dict(sorted(statuses.items()))}")
    assert not [s for s in statuses if s >= 500]
    assert total > 200


def _fuzz(
    operation: Any,
    mode: GenerationMode,
    headers: dict[str, str],
    ids: dict[str, list[str]],
    statuses: Counter[int],
) -> None:
    generated = operation.as_strategy(generation_mode=mode)
    names = [p.name for p in operation.path_parameters]
    strategies = [generated]
    if names and all(n in ids for n in names):
        real = {n: st.sampled_from(ids[n]) for n in names}
        strategies.append(
            st.fixed_dictionaries(real).flatmap(
                lambda params: operation.as_strategy(generation_mode=mode, path_parameters=params)
            )
        )

    @given(case=st.one_of(strategies), use_real_ids=st.booleans())
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any, use_real_ids: bool) -> None:
        if use_real_ids and isinstance(case.body, dict) and mode is GenerationMode.POSITIVE:
            # Specs that name what exists reach the checks behind the schema.
            for key in ("dataset_id", "credential_id"):
                if key in case.body:
                    case.body[key] = ids[key][0]
            oracle = case.body.get("oracle")
            if isinstance(oracle, dict) and "credential_id" in oracle:
                oracle["credential_id"] = ids["credential_id"][0]
        response = case.call_and_validate(headers=headers, checks=CHECKS)
        statuses[response.status_code] += 1

    try:
        run()
    except Unsatisfiable:
        if mode is GenerationMode.POSITIVE:
            raise
        # nothing of this operation can be made schema-invalid (no parameters, no body)
