"""OpenAI-style error bodies (`{"error": {"message", "type", "param", "code"}}`) and their handlers.

Every failure the server reports goes through `APIError`; FastAPI's own validation errors (422) and
HTTP exceptions are re-shaped so that clients only ever see this one shape. Unexpected exceptions
become a 500 whose message names the exception type only, never internal state.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from context_forge.server.protocol import ErrorBody, ErrorResponse

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    503: "service_unavailable_error",
}


@dataclass
class APIError(Exception):
    """An error the client should see; `status` is the HTTP status."""

    status: int
    message: str
    param: str | None = None
    code: str | None = None
    type: str | None = None

    def __str__(self) -> str:
        return self.message

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.param, self.code, self.type)


def error_type(status: int) -> str:
    """The OpenAI error `type` for an HTTP status."""
    return _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def error_response(
    status: int, message: str, param: str | None = None, code: str | None = None, type: str | None = None
) -> JSONResponse:
    body = ErrorResponse(error=ErrorBody(message=message, type=type or error_type(status), param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param, code)


def _loc_to_param(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p != "body"]
    if not parts:
        return None
    out = parts[0]
    for p in parts[1:]:
        out += f"[{p}]" if p.isdigit() else f".{p}"
    return out


def validation_error(exc: ValidationError | RequestValidationError, prefix: tuple[Any, ...] = ()) -> APIError:
    """Turns pydantic errors into one 400 naming the first bad field.

    A field with a union type (e.g. `prompt`: string or token ids) fails once per member, each
    location tagged with the member type; those are reported together as "expected one of ...".
    """
    errors = list(exc.errors())
    if not errors:
        return bad_request("invalid request body")
    first_loc, _ = _split_union(tuple(errors[0].get("loc", ())))
    param = _loc_to_param((*prefix, *first_loc))
    what = f"'{param}'" if param else "request body"
    tags = [tag for loc, tag in (_split_union(tuple(e.get("loc", ()))) for e in errors) if loc == first_loc and tag]
    if tags:
        return bad_request(f"invalid {what}: expected one of {', '.join(dict.fromkeys(tags))}", param)
    first = errors[0]
    if first.get("type") == "missing":
        msg = f"missing required field '{param}'"
    else:
        msg = f"invalid {what}: {first.get('msg', 'invalid value')}"
    if len(errors) > 1:
        msg += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return bad_request(msg, param)


_TYPE_NAMES = {"str", "int", "float", "bool", "none", "dict", "list"}


def _split_union(loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], str | None]:
    """(field location, union member tag or None): the location is cut at the first member tag."""
    for i, part in enumerate(loc):
        if isinstance(part, str) and ("[" in part or part in _TYPE_NAMES):
            return loc[:i], part
    return loc, None


def parse_json_body(raw: bytes) -> Any:
    """Decodes a request body; malformed JSON is a 400 naming line and column."""
    if not raw.strip():
        raise bad_request("request body is empty; expected a JSON object")
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise bad_request("request body is not valid UTF-8") from None
    except json.JSONDecodeError as e:
        raise bad_request(f"request body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None


def parse_body(raw: bytes, model: type[M]) -> M:
    """Decodes and validates a JSON-object request body as `model`; every failure is a 400."""
    data = parse_json_body(raw)
    if not isinstance(data, dict):
        raise bad_request(f"request body must be a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise validation_error(e) from None


def install_handlers(app: FastAPI) -> None:
    """Routes every error path of `app` to the OpenAI error shape."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, f"internal server error ({type(exc).__name__})", type="server_error")
