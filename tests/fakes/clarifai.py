"""A fake Clarifai API: the real ``clarifai.api.V2`` gRPC service (official protos) on
127.0.0.1, answering ``PostModelOutputs`` with the bundled ImageNet model's opinion.

It reproduces what docs/providers.md lists: in-body status codes (auth 11009/11102, throttle
11005, model 21200, undecodable image 30101 as FAILURE or MIXED_STATUS), API keys in the
``authorization`` metadata, a per-key rate limit, 128 inputs per request, and concepts
ordered by value with the ``max_concepts``/``min_value`` output config honoured (default
20 concepts, like the service). Faults can be injected; per-key counts tell what a client
really sent and what would have been billed.

Run alone (counts and faults then live at ``http://127.0.0.1:ADMIN/counts`` and ``/faults``):
    python -m tests.fakes.clarifai --port 50051 --admin-port 50052 --key demo-key --rate-limit 15
(``--hourly-limit 10 --hour-seconds 30``: an hourly quota of 10 requests that renews every 30 s.)
(``--model cheap`` swaps the network for a microsecond-cheap opinion, for benchmarks.)
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import random
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent import futures
from dataclasses import dataclass, field
from functools import cache
from http.server import ThreadingHTTPServer
from typing import Any, Literal

import grpc
import numpy as np
from clarifai_grpc.grpc.api import resources_pb2, service_pb2, service_pb2_grpc
from clarifai_grpc.grpc.api.status import status_code_pb2 as S
from clarifai_grpc.grpc.api.status import status_pb2
from PIL import Image

from tests.fakes.admin import AdminApi, FakeServer, serve_admin
from tests.fakes.model import CheapModel, FakeModel, ModelKind, add_model_option, make_model

USER_ID, APP_ID, VERSION_ID = "clarifai", "main", "fake-version-1"
#: model id -> concept view of adapters.label_groups (None: all 1,000 ImageNet classes)
MODELS: dict[str, str | None] = {
    "nsfw-recognition": "nsfw",
    "moderation-recognition": "moderation",
    "general-image-recognition": None,
    # a user's own model: its concepts are the moderation view's, and the client must ask
    "my-moderation-model": "moderation",
}
MAX_INPUTS = 128
DEFAULT_MAX_CONCEPTS = 20
MAX_MESSAGE = 64 * 1024 * 1024  # 128 realistic images exceed gRPC's 4 MiB default
REQUEST_ID_HEADER = "x-clarifai-request-id"
DESCRIPTIONS = {
    S.SUCCESS: "Ok",
    S.MIXED_STATUS: "Mixed Success",
    S.FAILURE: "Failure",
    S.CONN_THROTTLED: "Making too many requests",
    S.CONN_EXCEED_HOURLY_LIMIT: "Exceeded hourly request limit",
    S.CONN_KEY_NOT_FOUND: "API key not found",
    S.CONN_INVALID_REQUEST: "Invalid request",
    S.MODEL_DOES_NOT_EXIST: "Model does not exist",
    S.INPUT_UNSUPPORTED_FORMAT: "Input unsupported format",
    S.INTERNAL_SERVER_ISSUE: "Internal server issue",
}


@dataclass(frozen=True)
class Faults:
    """What goes wrong, and how often (probabilities draw from the server's seeded RNG)."""

    transient_rate: float = 0.0  # a whole request fails...
    transient_kind: Literal["unavailable", "internal"] = "unavailable"  # ...as gRPC or 98004
    latency: float = 0.0  # seconds added to every answer
    hang: bool = False  # answer nothing until the client's deadline has passed
    input_failure_rate: float = 0.0  # one input fails alone (98004), giving MIXED_STATUS
    drop_concepts: tuple[str, ...] = ()  # concept names left out of answers (malformed)

    def __post_init__(self) -> None:
        if not (0 <= self.transient_rate <= 1 and 0 <= self.input_failure_rate <= 1):
            raise ValueError("fault rates are probabilities in [0, 1]")
        if self.transient_kind not in ("unavailable", "internal") or self.latency < 0:
            raise ValueError("transient_kind is 'unavailable' or 'internal'; latency ≥ 0")
        object.__setattr__(self, "drop_concepts", tuple(self.drop_concepts))


@dataclass
class Counts:
    """Per key: requests received, images received, images answered successfully (the
    billable operations), throttled requests, failed requests (anything but SUCCESS and not
    throttled; MIXED_STATUS included)."""

    requests: int = 0
    images: int = 0
    billable: int = 0
    throttled: int = 0
    failed: int = 0

    def __add__(self, other: Counts) -> Counts:
        pairs = zip(dataclasses.astuple(self), dataclasses.astuple(other), strict=True)
        return Counts(*(a + b for a, b in pairs))


@dataclass
class TokenBucket:
    """``rate`` requests/s with bursts of up to ``burst``: a client that never exceeds
    ``rate`` requests in any one-second window is never refused (when ``burst`` ≥ rate)."""

    rate: float
    burst: float
    tokens: float
    stamp: float

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0 - 1e-9:  # float rounding must not refuse a client at the rate
            self.tokens -= 1.0
            return True
        return False


@cache
def _model(view: str | None, kind: ModelKind = "network") -> FakeModel | CheapModel:
    return make_model(view, kind)  # shared: loading the network is the slow part of a start


def _concept_id(view: str | None, name: str) -> str:
    # Public models name concepts with opaque ids ("ai_…"); the general fake uses the name.
    return name if view is None else "ai_" + hashlib.sha1(name.encode()).hexdigest()[:8]


def _status(code: int, details: str = "", req_id: str = "") -> status_pb2.Status:
    description = DESCRIPTIONS.get(code) or S.StatusCode.Name(code)
    return status_pb2.Status(code=code, description=description, details=details, req_id=req_id)


def _decode(blob: bytes) -> np.ndarray | None:
    try:
        with Image.open(io.BytesIO(blob)) as img:
            return np.asarray(img.convert("RGB"))
    except Exception:  # Pillow raises many kinds for bad bytes; all mean "undecodable"
        return None


@dataclass
class _State:
    counts: dict[str, Counts] = field(default_factory=dict)
    buckets: dict[str, TokenBucket] = field(default_factory=dict)
    # per key: when its quota window opened, and the requests admitted in it
    windows: dict[str, tuple[float, int]] = field(default_factory=dict)


class FakeClarifai(FakeServer):
    """The fake server; ``with FakeClarifai(keys={"k"}) as fake: ... fake.port``."""

    def __init__(
        self,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        keys: Iterable[str] = ("demo-key",),
        rate_limit: float | None = 15.0,
        burst: float | None = None,
        faults: Faults | None = None,
        seed: int = 0,
        admin_port: int | None = None,
        workers: int = 16,
        clock: Callable[[], float] = time.monotonic,
        model: ModelKind = "network",
        hourly_limit: int | None = None,
        hour_seconds: float = 3600.0,
    ) -> None:
        """``model``: the fake's opinion, the bundled network or, for benchmarks that measure
        the client, the microsecond-cheap ``tests.fakes.model.CheapModel``. ``hourly_limit``
        requests per key are admitted in each window of ``hour_seconds`` (opened by the
        key's first request after the last window closed); the rest get 11003
        ``CONN_EXCEED_HOURLY_LIMIT``, counted as throttled. Tests shorten the hour."""
        self.host, self.port, self.admin_port = host, port, admin_port
        self.model: ModelKind = model
        self.keys = frozenset(keys)
        self.rate_limit = rate_limit  # None: unlimited
        self.hourly_limit, self.hour_seconds = hourly_limit, hour_seconds
        self.burst = burst if burst is not None else max(1.0, rate_limit or 1.0)
        self.faults = faults or Faults()
        self.workers, self.clock = workers, clock
        self._rng = random.Random(seed)
        self._state = _State()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: grpc.Server | None = None
        self._admin: ThreadingHTTPServer | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> FakeClarifai:
        """Listen (on a free port when ``port`` is 0) and serve from a thread pool."""
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.workers),
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE),
                ("grpc.so_reuseport", 0),  # a busy port must fail, not be shared silently
            ],
        )
        service_pb2_grpc.add_V2Servicer_to_server(_Servicer(self), server)
        self.port = server.add_insecure_port(f"{self.host}:{self.port}")
        self._stopping = threading.Event()
        server.start()
        self._server = server
        if self.admin_port is not None:
            api = _admin_api(self)
            self._admin = serve_admin(api, self.host, self.admin_port, "fake-clarifai-admin")
            self.admin_port = self._admin.server_address[1]
        return self

    def stop(self) -> None:
        """Stop serving; hanging requests are released first."""
        self._stopping.set()
        if self._server is not None:
            self._server.stop(grace=0.5).wait()
            self._server = None
        if self._admin is not None:
            self._admin.shutdown()
            self._admin.server_close()
            self._admin = None

    @property
    def endpoint(self) -> str:
        """The URL a ClarifaiOracle takes to reach this fake."""
        return f"http://{self.host}:{self.port}"

    # -- control and observation -------------------------------------------------------------
    def counts(self, key: str | None = None) -> Counts:
        """Counts for one key, or summed over every key presented when ``key`` is None."""
        with self._lock:
            if key is not None:
                return dataclasses.replace(self._state.counts.get(key, Counts()))
            return sum(self._state.counts.values(), Counts())

    def counts_by_key(self) -> dict[str, Counts]:
        """A copy of every key's counts."""
        with self._lock:
            return {k: dataclasses.replace(c) for k, c in self._state.counts.items()}

    def set_faults(self, **changes: object) -> Faults:
        """Change some fault settings (``Faults`` fields); returns the new settings."""
        faults = dataclasses.replace(self.faults, **changes)  # type: ignore[arg-type]
        with self._lock:
            self.faults = faults
        return faults

    def reset(self, *, seed: int | None = None) -> None:
        """Zero the counts, refill the rate limits, clear faults, optionally reseed."""
        with self._lock:
            self._state, self.faults = _State(), Faults()
            if seed is not None:
                self._rng.seed(seed)

    # -- the service -------------------------------------------------------------------------
    def _admit(
        self, context: grpc.ServicerContext, n_images: int, req_id: str
    ) -> tuple[str, Faults, status_pb2.Status | None]:
        """Count the request; return (key, faults, refusal status or None)."""
        auth = dict(context.invocation_metadata()).get("authorization", "")
        key = auth[4:] if auth.startswith("Key ") else ""
        with self._lock:
            counts = self._state.counts.setdefault(key, Counts())
            counts.requests += 1
            counts.images += n_images
            refusal = None
            if not key:
                refusal = _status(
                    S.CONN_INVALID_REQUEST, "Empty or malformed authorization header", req_id
                )
            elif key not in self.keys:
                refusal = _status(S.CONN_KEY_NOT_FOUND, "", req_id)
            elif not self._within_quota(key, self.clock()):
                counts.throttled += 1
                return key, self.faults, _status(S.CONN_EXCEED_HOURLY_LIMIT, "", req_id)
            elif self.rate_limit and not self._bucket(key).take(self.clock()):
                counts.throttled += 1
                return key, self.faults, _status(S.CONN_THROTTLED, "", req_id)
            counts.failed += refusal is not None
            return key, self.faults, refusal

    def _within_quota(self, key: str, now: float) -> bool:
        """Admit one more request of ``key`` into its hourly window (under the lock)."""
        if self.hourly_limit is None:
            return True
        opened, used = self._state.windows.get(key, (now, 0))
        if now - opened >= self.hour_seconds:
            opened, used = now, 0
        if used >= self.hourly_limit:
            self._state.windows[key] = (opened, used)
            return False
        self._state.windows[key] = (opened, used + 1)
        return True

    def _bucket(self, key: str) -> TokenBucket:
        if key not in self._state.buckets:
            assert self.rate_limit
            self._state.buckets[key] = TokenBucket(
                self.rate_limit, self.burst, self.burst, self.clock()
            )
        return self._state.buckets[key]

    def _find_model(
        self,
        request: service_pb2.PostModelOutputsRequest | service_pb2.GetModelRequest,
        req_id: str,
    ) -> tuple[str | None, status_pb2.Status | None]:
        """(view, None) for a known model, or (None, not-found status)."""
        app = request.user_app_id
        if request.model_id not in MODELS or (app.user_id, app.app_id) != (USER_ID, APP_ID):
            details = f"Model '{request.model_id}' does not exist in {app.user_id}/{app.app_id}"
            return None, _status(S.MODEL_DOES_NOT_EXIST, details, req_id)
        if request.version_id not in ("", VERSION_ID):
            details = f"Model version '{request.version_id}' does not exist"
            return None, _status(S.MODEL_DOES_NOT_EXIST, details, req_id)
        return MODELS[request.model_id], None

    def _record(self, key: str, status: int, billable: int = 0) -> None:
        with self._lock:
            counts = self._state.counts[key]
            counts.billable += billable
            counts.failed += status != S.SUCCESS

    def model_info(
        self, request: service_pb2.GetModelRequest, context: grpc.ServicerContext
    ) -> service_pb2.SingleModelResponse:
        """GetModel / GetModelOutputInfo: the model and its concepts, in model order."""
        req_id = uuid.uuid4().hex
        key, _, refusal = self._admit(context, 0, req_id)
        if refusal is not None:
            return service_pb2.SingleModelResponse(status=refusal)
        view, missing = self._find_model(request, req_id)
        if missing is not None:
            self._record(key, missing.code)
            return service_pb2.SingleModelResponse(status=missing)
        concepts = [
            resources_pb2.Concept(id=_concept_id(view, n), name=n, app_id=APP_ID)
            for n in _model(view, self.model).labels
        ]
        info = resources_pb2.OutputInfo(data=resources_pb2.Data(concepts=concepts))
        model = resources_pb2.Model(
            id=request.model_id, user_id=USER_ID, app_id=APP_ID, output_info=info,
            model_version=resources_pb2.ModelVersion(id=VERSION_ID, output_info=info),
        )  # fmt: skip
        return service_pb2.SingleModelResponse(status=_status(S.SUCCESS, "", req_id), model=model)

    def predict(
        self, request: service_pb2.PostModelOutputsRequest, context: grpc.ServicerContext
    ) -> service_pb2.MultiOutputResponse:
        """PostModelOutputs: auth, rate limit, model, size limit, faults, then the model."""
        req_id = uuid.uuid4().hex
        key, faults, refusal = self._admit(context, len(request.inputs), req_id)
        if refusal is not None:
            return service_pb2.MultiOutputResponse(status=refusal)
        view, missing = self._find_model(request, req_id)
        if missing is None and len(request.inputs) > MAX_INPUTS:
            details = f"{len(request.inputs)} inputs; at most {MAX_INPUTS} per request"
            missing = _status(S.FAILURE, details, req_id)
        if missing is None:
            missing = self._inject(key, faults, context, req_id)
        if missing is not None:
            self._record(key, missing.code)
            return service_pb2.MultiOutputResponse(status=missing)
        outputs, answered = self._outputs(request, view, faults)
        if answered == len(outputs):
            code = S.SUCCESS
        elif answered:
            code = S.MIXED_STATUS
        else:
            code = S.FAILURE
        self._record(key, code, billable=answered)
        return service_pb2.MultiOutputResponse(status=_status(code, "", req_id), outputs=outputs)

    def _inject(
        self, key: str, faults: Faults, context: grpc.ServicerContext, req_id: str
    ) -> status_pb2.Status | None:
        """Apply latency, hangs and whole-request transient failures."""
        if faults.latency:
            self._stopping.wait(faults.latency)
        if faults.hang:
            remaining = context.time_remaining()
            self._stopping.wait(min(remaining if remaining is not None else 60.0, 60.0) + 0.05)
            return _status(S.INTERNAL_UNEXPECTED_TIMEOUT, "the client had gone", req_id)
        with self._lock:
            transient = self._rng.random() < faults.transient_rate
        if not transient:
            return None
        if faults.transient_kind == "internal":
            return _status(S.INTERNAL_SERVER_ISSUE, "injected fault", req_id)
        self._record(key, S.FAILURE)  # now: abort raises
        context.set_trailing_metadata(((REQUEST_ID_HEADER, req_id),))
        context.abort(grpc.StatusCode.UNAVAILABLE, "injected fault: service unavailable")
        return None  # not reached: abort raises

    def _outputs(
        self, request: service_pb2.PostModelOutputsRequest, view: str | None, faults: Faults
    ) -> tuple[list[resources_pb2.Output], int]:
        """One output per input, in order; returns them and how many succeeded."""
        images = [_decode(inp.data.image.base64) for inp in request.inputs]
        with self._lock:
            flaky = [self._rng.random() < faults.input_failure_rate for _ in images]
        ok = [i for i, img in enumerate(images) if img is not None and not flaky[i]]
        model = _model(view, self.model)
        probs = dict(zip(ok, model.probs([images[i] for i in ok]), strict=True))
        config = request.model.model_version.output_info.output_config
        if not config.ByteSize():
            config = request.model.output_info.output_config
        outputs = []
        for i, inp in enumerate(request.inputs):
            out = resources_pb2.Output(id=uuid.uuid4().hex, input=resources_pb2.Input(id=inp.id))
            if images[i] is None:
                out.status.CopyFrom(_status(S.INPUT_UNSUPPORTED_FORMAT, "cannot decode image"))
            elif flaky[i]:
                out.status.CopyFrom(_status(S.INTERNAL_SERVER_ISSUE, "injected input fault"))
            else:
                out.status.CopyFrom(_status(S.SUCCESS))
                concepts = _concepts(view, model.labels, probs[i], config, faults)
                out.data.concepts.extend(concepts)
            outputs.append(out)
        return outputs, len(ok)


