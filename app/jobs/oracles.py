"""Build an oracle and the dispatcher that feeds it from a job spec.

The only place that knows which adapter class serves which ``oracle.kind``; adding a provider
is one adapter module plus one branch here. Every caller says which egress policy a cloud
oracle connects under: the service's (``Settings.egress``) for tenants' jobs and
predictions, none for ``reprogram train`` (the user's own key on the user's own machine).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from adapters.base import Oracle
from adapters.dispatch import Dispatcher, Ledger
from adapters.egress import EgressPolicy
from adapters.errors import ConfigurationError
from adapters.ratelimit import credential_key, shared_limiter
from app.config.settings import Settings
from app.config.spec import (
    ClarifaiOracleSpec,
    CloudCredential,
    CustomVisionOracleSpec,
    OracleSpec,
    TorchOracleSpec,
)

SecretResolver = Callable[[CloudCredential], str]


def secret_from_env(spec: CloudCredential) -> str:
    """The CLI's way: the key is in the environment variable the spec names."""
    if not spec.api_key_env:
        raise ConfigurationError(
            "oracle.api_key_env must name the environment variable that holds the API key"
        )
    value = os.environ.get(spec.api_key_env)
    if not value:
        raise ConfigurationError(f"environment variable {spec.api_key_env} is not set")
    return value


def build_oracle(
    spec: OracleSpec, *, input_size: int, secret: SecretResolver, egress: EgressPolicy | None
) -> Oracle:
    """The oracle ``spec`` names; ``egress`` is the policy a cloud oracle's endpoint and
    connections are checked against (None: any endpoint)."""
    if isinstance(spec, TorchOracleSpec):
        from adapters.torch_local import TorchOracle

        return TorchOracle(
            spec.model,
            outputs=spec.outputs,
            labels=spec.labels,
            view=spec.view,
            input_size=input_size,
            device=spec.device,
        )
    if isinstance(spec, ClarifaiOracleSpec):
        from adapters.clarifai import ClarifaiOracle

        kwargs = {"endpoint": spec.endpoint} if spec.endpoint else {}
        return ClarifaiOracle(
            model_id=spec.model_id,
            version_id=spec.version_id,
            user_id=spec.user_id,
            app_id=spec.app_id,
            api_key=secret(spec),
            max_images_per_request=spec.max_images_per_request,
            labels=spec.labels,
            egress=egress,
            **kwargs,
        )
    if isinstance(spec, CustomVisionOracleSpec):
        from adapters.customvision import CustomVisionOracle

        return CustomVisionOracle(
            project_id=spec.project_id,
            published_name=spec.published_name,
            endpoint=spec.endpoint,
            api_key=secret(spec),
            labels=spec.labels,
            egress=egress,
        )
    raise ConfigurationError(f"unknown oracle kind {spec.kind!r}")


def build_dispatcher(
    oracle: Oracle, spec: OracleSpec, *, settings: Settings, ledger: Ledger, secret: SecretResolver
) -> Dispatcher:
    """A dispatcher with the shared limiter of this (provider, credential)."""
    limit = settings.rate_limit(oracle.provider)
    limiter, unit = None, "request"
    if limit is not None and isinstance(spec, CloudCredential):
        per_second, unit = limit
        if spec.rate_limit is not None:
            per_second = spec.rate_limit
        key = credential_key(oracle.provider, secret(spec))
        limiter = shared_limiter(key, per_second, settings.limiter_backend)
    return Dispatcher(oracle, ledger=ledger, limiter=limiter, limit_unit=unit)


@contextmanager
def open_oracle(
    spec: OracleSpec,
    *,
    input_size: int,
    settings: Settings,
    ledger: Ledger,
    secret: SecretResolver,
    egress: EgressPolicy | None,
) -> Iterator[tuple[Oracle, Dispatcher]]:
    """The oracle a spec names and its dispatcher (``ledger``, the shared limiter, retries),
    closed together: the CLI, the worker and ``predict`` all query through this. A ledger's
    price is ``settings.price(spec.kind)``: an oracle's provider is its spec's kind."""
    oracle = build_oracle(spec, input_size=input_size, secret=secret, egress=egress)
    try:
        dispatcher = build_dispatcher(oracle, spec, settings=settings, ledger=ledger, secret=secret)
        try:
            yield oracle, dispatcher
        finally:
            dispatcher.close()
    finally:
        oracle.close()
