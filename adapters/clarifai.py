"""Clarifai's prediction API as an oracle, through the official ``clarifai_grpc`` stubs.

One ``predict`` is one ``PostModelOutputs`` call: the images travel as lossless PNG, the
answer's concepts become one probability row per image in the stable order of ``labels``.
Clarifai reports most errors *inside* a normal response (``status.code``), so this module
translates in-body codes and ``grpc.RpcError`` alike into ``adapters.errors``. It never
retries: its channel has gRPC retries switched off so that ``adapters.dispatch`` alone
decides when to try again (docs/providers.md, Clarifai's traps).

Error messages carry Clarifai's status code name (or the gRPC code), never the description
or details text the endpoint sent. With an egress guard (the service), the channel goes to
the addresses ``adapters.egress`` resolved and checked (TLS still verifies the host name),
resolved and checked again every ``REPIN_S`` seconds.
"""

from __future__ import annotations

import io
import ipaddress
import re
import threading
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import grpc
import numpy as np
from clarifai_grpc.channel import clarifai_channel
from clarifai_grpc.grpc.api import resources_pb2, service_pb2, service_pb2_grpc
from clarifai_grpc.grpc.api.status import status_code_pb2, status_pb2
from google.protobuf.message import Message
from PIL import Image

from adapters import errors
from adapters.base import Answer, Oracle, to_uint8, validate_images
from adapters.egress import DEFAULT_ENDPOINTS, EgressPolicy, Guard

PROVIDER = "clarifai"
MAX_INPUTS = 128  # per PostModelOutputs request (docs/providers.md)
#: concept names of the public models under clarifai/main, in the order we expose them
KNOWN_CONCEPTS: dict[str, tuple[str, ...]] = {
    "nsfw-recognition": ("sfw", "nsfw"),
    "moderation-recognition": ("safe", "suggestive", "explicit", "drug", "gore"),
}
PNG_COMPRESS_LEVEL = 1  # still lossless; higher levels cost CPU and barely shrink noisy images
REQUEST_ID_HEADER = "x-clarifai-request-id"
VALUE_SLACK = 1e-5  # float32 rounding allowed around [0, 1] before an answer is malformed
REPIN_S = 300.0  # a pinned channel resolves and checks its host again this often
#: what a request id looks like; anything else the endpoint sends is dropped
_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,99}$")

S = status_code_pb2
_THROTTLED = frozenset({S.CONN_THROTTLED, S.CONN_EXCEEDS_LIMITS})
_AUTH = frozenset({
    S.CONN_ACCOUNT_ISSUES, S.CONN_TOKEN_INVALID, S.CONN_CREDENTIALS_INVALID,
    S.CONN_EXCEED_MONTHLY_LIMIT, S.CONN_INSUFFICIENT_SCOPES, S.CONN_KEY_INVALID,
    S.CONN_KEY_NOT_FOUND, S.CONN_INVALID_REQUEST, S.CONN_METHOD_NOT_ALLOWED,
    S.CONN_NO_GDPR_CONSENT, S.CONN_AUTH_METHOD_DISABLED, S.MODEL_PERMISSION_DENIED,
})  # fmt: skip
_NOT_FOUND = frozenset({S.MODEL_DOES_NOT_EXIST, S.MODEL_INVALID_ARGUMENT, S.CONN_DOES_NOT_EXIST})
_BAD_INPUT = frozenset({
    S.INPUT_FAILED, S.INPUT_UNSUPPORTED_FORMAT, S.INPUT_INVALID_ARGUMENT, S.INPUT_OVER_LIMIT,
    S.INPUT_INVALID_URL, S.INPUT_INVALID_REQUEST, S.INPUT_UNCATEGORIZED,
    S.PREDICT_INVALID_REQUEST, S.RPC_MAX_MESSAGE_SIZE_EXCEEDED, S.BAD_REQUEST,
})  # fmt: skip
_TRANSIENT = frozenset({
    S.TRY_AGAIN, S.MODEL_BUSY_PLEASE_RETRY, S.MODEL_LOADING, S.MODEL_DEPLOYING,
    S.MODEL_QUEUED_FOR_DEPLOYMENT, S.RPC_REQUEST_QUEUE_FULL, S.RPC_SERVER_UNAVAILABLE,
    S.RPC_REQUEST_TIMEOUT, S.RPC_CANCELED, S.EXTERNAL_CONNECTION_ERROR,
    S.INPUT_CONNECTION_FAILED, S.DATABASE_STATEMENT_TIMEOUT, S.DATABASE_DEADLOCK_DETECTED,
    S.DATABASE_FAIL_TO_GET_CONNECTIONS, S.DATABASE_TOO_MANY_CLIENTS, S.SERVER_ERROR,
    S.INTERNAL_UNCATEGORIZED,
})  # fmt: skip
_TRANSIENT_RPC = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED,
})  # fmt: skip
_AUTH_RPC = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})
_STUB_LOCK = threading.Lock()


