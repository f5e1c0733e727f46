"""What the sync and async clients share: settings, request building, retry policy, response parsing.

Retries (openai-python's policy, narrowed to what is safe here):

- a connection that could not be opened (nothing reached the server): always retried;
- a connection that broke after the request was sent: retried only for requests that change nothing
  on the server (GET, DELETE, POST /segment), never for POST /prompts or POST /jobs, which would store
  a second prompt or start a second job;
- 429 and 503: retried after the ``Retry-After`` the service sends (exponential backoff with jitter when
  it sends none); a ``Retry-After`` longer than ``MAX_RETRY_WAIT_S`` is raised to the caller instead;
- timeouts and every other status: never retried (a 4xx is the caller's mistake; a timed-out request
  would only load a busy server again).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from ._errors import (
    APIConnectionError,
    APITimeoutError,
    InvalidInputError,
    JobFailedError,
    parse_retry_after,
    status_error,
)
from ._inputs import Upload, decode_2d, decode_probs, to_upload, to_uploads
from ._quality import quality_fields, uncertainty_maps
from ._types import Job, Prompt, SegmentResult
from ._version import __version__

log = logging.getLogger("icseg_client")

DEFAULT_URL = "http://127.0.0.1:8000"
# the service answers a synchronous /segment within ICSEG_REQUEST_TIMEOUT_S (300 s by default)
DEFAULT_TIMEOUT = httpx.Timeout(330.0, connect=10.0)
DEFAULT_MAX_RETRIES = 2
MAX_RETRY_WAIT_S = 60.0
_BACKOFF_BASE_S = 0.5
_BACKOFF_MAX_S = 8.0


@dataclass
class RequestSpec:
    """One HTTP request, ready to be sent (and re-sent: every file is bytes)."""

    method: str
    path: str
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None
    data: dict[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # safe to send again after it may have reached the server
    idempotent: bool = True


class BaseClient:
    """Settings, policies and the transport; subclasses send through it (``httpx.Client`` or ``httpx.AsyncClient``)."""

    _http_class: type[httpx.Client] | type[httpx.AsyncClient]  # what a client without ``http_client`` opens

    def __init__(
        self,
        base_url: str | None,
        api_key: str | None,
        timeout: float | httpx.Timeout | None,
        max_retries: int,
        http_client: httpx.Client | httpx.AsyncClient | None,
    ):
        if base_url is None and http_client is not None and str(http_client.base_url):
            base_url = str(http_client.base_url)
        base_url = base_url or os.environ.get("ICSEG_URL") or DEFAULT_URL
        if "://" not in base_url:
            base_url = "http://" + base_url
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key if api_key is not None else (os.environ.get("ICSEG_API_KEY") or None)
        self.timeout = DEFAULT_TIMEOUT if timeout is None else (
            timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout))
        self._request_timeout: httpx.Timeout | Any = self.timeout
        if max_retries < 0:
            raise ValueError("max_retries must be 0 or more")
        self.max_retries = max_retries
        if timeout is None and http_client is not None:
            self._request_timeout = httpx.USE_CLIENT_DEFAULT  # the timeout configured on your http_client
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else self._http_class(timeout=self.timeout)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, api_key={'***' if self.api_key else None})"

    def _headers(self, extra: dict[str, str]) -> dict[str, str]:
        headers = {"User-Agent": f"icseg-client/{__version__}", **extra}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _url(self, path: str) -> str:
        return self.base_url + path

    def _build_request(self, spec: RequestSpec) -> httpx.Request:
        return self._http.build_request(spec.method, self._url(spec.path), files=spec.files, data=spec.data,
                                        headers=self._headers(spec.headers), timeout=self._request_timeout)

    # -- retry policy ------------------------------------------------------------------------------------

    def _retry_wait(self, attempt: int, response: httpx.Response | None) -> float | None:
        """Seconds to wait before retry number ``attempt + 1``, or None not to retry."""
        if attempt >= self.max_retries:
            return None
        if response is not None:
            if response.status_code not in (429, 503):
                return None
            asked = parse_retry_after(response.headers.get("retry-after"))
            if asked is not None:
                return asked if asked <= MAX_RETRY_WAIT_S else None
        backoff = min(_BACKOFF_MAX_S, _BACKOFF_BASE_S * 2**attempt)
        return backoff * (1 - 0.25 * random.random())  # jitter: clients that failed together spread out

    @staticmethod
    def _retryable_exception(exc: httpx.TransportError, spec: RequestSpec) -> bool:
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
            return True  # the request never reached the server
        if isinstance(exc, httpx.TimeoutException):
            return False
        return spec.idempotent

    def _retry_or_raise(self, spec: RequestSpec, attempt: int, request: httpx.Request, *,
                        exc: httpx.TransportError | None = None, response: httpx.Response | None = None) -> float:
        """Seconds to wait before sending ``spec`` again after ``exc`` or an error ``response``; raises the
        error for the caller instead when the policy says not to retry."""
        if exc is not None:
            wait = self._retry_wait(attempt, None) if self._retryable_exception(exc, spec) else None
            if wait is None:
                raise self._wrap_exception(exc, request) from exc
            log.info("%s %s: %s; retrying in %.1f s", spec.method, spec.path, type(exc).__name__, wait)
            return wait
        wait = self._retry_wait(attempt, response)
        if wait is None:
            raise status_error(response)
        log.info("%s %s: %d; retrying in %.1f s", spec.method, spec.path, response.status_code, wait)
        return wait

    @staticmethod
    def _wrap_exception(exc: httpx.TransportError, request: httpx.Request | None) -> APIConnectionError:
        if isinstance(exc, httpx.TimeoutException):
            return APITimeoutError(f"no answer within the timeout ({type(exc).__name__}); raise timeout= for large "
                                   "inputs or use segment_volume", request=request)
        return APIConnectionError(f"cannot reach the icseg service: {exc or type(exc).__name__}", request=request)

    # -- requests ----------------------------------------------------------------------------------------

    def _segment_spec(
        self,
        path: str,
        query: Any,
        support_images: Any,
        support_masks: Any,
        prompt_id: Prompt | str | None,
        prompt: Prompt | str | None,
        threshold: float,
        ensemble: int,
        axis: int | None,
        probs: bool = False,
        volume: dict[str, str] | None = None,
    ) -> tuple[RequestSpec, Upload]:
        """Encode a /segment or /jobs request (raises InvalidInputError before anything is sent).

        ``prompt_id`` (the API's name) and ``prompt`` (its earlier name in the SDK) are one argument.
        """
        if prompt_id is not None and prompt is not None:
            raise InvalidInputError("prompt_id= and prompt= are the same argument; give one", "prompt_id")
        name = "prompt" if prompt is not None else "prompt_id"
        prompt = prompt if prompt is not None else prompt_id
        # several files (a list or tuple) are one DICOM series, sent as repeated query parts
        queries = to_uploads(list(query), "query") if isinstance(query, list | tuple) else [to_upload(query, "query")]
        if not queries:
            raise InvalidInputError("query is an empty list; give an image, a volume or the files of a DICOM series",
                                    "query")
        query_upload = queries[0]
        images = to_uploads(support_images, "support_images")
        masks = to_uploads(support_masks, "support_masks", mask=True)
        if prompt is not None and (images or masks):
            raise InvalidInputError(f"give either {name}= or support_images/support_masks, not both", name)
        if prompt is None:
            if not images or not masks:
                raise InvalidInputError("give support_images and support_masks (paired by order), or prompt_id=",
                                        "support_images" if not images else "support_masks")
            if len(images) != len(masks):
                raise InvalidInputError(f"{len(images)} support images but {len(masks)} support masks; pair them "
                                        "one to one", "support_masks")
        files = [u.multipart("query") for u in queries]
        files += [u.multipart("support_images") for u in images]
        files += [u.multipart("support_masks") for u in masks]
        data = {"threshold": repr(float(threshold)), "ensemble": str(int(ensemble))}
        if prompt is not None:
            data["prompt_id"] = prompt.id if isinstance(prompt, Prompt) else str(prompt)
        if axis is not None:
            data["axis"] = str(int(axis))
        if probs:
            data["output"] = "probs"
        data.update(volume or {})
        spec = RequestSpec("POST", path, files=files, data=data, headers={"Accept": "application/json"},
                           idempotent=path == "/segment")
        return spec, query_upload

    @staticmethod
    def _prompt_spec(support_images: Any, support_masks: Any, name: str | None,
                     label_names: dict[int, str] | None) -> RequestSpec:
        images = to_uploads(support_images, "support_images")
        masks = to_uploads(support_masks, "support_masks", mask=True)
        if not images or len(images) != len(masks):
            raise InvalidInputError(f"a prompt needs support images and masks paired one to one; got {len(images)} "
                                    f"images and {len(masks)} masks", "support_masks")
        files = [u.multipart("support_images") for u in images] + [u.multipart("support_masks") for u in masks]
        data: dict[str, str] = {}
        if name:
            data["name"] = name
        if label_names:
            data["label_names"] = json.dumps({str(int(k)): v for k, v in label_names.items()})
        return RequestSpec("POST", "/prompts", files=files, data=data, idempotent=False)

    # -- responses ---------------------------------------------------------------------------------------

    @staticmethod
    def _segment_result(response: httpx.Response, query: Upload, round_trip_ms: float) -> SegmentResult:
        body = response.json()
        probs = None
        if body.get("probs") and body.get("volume") is not None:  # one float NIfTI (H, W, D, K)
            probs = decode_probs(base64.b64decode(body["probs"][0]))
        elif body.get("probs"):
            probs = np.stack([decode_2d(base64.b64decode(p)) for p in body["probs"]]).astype(np.float32) / 255
        timings = {k: float(v) for k, v in (body.get("timings") or {}).items()}
        timings["round_trip"] = round(round_trip_ms, 2)
        return SegmentResult(
            data=base64.b64decode(body["mask"]),
            media_type=body.get("media_type") or "image/png",
            labels=[int(v) for v in body.get("labels", [])],
            shape=tuple(int(v) for v in body.get("shape", [])),
            timings=timings,
            label_names={int(k): v for k, v in (body.get("label_names") or {}).items()},
            probs=probs,
            query=query,
            volume=body.get("volume"),
            labels_present=[int(v) for v in body.get("labels_present", [])],
            segments=list(body.get("segments") or []),
            selection=body.get("selection"),
            uncertainty=uncertainty_maps(body.get("uncertainty"), body.get("volume") is not None),
            **quality_fields(body),
        )

    @staticmethod
    def _job_result(response: httpx.Response, job: Job, query: Upload | None, prompt: Prompt | str | None,
                    round_trip_ms: float) -> SegmentResult:
        labels = job.labels if job.labels is not None else (prompt.labels if isinstance(prompt, Prompt) else None)
        label_names = prompt.label_names if isinstance(prompt, Prompt) else None
        timings = {"round_trip": round(round_trip_ms, 2)}
        if job.started_at and job.created_at:
            timings["queued"] = round((job.started_at - job.created_at) * 1000, 2)
        if job.started_at and job.finished_at:
            timings["run"] = round((job.finished_at - job.started_at) * 1000, 2)
        header = response.headers.get("x-labels")
        result = SegmentResult(
            data=response.content,
            media_type=response.headers.get("content-type", "application/gzip").split(";")[0],
            labels=[], shape=(), timings=timings, label_names=dict(label_names or {}), query=query,
            volume=job.volume, selection=job.selection,
        )
        if job.confidence is not None:  # a server that says how sure it is
            for key, value in quality_fields(job.__dict__).items():
                setattr(result, key, value)
        if job.segments:  # a server that says which labels the mask holds, with names and colours
            result.segments = list(job.segments)
            result.labels_present = [int(v) for v in job.labels_present or []]
            result.label_names = {int(k): v for k, v in (job.label_names or {}).items()}
        result.shape = tuple(result.mask.shape) if result.format in ("png", "tiff", "nifti") else ()
        if header:
            result.labels = [int(v) for v in header.split(",") if v]
        elif labels is not None:
            result.labels = [int(v) for v in labels]
        elif result.format in ("png", "tiff", "nifti"):  # a server that does not say: those the mask holds
            result.labels = [int(v) for v in np.unique(result.mask) if v != 0]
        return result

    @staticmethod
    def _timer() -> float:
        return time.perf_counter()


class ProgressReporter:
    """Shows a job's progress: a tqdm bar (``progress=True``), a callback ``(done, total)``, or nothing.

    Slices the service skips (far outside the support's labelled range) are done at once when the job starts;
    the bar counts them as its starting point, not as work, so that its rate and ETA are those of the slices
    the model runs.
    """

    def __init__(self, progress: bool | Any, total: int, desc: str = "segment_volume"):
        self._callback = progress if callable(progress) else None
        self._bar = None
        self._started = False
        if progress is True:
            from tqdm.auto import tqdm  # the notebook widget when ipywidgets is there, else text

            self._bar = tqdm(total=total, unit="slice", desc=desc, leave=False)

    def update(self, done: int, total: int, running: bool = True) -> None:
        if self._bar is not None:
            if self._bar.total != total:
                self._bar.total = total
            if running and not self._started:
                self._started = True
                self._bar.reset(total=total)  # the clock starts with the job, not at the submission
                self._bar.initial = self._bar.n = done  # skipped slices: a starting point, not a rate
                self._bar.last_print_n = done
                self._bar.refresh()
            elif done > self._bar.n:
                self._bar.update(done - self._bar.n)
        if self._callback is not None:
            self._callback(done, total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def job_error(job: Job) -> JobFailedError:
    error = job.error or {}
    message = error.get("message") or f"the job was {job.status}"
    return JobFailedError(job.id, job.status, error.get("code"), message, error.get("field"))


def poll_delay(polls: int, poll_interval: float) -> float:
    """Short waits first (small volumes finish in a second), then every ``poll_interval``."""
    return min(poll_interval, 0.05 * 2**polls)


def object_id(obj: Job | Prompt | str) -> str:
    return obj if isinstance(obj, str) else obj.id
