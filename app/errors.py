"""One error taxonomy: every error leaves as ``{"error": {"code", "message", "field"}}``, its status taken
from ``STATUS``, the one code -> status table.

Errors are raised where they are found and know nothing of HTTP: the decoders' and the model's
``InputError`` (``data/errors.py``), the service's own ``ApiError`` and its domain subclasses raised by the
prompt store, the jobs and the model queue (``PromptNotFound``, ``StoreUnavailable``, ``Busy``...). A
user's mistake is never a 500; anything else is a 500 whose body says nothing about the request.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from app.logs import scrubbed_traceback
from data.errors import CodedError, InputError

try:  # newer FastAPI keeps included routers nested in app.routes; this walks them
    from fastapi.routing import iter_route_contexts
except ImportError:  # older FastAPI: app.routes is already flat
    def iter_route_contexts(routes):
        return iter(routes)

log = logging.getLogger(__name__)

# every code the service answers with, and its status
STATUS = {
    # the request's values (decoders, model, routes)
    "invalid_input": 400,
    "conflicting_fields": 400,
    "bad_request": 400,
    "too_large": 413,
    "use_jobs": 413,
    "prompt_too_large": 413,
    "unsupported_format": 415,
    "invalid_request": 422,
    "invalid_name": 422,
    "missing_support": 422,
    "support_count_mismatch": 422,
    "too_many_support_items": 422,
    "too_many_labels": 422,
    "too_much_work": 422,
    # who asks, and what
    "unauthorized": 401,
    "not_found": 404,
    "prompt_not_found": 404,
    "job_not_found": 404,
    "method_not_allowed": 405,
    "prompt_stale": 409,
    "job_queued": 409,
    "job_running": 409,
    "job_failed": 409,
    "job_cancelled": 409,
    # the server's state
    "busy": 429,
    "internal": 500,
    "model_not_ready": 503,
    "store_unavailable": 503,
    "server_stopping": 503,
    "timeout": 504,
}

# the framework's own errors come with a status only (no route raised them)
_FRAMEWORK_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large",
                    422: "invalid_request"}


def status_of(exc: CodedError) -> int:
    """The HTTP status of a coded error: its code's, else 400 for the caller's input and 500 for the rest."""
    return STATUS.get(exc.code, 400 if isinstance(exc, InputError) else 500)


class ApiError(CodedError):
    """An error the service answers on purpose: a code from ``STATUS``, a message that says what to change,
    the field, and for 429/503 the seconds after which to retry (the Retry-After header)."""

    code = "bad_request"

    def __init__(self, message: str, field: str | None = None, *, code: str | None = None,
                 retry_after: int | None = None):
        super().__init__(message, field, code=code)
        self.retry_after = retry_after

    @property
    def status_code(self) -> int:
        return status_of(self)


class PromptNotFound(ApiError):
    code = "prompt_not_found"


class PromptStale(ApiError):
    """The prompt was prepared for a network of another size."""

    code = "prompt_stale"


class PromptTooLarge(ApiError):
    code = "prompt_too_large"


class StoreUnavailable(ApiError):
    code = "store_unavailable"


class JobNotFound(ApiError):
    code = "job_not_found"


class Busy(ApiError):
    """A queue (the model's, the jobs') is full."""

    code = "busy"


class ModelNotReady(ApiError):
    code = "model_not_ready"


def error_body(code: str, message: str, field: str | None = None) -> dict:
    return {"error": {"code": code, "message": message, "field": field}}


def error_response(code: str, message: str, field: str | None = None, headers: dict[str, str] | None = None,
                   status: int | None = None) -> JSONResponse:
    """The error JSON with the code's status (``status`` only for the framework's own errors)."""
    return JSONResponse(error_body(code, message, field), status_code=status or STATUS[code], headers=headers)


def coded_response(exc: CodedError) -> JSONResponse:
    retry_after = getattr(exc, "retry_after", None)
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return error_response(exc.code, exc.message, exc.field, headers, status=status_of(exc))


def _field_from_loc(loc: tuple) -> str | None:
    # the first element names where the value was (body, query string, path, header), not the field
    parts = [str(p) for p in (loc[1:] if loc and loc[0] in ("body", "query", "path", "header", "cookie") else loc)]
    if not parts:
        return None
    field = parts[0]
    for p in parts[1:]:
        field += f"[{p}]" if p.isdigit() else f".{p}"
    return field


# Starlette's multipart limits (app.main sets them) raise a plain 400 whose text is all that tells them
# apart (Starlette's wording, not ours); these get the documented answers
_FORM_LIMITS = (
    ("Too many files", "too_many_support_items", "support_images",
     "the form holds more files than a support set of ICSEG_MAX_PROMPT_SUPPORT pairs and a query; send fewer"),
    ("Too many fields", "invalid_request", None, "the form holds too many fields; send only the documented ones"),
    ("exceeded maximum size", "too_large", None,
     "a text field of the form exceeds 1 MB (e.g. label_names); send it shorter"),
)


def _allowed_methods(request: Request) -> str:
    """Every method of every route on this path (Starlette's 405 names only the first matching route's)."""
    methods: set[str] = set()
    for route in iter_route_contexts(request.app.routes):
        if route.path and route.methods and compile_path(route.path)[0].fullmatch(request.url.path):
            methods |= set(route.methods)
    return ", ".join(sorted(methods))


async def _framework_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = _FRAMEWORK_CODES.get(exc.status_code, "error")
    message = str(exc.detail) if exc.detail else code.replace("_", " ")
    headers = exc.headers
    if exc.status_code == 400:
        for hint, limit_code, field, limit_message in _FORM_LIMITS:
            if hint in message:
                return error_response(limit_code, f"{limit_message} ({message})", field)
    if exc.status_code == 400 and "parsing the body" in message:
        message = "the request body is not a valid multipart form; send files with -F name=@file"
    if exc.status_code == 404 and message == "Not Found":
        message = "no endpoint at this path; the API is listed at /docs"
    if exc.status_code == 405 and (allowed := _allowed_methods(request)):
        headers = {**(headers or {}), "Allow": allowed}
        message = f"{request.method} is not allowed here; allowed: {allowed}"
    return error_response(code, message, None, headers, status=exc.status_code)


async def _coded_error(request: Request, exc: CodedError) -> JSONResponse:
    return coded_response(exc)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {}
    field = _field_from_loc(tuple(first.get("loc", ())))
    messages = []
    for err in errors[:5]:
        where = _field_from_loc(tuple(err.get("loc", ()))) or "request"
        messages.append(f"{where}: {err.get('msg', 'invalid')}")
    return error_response("invalid_request", "; ".join(messages) or "invalid request", field)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # the traceback goes to the log (no request content in it); the body says nothing about internals
    request_id = request.scope.get("icseg.request_id", "")
    # scrubbed here too, whatever formatter logs it: a decoder's message may quote the file's content
    log.error("unhandled error request_id=%s\n%s", request_id, scrubbed_traceback(exc))
    return error_response("internal", f"internal error; quote request id {request_id} when reporting it")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _framework_error)
    app.add_exception_handler(CodedError, _coded_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
