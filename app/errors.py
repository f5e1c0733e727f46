"""Every error leaves as ``{"error": {"code", "message", "field"}}`` with a 4xx (or 503) status.

A user's mistake is never a 500: the model's and the decoder's ``InputError`` and FastAPI's validation
errors are mapped here; anything else is a 500 whose body says nothing about the request.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from model.errors import InputError

try:  # newer FastAPI keeps included routers nested in app.routes; this walks them
    from fastapi.routing import iter_route_contexts
except ImportError:  # older FastAPI: app.routes is already flat
    def iter_route_contexts(routes):
        return iter(routes)

log = logging.getLogger(__name__)

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "too_large",
    415: "unsupported_format",
    422: "invalid_request",
    429: "busy",
    503: "not_ready",
    504: "timeout",
}

# InputError codes from data.io / model that deserve a more specific status than 400
_INPUT_STATUS = {
    "unsupported_format": 415,
    "unknown_format": 415,
    "too_large": 413,
    "too_many_pixels": 413,
    "too_many_voxels": 413,
    "image_too_large": 413,
    "decompression_bomb": 413,
}


class ApiError(StarletteHTTPException):
    """An error the service answers on purpose.

    It subclasses Starlette's HTTPException so that FastAPI re-raises it untouched when it happens while
    a request body is parsed.
    """

    def __init__(self, status: int, message: str, *, code: str | None = None, field: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(status_code=status, detail=message, headers=headers)
        self.code = code or _STATUS_CODES.get(status, "error")
        self.message = message
        self.field = field


def error_body(code: str, message: str, field: str | None = None) -> dict:
    return {"error": {"code": code, "message": message, "field": field}}


def error_response(status: int, code: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message, field), status_code=status, headers=headers)


def input_error_status(exc: InputError) -> int:
    """400 for bad values; 413/415 when the decoder says the file is too large or of an unknown format."""
    status = getattr(exc, "status", None)
    if isinstance(status, int) and 400 <= status < 500:
        return status
    return _INPUT_STATUS.get(getattr(exc, "code", ""), 400)


def _field_from_loc(loc: tuple) -> str | None:
    # the first element names where the value was (body, query string, path, header), not the field
    parts = [str(p) for p in (loc[1:] if loc and loc[0] in ("body", "query", "path", "header", "cookie") else loc)]
    if not parts:
        return None
    field = parts[0]
    for p in parts[1:]:
        field += f"[{p}]" if p.isdigit() else f".{p}"
    return field


# Starlette's multipart limits (app.main sets them) raise a plain 400; these get the documented answers
_FORM_LIMITS = (
    ("Too many files", 422, "too_many_support_items", "support_images",
     "the form holds more files than a support set of ICSEG_MAX_SUPPORT pairs and a query; send fewer"),
    ("Too many fields", 422, "invalid_request", None, "the form holds too many fields; send only the documented ones"),
    ("exceeded maximum size", 413, "too_large", None,
     "a text field of the form exceeds 1 MB (e.g. label_names); send it shorter"),
)


def _allowed_methods(request: Request) -> str:
    """Every method of every route on this path (Starlette's 405 names only the first matching route's)."""
    methods: set[str] = set()
    for route in iter_route_contexts(request.app.routes):
        if route.path and route.methods and compile_path(route.path)[0].fullmatch(request.url.path):
            methods |= set(route.methods)
    return ", ".join(sorted(methods))


async def _api_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if isinstance(exc, ApiError):
        return error_response(exc.status_code, exc.code, exc.message, exc.field, exc.headers)
    code = _STATUS_CODES.get(exc.status_code, "error")
    message = str(exc.detail) if exc.detail else code.replace("_", " ")
    headers = exc.headers
    if exc.status_code == 400:
        for hint, status, limit_code, field, limit_message in _FORM_LIMITS:
            if hint in message:
                return error_response(status, limit_code, f"{limit_message} ({message})", field)
    if exc.status_code == 400 and "parsing the body" in message:
        message = "the request body is not a valid multipart form; send files with -F name=@file"
    if exc.status_code == 404 and message == "Not Found":
        message = "no endpoint at this path; the API is listed at /docs"
    if exc.status_code == 405 and (allowed := _allowed_methods(request)):
        headers = {**(headers or {}), "Allow": allowed}
        message = f"{request.method} is not allowed here; allowed: {allowed}"
    return error_response(exc.status_code, code, message, None, headers)


async def _input_error(request: Request, exc: InputError) -> JSONResponse:
    return error_response(input_error_status(exc), getattr(exc, "code", "invalid_input"), exc.message, exc.field)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {}
    field = _field_from_loc(tuple(first.get("loc", ())))
    messages = []
    for err in errors[:5]:
        where = _field_from_loc(tuple(err.get("loc", ()))) or "request"
        messages.append(f"{where}: {err.get('msg', 'invalid')}")
    return error_response(422, "invalid_request", "; ".join(messages) or "invalid request", field)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # the traceback goes to the log (no request content in it); the body says nothing about internals
    request_id = request.scope.get("icseg.request_id", "")
    log.exception("unhandled error request_id=%s", request_id)
    return error_response(500, "internal", f"internal error; quote request id {request_id} when reporting it")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _api_error)
    app.add_exception_handler(InputError, _input_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
