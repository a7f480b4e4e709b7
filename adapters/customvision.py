"""Microsoft Custom Vision prediction (classify image, no store) as an oracle.

One image per request through the official SDK (msrest over requests). The adapter turns
the SDK's answers and exceptions into ``adapters.errors``; retries, rate limiting and
accounting belong to the layer above, so msrest's own retry policy is switched off.

The prediction API cannot list a project's tags, so unless ``labels`` are given the
adapter learns them from the first successful answer (sorted by tag name, then tag id) and
holds every later answer to exactly that set.

Redirects are never followed (a 3xx is an error, and the key goes nowhere else). Error
messages carry the status and the provider's error code, never the body or reason phrase
the endpoint sent. With an egress guard (the service), every connection goes to addresses
``adapters.egress`` resolved and checked just before it is opened.
"""

from __future__ import annotations

import io
import math
import re
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from azure.cognitiveservices.vision.customvision.prediction import CustomVisionPredictionClient
from azure.cognitiveservices.vision.customvision.prediction.models import (
    CustomVisionErrorException,
)
from msrest.authentication import ApiKeyCredentials
from msrest.exceptions import ClientRequestError, DeserializationError
from PIL import Image
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util import connection as urllib3_connection

from adapters import errors
from adapters.base import Answer, Oracle, to_uint8, validate_images
from adapters.egress import EgressPolicy, Guard
from adapters.retry import MAX_RETRY_AFTER_S, parse_retry_after

PROVIDER = "customvision"
VALUE_SLACK = 1e-5  # float rounding allowed around [0, 1] before an answer is malformed
#: where Azure front doors put the request id, most specific first
REQUEST_ID_HEADERS = ("apim-request-id", "x-ms-request-id", "request-id", "x-request-id")
#: what a request id looks like (Azure's are GUIDs); anything else the endpoint sends is dropped
_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,99}$")
#: what an error code looks like: a word (``BadRequestImageFormat``) or a status (``"429"``)
_CODE = re.compile(r"^(?:[A-Za-z]{1,64}|\d{3})$")


def _token(value: object, shape: re.Pattern[str]) -> str | None:
    text = str(value) if value is not None else ""
    return text if shape.match(text) else None


