"""One shape for every refused request, and the checks that keep bad values out of the database.

A 422 always answers ``{"detail": [{"field": "budget.max_queries", "message": "..."}]}``,
whether pydantic, the JSON parser or a service refused the request; every other refusal
``{"detail": "message"}``. Messages never echo the input (it may hold a secret), and no field
name or message is longer than a short excerpt, whatever the client sent.

``RESPONSES`` documents each status an operation can answer, with these shapes, in the OpenAPI
document (routes pick theirs with ``responses(...)``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from sqlalchemy.exc import DataError as DatabaseDataError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("reprogram.api")

INT64 = (-(2**63), 2**63 - 1)
BODY = "body"  # the field named when the body as a whole is wrong (not JSON, not an object)
MAX_FIELD = 120  # characters of a field path in an answer
MAX_MESSAGE = 300  # characters of a message in an answer


def excerpt(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters (an ellipsis says it was cut)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def field_error(field: str, message: str) -> dict[str, str]:
    return {"field": excerpt(field or BODY, MAX_FIELD), "message": excerpt(message, MAX_MESSAGE)}


def unprocessable(field: str, message: str) -> HTTPException:
    """A 422 naming one field, in the same shape as pydantic's refusals."""
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, [field_error(field, message)])


def refused(message: str) -> HTTPException:
    """A service's ``"field: reason"`` message as a 422 naming that field."""
    field, sep, reason = message.partition(": ")
    return unprocessable(field, reason) if sep else unprocessable(BODY, message)


def _is_tag(part: Any, node: dict[str, Any]) -> bool:
    """A discriminator value (``torch``) or a validator name pydantic puts in ``loc``."""
    if not isinstance(part, str):
        return False
    return "[" in part or part in {v for v in node.values() if isinstance(v, str)}


def _contains(node: Any, part: Any) -> bool:
    if isinstance(node, dict):
        return part in node
    return isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)


def _field_path(loc: Sequence[Any], body: Any) -> str:
    """``loc`` as the client wrote the field: follow the body and drop the parts it does not
    contain (pydantic adds union tags such as ``torch`` or ``function-after[...]``)."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    named: list[str] = []
    node = body if isinstance(body, dict | list) else None
    for part in parts:
        if _contains(node, part):
            node = node[part]
        elif node is None or (isinstance(node, dict) and not _is_tag(part, node)):
            node = None  # a missing field: name it, and whatever pydantic names below it
        else:
            continue  # a tag, or a type name under a scalar: not a field
        named.append(str(part))
    return ".".join(named)


def _line_col(doc: str, pos: int) -> tuple[int, int]:
    line = doc.count("\n", 0, pos) + 1
    return line, pos - (doc.rfind("\n", 0, pos) + 1) + 1


def validation_errors(exc: RequestValidationError) -> list[dict[str, str]]:
    errors = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            doc, pos = exc.body, err["loc"][-1]
            where = ""
            if isinstance(doc, str) and isinstance(pos, int):
                where = " at line {}, column {}".format(*_line_col(doc, pos))
            reason = (err.get("ctx") or {}).get("error", "malformed")
            errors.append(field_error(BODY, f"invalid JSON: {reason}{where}"))
            continue
        body = exc.body if err["loc"][:1] == ("body",) else None
        errors.append(field_error(_field_path(err["loc"], body), err["msg"]))
    return errors


def unstorable(value: Any, path: str = "") -> Iterator[dict[str, str]]:
    """Values pydantic lets through that no database column holds: NUL characters (PostgreSQL
    text), infinities (JSON, PostgreSQL json) and integers beyond 64 bits."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from unstorable(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from unstorable(item, f"{path}.{i}")
    elif isinstance(value, str) and "\x00" in value:
        yield field_error(path, "must not contain NUL characters")
    elif isinstance(value, float) and not math.isfinite(value):
        yield field_error(path, "must be a finite number")
    elif isinstance(value, int) and not INT64[0] <= value <= INT64[1]:
        yield field_error(path, "is out of range (64-bit integers only)")


def check_storable(value: Any) -> None:
    """Raise a 422 naming every field of ``value`` (a dumped model) that cannot be stored."""
    errors = list(unstorable(value))
    if errors:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, errors)


class FieldError(BaseModel):
    """One refused field of a 422 answer."""

    field: str = Field(
        description="dotted path of the field, e.g. `budget.max_queries`; "
        "`body` when the body as a whole is wrong"
    )
    message: str


