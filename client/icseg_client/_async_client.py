"""``AsyncClient``: the ``Client`` twin for asyncio (and trio) code."""

from __future__ import annotations

from functools import partial
from typing import Any

import anyio
import httpx

from ._base import (
    DEFAULT_MAX_RETRIES,
    BaseClient,
    ProgressReporter,
    RequestSpec,
    job_error,
    log,
    object_id,
    poll_delay,
)
from ._errors import APITimeoutError, IcsegError
from ._fields import request_fields
from ._inputs import ImageInput, decode_probs
from ._types import Job, Prompt, SegmentResult


async def _retry_sleep(seconds: float) -> None:
    await anyio.sleep(seconds)


class AsyncClient(BaseClient):
    """The asynchronous twin of ``Client``: the same arguments, methods and errors, awaited.

    Inputs are read and encoded in a worker thread, so large files do not block the event loop.

    Example:
        >>> async with AsyncClient("http://localhost:8000") as client:
        ...     results = await asyncio.gather(*(client.segment(q, prompt_id=p) for q in queries))
    """

    _http_class = httpx.AsyncClient
    _http: httpx.AsyncClient

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        http_client: httpx.AsyncClient | None = None,
    ):
        super().__init__(base_url, api_key, timeout, max_retries, http_client)

    async def close(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _request(self, spec: RequestSpec) -> httpx.Response:
        attempt = 0
        while True:
            request = self._build_request(spec)
            try:
                response = await self._http.send(request)
            except httpx.TransportError as exc:
                wait = self._retry_or_raise(spec, attempt, request, exc=exc)
            else:
                if response.status_code < 400:
                    return response
                wait = self._retry_or_raise(spec, attempt, request, response=response)
            await _retry_sleep(wait)
            attempt += 1

    async def segment(
        self,
        query: ImageInput,
        support_images: ImageInput | list[ImageInput] | None = None,
        support_masks: ImageInput | list[ImageInput] | None = None,
        *,
        prompt_id: Prompt | str | None = None,
        prompt: Prompt | str | None = None,
        threshold: float = 0.5,
        ensemble: int = 1,
        axis: int | None = None,
        support_slices: int | None = None,
        skip_margin: float | None = None,
        cascade: bool | None = None,
        support_positions: list[float] | None = None,
        label_names: dict[int, str] | None = None,
        output: str | None = None,
        select: str | None = None,
        support_size: int | None = None,
        probs: bool = False,
        uncertainty: bool = False,
    ) -> SegmentResult:
        """See ``Client.segment``."""
        spec, query_upload = await anyio.to_thread.run_sync(partial(
            self._segment_spec, "/segment", query, support_images, support_masks, prompt_id, prompt, threshold,
            ensemble, axis, probs,
            request_fields(support_slices, skip_margin, cascade, label_names, output, select, support_size,
                           uncertainty, support_positions=support_positions)))
        start = self._timer()
        response = await self._request(spec)
        return self._segment_result(response, query_upload, (self._timer() - start) * 1000)

    async def create_job(
        self,
        query: ImageInput,
        support_images: ImageInput | list[ImageInput] | None = None,
        support_masks: ImageInput | list[ImageInput] | None = None,
        *,
        prompt_id: Prompt | str | None = None,
        prompt: Prompt | str | None = None,
        threshold: float = 0.5,
        ensemble: int = 1,
        axis: int | None = None,
        support_slices: int | None = None,
        skip_margin: float | None = None,
        cascade: bool | None = None,
        support_positions: list[float] | None = None,
        label_names: dict[int, str] | None = None,
        output: str | None = None,
        select: str | None = None,
        support_size: int | None = None,
        uncertainty: bool = False,
    ) -> Job:
        """See ``Client.create_job``."""
        spec, _ = await anyio.to_thread.run_sync(partial(
            self._segment_spec, "/jobs", query, support_images, support_masks, prompt_id, prompt, threshold, ensemble,
            axis, volume=request_fields(support_slices, skip_margin, cascade, label_names, output, select,
                                        support_size, uncertainty, support_positions=support_positions)))
        return Job.from_json((await self._request(spec)).json())

    async def get_job(self, job: Job | str) -> Job:
        return Job.from_json((await self._request(RequestSpec("GET", f"/jobs/{object_id(job)}"))).json())

    async def job_result(self, job: Job | str) -> SegmentResult:
        job = job if isinstance(job, Job) else await self.get_job(job)
        start = self._timer()
        response = await self._request(RequestSpec("GET", f"/jobs/{job.id}/result"))
        return self._job_result(response, job, None, None, (self._timer() - start) * 1000)

    async def cancel_job(self, job: Job | str) -> None:
        await self._request(RequestSpec("DELETE", f"/jobs/{object_id(job)}"))

    async def segment_volume(
        self,
        query: ImageInput,
        support_images: ImageInput | list[ImageInput] | None = None,
        support_masks: ImageInput | list[ImageInput] | None = None,
        *,
        prompt_id: Prompt | str | None = None,
        prompt: Prompt | str | None = None,
        threshold: float = 0.5,
        ensemble: int = 1,
        axis: int | None = None,
        support_slices: int | None = None,
        skip_margin: float | None = None,
        cascade: bool | None = None,
        support_positions: list[float] | None = None,
        label_names: dict[int, str] | None = None,
        output: str | None = None,
        select: str | None = None,
        support_size: int | None = None,
        probs: bool = False,
        uncertainty: bool = False,
        progress: bool | Any = True,
        poll_interval: float = 1.0,
        timeout: float | None = None,
    ) -> SegmentResult:
        """See ``Client.segment_volume``; cancelling the awaiting task cancels the job."""
        spec, query_upload = await anyio.to_thread.run_sync(partial(
            self._segment_spec, "/jobs", query, support_images, support_masks, prompt_id, prompt, threshold, ensemble,
            axis, probs,
            request_fields(support_slices, skip_margin, cascade, label_names, output, select, support_size,
                           uncertainty, support_positions=support_positions)))
        start = self._timer()
        job = Job.from_json((await self._request(spec)).json())
        reporter = ProgressReporter(progress, job.total)
        try:
            polls = 0
            while not job.finished:
                if timeout is not None and self._timer() - start > timeout:
                    raise APITimeoutError(f"job {job.id} did not finish within {timeout:g} s; it was cancelled")
                await anyio.sleep(poll_delay(polls, poll_interval))
                polls += 1
                job = await self.get_job(job.id)
                reporter.update(job.done, job.total, running=job.status != "queued")
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._cancel_quietly(job.id)
            raise
        finally:
            reporter.close()
        if job.status != "done":
            raise job_error(job)
        response = await self._request(RequestSpec("GET", f"/jobs/{job.id}/result"))
        result = await anyio.to_thread.run_sync(
            self._job_result, response, job, query_upload, prompt_id or prompt, (self._timer() - start) * 1000)
        if probs and job.probs:
            result.probs = decode_probs((await self._request(RequestSpec("GET", job.probs))).content)
        if uncertainty and job.uncertainty:
            result.uncertainty = decode_probs((await self._request(RequestSpec("GET", job.uncertainty))).content)
        await self._cancel_quietly(job.id)
        return result

    async def _cancel_quietly(self, job_id: str) -> None:
        try:
            await self._request(RequestSpec("DELETE", f"/jobs/{job_id}"))
        except IcsegError as exc:
            log.debug("could not delete job %s: %s", job_id, exc)

    async def create_prompt(
        self,
        support_images: ImageInput | list[ImageInput],
        support_masks: ImageInput | list[ImageInput],
        *,
        name: str | None = None,
        label_names: dict[int, str] | None = None,
    ) -> Prompt:
        """See ``Client.create_prompt``."""
        spec = await anyio.to_thread.run_sync(self._prompt_spec, support_images, support_masks, name, label_names)
        return Prompt.from_json((await self._request(spec)).json())

    async def get_prompt(self, prompt: Prompt | str) -> Prompt:
        return Prompt.from_json((await self._request(RequestSpec("GET", f"/prompts/{object_id(prompt)}"))).json())

    async def list_prompts(self) -> list[Prompt]:
        body = (await self._request(RequestSpec("GET", "/prompts"))).json()
        return [Prompt.from_json(p) for p in body.get("prompts", [])]

    async def delete_prompt(self, prompt: Prompt | str) -> None:
        await self._request(RequestSpec("DELETE", f"/prompts/{object_id(prompt)}"))

    async def info(self) -> dict:
        return (await self._request(RequestSpec("GET", "/info"))).json()

    async def ready(self) -> bool:
        try:
            response = await self._http.get(self._url("/readyz"), headers=self._headers({}),
                                            timeout=self._request_timeout)
        except httpx.TransportError as exc:
            raise self._wrap_exception(exc, None) from exc
        return response.status_code == 200
