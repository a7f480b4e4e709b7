"""The console in a real browser against a real server: sign in, upload, start a small job,
watch it end with its curve drawn, download the program, try it, cancel another job; bad
input shows the API's own message; another tenant sees nothing; a refused token signs out."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Page, expect

from app.client import ApiError, Client
from app.jobs.artifacts import ProgramFile
from tests.live import SMALL_RUN

pytestmark = pytest.mark.slow
FINAL = re.compile(r"^(succeeded|failed|cancelled|budget exhausted)$")
UNLABELLED = """() => [...document.querySelectorAll('input, select, textarea')]
    .filter((e) => !e.labels.length && !e.getAttribute('aria-label')).map((e) => e.id)"""


def png(seed: int) -> bytes:
    img = np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def sign_in(page: Page, url: str, token: str, path: str = "/") -> None:
    """With the keyboard only: the token field has the focus, Enter submits."""
    page.goto(url + path)
    expect(page).to_have_url(re.compile(r"/signin"))
    expect(page.locator("#token")).to_be_focused()
    page.keyboard.type(token)
    page.keyboard.press("Enter")
    page.wait_for_url(url + path)


def api_message(server, token: str, call) -> str:  # type: ignore[no-untyped-def]
    """What the API itself answers to a refused call."""
    with Client(server.url, token) as rp, pytest.raises(ApiError) as err:
        call(rp)
    return str(err.value)


def test_sign_in_upload_run_download_try(page, server, small_npz, artifacts, tmp_path):
    token = server.token("browser-acme")
    page.goto(server.url + "/")
    expect(page).to_have_url(re.compile(r"/signin"))  # no token yet
    page.fill("#token", "not-a-token")
    page.click("button[type=submit]")
    expect(page.locator("#signin-error")).to_have_text("invalid token")
    page.fill("#token", "")
    sign_in(page, server.url, token)
    expect(page.locator("#jobs-empty")).to_be_visible()

    page.click("nav >> text=New job")
    expect(page).to_have_url(server.url + "/new")
    assert page.evaluate(UNLABELLED) == []
    # A bad upload: the API's own message, no blank page.
    expected = api_message(server, token, lambda rp: rp.upload(b"not a zip at all", "bad.zip"))
    page.set_input_files(
        "#upload-file",
        {"name": "bad.zip", "mimeType": "application/zip", "buffer": b"not a zip at all"},
    )
    page.click("#upload-form button[type=submit]")
    expect(page.locator("#upload-error")).to_have_text(expected)
    # The real data set, with its progress bar.
    page.set_input_files(
        "#upload-file",
        {"name": "digits.npz", "mimeType": "application/octet-stream", "buffer": small_npz},
    )
    page.click("#upload-form button[type=submit]")
    expect(page.locator("#upload-result")).to_contain_text("36 images")
    expect(page.locator("#upload-error")).to_be_hidden()
    assert page.locator("#upload-progress").get_attribute("value") == "100"
    expect(page.locator("#dataset option")).to_contain_text(["digits.npz"])
    # Refused job specs show the API's message, field first.
    page.fill("#max-queries", "-5")
    page.click("#job-form button[type=submit]")
    expect(page.locator("#job-form-error")).to_contain_text(re.compile(r"^budget\.max_queries: "))
    page.click("#advanced summary")
    page.fill("#spec-json", '{"optimizer": ')
    page.click("#job-form button[type=submit]")
    expect(page.locator("#job-form-error")).to_contain_text("body: invalid JSON")
    page.screenshot(path=str(artifacts / "console-new.png"), full_page=True)
    # A small job: budget in the form, the rest in the advanced box.
    page.fill("#max-queries", "3000")
    small = {k: v for k, v in SMALL_RUN.items() if k != "budget"}
    page.fill("#spec-json", json.dumps(small))
    page.click("#job-form button[type=submit]")
    page.wait_for_url(re.compile(r"/jobs/job_"))
    job_id = page.url.rsplit("/", 1)[1]

    status = page.locator("#job-status")
    expect(status).to_have_text(FINAL, timeout=150_000)
    expect(status).to_have_text("succeeded")
    expect(page.locator("#curve canvas")).to_have_count(1)
    expect(page.locator("#curve")).to_have_attribute("aria-label", re.compile("linear probe"))
    with Client(server.url, token) as rp:  # every validation the API reports is plotted
        validations = [r for r in rp.metrics(job_id) if r["kind"] == "validation"]
    assert len(validations) >= 2
    expect(page.locator("#curve-table tbody tr")).to_have_count(len(validations))
    expect(page.locator(".u-legend")).to_contain_text("linear probe")
    expect(page.locator("#program-image")).to_be_visible()
    assert page.locator("#program-image").evaluate("img => img.naturalWidth") > 0
    expect(page.locator("#choices li").first).to_be_visible()
    expect(page.locator("#cost-table tbody tr").first).to_be_visible()
    expect(page.locator("#job-facts")).to_contain_text("Test accuracy")
    expect(page.locator("#job-cancel")).to_be_disabled()
    page.screenshot(path=str(artifacts / "console-job.png"), full_page=True)

    with page.expect_download() as download:
        page.click("#job-download")
    saved = tmp_path / "program.npz"
    download.value.save_as(saved)
    assert download.value.suggested_filename == f"{job_id}.npz"
    assert ProgramFile.load(saved.read_bytes()).arrays["P"].shape == (64, 64, 3)

    page.click("#try-form button[type=submit]")
    expect(page.locator("#try-error")).to_have_text("Choose one or more images first.")
    page.set_input_files(
        "#try-files",
        [{"name": f"x{i}.png", "mimeType": "image/png", "buffer": png(i)} for i in range(2)],
    )
    page.click("#try-form button[type=submit]")
    expect(page.locator("#try-result li")).to_have_count(3)
    expect(page.locator("#try-result")).to_contain_text(re.compile(r"x0\.png → digit\d"))
    expect(page.locator("#try-result")).to_contain_text("2 queries spent")

    # The list: status, spend against budget, accuracy beside the linear probe.
    page.click("nav >> text=Jobs")
    row = page.locator(f"tr[data-job='{job_id}']")
    expect(row).to_contain_text("succeeded")
    expect(row).to_contain_text(re.compile(r"\d[\d,]* / 3,000"))
    expect(row.locator("td.num").nth(2)).to_have_text(re.compile(r"\d+\.\d %"))
    expect(row.locator("td.num").nth(3)).to_have_text(re.compile(r"\d+\.\d %"))
    expect(page.locator("#jobs-range")).to_have_text("1–1 of 1")
    page.screenshot(path=str(artifacts / "console-jobs.png"))

    # On a phone: nothing wider than the screen but the tables' own scrolling boxes.
    page.goto(f"{server.url}/jobs/{job_id}")
    expect(page.locator("#curve canvas")).to_have_count(1)
    page.set_viewport_size({"width": 390, "height": 844})
    expect(page.locator("#job-status")).to_have_text("succeeded")
    page.wait_for_timeout(300)  # the chart follows its box's new width
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(artifacts / "console-job-phone.png"), full_page=True)


def test_cancel_a_running_job_and_the_list_follows(page, server, small_npz):
    token = server.token("browser-cancel")
    long = {**SMALL_RUN, "optimizer": {**SMALL_RUN["optimizer"], "iterations": 400}}
    with Client(server.url, token) as rp:
        ds = rp.upload(small_npz, "digits.npz")
        job, other = (
            rp.submit({"oracle": {"kind": "torch"}, **long, "budget": {}}, ds.id) for _ in range(2)
        )
        sign_in(page, server.url, token)
        row = page.locator(f"tr[data-job='{other.id}']")
        expect(row.locator(".badge")).to_have_text(re.compile(r"^(queued|running)$"))
        rp.cancel(other.id)  # elsewhere: the open list shows it without a reload
        expect(row.locator(".badge")).to_have_text("cancelled", timeout=30_000)
    page.click(f"a[href='/jobs/{job.id}']")
    expect(page.locator("#job-cancel")).to_be_enabled()
    page.click("#job-cancel")
    expect(page.locator("#job-status")).to_have_text("cancelled", timeout=60_000)
    expect(page.locator("#job-cancel")).to_be_disabled()


def test_other_tenants_jobs_are_invisible(page, server, small_npz):
    with Client(server.url, server.token("browser-owner")) as rp:
        ds = rp.upload(small_npz, "digits.npz")
        job = rp.submit({"oracle": {"kind": "torch"}, **SMALL_RUN}, ds.id)
        rp.cancel(job.id)
    sign_in(page, server.url, server.token("browser-stranger"))
    expect(page.locator("#jobs-empty")).to_be_visible()
    expect(page.locator("#jobs-body tr")).to_have_count(0)
    page.goto(f"{server.url}/jobs/{job.id}")
    expect(page.locator("#job-error")).to_have_text(f"job {job.id!r} not found")
    page.goto(server.url + "/account")
    expect(page.locator("#spend-job tbody")).to_have_text("Nothing spent yet.")


def test_credentials_spend_and_sign_out(page, server, artifacts):
    token = server.token("browser-creds")
    sign_in(page, server.url, token, "/account")
    assert page.evaluate(UNLABELLED) == []
    expect(page.locator("#creds-empty")).to_be_visible()
    page.click("#cred-form button[type=submit]")  # no key: the API says which field
    expect(page.locator("#cred-form-error")).to_contain_text(re.compile(r"^secret: "))
    page.fill("#cred-name", "prod")
    page.fill("#cred-secret", "very-secret-key-123")
    page.click("#cred-form button[type=submit]")
    expect(page.locator("#creds-table tbody tr")).to_have_count(1)
    expect(page.locator("#creds-table")).to_contain_text("clarifai")
    assert "very-secret-key-123" not in page.content()
    page.screenshot(path=str(artifacts / "console-account.png"), full_page=True)
    expect(page.locator("#spend-total")).to_contain_text("Queries")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("text=Delete")
    expect(page.locator("#creds-table tbody tr")).to_have_count(0)

    page.click("#sign-out")
    expect(page).to_have_url(server.url + "/signin")
    assert page.evaluate("sessionStorage.length") == 0
    page.goto(server.url + "/new")
    expect(page).to_have_url(re.compile(r"/signin\?next=%2Fnew$"))


def test_a_refused_token_goes_back_to_sign_in(page, server):
    sign_in(page, server.url, server.token("browser-revoked"))
    # The server stops taking the token (revoked, expired): the next call answers 401.
    page.evaluate("sessionStorage.setItem('reprogram.token', 'revoked-token')")
    page.reload()
    expect(page).to_have_url(re.compile(r"/signin\?reason=expired"))
    expect(page.locator("#signin-reason")).to_contain_text("expired or was revoked")
    assert page.evaluate("sessionStorage.getItem('reprogram.token')") is None


def test_a_failed_job_shows_its_error(page, server, small_npz, artifacts):
    from tests.fakes.clarifai import FakeClarifai

    token = server.token("browser-failed")
    with FakeClarifai(keys=["the-right-key"]) as fake, Client(server.url, token) as rp:
        ds = rp.upload(small_npz, "digits.npz")
        cred = rp.add_credential("clarifai", "a-wrong-key")
        oracle = {
            "kind": "clarifai",
            "model_id": "moderation-recognition",
            "endpoint": f"http://127.0.0.1:{fake.port}",
            "credential_id": cred,
        }
        job = rp.submit({"oracle": oracle, **SMALL_RUN}, ds.id)
        sign_in(page, server.url, token, f"/jobs/{job.id}")
        expect(page.locator("#job-status")).to_have_text(FINAL, timeout=60_000)
    expect(page.locator("#job-status")).to_have_text("failed")
    failure = page.locator("#job-failure")
    expect(failure).to_be_visible()
    with Client(server.url, token) as rp:
        error = rp.job(job.id).error
        expected = api_message(server, token, lambda c: c.download(job.id))
    assert error
    expect(failure).to_have_text(f"The job failed: {error}")
    page.click("#job-download")  # no program: the API's 409, in words
    expect(page.locator("#job-error")).to_have_text(expected)
    assert "a-wrong-key" not in page.content()
    page.screenshot(path=str(artifacts / "console-job-failed.png"))
