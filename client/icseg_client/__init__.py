"""icseg_client: segment medical images with an icseg service from Python, without installing torch.

    >>> from icseg_client import Client
    >>> client = Client("http://localhost:8000")
    >>> result = client.segment("query.png", ["a.png", "b.png"], ["a_mask.png", "b_mask.png"])
    >>> result.mask.shape, result.labels
"""

from ._async_client import AsyncClient
from ._client import Client
from ._errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    IcsegError,
    InternalServerError,
    InvalidInputError,
    JobFailedError,
    MissingDependencyError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    UnprocessableEntityError,
    UnsupportedMediaTypeError,
)
from ._inputs import ImageInput
from ._overlay import overlay
from ._types import Job, Prompt, SegmentResult
from ._version import __version__

__all__ = [
    "AsyncClient",
    "Client",
    "ImageInput",
    "Job",
    "Prompt",
    "SegmentResult",
    "overlay",
    "__version__",
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "IcsegError",
    "InternalServerError",
    "InvalidInputError",
    "JobFailedError",
    "MissingDependencyError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServiceUnavailableError",
    "UnprocessableEntityError",
    "UnsupportedMediaTypeError",
]
