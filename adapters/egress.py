"""Where a cloud oracle may connect: the service's egress policy.

A job spec names ``oracle.endpoint``, and the server sends the stored key there; so a tenant
must not be able to aim it at the server's own network. By default an oracle reaches only
its provider's public hosts, over HTTPS on port 443:

    clarifai       https://api.clarifai.com
    customvision   https://*.cognitiveservices.azure.com, https://*.api.cognitive.microsoft.com

and only while every address the name resolves to is public (not loopback, private,
link-local such as 169.254.169.254, shared, multicast, reserved or unspecified). Any other
endpoint (a gateway, a local fake) must be on the operator's allowlist (``Settings.
oracle_allowed_endpoints``, ``REPROGRAM_ORACLE_ALLOWED_ENDPOINTS``); an endpoint the operator
allowed is reached by name, whatever it resolves to. Entries are ``host``, ``host:port``,
``*.domain[:port]``, ``[v6addr]:port`` (any scheme) or URL prefixes ``scheme://host[:port]
[/path]``; hosts are compared as written (an allowed ``127.0.0.1`` does not allow
``localhost``).

The policy is checked twice: when a job is submitted (``EgressPolicy.check_submitted``) and
when an adapter connects (``Guard.addresses``): the adapter connects to exactly the addresses
this module resolved and checked, so a name that resolves elsewhere between the two checks
(DNS rebinding) is refused rather than followed. Without a policy (``reprogram train``: the
user's own key on the user's own machine) adapters connect wherever they are told.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from adapters.errors import EgressRefused, EndpointRefused

#: provider → host patterns reached by default (HTTPS, port 443, public addresses only)
PROVIDER_HOSTS: dict[str, tuple[str, ...]] = {
    "clarifai": ("api.clarifai.com",),
    "customvision": ("*.cognitiveservices.azure.com", "*.api.cognitive.microsoft.com"),
}
#: the endpoint a provider's oracle uses when the spec names none
DEFAULT_ENDPOINTS: dict[str, str] = {"clarifai": "https://api.clarifai.com"}
SETTING = "REPROGRAM_ORACLE_ALLOWED_ENDPOINTS"
_DNS_NAME = re.compile(
    r"^(\*\.)?[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$"
)
_DEFAULT_PORTS = {"https": 443, "http": 80}


def _host(text: str) -> str:
    """A host as compared: lower case, no trailing dot, IP addresses in canonical form."""
    host = text.lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


@dataclass(frozen=True)
class Endpoint:
    """Where a connection goes: scheme, host (as compared), port, path prefix (no slash at
    the end)."""

    scheme: str
    host: str
    port: int
    path: str = ""

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """``https://host[:port][/path]`` or ``http://host[:port][/path]``; ValueError
        otherwise."""
        parts = urlsplit(str(url).strip())
        port = parts.port  # ValueError when not a number in range
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError("not an http(s) URL with a host")
        if parts.username is not None or parts.password is not None:
            raise ValueError("carries credentials")
        host = _host(parts.hostname)
        if not (_is_ip(host) or _DNS_NAME.match(host)) or host.startswith("*"):
            raise ValueError("not a host name or address")
        return cls(parts.scheme, host, port or _DEFAULT_PORTS[parts.scheme], _path(parts.path))


def _path(path: str) -> str:
    return path.rstrip("/")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _host_matches(pattern: str, host: str) -> bool:
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1 and not _is_ip(host)
    return host == pattern


@dataclass(frozen=True)
class Allowed:
    """One entry of the operator's allowlist."""

    host: str  # as compared; may start with "*."
    scheme: str | None = None  # None: any
    port: int | None = None  # None: any (an entry with a scheme implies its default port)
    path: str = ""  # a path prefix, "" for any

    @classmethod
    def parse(cls, text: str) -> Allowed:
        """``host``, ``host:port``, ``*.domain[:port]``, ``[v6]:port`` or ``scheme://host
        [:port][/path]``; ValueError naming what is wrong."""
        entry = text.strip()
        url = entry if "://" in entry else f"//{entry}"
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as err:
            raise ValueError(f"{SETTING}: {entry!r} has an invalid port") from err
        scheme = parts.scheme or None
        problem = None
        if scheme is not None and scheme not in _DEFAULT_PORTS:
            problem = "must be http:// or https:// when it names a scheme"
        elif not parts.hostname:
            problem = "names no host"
        elif parts.username is not None or parts.query or parts.fragment:
            problem = "must not carry credentials, a query or a fragment"
        if problem is None:
            host = _host(parts.hostname or "")
            if not (_is_ip(host) or _DNS_NAME.match(host)):
                problem = "is not a host name, *.domain or an IP address"
        if problem:
            raise ValueError(f"{SETTING}: {entry!r} {problem}")
        if port is None and scheme is not None:
            port = _DEFAULT_PORTS[scheme]
        return cls(host, scheme, port, _path(parts.path))

    def matches(self, ep: Endpoint) -> bool:
        if self.scheme is not None and ep.scheme != self.scheme:
            return False
        if self.port is not None and ep.port != self.port:
            return False
        if not _host_matches(self.host, ep.host):
            return False
        return not self.path or ep.path == self.path or ep.path.startswith(self.path + "/")


