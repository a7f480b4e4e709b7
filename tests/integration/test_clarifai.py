"""ClarifaiOracle (the official clarifai_grpc stubs) against the fake Clarifai on 127.0.0.1,
plus the pure status-code mappings and the egress policy at the channel."""

from __future__ import annotations

import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from clarifai_grpc.grpc.api import service_pb2
from clarifai_grpc.grpc.api.status import status_pb2

from adapters import egress, errors
from adapters.base import to_uint8
from adapters.clarifai import ClarifaiOracle, open_channel, status_error, transport_error, v2_stub
from adapters.egress import EgressPolicy
from adapters.label_groups import imagenet_labels
from tests.fakes.clarifai import FakeClarifai
from tests.fakes.model import FakeModel

KEY = "sk-test-0123456789abcdef"  # shaped like a secret, so that a leak would show
MODERATION = ("safe", "suggestive", "explicit", "drug", "gore")
IMAGES = np.random.default_rng(0).random((4, 64, 64, 3), dtype=np.float32)


class CorruptingOracle(ClarifaiOracle):
    """Sends bytes no decoder accepts in place of the images at positions ``corrupt``."""

    corrupt: frozenset[int] = frozenset()

    def _encode_all(self, pixels: np.ndarray) -> list[bytes]:
        blobs = super()._encode_all(pixels)
        return [b"not an image" if i in self.corrupt else b for i, b in enumerate(blobs)]