class ErrorOut(BaseModel):
    """Every refusal but a 422: one message naming the problem."""

    detail: str


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorOut, "description": description}


#: Each status an operation may answer besides its success and 422 (which FastAPI documents
#: for every operation with parameters), with its shape.
RESPONSES: dict[int, dict[str, Any]] = {
    400: _error("the body could not be parsed, or a file is not a readable data set or image"),
    401: _error("missing or invalid bearer token (`WWW-Authenticate: Bearer`)"),
    404: _error("no such object for this tenant"),
    409: _error("the object is not in a state that allows this"),
    413: _error("the body, or the pixels of its images, exceed a limit (README: Limits)"),
    502: _error("the oracle failed"),
    503: _error("a service the API depends on is unavailable"),
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route: 401 (every /v1 route) and ``statuses``."""
    return {status: RESPONSES[status] for status in sorted({401, *statuses})}


def deletion(thing: str, conflict: str) -> dict[str, Any]:
    """The route arguments of a ``DELETE`` of one ``thing``: 204 on success, 404 for none (or
    another tenant's, or one already deleted), 409 when ``conflict`` (still in use)."""
    return {
        "status_code": status.HTTP_204_NO_CONTENT,
        "responses": {
            404: {"description": f"no such {thing} (or another tenant's, or deleted)"},
            409: {"description": conflict},
        },
    }


def _query_names(route: APIRoute) -> frozenset[str]:
    """The query parameters the route and its dependencies declare."""
    names: set[str] = set()
    pending = [route.dependant]
    while pending:
        dependant = pending.pop()
        names.update(p.alias for p in dependant.query_params)
        pending.extend(dependant.dependencies)
    return frozenset(names)


def known_query_parameters(request: Request) -> None:
    """Refuse a ``/v1`` query parameter the operation does not take (422 naming it), as an
    unknown field of a body is refused: a misspelt ``limt=`` must not pass unnoticed."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or not request.url.path.startswith("/v1/"):
        return
    known = _query_names(route)
    unknown = [name for name in request.query_params if name not in known]
    if unknown:
        raise unprocessable(unknown[0], "unknown query parameter")


def document_errors(doc: dict[str, Any]) -> None:
    """Every ``/v1`` operation answers 401 (the token is checked before anything else), every
    operation with a body 400 (not parseable, e.g. not UTF-8) and 413 (``app.api.limits``
    limits every body), and every refusal but a 422 has the ``ErrorOut`` shape: say so
    wherever a route did not."""
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault("ErrorOut", ErrorOut.model_json_schema())
    shape = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
    for path, item in doc.get("paths", {}).items():
        for operation in item.values():
            answers = operation.setdefault("responses", {})
            if path.startswith("/v1/"):
                answers.setdefault("401", {"description": RESPONSES[401]["description"]})
            if "requestBody" in operation:  # FastAPI's 400 for a body it cannot parse at all
                answers.setdefault("400", {"description": RESPONSES[400]["description"]})
                answers.setdefault("413", {"description": RESPONSES[413]["description"]})
            for status_code, answer in answers.items():
                if status_code[:1] in "45" and status_code != "422" and "content" not in answer:
                    answer["content"] = shape


def install(app: FastAPI) -> None:
    """The handlers, the query-parameter check of every route included after this, and an
    OpenAPI schema that documents the shapes they answer."""
    app.router.dependencies.append(Depends(known_query_parameters))
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = generate()
            schemas = doc.get("components", {}).get("schemas", {})
            if "ValidationError" in schemas:
                schemas["ValidationError"] = FieldError.model_json_schema()
            document_errors(doc)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": validation_errors(exc)})

    @app.exception_handler(StarletteHTTPException)
    async def _refused(request: Request, exc: StarletteHTTPException) -> Response:
        # A message may quote what the client sent (a file name in an archive, an id): an
        # excerpt at most. Lists are field errors, already cut.
        if isinstance(exc.detail, str):
            exc.detail = excerpt(exc.detail, MAX_MESSAGE)
        return await http_exception_handler(request, exc)

    @app.exception_handler(DatabaseDataError)
    async def _unstorable(request: Request, exc: DatabaseDataError) -> JSONResponse:
        # A last line of defence behind ``check_storable``: the database refused a value.
        # Log the kind of error only; its text holds the statement's parameters.
        log.warning(
            "%s %s: database refused a value (%s)",
            request.method,
            request.url.path,
            type(exc.orig).__name__,
        )
        return JSONResponse(
            status_code=422,
            content={"detail": [field_error(BODY, "a value is out of range for storage")]},
        )
