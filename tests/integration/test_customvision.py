"""The real Custom Vision SDK, through CustomVisionOracle, against the fake on 127.0.0.1; and
against hostile listeners: redirects are not followed, the endpoint's words stay out of errors,
the egress guard checks every connection."""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import httpx
import numpy as np
import pytest
import requests

from adapters import customvision, egress
from adapters.base import to_uint8
from adapters.customvision import CustomVisionOracle, parse_retry_after
from adapters.egress import EgressPolicy
from adapters.errors import (
    AuthFailed,
    BadInput,
    ConfigurationError,
    EgressRefused,
    EndpointRefused,
    MalformedAnswer,
    NotFound,
    OracleError,
    QuotaExhausted,
    Throttled,
    TransientUpstreamError,
)
from tests.fakes.customvision import (
    IMAGENET_PROJECT,
    MODERATION_PROJECT,
    NSFW_PROJECT,
    PUBLISHED,
    FakeCustomVision,
)
from tests.fakes.model import FakeModel
from tests.helpers import Listener

KEY = "cv-test-key-7f3a9c"  # distinctive, so a leak into any text is easy to spot
MODERATION = ("safe", "suggestive", "explicit", "drug", "gore")  # the fake model's order


@pytest.fixture(scope="module")
def fake():
    with FakeCustomVision(keys=[KEY], rate_limit=None) as server:
        server.warm_up()
        yield server


@pytest.fixture(autouse=True)
def clean_fake(fake):
    fake.reset()
    fake.set_rate_limit(None)


@pytest.fixture
def images() -> np.ndarray:
    """Three small requests of one image each (small: the fake runs a real model)."""
    return np.random.default_rng(0).random((3, 1, 64, 64, 3), dtype=np.float32)


def oracle_for(fake: FakeCustomVision, **overrides) -> CustomVisionOracle:
    args = dict(
        project_id=MODERATION_PROJECT,
        published_name=PUBLISHED,
        endpoint=fake.endpoint,
        api_key=KEY,
        timeout=10.0,
    )
    return CustomVisionOracle(**(args | overrides))


def failure(fake: FakeCustomVision, image: np.ndarray, expected: type, **overrides):
    """The error one prediction raises; also checks that it does not leak the key."""
    with oracle_for(fake, **overrides) as oracle, pytest.raises(expected) as info:
        oracle.predict(image)
    err = info.value
    for text in (str(err), repr(err), str(err.__cause__), repr(oracle), str(oracle)):
        assert KEY not in text
    assert err.provider == "customvision"
    return err


def test_learns_tags_and_answers_in_their_order(fake, images):
    expected = FakeModel("moderation").probs([to_uint8(x[0]) for x in images])
    with oracle_for(fake) as oracle:
        assert not oracle.labels_known
        with pytest.raises(RuntimeError, match="learned from the first"):
            _ = oracle.labels
        answers = [oracle.predict(x) for x in images]
        assert oracle.labels_known
        assert oracle.labels == tuple(sorted(MODERATION))
        order = [MODERATION.index(t) for t in oracle.labels]
    probs = np.concatenate([a.probs for a in answers])
    assert probs.shape == (3, 5)
    np.testing.assert_allclose(probs, expected[:, order], atol=1e-9)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert all(a.request_id for a in answers)
    assert fake.counts(KEY) == dict(requests=3, images=3, answered=3, throttled=0, failed=0)


def test_explicit_labels_fix_the_column_order(fake, images):
    with oracle_for(fake, labels=MODERATION) as oracle:
        assert oracle.labels_known
        probs = oracle.predict(images[0]).probs
    expected = FakeModel("moderation").probs([to_uint8(images[0, 0])])
    np.testing.assert_allclose(probs, expected, atol=1e-9)


@pytest.mark.parametrize(("project", "n_tags"), [(NSFW_PROJECT, 2), (IMAGENET_PROJECT, 1000)])
def test_other_projects_answer_all_their_tags(fake, images, project, n_tags):
    with oracle_for(fake, project_id=project) as oracle:
        probs = oracle.predict(images[0]).probs
        assert len(oracle.labels) == n_tags
    assert probs.shape == (1, n_tags)
    assert probs.sum() == pytest.approx(1.0, abs=1e-4)


