"""Request limits on a real ``reprogram serve`` over raw sockets: a refusal (401, 413) arrives
while the client is still sending, after the headers and at most the first chunk, and the
server closes the connection instead of reading the rest.

The server runs with small limits (1 MiB uploads, 256 KiB predict requests, 64 KiB JSON), so
that "oversize" is cheap; the client announces (or starts to send) bodies far beyond them.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.helpers import digits_npz
from tests.live import LiveServer, live_server

UPLOAD_LIMIT = 1024 * 1024
PREDICT_LIMIT = 256 * 1024
JSON_LIMIT = 64 * 1024
BOUNDARY = "reprogram-test-boundary"
FIRST_CHUNK = b"x" * 16 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("limits")
    env = {
        "REPROGRAM_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT),
        "REPROGRAM_MAX_PREDICT_BYTES": str(PREDICT_LIMIT),
    }
    with live_server(tmp, workers=1, env=env) as srv:
        yield srv


@pytest.fixture(scope="module")
def token(server: LiveServer) -> dict[str, str]:
    return server.headers("acme")


def multipart_head(field: str, filename: str) -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; '
        f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
    ).encode()


class Conversation:
    """One HTTP/1.1 request on a raw socket, sent piece by piece, and the answer read as it
    comes: the test decides how much of the body is ever sent."""

    def __init__(self, server: LiveServer) -> None:
        url = urlsplit(server.url)
        self.sock = socket.create_connection((url.hostname, url.port), timeout=15)
        self.sent = 0

    def __enter__(self) -> Conversation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def start(self, path: str, headers: dict[str, str]) -> None:
        lines = [
            f"POST {path} HTTP/1.1",
            "Host: 127.0.0.1",
            *(f"{k}: {v}" for k, v in headers.items()),
        ]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.sent += len(data)

    def send_chunk(self, data: bytes) -> None:
        self.sock.sendall(b"%x\r\n%s\r\n" % (len(data), data))
        self.sent += len(data)

    def answer(self) -> tuple[int, dict[str, str], dict]:
        """Status, headers and JSON body of the response, read until the server closes."""
        data = b""
        while True:
            try:
                piece = self.sock.recv(65536)
            except ConnectionResetError:
                break
            if not piece:
                break
            data += piece
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode().split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(status_line.split()[1]), headers, json.loads(body)


def multipart_headers(length: int | None, auth: dict[str, str]) -> dict[str, str]:
    size = {"Content-Length": str(length)} if length is not None else {}
    return {
        **auth,
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        **size,
        **({} if length is not None else {"Transfer-Encoding": "chunked"}),
    }


UNAUTHENTICATED = {
    "no token": {},
    "unknown token": {"Authorization": "Bearer rp_not-a-token"},
    "basic auth": {"Authorization": "Basic YWxpY2U6cGFzc3dvcmQ="},
}


@pytest.mark.parametrize("auth", UNAUTHENTICATED)
@pytest.mark.parametrize(
    "path", ["/v1/datasets", "/v1/jobs/job_0000000000000000/predict"], ids=["upload", "predict"]
)
def test_an_upload_without_a_valid_token_is_refused_before_its_body(server, path, auth):
    """60 MB announced, 16 kB sent: the 401 is already there, and the server hung up."""
    with Conversation(server) as c:
        c.start(path, multipart_headers(60_000_000, UNAUTHENTICATED[auth]))
        c.send(multipart_head("file", "big.zip") + FIRST_CHUNK)
        status, headers, body = c.answer()
    assert status == 401, body
    assert headers["www-authenticate"] == "Bearer"
    assert headers["connection"] == "close"
    assert c.sent < 20_000


def test_an_unauthenticated_chunked_upload_is_refused_before_its_body(server):
    with Conversation(server) as c:
        c.start("/v1/datasets", multipart_headers(None, {}))
        c.send_chunk(multipart_head("file", "big.zip") + FIRST_CHUNK)
        status, _, _ = c.answer()
    assert status == 401


@pytest.mark.parametrize(
    "path,limit",
    [
        ("/v1/datasets", UPLOAD_LIMIT),
        ("/v1/jobs/job_0000000000000000/predict", PREDICT_LIMIT),
        ("/v1/jobs", JSON_LIMIT),
        ("/v1/credentials", JSON_LIMIT),
    ],
    ids=["upload", "predict", "job spec", "credential"],
)
def test_a_content_length_above_the_limit_is_refused_at_once(server, token, path, limit):
    """With a valid token: the announced size alone earns the 413, before any body byte."""
    with Conversation(server) as c:
        c.start(path, multipart_headers(limit + 1, token))
        status, headers, body = c.answer()
    assert status == 413, body
    assert f"larger than {limit} bytes" in body["detail"]
    assert headers["connection"] == "close"
    assert c.sent == 0


@pytest.mark.parametrize(
    "path,limit",
    [("/v1/datasets", UPLOAD_LIMIT), ("/v1/jobs/job_0000000000000000/predict", PREDICT_LIMIT)],
    ids=["upload", "predict"],
)
def test_a_chunked_body_is_cut_off_when_it_passes_the_limit(server, token, path, limit):
    """No Content-Length: the server counts and answers 413 as soon as the body passes the
    limit; the client, still sending, reads the answer before it ends its body."""
    with Conversation(server) as c:
        c.start(path, multipart_headers(None, token))
        c.send_chunk(multipart_head("file", "big.zip"))
        while c.sent <= limit + 64 * 1024:
            c.send_chunk(b"x" * 64 * 1024)
        status, headers, body = c.answer()
    assert status == 413, body
    assert f"larger than {limit} bytes" in body["detail"]
    assert headers["connection"] == "close"


def test_bodies_within_the_limits_are_served(server, token):
    """The same server takes a real upload (multipart with Content-Length), so the refusals
    above are about size and tokens."""
    import httpx

    npz = digits_npz()
    r = httpx.post(
        f"{server.url}/v1/datasets", headers=token, files={"file": ("d.npz", npz)}, timeout=30
    )
    assert r.status_code == 201, r.text
    r = httpx.post(  # a JSON body within its limit reaches validation (no job is made)
        f"{server.url}/v1/jobs", headers=token, json={"oracle": {"kind": "torch"}}, timeout=30
    )
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["field"] == "dataset_id"


def test_a_refused_body_does_not_stall_the_server(server, token):
    """After the refusals the server answers at once (nothing was left reading bodies)."""
    import httpx

    t0 = time.monotonic()
    r = httpx.get(f"{server.url}/v1/datasets", headers=token, timeout=10)
    assert r.status_code == 200
    assert time.monotonic() - t0 < 5
