"""``Client``: the synchronous SDK."""

from __future__ import annotations

import time
from typing import Any

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


def _retry_sleep(seconds: float) -> None:
    time.sleep(seconds)  # one place, so that tests can record the waits instead of waiting


class Client(BaseClient):
    """Talks to an icseg service.

    Args:
        base_url: the service, e.g. ``http://gpu-box:8000``; default ``ICSEG_URL``, then http://127.0.0.1:8000.
        api_key: a key of the service's ``ICSEG_API_KEYS``; default ``ICSEG_API_KEY``.
        timeout: seconds (or an ``httpx.Timeout``) for one request; default 330 s (10 s to connect).
        max_retries: retries of connection failures, 429 and 503 (see ``icseg_client._base``).
        http_client: an ``httpx.Client`` to send through (proxies, certificates, tests).

    Example:
        >>> with Client("http://localhost:8000") as client:
        ...     result = client.segment("query.png", ["a.png", "b.png"], ["a_mask.png", "b_mask.png"])
    """

    _http_class = httpx.Client
    _http: httpx.Client

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        http_client: httpx.Client | None = None,
    ):
        super().__init__(base_url, api_key, timeout, max_retries, http_client)

    def close(self) -> None:
        """Close the connections (not those of an ``http_client`` you passed)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport ---------------------------------------------------------------------------------------

    def _request(self, spec: RequestSpec) -> httpx.Response:
        attempt = 0
        while True:
            request = self._build_request(spec)
            try:
                response = self._http.send(request)
            except httpx.TransportError as exc:
                wait = self._retry_or_raise(spec, attempt, request, exc=exc)
            else:
                if response.status_code < 400:
                    return response
                wait = self._retry_or_raise(spec, attempt, request, response=response)
            _retry_sleep(wait)
            attempt += 1

    # -- segmentation ------------------------------------------------------------------------------------

    def segment(
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
        """Segment one query with a support set or a stored prompt, synchronously.

        Args:
            query: the image: a path, bytes, a numpy array ((H, W), (H, W, 3) uint8, or (H, W, D)), a PIL
                image or a nibabel image. Small volumes are answered here; large ones need ``segment_volume``.
            support_images: example images (a list), paired by order with
            support_masks: their label maps (0 background, 1..K); every label is segmented.
            prompt_id: a stored prompt (``create_prompt``) or its id, instead of the support set: the form
                field ``prompt_id`` of the API. ``prompt=`` is the same argument under its earlier name.
            threshold: probability in [0, 1] at which a pixel gets a label.
            ensemble: average over this many random subsets of the support set (1 to 16).
            axis: volumes: the slicing axis (service default 2, axial for RAS NIfTI).
            support_slices: volumes with 3D support: support slices per query slice and label, in all, spread
                over the support volumes by position (service default 8). The cost grows with it.
            skip_margin: volumes with 3D support: query slices farther than this relative depth (0-1) outside
                every support volume's labelled range are skipped and set to background (service default
                0.1; 1 never skips). ``result.volume["skipped"]`` lists them.
            cascade: volumes with 3D support: confident predictions of neighbouring slices join the support of
                the next ones, outward from the labelled range (service default False).
            support_positions: volumes with a 2D support set: each pair's relative depth along the axis (0 the
                first slice, 1 the last), one per pair in order; query slices farther than ``skip_margin`` from
                the pairs holding a label are skipped (background, and no cost).
            label_names: label value -> name for an inline support set (a stored prompt has its own); the
                names come back in ``result.label_names``, ``result.segments``, a DICOM SEG and a .seg.nrrd.
            output: "dicom-seg" for a DICOM query (a file, a list of a series' files, a zip, a multi-frame):
                a DICOM Segmentation referencing the query's instances; save it with ``result.save("x.dcm")``.
            probs: also return per-label probabilities: (K, H, W) for 2D queries, (K, H, W, D) for volumes.
            select: 2D support sets: which items the query uses: "all" (service default while the set fits the
                model), "similar" (the ``support_size`` items nearest to the query) or "random" (seeded); a
                stored prompt may hold up to 512 items, more than the model takes at once (64).
            support_size: 2D support sets: how many items the query uses (with "similar" or "random"; service
                default: all while the set fits the model, else 16).
                ``result.selection`` says what ran.
            uncertainty: also return per-pixel uncertainty maps, ``result.uncertainty``: (K, H, W) for 2D
                queries, (K, H, W, D) for volumes, in [0, 1]. Every result also carries ``confidence`` per
                label, ``low_confidence``, ``mismatch`` and ``warnings`` (docs/confidence.md).

        Returns:
            The mask at the query's size, in its format and geometry.

        Raises:
            InvalidInputError: an input cannot be sent (nothing was sent).
            BadRequestError, UnprocessableEntityError, PayloadTooLargeError, UnsupportedMediaTypeError,
            NotFoundError, AuthenticationError, RateLimitError, ServiceUnavailableError: the service's answer,
            with its message and the field to change.
            APIConnectionError, APITimeoutError: no answer.
        """
        spec, query_upload = self._segment_spec("/segment", query, support_images, support_masks, prompt_id, prompt,
                                                threshold, ensemble, axis, probs,
                                                request_fields(support_slices, skip_margin, cascade, label_names,
                                                               output, select, support_size, uncertainty,
                                                               support_positions=support_positions))
        start = self._timer()
        response = self._request(spec)
        return self._segment_result(response, query_upload, (self._timer() - start) * 1000)

    def create_job(
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
        """Submit a background segmentation (same arguments as ``segment``); poll it with ``get_job``."""
        spec, _ = self._segment_spec("/jobs", query, support_images, support_masks, prompt_id, prompt, threshold,
                                     ensemble, axis,
                                     volume=request_fields(support_slices, skip_margin, cascade, label_names, output,
                                                           select, support_size, uncertainty,
                                                           support_positions=support_positions))
        return Job.from_json(self._request(spec).json())

    def get_job(self, job: Job | str) -> Job:
        """A job's status and progress (slices done / total)."""
        return Job.from_json(self._request(RequestSpec("GET", f"/jobs/{object_id(job)}")).json())

    def job_result(self, job: Job | str) -> SegmentResult:
        """The mask of a finished job (``ConflictError`` while it runs)."""
        job = job if isinstance(job, Job) else self.get_job(job)
        start = self._timer()
        response = self._request(RequestSpec("GET", f"/jobs/{job.id}/result"))
        return self._job_result(response, job, None, None, (self._timer() - start) * 1000)

    def cancel_job(self, job: Job | str) -> None:
        """Cancel a queued or running job, or forget a finished one and its result."""
        self._request(RequestSpec("DELETE", f"/jobs/{object_id(job)}"))

    def segment_volume(
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
        """Segment a volume as a background job, showing its progress, and return its mask.

        Args:
            query: a NIfTI volume: a path, bytes, a nibabel image or an (H, W, D) array (identity affine).
            support_images, support_masks, prompt_id, threshold, ensemble, axis, support_slices, skip_margin,
                cascade, probs, uncertainty: as ``segment``; the support set is NIfTI volumes (matched slice by
                slice) or 2D images (applied to every slice).
            progress: True: a tqdm bar; a callable: called with (slices done, total); False: silent.
            poll_interval: the longest wait between two polls, in seconds.
            timeout: seconds to wait for the job (None: no limit); then it is cancelled and
                ``APITimeoutError`` raised.

        Returns:
            The mask: ``result.mask`` (H, W, D), ``result.affine`` (the query's), ``result.nifti`` (nibabel).

        Raises:
            JobFailedError: the job failed or was cancelled on the server.
            The errors of ``segment``.
        """
        spec, query_upload = self._segment_spec("/jobs", query, support_images, support_masks, prompt_id, prompt,
                                                threshold, ensemble, axis, probs,
                                                request_fields(support_slices, skip_margin, cascade, label_names,
                                                               output, select, support_size, uncertainty,
                                                               support_positions=support_positions))
        start = self._timer()
        job = Job.from_json(self._request(spec).json())
        reporter = ProgressReporter(progress, job.total)
        try:
            polls = 0
            while not job.finished:
                if timeout is not None and self._timer() - start > timeout:
                    raise APITimeoutError(f"job {job.id} did not finish within {timeout:g} s; it was cancelled")
                time.sleep(poll_delay(polls, poll_interval))
                polls += 1
                job = self.get_job(job.id)
                reporter.update(job.done, job.total, running=job.status != "queued")
        except BaseException:  # Ctrl-C in a notebook or a timeout: the server stops working on it
            self._cancel_quietly(job.id)
            raise
        finally:
            reporter.close()
        if job.status != "done":
            raise job_error(job)
        response = self._request(RequestSpec("GET", f"/jobs/{job.id}/result"))
        result = self._job_result(response, job, query_upload, prompt_id or prompt, (self._timer() - start) * 1000)
        if probs and job.probs:
            result.probs = decode_probs(self._request(RequestSpec("GET", job.probs)).content)
        if uncertainty and job.uncertainty:
            result.uncertainty = decode_probs(self._request(RequestSpec("GET", job.uncertainty)).content)
        self._cancel_quietly(job.id)  # the result is here: free the server's copy now, not after its TTL
        return result

    def _cancel_quietly(self, job_id: str) -> None:
        try:
            self._request(RequestSpec("DELETE", f"/jobs/{job_id}"))
        except IcsegError as exc:
            log.debug("could not delete job %s: %s", job_id, exc)

    # -- prompts -----------------------------------------------------------------------------------------

    def create_prompt(
        self,
        support_images: ImageInput | list[ImageInput],
        support_masks: ImageInput | list[ImageInput],
        *,
        name: str | None = None,
        label_names: dict[int, str] | None = None,
    ) -> Prompt:
        """Store a support set on the service once; then ``segment(query, prompt_id=p)`` sends only the query.

        Args:
            support_images: 2D example images, paired by order with
            support_masks: their label maps (0 background, 1..K).
            name: a display name (letters, digits, spaces, . , : ( ) + - _).
            label_names: label value -> name, e.g. ``{1: "liver"}``.

        Returns:
            The stored prompt's metadata.
        """
        spec = self._prompt_spec(support_images, support_masks, name, label_names)
        return Prompt.from_json(self._request(spec).json())

    def get_prompt(self, prompt: Prompt | str) -> Prompt:
        return Prompt.from_json(self._request(RequestSpec("GET", f"/prompts/{object_id(prompt)}")).json())

    def list_prompts(self) -> list[Prompt]:
        body = self._request(RequestSpec("GET", "/prompts")).json()
        return [Prompt.from_json(p) for p in body.get("prompts", [])]

    def delete_prompt(self, prompt: Prompt | str) -> None:
        self._request(RequestSpec("DELETE", f"/prompts/{object_id(prompt)}"))

    # -- operations --------------------------------------------------------------------------------------

    def info(self) -> dict:
        """The model, its weights and licence, the limits and formats of the service."""
        return self._request(RequestSpec("GET", "/info")).json()

    def ready(self) -> bool:
        """True when the service has its model loaded (``/readyz``); False when it answers not ready."""
        try:
            response = self._http.get(self._url("/readyz"), headers=self._headers({}), timeout=self._request_timeout)
        except httpx.TransportError as exc:
            raise self._wrap_exception(exc, None) from exc
        return response.status_code == 200
