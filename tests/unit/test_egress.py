"""The egress policy: which endpoints a tenant's oracle may reach, the allowlist's syntax,
which addresses are refused, and the check at connect time (DNS that changes in between)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from adapters import egress
from adapters.egress import Allowed, EgressPolicy, address_refusal
from adapters.errors import EgressRefused, EndpointRefused
from app.config.settings import Settings

DEFAULT = EgressPolicy()


def resolving(table: dict[str, list[str]]):
    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError(f"{host} does not resolve")
        return table[host]

    return resolve


@pytest.mark.parametrize(
    ("provider", "url"),
    [
        ("clarifai", "https://api.clarifai.com"),
        ("clarifai", "https://api.clarifai.com:443/"),
        ("clarifai", "https://API.Clarifai.com."),
        ("customvision", "https://acme.cognitiveservices.azure.com"),
        ("customvision", "https://westeurope.api.cognitive.microsoft.com/prefix"),
    ],
)
def test_provider_hosts_over_https_are_admitted_and_checked(provider, url):
    _, check = DEFAULT.admit(provider, url)
    assert check  # reached only at public addresses


@pytest.mark.parametrize(
    ("provider", "url"),
    [
        ("clarifai", "http://api.clarifai.com:80"),  # plaintext
        ("clarifai", "https://api.clarifai.com:8443"),  # another port
        ("clarifai", "https://acme.cognitiveservices.azure.com"),  # another provider's host
        ("customvision", "https://cognitiveservices.azure.com"),  # the bare domain
        ("customvision", "https://evil.com/x.cognitiveservices.azure.com"),
        ("customvision", "https://x.cognitiveservices.azure.com.evil.com"),
        ("customvision", "http://127.0.0.1:8090"),
        ("customvision", "https://10.0.0.1"),
        ("customvision", "https://169.254.169.254"),
        ("customvision", "http://localhost:8090"),
        ("clarifai", "http://[::1]:50051"),
        ("clarifai", "https://2130706433"),  # 127.0.0.1 as one number
        ("clarifai", "ftp://api.clarifai.com"),
        ("clarifai", "https://user:pw@api.clarifai.com"),
    ],
)
def test_everything_else_is_refused_by_default(provider, url):
    with pytest.raises(EndpointRefused, match=r"ORACLE_ALLOWED_ENDPOINTS|https://host"):
        DEFAULT.admit(provider, url)


@pytest.mark.parametrize(
    ("entry", "url", "allowed"),
    [
        ("127.0.0.1:8090", "http://127.0.0.1:8090", True),
        ("127.0.0.1:8090", "https://127.0.0.1:8090", True),
        ("127.0.0.1:8090", "http://127.0.0.1:8091", False),
        ("127.0.0.1", "http://127.0.0.1:1234", True),
        ("127.0.0.1", "http://localhost:1234", False),  # hosts compare as written
        ("localhost:50051", "http://localhost:50051", True),
        ("[::1]:50051", "http://[0:0::1]:50051", True),
        ("http://127.0.0.1:8090", "https://127.0.0.1:8090", False),
        ("https://gw.corp", "https://gw.corp:443/cv", True),
        ("https://gw.corp", "https://gw.corp:8443", False),
        ("https://gw.corp/cv", "https://gw.corp/cv/eu", True),
        ("https://gw.corp/cv", "https://gw.corp/cvx", False),
        ("https://gw.corp/cv", "https://gw.corp", False),
        ("*.corp:8443", "https://cv.eu.corp:8443", True),
        ("*.corp:8443", "https://corp:8443", False),
    ],
)
def test_the_operators_allowlist(entry, url, allowed):
    policy = EgressPolicy.from_entries([entry])
    if allowed:
        assert policy.admit("customvision", url) == (policy.admit("customvision", url)[0], False)
    else:
        with pytest.raises(EndpointRefused):
            policy.admit("customvision", url)


@pytest.mark.parametrize(
    "entry", ["ftp://x", "x:99999", "x:port", "https://", "u:p@x:1", "x?q=1", "bad host", "*"]
)
def test_bad_allowlist_entries_stop_the_settings(entry):
    with pytest.raises(ValidationError, match="ORACLE_ALLOWED_ENDPOINTS"):
        Settings(oracle_allowed_endpoints=entry)


def test_the_setting_is_a_comma_separated_list(monkeypatch):
    monkeypatch.setenv(
        "REPROGRAM_ORACLE_ALLOWED_ENDPOINTS", " 127.0.0.1:8090, https://gw.corp/cv ,"
    )
    settings = Settings()
    assert settings.oracle_allowed_endpoints == ("127.0.0.1:8090", "https://gw.corp/cv")
    assert settings.egress.allowed == (
        Allowed("127.0.0.1", None, 8090),
        Allowed("gw.corp", "https", 443, "/cv"),
    )
    monkeypatch.delenv("REPROGRAM_ORACLE_ALLOWED_ENDPOINTS")
    assert Settings().egress == EgressPolicy()


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("fd00::1", "private"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.1.2.3", "private"),
        ("100.64.0.1", "non-public"),  # carrier-grade NAT
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("8.8.8.8", None),
        ("2606:4700::1111", None),
    ],
)
def test_addresses_refused_by_default(address, kind):
    assert address_refusal(address) == kind


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.1", "169.254.169.254", "::1"])
def test_submission_refuses_a_provider_name_that_resolves_inside(monkeypatch, address):
    monkeypatch.setattr(
        egress, "resolve", resolving({"acme.cognitiveservices.azure.com": [address]})
    )
    with pytest.raises(EndpointRefused, match="resolves to a"):
        DEFAULT.check_submitted("customvision", "https://acme.cognitiveservices.azure.com")


def test_submission_leaves_a_name_that_does_not_resolve_to_the_connect_check(monkeypatch):
    monkeypatch.setattr(egress, "resolve", resolving({}))
    DEFAULT.check_submitted("clarifai", "https://api.clarifai.com")


def test_an_allowed_endpoint_is_not_resolved(monkeypatch):
    def resolve(host, port):
        raise AssertionError("an allowed endpoint is reached by name")

    monkeypatch.setattr(egress, "resolve", resolve)
    policy = EgressPolicy.from_entries(["localhost:8090"])
    policy.check_submitted("customvision", "http://localhost:8090")
    assert policy.guard("customvision").addresses("http", "localhost", 8090) is None


def test_the_connect_check_catches_dns_rebinding(monkeypatch):
    """Public when the job was submitted, loopback when the worker connects: refused."""
    table = {"api.clarifai.com": ["34.1.2.3"]}
    monkeypatch.setattr(egress, "resolve", resolving(table))
    DEFAULT.check_submitted("clarifai", "https://api.clarifai.com")
    guard = DEFAULT.guard("clarifai")
    assert guard.addresses("https", "api.clarifai.com", 443) == ["34.1.2.3"]
    table["api.clarifai.com"] = ["34.1.2.3", "127.0.0.1"]
    with pytest.raises(EgressRefused, match="loopback") as caught:
        guard.addresses("https", "api.clarifai.com", 443)
    assert caught.value.provider == "clarifai" and not caught.value.retryable


def test_the_connect_check_refuses_a_host_the_endpoint_did_not_name(monkeypatch):
    monkeypatch.setattr(egress, "resolve", resolving({"evil.example": ["34.1.2.3"]}))
    with pytest.raises(EgressRefused, match="not allowed"):
        DEFAULT.guard("customvision").addresses("https", "evil.example", 443)