def address_refusal(address: str) -> str | None:
    """Why an oracle may not connect to ``address`` by default (``"loopback"``,
    ``"private"``, ...), or None for a public address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # no IPv6 zone index
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for kind, flag in (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
        ("private", ip.is_private),
    ):
        if flag:
            return kind
    return None if ip.is_global else "non-public"


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, in the resolver's order (OSError when none)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class EgressPolicy:
    """The operator's allowlist on top of the providers' public hosts."""

    allowed: tuple[Allowed, ...] = ()

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> EgressPolicy:
        return cls(tuple(Allowed.parse(e) for e in entries if e.strip()))

    def admit(self, provider: str, url: str) -> tuple[Endpoint, bool]:
        """(the endpoint, whether its addresses must be checked) for ``url``, or
        EndpointRefused. Operator-allowed endpoints need no address check."""
        try:
            ep = Endpoint.parse(url)
        except ValueError as err:
            raise EndpointRefused("must be https://host[:port] or http://host:port") from err
        return ep, self._admit(provider, ep)

    def _admit(self, provider: str, ep: Endpoint) -> bool:
        if any(a.matches(ep) for a in self.allowed):
            return False
        hosts = PROVIDER_HOSTS.get(provider, ())
        if (
            ep.scheme == "https"
            and ep.port == 443
            and any(_host_matches(h, ep.host) for h in hosts)
        ):
            return True
        names = ", ".join(f"https://{h}" for h in hosts) or "no host"
        raise EndpointRefused(
            f"not allowed: a {provider} oracle reaches {names} (port 443); any other endpoint "
            f"must be allowed by the operator ({SETTING})"
        )

    def check_submitted(self, provider: str, url: str) -> None:
        """The check at submission: the policy, and the addresses the name resolves to now
        (a name that does not resolve yet is left to the check at connect time)."""
        ep, check = self.admit(provider, url)
        if not check:
            return
        try:
            addresses = resolve(ep.host, ep.port)
        except OSError:
            return
        for address in addresses:
            if kind := address_refusal(address):
                raise EndpointRefused(_resolves_to(kind))

    def guard(self, provider: str) -> Guard:
        return Guard(self, provider)


def _resolves_to(kind: str) -> str:
    return (
        f"not allowed: the endpoint's host resolves to a {kind} address; only public addresses "
        f"are reached unless the operator allows the endpoint ({SETTING})"
    )


@dataclass(frozen=True)
class Guard:
    """The policy as one provider's adapter applies it at connect time."""

    policy: EgressPolicy
    provider: str

    def admit(self, url: str) -> tuple[Endpoint, bool]:
        return self.policy.admit(self.provider, url)

    def addresses(self, scheme: str, host: str, port: int, path: str = "") -> list[str] | None:
        """The addresses to connect to for ``scheme://host:port``, resolved and checked now;
        None when the operator allowed the endpoint (connect by name). Raises EgressRefused,
        or OSError when the name does not resolve."""
        ep = Endpoint(scheme, _host(host), port, _path(path))
        try:
            check = self.policy._admit(self.provider, ep)
        except EndpointRefused as err:
            raise EgressRefused(f"egress policy: {err}", provider=self.provider) from err
        if not check:
            return None
        addresses = resolve(ep.host, ep.port)
        for address in addresses:
            if kind := address_refusal(address):
                raise EgressRefused(f"egress policy: {_resolves_to(kind)}", provider=self.provider)
        return addresses