def encode_png(image: np.ndarray) -> bytes:
    """Lossless PNG bytes of one uint8 H×W×3 image (the fastest zlib level: size hardly
    matters under the 4 MB limit, CPU time does)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _retry_after(headers: Mapping[str, str]) -> float | None:
    # Azure sometimes adds a millisecond variant; it is more precise than Retry-After.
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        ms = parse_retry_after(headers.get(name))
        if ms is not None:
            return min(ms / 1000.0, MAX_RETRY_AFTER_S)
    return parse_retry_after(headers.get("Retry-After"))


#: Azure's call-volume quota answer (403): "... Quota will be replenished in 22.14:18:12."
#: (days.hours:minutes:seconds) or, in newer wording, "... Please retry after 6 days."
_REPLENISHED = re.compile(r"replenished in (?:(\d{1,4})\.)?(\d{1,2}):(\d{2}):(\d{2})", re.I)
_RETRY_AFTER_WORDS = re.compile(r"retry after (\d{1,6}) (second|minute|hour|day)s?\b", re.I)
_UNIT_S = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


def _renews_in(text: str) -> float | None:
    """The seconds until a quota renews, as an Azure quota message states it, or None."""
    if m := _REPLENISHED.search(text):
        days, hours, minutes, seconds = (int(g or 0) for g in m.groups())
        return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)
    if m := _RETRY_AFTER_WORDS.search(text):
        return float(int(m.group(1)) * _UNIT_S[m.group(2).lower()])
    return None


def _request_id(headers: Mapping[str, str] | None) -> str | None:
    for name in REQUEST_ID_HEADERS:
        if headers and headers.get(name):
            return _token(headers[name], _REQUEST_ID)
    return None


def _normalise_endpoint(endpoint: str) -> str:
    """``https://host[:port][/prefix]`` or ``http://host:port[/prefix]``, without a trailing
    slash (the SDK appends ``/customvision/...`` and would double it)."""
    try:
        parts = urlsplit(str(endpoint).strip())
        port = parts.port
    except ValueError as err:
        raise errors.ConfigurationError(
            f"Custom Vision endpoint {endpoint!r} is not a URL"
        ) from err
    problem = None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        problem = "must be https://host (as Azure serves it) or http://host:port"
    elif parts.scheme == "http" and port is None:
        problem = "plaintext endpoints must name their port (http://host:port)"
    elif parts.username or parts.password or parts.query or parts.fragment:
        problem = "must not carry credentials, a query or a fragment"
    if problem:
        raise errors.ConfigurationError(f"Custom Vision endpoint {endpoint!r} {problem}")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _disable_retries(config: Any) -> None:
    """Leave every retry to our own layer. ``retries = 0`` zeroes total/connect/read of the
    urllib3 ``Retry`` that msrest mounts on each requests session; the status list must go
    too, because msrest allows POST retries under urllib3 1.x, where a 429 or 5xx would then
    surface as a ``RetryError`` instead of the status (and lose Retry-After). Redirects are
    followed by requests, not retried; ApiKeyCredentials never triggers msrest's token-refresh
    resend. Redirects are switched off here too."""
    config.retry_policy.retries = 0
    # A 3xx is an answer: the key is never re-sent. (max_redirects stays: requests prepares,
    # without sending, the next request even when not following, and 0 would raise.)
    config.redirect_policy.allow = False
    retry = config.retry_policy.policy
    retry.status = 0
    retry.status_forcelist = frozenset()
    retry.raise_on_status = False
    retry.respect_retry_after_header = False


def _checked_socket(conn: HTTPConnection, scheme: str, guard: Guard) -> socket.socket | None:
    """A socket to one of the addresses the guard resolved and checked for ``conn``'s host,
    or None when the operator allowed the endpoint (connect by name, as urllib3 does)."""
    try:
        addresses = guard.addresses(scheme, conn.host, conn.port or 443)
    except socket.gaierror as err:
        raise NameResolutionError(conn.host, conn, err) from err
    if addresses is None:
        return None
    error: OSError | None = None
    for address in addresses:
        try:
            return urllib3_connection.create_connection(
                (address, conn.port or 443),
                conn.timeout,  # type: ignore[arg-type]
                source_address=conn.source_address,
                socket_options=conn.socket_options,
            )
        except TimeoutError as err:
            raise ConnectTimeoutError(conn, f"connection to {conn.host} timed out") from err
        except OSError as err:
            error = err
    raise NewConnectionError(conn, f"failed to establish a new connection: {error}")


def guarded_adapter(guard: Guard, max_retries: Any) -> HTTPAdapter:
    """A requests adapter whose connections go only where ``guard`` allows, to the addresses
    it checked (TLS still verifies the host name). Connections through a proxy from the
    environment are the proxy's to make and are not checked here."""

    class Conn(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            return _checked_socket(self, "http", guard) or super()._new_conn()

    class SecureConn(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            return _checked_socket(self, "https", guard) or super()._new_conn()

    class Pool(HTTPConnectionPool):
        ConnectionCls = Conn

    class SecurePool(HTTPSConnectionPool):
        ConnectionCls = SecureConn

    class Adapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": Pool, "https": SecurePool}

    return Adapter(max_retries=max_retries)


class _ClientPerThread:
    """One SDK client per calling thread.

    msrest keeps its requests session in a thread-local, so a client closed from another
    thread would close the wrong session; each entry therefore keeps the session its own
    thread created. Entries of finished threads are closed when the next thread arrives, so
    short-lived pools do not leak connections."""

    def __init__(self, factory: Callable[[], CustomVisionPredictionClient]) -> None:
        self._factory = factory
        self._local = threading.local()
        self._lock = threading.Lock()
        self._entries: list[tuple[threading.Thread, Any]] = []  # (owner, requests session)
        self.closed = False

    def get(self) -> CustomVisionPredictionClient:
        client = getattr(self._local, "client", None)
        if client is not None:
            return client
        client = self._factory()
        # The sender's session property builds this thread's session (retry policy applied
        # now, so _disable_retries must already have run); msrest itself reaches it this way.
        session = client.config.pipeline._sender.driver.session
        with self._lock:
            if self.closed:
                session.close()
                raise RuntimeError("the Custom Vision oracle is closed")
            for entry in [e for e in self._entries if not e[0].is_alive()]:
                entry[1].close()
                self._entries.remove(entry)
            self._entries.append((threading.current_thread(), session))
        self._local.client = client
        return client

    def close(self) -> None:
        with self._lock:
            self.closed = True
            entries, self._entries = self._entries, []
        for _, session in entries:
            session.close()


class CustomVisionOracle(Oracle):
    """A published Custom Vision classification iteration, queried one image at a time."""

    provider = PROVIDER
    max_images_per_request = 1

    def __init__(
        self,
        *,
        project_id: str,
        published_name: str,
        endpoint: str,
        api_key: str,
        labels: Sequence[str] | None = None,
        max_concurrency: int = 8,
        timeout: float = 30.0,
        egress: EgressPolicy | None = None,
    ) -> None:
        """``egress``: the policy every connection is checked against (None: connect
        wherever ``endpoint`` says, as ``reprogram train`` does)."""
        for name, value in (("project_id", project_id), ("published_name", published_name)):
            if not isinstance(value, str) or not value.strip():
                raise errors.ConfigurationError(f"Custom Vision needs a non-empty {name}")
        if not isinstance(api_key, str) or not api_key.strip():
            raise errors.ConfigurationError("Custom Vision needs a prediction key")
        if labels is not None and (not labels or len(set(labels)) != len(labels)):
            raise errors.ConfigurationError("labels must be a non-empty list of distinct tag names")
        if int(max_concurrency) < 1:
            raise errors.ConfigurationError("max_concurrency must be at least 1")
        if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
            raise errors.ConfigurationError("timeout must be a positive number of seconds")
        self.project_id, self.published_name = project_id, published_name
        self.endpoint = _normalise_endpoint(endpoint)
        self._guard = egress.guard(PROVIDER) if egress is not None else None
        if self._guard is not None:
            self._guard.admit(self.endpoint)  # EndpointRefused before any connection
        self.max_concurrency = int(max_concurrency)
        self.timeout = float(timeout)
        self._api_key = api_key
        self._labels: tuple[str, ...] | None = tuple(labels) if labels is not None else None
        self._labels_lock = threading.Lock()
        self._clients = _ClientPerThread(self._new_client)
        self._last = threading.local()  # .response: this thread's latest HTTP answer

    def __repr__(self) -> str:
        return (
            f"CustomVisionOracle(endpoint={self.endpoint!r}, project_id={self.project_id!r}, "
            f"published_name={self.published_name!r})"
        )

    @property
    def labels_known(self) -> bool:
        """False until the tag order is fixed (given, or learned from a first answer)."""
        return self._labels is not None

    @property
    def labels(self) -> tuple[str, ...]:
        """The project's tag names in a stable order; learned from the first answer."""
        if self._labels is None:
            raise RuntimeError(
                "Custom Vision tags are not known yet: the prediction API cannot list them, "
                "so they are learned from the first successful answer (or pass labels=...)"
            )
        return self._labels

    def encode(self, images: np.ndarray) -> bytes | None:
        """The PNG bytes of the request's one image (8-bit); None for no image."""
        images = validate_images(images, self.max_images_per_request)
        return encode_png(to_uint8(images[0])) if len(images) else None

    def predict(self, images: np.ndarray) -> Answer:
        """Classify one image (float32 1×H×W×3 in [0, 1]); thread-safe."""
        return self.predict_encoded(images, self.encode(images))

    def predict_encoded(self, images: np.ndarray, encoded: object) -> Answer:
        """``predict`` with the image already encoded (``encode``)."""
        if encoded is None:
            return Answer(probs=np.zeros((0, len(self._labels or ()))))
        if self._clients.closed:
            raise RuntimeError("the Custom Vision oracle is closed")
        data = encoded
        client = self._clients.get()
        self._last.response = None
        try:
            raw = client.classify_image_with_no_store(
                self.project_id, self.published_name, data, raw=True
            )
        except CustomVisionErrorException as err:
            self._release()
            raise self._http_error(err) from err
        except TypeError as err:
            # msrest cannot build the SDK's error model from a body without one (an empty
            # 3xx or 5xx, say): the answer's status still says what happened.
            response = self._last.response
            if response is None or response.status_code == 200:
                raise
            self._release()
            raise self._status_error(response.status_code, response.headers, None) from err
        except ClientRequestError as err:
            # The class name only: the text names addresses and what the endpoint said.
            cause = err.inner_exception or err
            raise errors.TransientUpstreamError(
                f"Custom Vision unreachable ({type(cause).__name__})", provider=PROVIDER
            ) from err
        except DeserializationError as err:
            raise errors.MalformedAnswer(
                "Custom Vision answered 200 with a body that is not a prediction",
                provider=PROVIDER,
            ) from err
        prediction = raw.output
        request_id = _request_id(raw.response.headers) or _token(
            getattr(prediction, "id", None), _REQUEST_ID
        )
        row = self._row(getattr(prediction, "predictions", None), request_id)
        return Answer(probs=row[None, :], request_id=request_id)

    def close(self) -> None:
        """Close every thread's HTTP session; later predictions raise."""
        self._clients.close()

    # -- internals ------------------------------------------------------------------------

    def _new_client(self) -> CustomVisionPredictionClient:
        credentials = ApiKeyCredentials(in_headers={"Prediction-key": self._api_key})
        client = CustomVisionPredictionClient(self.endpoint, credentials)
        _disable_retries(client.config)
        client.config.connection.timeout = self.timeout  # connect and read, in seconds
        # This thread's session (msrest keeps one per thread; _ClientPerThread calls us on
        # the thread that will use it).
        session = client.config.pipeline._sender.driver.session
        session.hooks["response"].append(self._remember)
        if self._guard is not None:  # msrest's retry settings kept
            for prefix in ("http://", "https://"):
                retries = session.get_adapter(prefix).max_retries
                session.mount(prefix, guarded_adapter(self._guard, retries))
        return client

    def _remember(self, response: Any, *args: Any, **kwargs: Any) -> None:
        self._last.response = response

    def _release(self) -> None:
        """Give the connection of an error answer back (msrest streams answers, and leaves an
        error's body unread)."""
        if self._last.response is not None:
            self._last.response.close()

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***")

    def _row(self, predictions: list[Any] | None, request_id: str | None) -> np.ndarray:
        """The answer's probabilities in label order, or errors.MalformedAnswer."""

        def malformed(why: str) -> errors.MalformedAnswer:
            return errors.MalformedAnswer(
                f"Custom Vision answer {why}", provider=PROVIDER, request_id=request_id
            )

        if not predictions:
            raise malformed("carries no predictions")
        found: dict[str, tuple[str, float]] = {}
        for p in predictions:
            name, prob = p.tag_name, p.probability
            if name is None or prob is None:
                raise malformed("has a prediction without tagName or probability")
            if name in found:
                raise malformed(f"names tag {name!r} twice")
            # Also refuses NaN; float rounding a few ulps past [0, 1] is not malformed.
            if not -VALUE_SLACK <= prob <= 1.0 + VALUE_SLACK:
                raise malformed(f"gives tag {name!r} probability {prob}")
            found[name] = (p.tag_id or "", min(max(float(prob), 0.0), 1.0))
        labels = self._learn(found)
        missing = [t for t in labels if t not in found]
        unknown = sorted(set(found) - set(labels))
        if missing or unknown:
            problems = [f"lacks tags {missing}"] if missing else []
            problems += [f"carries unknown tags {unknown}"] if unknown else []
            raise malformed(" and ".join(problems))
        return np.array([found[t][1] for t in labels], dtype=np.float64)

    def _learn(self, found: dict[str, tuple[str, float]]) -> tuple[str, ...]:
        with self._labels_lock:  # concurrent first answers: the first one fixes the order
            if self._labels is None:
                self._labels = tuple(sorted(found, key=lambda t: (t, found[t][0])))
            return self._labels

    def _http_error(self, err: CustomVisionErrorException) -> errors.OracleError:
        """Map a non-200 answer to an error by meaning."""
        response = err.response
        status = getattr(response, "status_code", None)
        headers = getattr(response, "headers", None) or {}
        if status == 403:
            # A used-up call-volume quota (F0: 10,000 predictions a month) is a 403 as a
            # refused key is; only the reason phrase and the body's words tell them apart.
            # Nothing of those words goes into the error but the renewal time read from them.
            words = f"{getattr(response, 'reason', '') or ''} {_error_text(err)}"
            if "quota" in words.lower():
                renews_in = _renews_in(words)
                when = f" (renews in {errors.span(renews_in)})" if renews_in is not None else ""
                return errors.QuotaExhausted(
                    f"Custom Vision answered HTTP 403: the prediction quota is used up{when}",
                    renews_in=renews_in,
                    provider=PROVIDER,
                    request_id=_request_id(headers),
                    status=status,
                )
        return self._status_error(status, headers, _error_code(err))

    def _status_error(
        self, status: int | None, headers: Mapping[str, str], code: str | None
    ) -> errors.OracleError:
        kw: dict[str, Any] = {
            "provider": PROVIDER,
            "request_id": _request_id(headers),
            "status": status,
        }
        # Status and code only: the body's message and the reason phrase are the endpoint's
        # words, and never reach a job's error.
        message = self._redact(
            f"Custom Vision answered HTTP {status}"
            + (f" {code}" if code and code != str(status) else "")
        )
        # Only image codes blame the image; another 400 (e.g. BadRequestInvalidIds, a project
        # id that is not a GUID) would fail for every image and must not be skipped as one.
        image_code = code is None or code.startswith("BadRequestImage")
        if status in (413, 415) or (status == 400 and image_code):
            return errors.BadInput(message, index=0, **kw)
        if status is not None and 300 <= status < 400:
            return errors.OracleError(f"{message} (a redirect; not followed)", **kw)
        if status in (401, 403):
            return errors.AuthFailed(message, **kw)
        if status == 404:
            what = {
                "NotFoundProject": f"project {self.project_id!r}",
                "NotFoundIteration": f"published iteration {self.published_name!r}",
            }.get(code or "", "resource")
            return errors.NotFound(f"Custom Vision {what} not found ({message})", **kw)
        if status == 429:
            return errors.Throttled(message, retry_after=_retry_after(headers), **kw)
        if status is not None and (status >= 500 or status == 408):
            return errors.TransientUpstreamError(message, **kw)
        return errors.OracleError(message, **kw)


def _error_text(err: CustomVisionErrorException) -> str:
    """The message of an error body (``{code, message}``, ``{"error": {code, message}}`` or
    the API gateway's ``{statusCode, message}``), at most 1,000 characters, for reading the
    kind of refusal from; never for an error's message."""
    text = getattr(err.error, "message", None)
    if not isinstance(text, str):
        try:
            body = err.response.json()
            inner = body.get("error", body) if isinstance(body, dict) else {}
            text = inner.get("message") if isinstance(inner, dict) else None
        except (ValueError, AttributeError):
            text = None
    return text[:1000] if isinstance(text, str) else ""


def _error_code(err: CustomVisionErrorException) -> str | None:
    """The error code of a Custom Vision body ``{code, message}`` or an Azure gateway body
    ``{"error": {code, message}}`` (401, 429), when it looks like one; the message is
    never used."""
    code = getattr(err.error, "code", None)
    if code is None:
        try:
            body = err.response.json()
            inner = body.get("error", body) if isinstance(body, dict) else {}
            code = inner.get("code") if isinstance(inner, dict) else None
        except (ValueError, AttributeError):
            pass
    return _token(code, _CODE) if code is not None else None