def _scrub(text: str, secret: str) -> str:
    return text.replace(secret, "<redacted>") if secret else text


def _request_id(value: object) -> str | None:
    text = str(value) if value else ""
    return text if _REQUEST_ID.match(text) else None


def _code_name(code: int) -> str:
    try:
        return S.StatusCode.Name(code)
    except ValueError:
        return str(code)


def status_error(
    status: status_pb2.Status,
    *,
    index: int | None = None,
    request_id: str | None = None,
    secret: str = "",
) -> errors.OracleError:
    """The error a non-success Clarifai status means, top-level or per output.

    ``index`` is the input's position when ``status`` belongs to one output, ``request_id``
    the response's id where the status carries none. The message names the code only: the
    status's description and details are the endpoint's words (``secret`` is still removed,
    should a code name ever carry it)."""
    code = status.code
    message = _scrub(f"Clarifai {_code_name(code)}", secret)
    request_id = _request_id(status.req_id) or request_id
    kw: dict = {"provider": PROVIDER, "request_id": request_id, "status": code}
    if code in _THROTTLED:
        return errors.Throttled(message, **kw)  # Clarifai gives no Retry-After
    if code == S.CONN_EXCEED_HOURLY_LIMIT:
        return errors.QuotaExhausted(message, **kw)
    if code in _AUTH:
        return errors.AuthFailed(message, **kw)
    if code in _NOT_FOUND:
        return errors.NotFound(message, **kw)
    if code in _BAD_INPUT:
        return errors.BadInput(message, index=index, **kw)
    if code in _TRANSIENT or 98000 <= code < 99000:  # 98xxx: INTERNAL_* server faults
        return errors.TransientUpstreamError(message, **kw)
    return errors.OracleError(message, **kw)


def transport_error(err: grpc.RpcError, *, secret: str = "") -> errors.OracleError:
    """The error a failed gRPC call (no Clarifai response at all) means. The message names
    the gRPC code only; the details (the endpoint's or the transport's words) only decide
    the class."""
    code = err.code() if callable(getattr(err, "code", None)) else None
    details = (err.details() if callable(getattr(err, "details", None)) else None) or ""
    trailing = err.trailing_metadata() if callable(getattr(err, "trailing_metadata", None)) else ()
    request_id = _request_id(dict(trailing or ()).get(REQUEST_ID_HEADER))
    name = code.name if code is not None else "UNKNOWN"
    message = _scrub(f"Clarifai gRPC {name}", secret)
    kw: dict = {"provider": PROVIDER, "request_id": request_id, "status": name}
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        # gRPC also says RESOURCE_EXHAUSTED for an oversized message: no wait will fix that.
        if "larger than max" in details:
            return errors.BadInput(f"{message} (a message larger than the limit)", **kw)
        return errors.Throttled(message, **kw)
    if code in _TRANSIENT_RPC:
        return errors.TransientUpstreamError(message, **kw)
    if code in _AUTH_RPC:
        return errors.AuthFailed(message, **kw)
    if code == grpc.StatusCode.NOT_FOUND:
        return errors.NotFound(message, **kw)
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE):
        return errors.BadInput(message, **kw)
    return errors.OracleError(message, **kw)


def v2_stub(channel: grpc.Channel) -> service_pb2_grpc.V2Stub:
    """A ``V2Stub`` on any plain gRPC channel.

    The generated stub reads the module global ``wrap_response_deserializer`` when built;
    only ``ClarifaiChannel.get_*`` set it, so on our own channel it would still be None."""
    with _STUB_LOCK:
        clarifai_channel.wrap_response_deserializer = lambda message: message.FromString
        return service_pb2_grpc.V2Stub(channel)