class ManualClock:
    """A clock the test moves by hand, so rate limits are checked without sleeping."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def fake():
    with FakeClarifai(keys={KEY}, rate_limit=None) as server:
        yield server


@pytest.fixture
def connect(fake):
    """Build oracles on the shared fake (fresh counts and no faults); close them after."""
    fake.reset(seed=0)
    made: list[ClarifaiOracle] = []

    def make(cls: type[ClarifaiOracle] = ClarifaiOracle, **kwargs: object) -> ClarifaiOracle:
        kwargs = {"api_key": KEY, "endpoint": fake.endpoint, "timeout": 10.0} | kwargs
        made.append(cls(**kwargs))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for oracle in made:
        oracle.close()


def assert_no_key(*things: object) -> None:
    for thing in things:
        assert KEY not in str(thing) and KEY not in repr(thing)
        assert all(KEY not in str(arg) for arg in getattr(thing, "args", ()))


# -- happy paths ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model_id", "view", "labels"),
    [
        ("nsfw-recognition", "nsfw", ("sfw", "nsfw")),
        ("moderation-recognition", "moderation", MODERATION),
    ],
)
def test_public_models_answer_the_fake_models_opinion(connect, fake, model_id, view, labels):
    oracle = connect(model_id=model_id)
    answer = oracle.predict(IMAGES)
    assert oracle.labels == labels
    assert answer.probs.shape == (len(IMAGES), len(labels)) and answer.request_id
    np.testing.assert_allclose(answer.probs.sum(axis=1), 1.0, atol=1e-5)
    # The fake sends concepts sorted by value, so a right answer proves the column mapping.
    expected = FakeModel(view).probs(list(to_uint8(IMAGES)))
    np.testing.assert_allclose(answer.probs, expected, atol=1e-6)
    assert fake.counts(KEY) == fake.counts()  # nothing under another key
    counts = fake.counts(KEY)
    assert (counts.requests, counts.images, counts.billable, counts.failed) == (1, 4, 4, 0)


def test_explicit_labels_reorder_the_columns(connect):
    default = connect().predict(IMAGES[:2]).probs
    swapped = connect(labels=["nsfw", "sfw"]).predict(IMAGES[:2]).probs
    np.testing.assert_array_equal(swapped, default[:, ::-1])


def test_other_models_list_their_concepts_once(connect, fake):
    oracle = connect(model_id="general-image-recognition")
    assert sorted(oracle.labels) == sorted(imagenet_labels())
    answer = oracle.predict(IMAGES[:2])  # needs max_concepts: the fake's default is 20
    np.testing.assert_allclose(answer.probs.sum(axis=1), 1.0, atol=1e-4)
    expected = FakeModel(None).probs(list(to_uint8(IMAGES[:2])))
    got = [oracle.labels[j] for j in answer.probs.argmax(axis=1)]
    assert got == [imagenet_labels()[j] for j in expected.argmax(axis=1)]
    assert fake.counts(KEY).requests == 2  # one listing, one prediction


def test_requests_over_four_mib_pass(connect, fake):
    noise = np.random.default_rng(1).random((4, 64, 8192, 3), dtype=np.float32)  # ~6 MiB PNG
    assert connect().predict(noise).probs.shape == (4, 2)
    assert fake.counts(KEY).billable == 4


def test_concurrent_predicts_match_sequential_ones(connect):
    oracle = connect()
    sequential = [oracle.predict(IMAGES[i : i + 1]).probs for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda i: oracle.predict(IMAGES[i : i + 1]).probs, range(4)))
    for a, b in zip(sequential, parallel, strict=True):
        np.testing.assert_array_equal(a, b)


# -- refusals -----------------------------------------------------------------------------------
def test_bad_key_fails_fast_and_once(connect, fake):
    oracle = connect(api_key="sk-wrong-key")
    start = time.monotonic()
    with pytest.raises(errors.AuthFailed) as caught:
        oracle.predict(IMAGES[:1])
    assert time.monotonic() - start < 1.0
    assert caught.value.status == 11009 and caught.value.request_id
    assert fake.counts("sk-wrong-key").requests == 1  # the adapter did not retry
    assert "sk-wrong-key" not in str(caught.value) + repr(oracle)


def test_missing_authorization_header_is_auth_failed(fake):
    channel = grpc.insecure_channel(f"127.0.0.1:{fake.port}")
    stub = v2_stub(channel)  # a plain channel works once the deserializer hook is set
    request = service_pb2.PostModelOutputsRequest(model_id="nsfw-recognition")
    response = stub.PostModelOutputs(request, timeout=5)
    channel.close()
    assert response.status.code == 11102
    assert isinstance(status_error(response.status), errors.AuthFailed)


def test_unknown_model_or_version_is_not_found(connect, fake):
    with pytest.raises(errors.NotFound) as caught:
        connect(model_id="no-such-model")
    assert caught.value.status == 21200 and fake.counts(KEY).requests == 1
    with pytest.raises(errors.NotFound):
        connect(version_id="no-such-version").predict(IMAGES[:1])


def test_too_many_inputs_is_refused_as_a_whole(connect, fake):
    oracle = connect()
    oracle.max_images_per_request = 129  # past the adapter's own guard, to reach the fake's
    with pytest.raises(errors.BadInput, match="request of 129 images was refused") as caught:
        oracle.predict(np.zeros((129, 8, 8, 3), dtype=np.float32))
    assert caught.value.index is None
    assert fake.counts(KEY).billable == 0


def test_undecodable_images_are_bad_input_naming_the_first(connect, fake):
    oracle = connect(cls=CorruptingOracle)
    oracle.corrupt = frozenset({0, 1})
    with pytest.raises(errors.BadInput) as caught:
        oracle.predict(IMAGES[:2])
    assert (caught.value.index, caught.value.status) == (0, 30101)
    assert caught.value.request_id and not caught.value.retryable
    assert fake.counts(KEY).billable == 0


def test_some_undecodable_images_are_a_partial_failure(connect, fake):
    oracle = connect(cls=CorruptingOracle)
    oracle.corrupt = frozenset({1, 3})
    with pytest.raises(errors.PartialFailure) as caught:
        oracle.predict(IMAGES)
    err = caught.value
    assert sorted(err.answered) == [0, 2] and sorted(err.failed) == [1, 3]
    assert all(isinstance(e, errors.BadInput) and e.index == i for i, e in err.failed.items())
    assert not err.retryable and err.request_id
    alone = connect().predict(IMAGES[[0, 2]]).probs
    np.testing.assert_array_equal(np.stack([err.answered[0], err.answered[2]]), alone)
    assert fake.counts(KEY).billable == 2 + 2


def test_transient_input_failures_are_retryable_partial_failures(connect, fake):
    fake.set_faults(input_failure_rate=0.5)
    batch = np.concatenate([IMAGES, IMAGES])
    with pytest.raises(errors.PartialFailure) as caught:
        connect().predict(batch)
    err = caught.value
    assert err.answered and err.failed and err.retryable
    assert sorted([*err.answered, *err.failed]) == list(range(len(batch)))
    assert all(isinstance(e, errors.TransientUpstreamError) for e in err.failed.values())
    assert fake.counts(KEY).billable == len(err.answered)


def test_bad_and_transient_inputs_without_answers_stay_apart(connect, fake):
    fake.set_faults(input_failure_rate=1.0)
    oracle = connect(cls=CorruptingOracle)
    oracle.corrupt = frozenset({0})
    with pytest.raises(errors.PartialFailure) as caught:
        oracle.predict(IMAGES[:2])
    assert caught.value.answered == {}
    assert isinstance(caught.value.failed[0], errors.BadInput)
    assert isinstance(caught.value.failed[1], errors.TransientUpstreamError)


def test_throttled_beyond_the_rate_never_at_it():
    clock = ManualClock()
    with (
        FakeClarifai(keys={KEY}, rate_limit=5, clock=clock) as fake,
        ClarifaiOracle(api_key=KEY, endpoint=fake.endpoint, timeout=10) as oracle,
    ):
        for i in range(15):  # exactly 5 requests/s for 3 s
            clock.now = i / 5
            oracle.predict(IMAGES[:1])
        for _ in range(4):  # the unused burst, at one instant
            oracle.predict(IMAGES[:1])
        with pytest.raises(errors.Throttled) as caught:
            oracle.predict(IMAGES[:1])
        clock.now += 0.2  # one request's worth of time
        oracle.predict(IMAGES[:1])
        counts = fake.counts(KEY)
    assert caught.value.status == 11005 and caught.value.retryable and caught.value.request_id
    assert (counts.requests, counts.throttled, counts.billable) == (21, 1, 20)


def test_missing_or_unknown_concepts_are_malformed(connect, fake):
    fake.set_faults(drop_concepts=("gore",))
    with pytest.raises(errors.MalformedAnswer, match=r"missing concept.*gore"):
        connect(model_id="moderation-recognition").predict(IMAGES[:1])
    fake.set_faults(drop_concepts=())
    with pytest.raises(
        errors.MalformedAnswer, match=r"missing concept.*gore.*unknown concept.*nsfw"
    ):
        connect(labels=["sfw", "gore"]).predict(IMAGES[:1])


# -- transport faults ---------------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "status"), [("unavailable", "UNAVAILABLE"), ("internal", 98004)])
def test_transient_faults_are_transient_and_not_retried(connect, fake, kind, status):
    fake.set_faults(transient_rate=1.0, transient_kind=kind)
    with pytest.raises(errors.TransientUpstreamError) as caught:
        connect().predict(IMAGES[:1])
    assert caught.value.status == status and caught.value.request_id
    assert fake.counts(KEY).requests == 1  # no hidden gRPC retries


def test_timeout_is_transient(connect, fake):
    fake.set_faults(hang=True)
    start = time.monotonic()
    with pytest.raises(errors.TransientUpstreamError) as caught:
        connect(timeout=0.3).predict(IMAGES[:1])
    assert caught.value.status == "DEADLINE_EXCEEDED"
    assert time.monotonic() - start < 2.0


def test_latency_is_added(connect, fake):
    fake.set_faults(latency=0.3)
    start = time.monotonic()
    connect().predict(IMAGES[:1])
    assert time.monotonic() - start >= 0.3


def test_admin_endpoint_reads_counts_and_sets_faults():
    with FakeClarifai(keys={KEY}, admin_port=0) as fake:
        admin = f"http://127.0.0.1:{fake.admin_port}"
        body = json.dumps({"drop_concepts": ["nsfw"]}).encode()
        with urllib.request.urlopen(urllib.request.Request(admin + "/faults", data=body)) as r:
            assert json.load(r)["drop_concepts"] == ["nsfw"]
        with (
            ClarifaiOracle(api_key=KEY, endpoint=fake.endpoint) as oracle,
            pytest.raises(errors.MalformedAnswer),
        ):
            oracle.predict(IMAGES[:2])
        with urllib.request.urlopen(f"{admin}/counts?key={KEY}") as r:
            assert json.load(r) == {
                "requests": 1, "images": 2, "billable": 2, "throttled": 0, "failed": 0
            }  # fmt: skip


# -- configuration and the pure mappings ------------------------------------------------------
@pytest.mark.parametrize(
    "endpoint",
    ["api.clarifai.com", "ftp://api.clarifai.com", "http://127.0.0.1", "https://:443",
     "https://api.clarifai.com/v2", f"https://user:{KEY}@api.clarifai.com", "http://h:port"],
)  # fmt: skip
def test_bad_endpoints_are_configuration_errors(endpoint):
    with pytest.raises(errors.ConfigurationError) as caught:
        ClarifaiOracle(api_key=KEY, endpoint=endpoint)
    assert_no_key(caught.value)


@pytest.mark.parametrize(
    "endpoint", ["https://api.clarifai.com", "https://api.clarifai.com:443", "http://[::1]:50051"]
)
def test_good_endpoints_need_no_connection_for_known_models(endpoint):
    with ClarifaiOracle(api_key=KEY, endpoint=endpoint) as oracle:
        assert oracle.labels == ("sfw", "nsfw")
        assert_no_key(oracle)


def test_missing_key_is_a_configuration_error():
    with pytest.raises(errors.ConfigurationError):
        ClarifaiOracle(api_key="")


@pytest.mark.parametrize(
    ("code", "kind"),
    [(11005, errors.Throttled), (11003, errors.QuotaExhausted), (11008, errors.AuthFailed),
     (11009, errors.AuthFailed), (11102, errors.AuthFailed), (21200, errors.NotFound),
     (21202, errors.NotFound), (30101, errors.BadInput), (10030, errors.TransientUpstreamError),
     (21354, errors.TransientUpstreamError), (98004, errors.TransientUpstreamError),
     (10040, errors.OracleError)],
)  # fmt: skip
def test_status_codes_map_to_errors_by_meaning(code, kind):
    status = status_pb2.Status(code=code, description="d", details=f"key {KEY}", req_id="r1")
    err = status_error(status, index=3, secret=KEY)
    assert type(err) is kind and err.request_id == "r1" and err.provider == "clarifai"
    assert getattr(err, "index", 3) == 3
    assert_no_key(err)


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple:
        return (("x-clarifai-request-id", "r2"),)


@pytest.mark.parametrize(
    ("code", "details", "kind"),
    [(grpc.StatusCode.UNAVAILABLE, "", errors.TransientUpstreamError),
     (grpc.StatusCode.DEADLINE_EXCEEDED, "", errors.TransientUpstreamError),
     (grpc.StatusCode.RESOURCE_EXHAUSTED, "", errors.Throttled),
     (grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max", errors.BadInput),
     (grpc.StatusCode.UNAUTHENTICATED, "", errors.AuthFailed),
     (grpc.StatusCode.PERMISSION_DENIED, "", errors.AuthFailed),
     (grpc.StatusCode.UNIMPLEMENTED, "", errors.OracleError)],
)  # fmt: skip
def test_transport_errors_map_to_errors_by_meaning(code, details, kind):
    err = transport_error(FakeRpcError(code, details), secret=KEY)
    assert type(err) is kind and err.request_id == "r2" and err.status == code.name


# -- egress: the endpoint's words stay out of errors; the policy and its connect-time check -------
SECRETISH = "sk-live-9f8e7d6c5b4a-internal"  # what an internal listener might answer with


def test_status_text_from_the_endpoint_never_reaches_the_message():
    status = status_pb2.Status(
        code=10020, description=f"desc {SECRETISH}", details=SECRETISH, req_id=f"id {SECRETISH}"
    )
    err = status_error(status)
    assert str(err) == "Clarifai FAILURE (status=10020)"  # the code; no text, no odd id
    err = transport_error(FakeRpcError(grpc.StatusCode.INTERNAL, f"boom {SECRETISH}"))
    assert SECRETISH not in str(err) and err.message == "Clarifai gRPC INTERNAL"


def test_an_endpoint_outside_the_policy_is_refused_before_any_call(fake):
    fake.reset()
    with pytest.raises(errors.EndpointRefused, match="ORACLE_ALLOWED_ENDPOINTS"):
        ClarifaiOracle(api_key=KEY, endpoint=fake.endpoint, egress=EgressPolicy())
    allowed = EgressPolicy.from_entries([fake.endpoint])  # the operator's say-so
    with ClarifaiOracle(api_key=KEY, endpoint=fake.endpoint, egress=allowed) as oracle:
        assert oracle.predict(IMAGES[:1]).probs.shape == (1, 2)
    assert fake.counts(KEY).requests == 1


@pytest.mark.parametrize("address", ["127.0.0.1", "169.254.169.254", "10.1.2.3"])
def test_the_default_host_resolving_inside_is_refused_at_connect_time(monkeypatch, address):
    """api.clarifai.com passes the policy; what it resolves to when the channel opens does
    not, so no connection is made (DNS rebinding), and no retry would help."""
    monkeypatch.setattr(egress, "resolve", lambda host, port: [address])
    oracle = ClarifaiOracle(api_key=KEY, egress=EgressPolicy())  # a known model: no call yet
    with oracle, pytest.raises(errors.EgressRefused) as caught:
        oracle.predict(IMAGES[:1])
    assert caught.value.provider == "clarifai" and not caught.value.retryable


def test_a_pinned_channel_goes_to_the_checked_addresses(fake):
    """The name does not resolve; the channel reaches the fake at the address given."""
    fake.reset()
    channel = open_channel(f"http://clarifai.invalid:{fake.port}", addresses=["127.0.0.1"])
    try:
        request = service_pb2.PostModelOutputsRequest(model_id="nsfw-recognition")
        response = v2_stub(channel).PostModelOutputs(
            request, metadata=(("authorization", f"Key {KEY}"),), timeout=5
        )
    finally:
        channel.close()
    assert response.status.req_id  # the fake answered
    assert fake.counts(KEY).requests == 1
