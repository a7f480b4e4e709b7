"""Browser tests: Debian's Chromium (``make browser``) driven by Playwright for Python through
``executable_path`` (no browser download), against a real ``reprogram serve``."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.live import LiveServer, live_server

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("REPROGRAM_TEST_ARTIFACTS", ROOT / "build" / "test-artifacts"))


def chromium_path() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail(f"no Chromium at {path}: `make browser` installs Debian's chromium package")
    return path


# Module scope, not session: Playwright's sync API keeps an event loop running in this thread
# while it is open, and later tests that start their own loop (asyncio.run) would fail.
@pytest.fixture(scope="module")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium_path())
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    # The fake cloud providers listen on loopback, which a tenant's oracle may not reach
    # unless the operator allows it.
    allow = {"REPROGRAM_ORACLE_ALLOWED_ENDPOINTS": "127.0.0.1"}
    with live_server(tmp_path_factory.mktemp("console"), env=allow) as live:
        yield live


@pytest.fixture
def page(browser) -> Iterator:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    context.set_default_timeout(15_000)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield pg
    finally:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