def open_channel(endpoint: str, *, addresses: Sequence[str] | None = None) -> grpc.Channel:
    """A channel to ``https://host[:port]`` (TLS) or ``http://host:port`` (plaintext).

    ``addresses``: connect to these (checked) addresses of the host instead of resolving
    it; TLS still sends and verifies the host name."""
    usage = "endpoint must look like https://host[:port] or http://host:port"
    try:
        parts = urlsplit(endpoint)
        port = parts.port
    except (ValueError, TypeError, AttributeError) as err:
        raise errors.ConfigurationError(usage) from err
    if (
        parts.scheme not in ("https", "http")
        or not parts.hostname
        or parts.username is not None  # never carry credentials in the URL
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or (parts.scheme == "http" and port is None)
    ):
        raise errors.ConfigurationError(usage)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    target = f"{host}:{port or 443}"
    options: list[tuple[str, Any]] = [
        ("grpc.enable_retries", 0),  # one layer (adapters.dispatch) owns retries
        ("grpc.max_send_message_length", clarifai_channel.MAX_MESSAGE_LENGTH),
        ("grpc.max_receive_message_length", clarifai_channel.MAX_MESSAGE_LENGTH),
    ]
    if addresses:
        target = _pinned_target(addresses, port or 443)
        options.append(("grpc.default_authority", parts.hostname))
        if parts.scheme == "https":
            # The name TLS sends (SNI) and verifies the certificate against.
            options.append(("grpc.ssl_target_name_override", parts.hostname))
    if parts.scheme == "https":
        return grpc.secure_channel(target, grpc.ssl_channel_credentials(), options=options)
    return grpc.insecure_channel(target, options=options)


def _pinned_target(addresses: Sequence[str], port: int) -> str:
    """A gRPC target naming addresses (of the first one's family), not a host to resolve."""
    first = ipaddress.ip_address(addresses[0])
    same = [a for a in addresses if ipaddress.ip_address(a).version == first.version]
    if first.version == 4:
        return "ipv4:" + ",".join(f"{a}:{port}" for a in same)
    return "ipv6:" + ",".join(f"[{a}]:{port}" for a in same)


class _Channel:
    """The channel calls go through. Without a guard, one channel that resolves its host
    itself. With one, a channel to the addresses the guard resolved and checked, replaced
    every ``REPIN_S`` seconds (so a long job follows the provider's DNS, and a name that
    turns private is refused); a replaced channel closes once calls it may carry have
    timed out. An endpoint the operator allowed is reached by name, like no guard."""

    def __init__(self, endpoint: str, guard: Guard | None, timeout: float) -> None:
        self.endpoint, self.timeout = endpoint, timeout
        self._guard: Guard | None = None
        self._lock = threading.Lock()
        self._pinned_at = -float("inf")
        self._retired: list[threading.Timer] = []
        self._closed = False
        self._channel: grpc.Channel | None = None
        self._stub: service_pb2_grpc.V2Stub | None = None
        if guard is not None:
            self._ep, check = guard.admit(endpoint)  # EndpointRefused before any call
            self._guard = guard if check else None
        if self._guard is None:
            self._channel = open_channel(endpoint)
            self._stub = v2_stub(self._channel)
        else:
            open_channel(endpoint).close()  # the endpoint's syntax, checked now

    def stub(self) -> service_pb2_grpc.V2Stub:
        if self._guard is None:
            assert self._stub is not None
            return self._stub
        with self._lock:
            if self._closed:
                if self._stub is None:
                    raise RuntimeError("the Clarifai oracle is closed")
                return self._stub  # a closed channel's stub: calls fail as gRPC says
            if self._stub is None or time.monotonic() - self._pinned_at > REPIN_S:
                try:
                    addresses = self._guard.addresses(self._ep.scheme, self._ep.host, self._ep.port)
                except OSError as err:
                    raise errors.TransientUpstreamError(
                        f"Clarifai endpoint does not resolve ({type(err).__name__})",
                        provider=PROVIDER,
                    ) from err
                assert addresses is not None
                old, self._channel = self._channel, open_channel(self.endpoint, addresses=addresses)
                self._stub, self._pinned_at = v2_stub(self._channel), time.monotonic()
                if old is not None:
                    timer = threading.Timer(2 * self.timeout + 1, old.close)
                    timer.daemon = True
                    timer.start()
                    self._retired.append(timer)
            return self._stub

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for timer in self._retired:
                timer.cancel()
            if self._channel is not None:
                self._channel.close()


def encode_png(pixels: np.ndarray) -> bytes:
    """Lossless PNG of one uint8 H×W×3 image, so the service sees exactly our pixels."""
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def _listing(names: list[str], limit: int = 10) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