def _concepts(
    view: str | None,
    labels: tuple[str, ...],
    row: np.ndarray,
    config: resources_pb2.OutputConfig,
    faults: Faults,
) -> list[resources_pb2.Concept]:
    """The answer's concepts: highest value first, as many as asked, above min_value."""
    order = np.argsort(-row, kind="stable")[: config.max_concepts or DEFAULT_MAX_CONCEPTS]
    return [
        resources_pb2.Concept(id=_concept_id(view, labels[j]), name=labels[j],
                              value=float(row[j]), app_id=APP_ID)
        for j in order
        if row[j] >= config.min_value and labels[j] not in faults.drop_concepts
    ]  # fmt: skip


class _Servicer(service_pb2_grpc.V2Servicer):
    """The generated servicer answers UNIMPLEMENTED; these methods delegate to the fake."""

    def __init__(self, fake: FakeClarifai) -> None:
        self._fake = fake

    def PostModelOutputs(self, request, context):
        return self._fake.predict(request, context)

    def GetModelOutputInfo(self, request, context):
        return self._fake.model_info(request, context)

    def GetModel(self, request, context):
        return self._fake.model_info(request, context)


def _admin_api(fake: FakeClarifai) -> AdminApi:
    """GET /counts[?key=K], GET /faults, POST /faults {field: value}, POST /reset {seed}."""

    def counts(query: Mapping[str, str]) -> object:
        if "key" in query:
            return dataclasses.asdict(fake.counts(query["key"]))
        by_key = {k: dataclasses.asdict(c) for k, c in fake.counts_by_key().items()}
        return {"total": dataclasses.asdict(fake.counts()), "keys": by_key}

    def reset(args: dict[str, Any]) -> object:
        fake.reset(seed=args.get("seed"))
        return {}

    return AdminApi(
        get={"/counts": counts, "/faults": lambda _: dataclasses.asdict(fake.faults)},
        post={"/faults": lambda args: dataclasses.asdict(fake.set_faults(**args)), "/reset": reset},
    )