def test_concurrent_predictions_share_one_oracle(fake):
    batch = np.random.default_rng(1).random((8, 1, 32, 32, 3), dtype=np.float32)
    oracle = oracle_for(fake)
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(oracle.predict, batch))
    assert len({a.request_id for a in answers}) == 8
    assert fake.counts(KEY)["answered"] == 8
    oracle.close()
    with pytest.raises(RuntimeError, match="closed"):
        oracle.predict(batch[0])


def test_bad_key_fails_fast(fake, images):
    start = time.monotonic()
    err = failure(fake, images[0], AuthFailed, api_key="wrong-key")
    assert time.monotonic() - start < 2.0
    assert err.status == 401 and err.request_id
    assert fake.counts("wrong-key") == dict(requests=1, images=1, answered=0, throttled=0, failed=1)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [({"project_id": "no-such-project"}, "project"), ({"published_name": "gone"}, "iteration")],
)
def test_unknown_project_or_iteration(fake, images, overrides, named):
    err = failure(fake, images[0], NotFound, **overrides)
    assert err.status == 404
    assert f"{named} {next(iter(overrides.values()))!r} not found" in str(err)


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"not an image", "BadRequestImageFormat"),
        (b"\x89PNG" * 2**20 + b"!", "BadRequestImageSizeBytes"),
    ],
)
def test_refused_image_is_bad_input(fake, images, monkeypatch, payload, code):
    monkeypatch.setattr(customvision, "encode_png", lambda image: payload)
    err = failure(fake, images[0], BadInput)
    assert err.index == 0 and err.status == 400 and code in str(err)


def test_throttled_with_retry_after_and_no_retry(fake, images):
    fake.set_rate_limit(0.5, burst=1)
    fake.predict(KEY, MODERATION_PROJECT, PUBLISHED, b"")  # spends the one token, fast
    err = failure(fake, images[0], Throttled)
    assert err.status == 429 and err.retry_after == 2.0  # the fake's header: ceil(1/0.5)
    assert fake.counts(KEY) == dict(requests=2, images=1, answered=0, throttled=1, failed=1)


def test_a_used_up_quota_is_waited_for_not_a_refused_key(images):
    now = [0.0]
    with FakeCustomVision(keys=[KEY], rate_limit=None, quota=1, clock=lambda: now[0]) as fake:
        with oracle_for(fake) as oracle:
            oracle.predict(images[0])  # the period's one prediction
        now[0] = 1000.0
        err = failure(fake, images[1], QuotaExhausted)
        assert err.status == 403 and not err.retryable
        assert err.renews_in == 30 * 86400 - 1000  # what the 403's words say, to the second
        assert str(err).startswith(
            "Custom Vision answered HTTP 403: the prediction quota is used up (renews in 29 d 23 h)"
        )
        assert "call volume" not in str(err)  # the endpoint's words stay out
        now[0] = 30 * 86400.0  # the next period
        with oracle_for(fake) as oracle:
            assert oracle.predict(images[2]).probs.shape == (1, len(MODERATION))
        assert fake.counts(KEY) == dict(requests=3, images=3, answered=2, throttled=0, failed=1)


@pytest.mark.parametrize(
    ("reason", "body", "renews_in"),
    [
        ("Quota Exceeded", {"code": "403"}, None),  # said by the reason phrase only
        ("Forbidden", {"statusCode": 403, "message": "Out of call volume quota. Quota will "
                       "be replenished in 2.03:04:05."}, 2 * 86400 + 3 * 3600 + 4 * 60 + 5),
        ("Forbidden", {"error": {"code": "403", "message": "Out of call volume quota for "
                       "CustomVision F0 pricing tier. Please retry after 6 days."}}, 6 * 86400),
    ],
)  # fmt: skip
def test_every_wording_of_a_used_up_quota_is_read(images, reason, body, renews_in):
    payload = json.dumps(body).encode()
    listener = Listener(403, payload, {"Content-Type": "application/json"}, reason=reason)
    with listener, pytest.raises(QuotaExhausted) as caught:
        predict_at(listener.url, images)
    assert caught.value.renews_in == renews_in


@pytest.mark.parametrize("status", [500, 503])
def test_5xx_is_transient_and_not_retried(fake, images, status):
    fake.set_faults(error_rate=1.0, error_statuses=[status])
    err = failure(fake, images[0], TransientUpstreamError)
    assert err.status == status
    assert fake.counts(KEY)["requests"] == 1  # msrest sent it once