class ClarifaiOracle(Oracle):
    """A Clarifai model (public or the account's own) over gRPC; thread-safe."""

    provider = PROVIDER

    def __init__(
        self,
        *,
        api_key: str,
        model_id: str = "nsfw-recognition",
        version_id: str | None = None,
        user_id: str = "clarifai",
        app_id: str = "main",
        endpoint: str = DEFAULT_ENDPOINTS[PROVIDER],
        max_images_per_request: int = MAX_INPUTS,
        max_concurrency: int = 8,
        timeout: float = 30.0,
        labels: list[str] | tuple[str, ...] | None = None,
        egress: EgressPolicy | None = None,
    ) -> None:
        """``egress``: the policy the endpoint and every connection are checked against
        (None: connect wherever ``endpoint`` says, as ``reprogram train`` does)."""
        if not isinstance(api_key, str) or not api_key or any(c.isspace() for c in api_key):
            raise errors.ConfigurationError("a Clarifai api_key (non-empty, no spaces) is required")
        if not 1 <= max_images_per_request <= MAX_INPUTS:
            raise errors.ConfigurationError(f"max_images_per_request must be in 1..{MAX_INPUTS}")
        if max_concurrency < 1 or not timeout > 0:
            raise errors.ConfigurationError("max_concurrency must be ≥ 1 and timeout > 0")
        if labels is not None and (not labels or len(set(labels)) != len(labels)):
            raise errors.ConfigurationError("labels must be a non-empty list of distinct names")
        self.model_id, self.version_id = model_id, version_id
        self.user_id, self.app_id, self.endpoint = user_id, app_id, endpoint
        self.max_images_per_request, self.max_concurrency = max_images_per_request, max_concurrency
        self.timeout = float(timeout)
        self._key = api_key
        self._metadata = (("authorization", f"Key {api_key}"),)
        self._channel = _Channel(endpoint, egress.guard(PROVIDER) if egress else None, timeout)
        try:
            if labels is not None:
                self._labels, self._column = tuple(labels), {n: j for j, n in enumerate(labels)}
            elif model_id in KNOWN_CONCEPTS:
                names = KNOWN_CONCEPTS[model_id]
                self._labels, self._column = names, {n: j for j, n in enumerate(names)}
            else:
                self._labels, self._column = self._list_concepts()
        except BaseException:
            self._channel.close()
            raise
        config = resources_pb2.OutputInfo(
            output_config=resources_pb2.OutputConfig(max_concepts=len(self._labels), min_value=0)
        )
        # Current servers read the version's output_info, older ones the model's: set both.
        self._model = resources_pb2.Model(
            output_info=config, model_version=resources_pb2.ModelVersion(output_info=config)
        )

    def __repr__(self) -> str:  # the key stays out, by construction
        return (
            f"ClarifaiOracle(model_id={self.model_id!r}, version_id={self.version_id!r}, "
            f"user_id={self.user_id!r}, app_id={self.app_id!r}, endpoint={self.endpoint!r})"
        )

    @property
    def labels(self) -> tuple[str, ...]:
        return self._labels

    def _user_app(self) -> resources_pb2.UserAppIDSet:
        return resources_pb2.UserAppIDSet(user_id=self.user_id, app_id=self.app_id)

    def _call(self, method: str, request: Message) -> Any:
        rpc: grpc.UnaryUnaryMultiCallable = getattr(self._channel.stub(), method)
        try:
            return rpc(request, metadata=self._metadata, timeout=self.timeout)
        except grpc.RpcError as err:
            raise transport_error(err, secret=self._key) from err

    def _list_concepts(self) -> tuple[tuple[str, ...], dict[str, int]]:
        """Ask the model for its concepts once; order them by concept id (stable)."""
        request = service_pb2.GetModelRequest(
            user_app_id=self._user_app(), model_id=self.model_id, version_id=self.version_id or ""
        )
        response = self._call("GetModelOutputInfo", request)
        if response.status.code != S.SUCCESS:
            raise status_error(response.status, secret=self._key)
        model = response.model
        concepts = model.model_version.output_info.data.concepts or model.output_info.data.concepts
        concepts = sorted(concepts, key=lambda c: c.id)
        if not concepts or len({c.id for c in concepts}) != len(concepts):
            raise errors.MalformedAnswer(
                f"model {self.model_id!r} lists no concepts or repeats one",
                provider=PROVIDER, request_id=_request_id(response.status.req_id),
            )  # fmt: skip
        names = [c.name or c.id for c in concepts]
        labels = names if len(set(names)) == len(names) else [c.id for c in concepts]
        column = {c.id: j for j, c in enumerate(concepts)}
        for j, label in enumerate(labels):  # answers may name a concept by id or by name
            column.setdefault(label, j)
        return tuple(labels), column

    def _encode_all(self, pixels: np.ndarray) -> list[bytes]:
        """The bytes sent for each image (a seam for tests that need undecodable inputs)."""
        return [encode_png(p) for p in pixels]

    def encode(self, images: np.ndarray) -> list[bytes]:
        """The PNG bytes of each image (8-bit), checked against the request limit."""
        images = validate_images(images, self.max_images_per_request)
        return self._encode_all(to_uint8(images)) if len(images) else []

    def predict(self, images: np.ndarray) -> Answer:
        """Probabilities (N×K over ``labels``) for one request of at most
        ``max_images_per_request`` float32 N×H×W×3 images in [0, 1]."""
        return self.predict_encoded(images, self.encode(images))

    def predict_encoded(self, images: np.ndarray, encoded: object) -> Answer:
        """``predict`` with the images already encoded (``encode``)."""
        blobs = list(encoded)  # type: ignore[call-overload]
        if not blobs:
            return Answer(probs=np.zeros((0, len(self._labels))))
        request = service_pb2.PostModelOutputsRequest(
            user_app_id=self._user_app(),
            model_id=self.model_id,
            version_id=self.version_id or "",
            inputs=[
                resources_pb2.Input(data=resources_pb2.Data(image=resources_pb2.Image(base64=b)))
                for b in blobs
            ],
            model=self._model,
        )
        response = self._call("PostModelOutputs", request)
        return self._answer(response, len(blobs))

    def _answer(self, response: service_pb2.MultiOutputResponse, n: int) -> Answer:
        status = response.status
        request_id = _request_id(status.req_id)
        if status.code not in (S.SUCCESS, S.MIXED_STATUS, S.FAILURE):
            raise status_error(status, secret=self._key)
        if status.code == S.FAILURE and not response.outputs:
            # The request as a whole was refused (e.g. too many inputs), not one image.
            message = f"{status_error(status, secret=self._key).message}: the request of {n} "
            message += "images was refused as a whole"
            raise errors.BadInput(
                message, provider=PROVIDER, request_id=request_id, status=status.code
            )
        if len(response.outputs) != n:
            raise errors.MalformedAnswer(
                f"{len(response.outputs)} outputs for {n} inputs",
                provider=PROVIDER,
                request_id=request_id,
                status=status.code,
            )
        answered: dict[int, np.ndarray] = {}
        failed: dict[int, errors.OracleError] = {}
        for i, output in enumerate(response.outputs):
            if output.status.code in (S.SUCCESS, 0):  # 0: a server that leaves it unset
                answered[i] = self._row(output, request_id)
            else:
                failed[i] = status_error(
                    output.status, index=i, request_id=request_id, secret=self._key
                )
        if not failed:
            return Answer(probs=np.stack([answered[i] for i in range(n)]), request_id=request_id)
        kinds = {type(e) for e in failed.values()}
        if not answered and len(kinds) == 1:
            raise failed[min(failed)]  # e.g. errors.BadInput naming the first refused image
        raise errors.PartialFailure(
            f"Clarifai answered {len(answered)} of {n} inputs",
            answered=answered, failed=failed,
            provider=PROVIDER, request_id=request_id, status=status.code,
        )  # fmt: skip

    def _row(self, output: resources_pb2.Output, request_id: str | None) -> np.ndarray:
        """One probability row in label order; every concept exactly once, values in [0, 1]."""
        row = np.full(len(self._labels), np.nan)
        unknown: list[str] = []
        repeated: list[str] = []
        for concept in output.data.concepts:
            j = self._column.get(concept.id)
            j = self._column.get(concept.name) if j is None else j
            if j is None:
                unknown.append(concept.name or concept.id)
            elif not np.isnan(row[j]):
                repeated.append(self._labels[j])
            else:
                row[j] = concept.value
        missing = [self._labels[j] for j in np.flatnonzero(np.isnan(row))]
        problems = [
            f"{what} concept(s) {_listing(names)}"
            for what, names in (("missing", missing), ("unknown", unknown), ("repeated", repeated))
            if names
        ]
        # Values travel as float32: a sum of probabilities may land a few ulps past 1.
        if not problems and not np.all((row >= -VALUE_SLACK) & (row <= 1.0 + VALUE_SLACK)):
            problems.append("a concept value outside [0, 1]")
        row = np.clip(row, 0.0, 1.0)
        if problems:
            raise errors.MalformedAnswer(
                f"Clarifai answer for model {self.model_id!r}: " + "; ".join(problems),
                provider=PROVIDER, request_id=request_id,
            )  # fmt: skip
        return row

    def close(self) -> None:
        """Close the channel; calls still in flight end with a transient error."""
        self._channel.close()
