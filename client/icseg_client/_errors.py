"""Typed errors: one class per HTTP status family, plus connection, timeout, input and job errors.

Every server error carries the body the service sends, ``{"error": {"code", "message", "field"}}``:
``message`` says what to change and ``field`` names the request field (``support_masks[2]``).
"""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

__all__ = [
    "IcsegError",
    "InvalidInputError",
    "APIError",
    "APIConnectionError",
    "APITimeoutError",
    "APIStatusError",
    "BadRequestError",
    "UnprocessableEntityError",
    "AuthenticationError",
    "PermissionDeniedError",
    "NotFoundError",
    "ConflictError",
    "PayloadTooLargeError",
    "UnsupportedMediaTypeError",
    "RateLimitError",
    "InternalServerError",
    "ServiceUnavailableError",
    "JobFailedError",
    "MissingDependencyError",
]


class IcsegError(Exception):
    """Base class of every error this SDK raises."""


class InvalidInputError(IcsegError, ValueError):
    """An argument cannot be sent as given (unreadable file, unsupported array); nothing was sent.

    Attributes:
        field: the argument to change, e.g. ``support_images[1]``.
    """

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


class MissingDependencyError(IcsegError, ImportError):
    """An optional package (nibabel, for NIfTI) is needed for this call."""


class APIError(IcsegError):
    """Something went wrong talking to the service.

    Attributes:
        message: what went wrong and, for server errors, what to change.
        request: the request that failed, when there was one.
    """

    def __init__(self, message: str, *, request: httpx.Request | None = None):
        super().__init__(message)
        self.message = message
        self.request = request


class APIConnectionError(APIError):
    """The service could not be reached, or the connection broke before an answer came."""

    def __init__(self, message: str = "connection error", *, request: httpx.Request | None = None):
        super().__init__(message, request=request)


class APITimeoutError(APIConnectionError):
    """No answer within the client's timeout."""

    def __init__(self, message: str = "the request timed out", *, request: httpx.Request | None = None):
        super().__init__(message, request=request)


class APIStatusError(APIError):
    """The service answered with an error status (4xx or 5xx).

    Attributes:
        status_code: the HTTP status.
        code: the service's stable machine-readable code (``prompt_not_found``, ``use_jobs``, ...).
        field: the request field to change, or None.
        request_id: the ``X-Request-ID`` to quote when reporting a problem.
        body: the decoded JSON body (or the text of a non-JSON body).
        response: the ``httpx.Response``.
    """

    status_code: int = 0

    def __init__(self, message: str, *, response: httpx.Response, code: str | None = None,
                 field: str | None = None, body: Any = None):
        super().__init__(message, request=response.request)
        self.response = response
        self.status_code = response.status_code
        self.code = code
        self.field = field
        self.body = body
        self.request_id = response.headers.get("x-request-id")

    def __str__(self) -> str:
        where = f" (field: {self.field})" if self.field else ""
        return f"{self.status_code} {self.code or 'error'}: {self.message}{where}"


class BadRequestError(APIStatusError):
    """400: a value the service cannot use (shape mismatch, empty mask, prompt and files together)."""

    status_code = 400


class UnprocessableEntityError(BadRequestError):
    """422: a field is missing or invalid. A subclass of ``BadRequestError``: both are the caller's mistake."""

    status_code = 422


class AuthenticationError(APIStatusError):
    """401: missing or wrong API key (``api_key=`` or ``ICSEG_API_KEY``)."""

    status_code = 401


class PermissionDeniedError(APIStatusError):
    status_code = 403


class NotFoundError(APIStatusError):
    """404: unknown, deleted or expired prompt or job."""

    status_code = 404


class ConflictError(APIStatusError):
    """409: e.g. the result of a job that is not done, or a prompt prepared for another network."""

    status_code = 409


class PayloadTooLargeError(APIStatusError):
    """413: the request, an image or a volume is over a limit (code ``use_jobs``: use ``segment_volume``)."""

    status_code = 413


class UnsupportedMediaTypeError(APIStatusError):
    """415: a file in a format the service does not read."""

    status_code = 415


class RateLimitError(APIStatusError):
    """429 ``busy``: the service is busy. Either the model's queue for ``segment`` is full (``ICSEG_QUEUE_SIZE``
    requests already wait) or the job queue is (``create_job``, ``segment_volume``); the service says so at
    once, before it decodes the upload. Raised after the client's retries: up to ``max_retries``, each after
    the ``Retry-After`` the service sent (none when it asks for more than a minute).

    Attributes:
        retry_after: seconds the service asked to wait, or None.
    """

    status_code = 429

    @property
    def retry_after(self) -> float | None:
        return parse_retry_after(self.response.headers.get("retry-after"))


class InternalServerError(APIStatusError):
    """5xx: the service failed; quote ``request_id`` when reporting it."""

    status_code = 500


class ServiceUnavailableError(InternalServerError):
    """503: the model is not loaded yet, or the prompt store is unavailable."""

    status_code = 503

    @property
    def retry_after(self) -> float | None:
        return parse_retry_after(self.response.headers.get("retry-after"))


class JobFailedError(IcsegError):
    """A volume job ended as failed or cancelled.

    Attributes:
        job_id: the job.
        status: "failed" or "cancelled".
        code, message, field: the service's error for the job.
    """

    def __init__(self, job_id: str, status: str, code: str | None, message: str, field: str | None = None):
        super().__init__(f"job {job_id} {status}: {message}" + (f" (field: {field})" if field else ""))
        self.job_id = job_id
        self.status = status
        self.code = code
        self.message = message
        self.field = field


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaTypeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def status_error(response: httpx.Response) -> APIStatusError:
    """The exception for an error response, with the service's message, code and field."""
    code = field = None
    body: Any = None
    try:
        body = response.json()
    except ValueError:
        body = response.text
    detail = body.get("error") if isinstance(body, dict) else None
    if isinstance(detail, dict):
        code, field = detail.get("code"), detail.get("field")
        message = str(detail.get("message") or code or response.reason_phrase)
    else:
        text = body.strip() if isinstance(body, str) else ""
        message = text[:300] if text else (response.reason_phrase or "error")
    status = response.status_code
    if status in _BY_STATUS:
        cls = _BY_STATUS[status]
    elif status >= 500:
        cls = InternalServerError
    else:
        cls = APIStatusError
    return cls(message, response=response, code=code, field=field, body=body)
