"""OpenAI-style error bodies (`{"error": {"message", "type", "param", "code"}}`) and their handlers.

Every failure the server reports goes through `APIError`; FastAPI's own validation errors (422) and
HTTP exceptions are re-shaped so that clients only ever see this one shape. Unexpected exceptions
become a 500 whose message names the exception type only, never internal state (`server.middleware`
answers those without dropping the connection).

Request bodies are checked before any model sees them: valid JSON, nesting no deeper than
`MAX_JSON_DEPTH`, and every string (keys too) encodable as UTF-8 (JSON allows unpaired surrogate
escapes such as "\\ud800", which no tokenizer can encode); each failure is a 400 naming the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from context_forge.server.middleware import BodyTooLarge
from context_forge.server.protocol import ErrorBody, ErrorResponse

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
    elif first.get("type") == "finite_number":
        msg = f"{what} must be a finite number, got {first.get('input')!r}"
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


MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects a request body may have."""


def parse_json_body(raw: bytes) -> Any:
    """Decodes a request body; malformed JSON is a 400 naming line and column, and so are bodies
    nested deeper than `MAX_JSON_DEPTH` or holding text that cannot be encoded (naming the field)."""
    if not raw.strip():
        raise bad_request("request body is empty; expected a JSON object")
    try:
        data = json.loads(raw)
    except UnicodeDecodeError:
        raise bad_request("request body is not valid UTF-8") from None
    except json.JSONDecodeError as e:
        raise bad_request(f"request body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise bad_request(f"request body is nested too deeply (at most {MAX_JSON_DEPTH} levels)") from None
    check_text(data)
    return data


def check_text(data: Any) -> None:
    """Raises a 400 naming the first field whose text (value or key) is not encodable as UTF-8,
    or the first place nested deeper than `MAX_JSON_DEPTH`. Iterative: any depth is safe."""
    todo: list[tuple[Any, tuple[Any, ...]]] = [(data, ())]
    while todo:
        value, loc = todo.pop()
        if len(loc) > MAX_JSON_DEPTH:
            raise bad_request(f"request body is nested too deeply (at most {MAX_JSON_DEPTH} levels)",
                              _loc_to_param(loc))
        if isinstance(value, str):
            if not _encodable(value):
                _unencodable(loc)
        elif isinstance(value, dict):
            for key, item in reversed(list(value.items())):
                if not _encodable(key):
                    _unencodable(loc, key=True)
                todo.append((item, (*loc, key)))
        elif isinstance(value, list):
            todo.extend((item, (*loc, i)) for i, item in reversed(list(enumerate(value))))


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _unencodable(loc: tuple[Any, ...], key: bool = False) -> None:
    param = _loc_to_param(loc)
    where = f"'{param}'" if param else "request body"
    what = f"key in {where}" if key else where
    raise bad_request(
        f"invalid {what}: text must be valid Unicode (it holds an unpaired surrogate such as \\ud800)",
        param,
        "invalid_text",
    )


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

    @app.exception_handler(BodyTooLarge)
    async def _too_large(_: Request, exc: BodyTooLarge) -> JSONResponse:
        return error_response(413, str(exc), code="request_too_large")

    # Anything else is answered by `middleware.CatchAll` (a handler for `Exception` here would run
    # in Starlette's server-error middleware, which re-raises and so drops the connection).