def main(argv: list[str] | None = None) -> None:
    """Serve a fake until Ctrl-C."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50051)
    parser.add_argument("--admin-port", type=int, default=None)
    parser.add_argument("--key", action="append", help="a valid API key (repeatable)")
    parser.add_argument("--rate-limit", type=float, default=15.0, help="requests/s per key")
    parser.add_argument("--burst", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hourly-limit", type=int, default=None, help="requests per key per hour")
    parser.add_argument("--hour-seconds", type=float, default=3600.0, help="how long an hour is")
    add_model_option(parser)
    args = parser.parse_args(argv)
    fake = FakeClarifai(port=args.port, host=args.host, keys=args.key or ["demo-key"],
                        rate_limit=args.rate_limit or None, burst=args.burst,
                        seed=args.seed, admin_port=args.admin_port,
                        model=args.model, hourly_limit=args.hourly_limit,
                        hour_seconds=args.hour_seconds)  # fmt: skip
    with fake:
        admin = f", admin http://{args.host}:{fake.admin_port}" if fake.admin_port else ""
        print(f"fake Clarifai gRPC on {fake.endpoint}{admin}", flush=True)
        done = threading.Event()
        # Explicit handlers: a shell starting us with `&` leaves SIGINT ignored.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: done.set())
        while not done.wait(1.0):
            pass


if __name__ == "__main__":
    main()