def test_hang_past_timeout_is_transient(fake, images):
    fake.set_faults(hang_rate=1.0, hang_s=5.0)
    start = time.monotonic()
    err = failure(fake, images[0], TransientUpstreamError, timeout=0.5)
    assert time.monotonic() - start < 2.0
    assert "Timeout" in str(err)
    assert fake.counts(KEY)["requests"] == 1


def test_unreachable_endpoint_is_not_retried(images):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    oracle = CustomVisionOracle(
        project_id=MODERATION_PROJECT,
        published_name=PUBLISHED,
        endpoint=f"http://127.0.0.1:{port}",
        api_key=KEY,
    )
    with oracle, pytest.raises(TransientUpstreamError):
        oracle.predict(images[0])
    # msrest's default policy retries connection errors 3 times with 1.6 s + 3.2 s backoff.
    assert time.monotonic() - start < 1.0


def test_missing_tag_is_malformed(fake, images):
    with oracle_for(fake) as oracle:
        oracle.predict(images[0])
        fake.set_faults(drop_tags=["gore"])
        with pytest.raises(MalformedAnswer, match="lacks tags \\['gore'\\]") as info:
            oracle.predict(images[1])
    assert info.value.request_id


def test_unknown_tag_is_malformed(fake, images):
    err = failure(fake, images[0], MalformedAnswer, labels=(*MODERATION[:4], "weapons"))
    assert "'weapons'" in str(err) and "'gore'" in str(err)


@pytest.mark.parametrize(
    "endpoint",
    ["ftp://example.com", "http://127.0.0.1", "127.0.0.1:8090", "https://u:p@x.com", "https://"],
)
def test_bad_endpoint_is_a_configuration_error(endpoint):
    with pytest.raises(ConfigurationError) as info:
        CustomVisionOracle(project_id="p", published_name="n", endpoint=endpoint, api_key=KEY)
    assert KEY not in str(info.value)


def test_endpoint_keeps_prefix_and_drops_trailing_slash():
    oracle = CustomVisionOracle(
        project_id="p", published_name="n", endpoint="https://x.azure.com/", api_key=KEY
    )
    assert oracle.endpoint == "https://x.azure.com"


NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("2", 2.0),
        (" 1.5 ", 1.5),
        ("Wed, 01 Jan 2025 12:00:30 GMT", 30.0),
        ("Wed, 01 Jan 2025 11:00:00 GMT", 0.0),
        ("86400", customvision.MAX_RETRY_AFTER_S),
        ("-1", None),
        ("soon", None),
        ("nan", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after(value, seconds):
    assert parse_retry_after(value, now=NOW) == seconds


def test_fake_speaks_raw_http_and_admin_paths(fake):
    png = customvision.encode_png(np.zeros((32, 32, 3), dtype=np.uint8))
    with httpx.Client(base_url=fake.endpoint) as http:
        url = f"/customvision/v3.0/prediction/{NSFW_PROJECT}/classify/iterations/{PUBLISHED}"
        answer = http.post(
            f"{url}/image/nostore",
            content=png,
            headers={"prediction-key": KEY, "Content-Type": "application/octet-stream"},
        )
        assert answer.status_code == 200
        probs = [p["probability"] for p in answer.json()["predictions"]]
        assert len(probs) == 2 and probs == sorted(probs, reverse=True)
        assert http.post("/_fake/faults", json={"latency_s": 0.01}).json()["latency_s"] == 0.01
        assert http.post("/_fake/faults", json={"nonsense": 1}).status_code == 400
        assert http.get("/_fake/counts", params={"key": KEY}).json()["answered"] == 1


def test_fake_rate_limit_spares_a_client_pacing_at_the_limit():
    now = [0.0]
    fake = FakeCustomVision(keys=[KEY], rate_limit=10, clock=lambda: now[0])

    def throttled(times) -> int:  # empty images: refused as 400 after the limit, no model
        for t in times:
            now[0] = t
            fake.predict(KEY, MODERATION_PROJECT, PUBLISHED, b"")
        return fake.counts(KEY)["throttled"]

    # a sliding-window client: one second's worth at once, then exactly R per second
    assert throttled([0.0] * 10 + [1.0 + i / 10 for i in range(40)]) == 0
    assert throttled([5.0 + i / 20 for i in range(40)]) > 0  # twice the rate


# --- egress: redirects, the endpoint's words, the connect-time guard ----------------------------

SECRETISH = "sk-live-9f8e7d6c5b4a-internal"  # what an internal listener might answer with


def predict_at(endpoint: str, images, **kwargs):
    oracle = CustomVisionOracle(
        project_id=MODERATION_PROJECT, published_name=PUBLISHED, endpoint=endpoint, api_key=KEY,
        timeout=5.0, **kwargs,
    )  # fmt: skip
    with oracle:
        return oracle.predict(images[0])


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_not_followed_and_the_key_goes_nowhere_else(images, status):
    with Listener(200, b"{}") as target:
        location = {"Location": f"{target.url}/steal?key=1"}
        with Listener(status, b"", location) as redirector:
            for policy in (None, EgressPolicy.from_entries([redirector.url, target.url])):
                with pytest.raises(OracleError) as caught:
                    predict_at(redirector.url, images, egress=policy)
                err = caught.value
                assert err.status == status and "redirect; not followed" in str(err)
                assert not err.retryable and KEY not in str(err) and target.url not in str(err)
            assert len(redirector.requests) == 2  # the endpoint itself was asked, once a try
    assert target.requests == []  # the redirect target never heard from us


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (500, {"code": "InternalServerError", "message": SECRETISH}, TransientUpstreamError),
        (403, {"error": {"code": "403", "message": f"key {SECRETISH} denied"}}, AuthFailed),
        (400, {"code": SECRETISH, "message": SECRETISH}, OracleError),
        (404, {"code": "NotFoundProject", "message": SECRETISH}, NotFound),
        (429, {"error": {"code": "429", "message": SECRETISH}}, Throttled),
        (418, {"anything": SECRETISH}, OracleError),
        (502, None, TransientUpstreamError),  # not JSON at all
    ],
)
def test_the_endpoints_words_never_reach_the_error(images, status, body, kind):
    payload = json.dumps(body).encode() if body is not None else f"<h1>{SECRETISH}</h1>".encode()
    headers = {"Content-Type": "application/json", "apim-request-id": f"id {SECRETISH}"}
    listener = Listener(status, payload, headers, reason=f"Oops {SECRETISH}")
    with listener, pytest.raises(kind) as caught:
        predict_at(listener.url, images)
    err = caught.value
    text = " ".join((str(err), repr(err), err.message))
    assert SECRETISH not in text and f"HTTP {status}" in text
    assert err.request_id is None  # not an id: dropped
    if isinstance(body, dict) and "code" in body and body["code"] != SECRETISH:
        assert body["code"] in text  # a code that looks like one is kept


def test_a_refused_endpoint_is_refused_before_any_connection(images):
    with Listener(200, b"{}") as listener:
        with pytest.raises(EndpointRefused):
            predict_at(listener.url, images, egress=EgressPolicy())
        with pytest.raises(EndpointRefused):
            predict_at("https://10.0.0.1", images, egress=EgressPolicy())
    assert listener.requests == []


def test_a_provider_name_that_resolves_inside_is_refused_at_connect_time(images, monkeypatch):
    """DNS rebinding: the name passed the policy, but resolves to loopback when the adapter
    connects; no connection is opened, and no retry would help."""
    monkeypatch.setattr(egress, "resolve", lambda host, port: ["127.0.0.1"])
    with pytest.raises(EgressRefused, match="loopback") as caught:
        predict_at("https://acme.cognitiveservices.azure.com", images, egress=EgressPolicy())
    assert caught.value.provider == "customvision" and not caught.value.retryable


def test_guarded_connections_go_to_the_checked_addresses(images):
    """The adapter connects to the addresses the guard returned, not to what the name
    resolves to (here: nothing), and still sends the name as the Host."""

    asked: list[tuple[str, str, int]] = []

    class Guard:
        def addresses(self, scheme: str, host: str, port: int) -> list[str]:
            asked.append((scheme, host, port))
            return ["127.0.0.1"]

    with Listener(200, b"ok") as listener:
        port = listener.port
        with requests.Session() as session:
            session.mount("http://", customvision.guarded_adapter(Guard(), 0))
            answer = session.get(f"http://cv.invalid:{port}/x", timeout=5)
    assert answer.status_code == 200 and answer.text == "ok"
    assert asked == [("http", "cv.invalid", port)]
    assert listener.requests[0][2]["host"] == f"cv.invalid:{port}"
