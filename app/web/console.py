"""The console's pages and static files, mounted on the API's own app (both modes).

The pages hold no data: each is a shell that ``static/console.js`` fills from ``/v1`` with
the token kept in the browser's sessionStorage. Nothing here authenticates or reads the
database.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import cache
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

HERE = Path(__file__).parent
STATIC = HERE / "static"
templates = Jinja2Templates(directory=HERE / "templates")

# The page runs only its own script, talks only to its own origin, and no other site may
# frame it: an injected script would find the token in sessionStorage.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}

router = APIRouter(include_in_schema=False)


@cache
def static_url(name: str) -> str:
    """``/static/NAME?v=<content hash>``: a new release is never served from a stale cache."""
    digest = hashlib.sha256((STATIC / name).read_bytes()).hexdigest()[:12]
    return f"/static/{name}?v={digest}"


def _page(request: Request, template: str, title: str, **context: object) -> Response:
    response = templates.TemplateResponse(
        request,
        template,
        {"title": title, "static_url": static_url, "page": template.removesuffix(".html")}
        | context,
    )
    response.headers.update(SECURITY_HEADERS)
    response.headers["Cache-Control"] = "no-cache"
    return response


#: The pages without a parameter: path → (template, title).
PAGES = {
    "/": ("jobs.html", "Jobs"),
    "/signin": ("signin.html", "Sign in"),
    "/new": ("new.html", "New job"),
    "/account": ("account.html", "Credentials and spend"),
}


def _shell(template: str, title: str) -> Callable[[Request], Response]:
    def show(request: Request) -> Response:
        return _page(request, template, title)

    return show


for _path, (_template, _title) in PAGES.items():
    router.add_api_route(_path, _shell(_template, _title), response_class=HTMLResponse)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str) -> Response:
    return _page(request, "job.html", f"Job {job_id[:64]}", job_id=job_id[:64])


def install(app: FastAPI) -> None:
    """The console at ``/`` and its files at ``/static``."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
