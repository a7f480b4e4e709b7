"""One error hierarchy for every oracle, by meaning rather than by provider.

Adapters translate provider answers (gRPC status, in-body Clarifai codes, HTTP status codes)
into these classes and raise them ``from`` the original error. Each carries the provider's
request id when there is one. The retry policy (``adapters.retry``) decides from the class
alone whether an error is worth another attempt. Docstrings double as default messages.
"""

from __future__ import annotations


class OracleError(Exception):
    """The oracle could not answer."""

    retryable = False

    def __init__(
        self,
        message: str | None = None,
        *,
        provider: str | None = None,
        request_id: str | None = None,
        status: str | int | None = None,
    ) -> None:
        self.message = message or (self.__doc__ or "").strip().splitlines()[0]
        self.provider, self.request_id, self.status = provider, request_id, status
        super().__init__(self.message)

    def __str__(self) -> str:
        extra = [
            f"{k}={v}"
            for k, v in (("status", self.status), ("request_id", self.request_id))
            if v is not None
        ]
        return f"{self.message} ({', '.join(extra)})" if extra else self.message


class Throttled(OracleError):
    """The provider is rate-limiting this credential."""

    retryable = True

    def __init__(
        self, message: str | None = None, *, retry_after: float | None = None, **kwargs: object
    ) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after


class QuotaExhausted(OracleError):
    """The credential's request quota for this period is used up (Clarifai's hourly limit,
    a Custom Vision resource's monthly predictions).

    Not retryable within a request's retries: seconds of backoff cannot renew an hourly
    quota. A job that meets it waits for the quota instead of failing (``Settings
    .quota_wait_seconds``): back to the queue in the service, asleep in ``reprogram train``.
    ``renews_in``: the seconds until the provider said the quota renews, when it said so
    (a job then waits that long, or fails at once when that is longer than it would wait)."""

    def __init__(
        self, message: str | None = None, *, renews_in: float | None = None, **kwargs: object
    ) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.renews_in = renews_in


class TransientUpstreamError(OracleError):
    """The provider failed in a way that may pass (5xx, unavailable, timeout)."""

    retryable = True


class AuthFailed(OracleError):
    """The provider refused the credential (missing, wrong or without permission)."""


class NotFound(OracleError):
    """The provider does not know the model, version or project named."""


class BadInput(OracleError):
    """The provider refused an input (e.g. an image it cannot decode)."""

    def __init__(
        self, message: str | None = None, *, index: int | None = None, **kwargs: object
    ) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.index = index  # position of the refused image within the request


class MalformedAnswer(OracleError):
    """The provider's answer is not what its protocol promises (e.g. concepts missing)."""


class PartialFailure(OracleError):
    """Some inputs of a batch were answered and others failed (Clarifai MIXED_STATUS).

    ``answered`` maps positions within the request to probability rows; ``failed`` maps the
    other positions to the error each one met. Only the failed ones need another attempt."""

    def __init__(
        self,
        message: str | None = None,
        *,
        answered: dict[int, object],
        failed: dict[int, OracleError],
        **kwargs: object,
    ) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.answered, self.failed = answered, failed

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        return all(e.retryable for e in self.failed.values())


class EgressRefused(OracleError):
    """The egress policy refused the address an endpoint resolves to (checked when
    connecting, so a name that changes what it resolves to is caught too)."""


class BudgetExceeded(Exception):
    """The job's query or cost budget does not cover this request."""


class ConfigurationError(ValueError):
    """The oracle is configured wrongly (unknown model file, bad endpoint, missing key)."""


class EndpointRefused(ConfigurationError):
    """The egress policy does not allow this endpoint (``adapters.egress``)."""


def span(seconds: float) -> str:
    """A duration in words for an error message: ``"45 s"``, ``"12 min"``, ``"5 h 3 min"``,
    ``"22 d 14 h"`` (the two largest units)."""
    left = max(0, round(seconds))
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if left >= size or (unit == "s" and not parts):
            parts.append(f"{left // size} {unit}")
            left %= size
    return " ".join(parts[:2])
