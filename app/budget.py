"""A cost budget per request, priced from the files' headers before anything is decoded.

Three figures, each against a synchronous (``/segment``, ``/prompts``) and a larger job budget:

- **voxels**: a volume request's voxels, the query's *and* every support volume's (``ICSEG_SYNC_MAX_VOXELS``
  for /segment; a job is held to ``ICSEG_MAX_VOXELS`` per file only);
- **memory**: decoded bytes of every file, their float working copies, and one float probability map per
  label at the query's size (``ICSEG_SYNC_MAX_MB`` / ``ICSEG_JOB_MAX_MB``);
- **work**: query units (1 for a 2D query, its slices along ``axis`` for a volume) x labels x support size
  (support slices for 3D support) x ensemble (``ICSEG_SYNC_MAX_WORK`` / ``ICSEG_JOB_MAX_WORK``).

Labels are known only once the masks are read: the first check (before decoding) counts one label, the
second (masks decoded, before the support set is prepared or the model runs) the real K. Above the sync
budget a request is told to send less or to use /jobs (413 ``use_jobs``); above the job budget, what to
reduce (413 ``too_large``, 422 ``too_much_work``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from app.errors import ApiError
from app.settings import Settings
from data.io.probe import Probe, probe
from model.volume_plan import DEFAULT_SUPPORT_SLICES  # what 3D support uses per task when support_slices is unset

MB = 1024 * 1024
FLOAT_COPY = 4  # bytes per pixel of the float32 working copy (grey, normalised) of each decoded file
VOLUME_COPY = 12  # volumes: float32 copy, float64 percentile scratch, resized slices
PROBS_PER_LABEL = 8  # bytes per query pixel and label: the float32 probability map and its merge
# a 2D support set being prepared holds its arrays about three times at the peak: the per-item stack, its
# label-first copy and, for a prompt, the stored blob; (labels + 1) float32 planes of N x N per item
PREPARED_COPIES = 3


@dataclass
class Cost:
    """A request's price. ``labels`` is 1 until the masks are read."""

    query: Probe | None
    items: list[Probe | None]
    query_units: int
    support_size: int
    ensemble: int
    labels: int = 1
    axis: int = 2
    fields: list[str] = field(default_factory=list)  # the form field of each of ``items``
    three_d: bool = False  # 3D support volumes (position-matched): ``support_size`` is support slices
    prepared_items: int = 0  # 2D support items this request prepares at the network's side (not a stored prompt)
    network_side: int = 0  # N

    def largest_slice(self) -> tuple[str, int]:
        """(field, pixels) of the largest 2D plane the model will see: a volume's slice along ``axis`` (the
        query) or its H x W (support items; a one-slice NIfTI is a 2D image)."""
        best = ("query", 0)
        for i, p in enumerate([self.query, *self.items]):
            if p is None or not p.is_volume:
                continue
            dims = [d for a, d in enumerate(p.shape) if a != (self.axis if i == 0 else 2)]
            if dims[0] * dims[1] > best[1]:
                best = ("query" if i == 0 else "support_images", dims[0] * dims[1])
        return best

    @property
    def voxels(self) -> int:
        return sum(p.pixels for p in [self.query, *self.items] if p is not None and p.is_volume)

    @property
    def memory_bytes(self) -> int:
        total = 0
        for p in [self.query, *self.items]:
            if p is not None:
                total += p.decoded_bytes + p.pixels * (VOLUME_COPY if p.is_volume else FLOAT_COPY)
        if self.query is not None:
            total += self.labels * self.query.pixels * PROBS_PER_LABEL
        total += PREPARED_COPIES * self.prepared_items * (self.labels + 1) * self.network_side ** 2 * FLOAT_COPY
        return total

    @property
    def work(self) -> int:
        return self.query_units * self.labels * self.support_size * self.ensemble

    def describe(self) -> str:
        q = self.query
        where = f"query {'x'.join(map(str, q.shape))}" if q is not None else "query"
        return (f"{where}, {self.support_size} support, {self.labels} label(s), ensemble {self.ensemble}: "
                f"about {self.memory_bytes / MB:,.0f} MB, work {self.work:,}")


def estimate(query: bytes, images: list[bytes], masks: list[bytes], *, ensemble: int, axis: int,
             support_slices: int | None, max_support: int, settings: Settings, is_job: bool,
             network_side: int = 0) -> Cost:
    """Price a request from its files' headers (nothing decoded; deflated DICOM inflated up to the budget).

    For 2D support, ``support_size`` is every item sent; a caller that selects fewer per query
    (``model.retrieval``) sets it to those. ``network_side``: N, to price the prepared support set."""
    limit = int((settings.job_max_mb if is_job else settings.sync_max_mb) * MB)
    q = probe(query, "query", limit)
    fields = [f"support_images[{i}]" for i in range(len(images))] + [f"support_masks[{i}]" for i in range(len(masks))]
    items = [probe(b, name, limit) for b, name in zip([*images, *masks], fields)]
    units = q.shape[axis] if q is not None and q.is_volume and axis < 3 else 1
    three_d = any(p is not None and p.is_volume and 1 not in p.shape for p in items)
    size = min(support_slices or DEFAULT_SUPPORT_SLICES, max_support) if three_d else max(len(images), 1)
    return Cost(q, items, units, size, ensemble, axis=axis, fields=fields, three_d=three_d,
                prepared_items=0 if three_d else len(images), network_side=network_side)


def check(cost: Cost, settings: Settings, *, is_job: bool, prompt: bool = False) -> None:
    """Raise the 413/422 that says what to reduce, or to use /jobs, when ``cost`` is over its budget."""
    later = "" if is_job or prompt else "; or POST it to /jobs, whose budget is larger"
    for name, p in zip(["query", *cost.fields], [cost.query, *cost.items]):  # the per-file limits, from the header
        limit, what = (settings.max_voxels, "voxels") if p is not None and p.is_volume else (settings.max_pixels,
                                                                                                "pixels")
        if p is not None and p.pixels > limit:
            raise ApiError(f"{name}: the {p.format.upper()} declares {'x'.join(map(str, p.shape))} = {p.pixels:,} "
                           f"{what}, above the limit of {limit:,}; downscale or crop it", field=name, code="too_large")
    field, plane = cost.largest_slice()
    if plane > settings.max_pixels:  # a one-slice NIfTI of 7000 x 7000 is a 2D image of 49 Mpx
        raise ApiError(f"{field} has slices of {plane:,} pixels, above the limit of {settings.max_pixels:,} "
                       "(ICSEG_MAX_PIXELS); downscale or crop it", field=field, code="too_large")
    if not is_job and cost.voxels > settings.sync_max_voxels:
        raise ApiError(f"the volumes of this request hold {cost.voxels:,} voxels (query and support together), more "
                       f"than /segment answers synchronously ({settings.sync_max_voxels:,}, ICSEG_SYNC_MAX_VOXELS); "
                       "POST it to /jobs", field="query", code="use_jobs")
    budget_mb = settings.job_max_mb if is_job else settings.sync_max_mb
    if cost.memory_bytes > budget_mb * MB:
        setting = "ICSEG_JOB_MAX_MB" if is_job else "ICSEG_SYNC_MAX_MB"
        raise ApiError(f"this request would take {cost.describe()}, above the memory budget of {budget_mb:,.0f} MB "
                       f"({setting}); send a smaller query, fewer labels, or fewer or smaller support items{later}",
                       field="query", code="too_large")
    budget = settings.job_max_work if is_job else settings.sync_max_work
    if cost.work > budget:
        setting = "ICSEG_JOB_MAX_WORK" if is_job else "ICSEG_SYNC_MAX_WORK"
        fits_job = cost.work <= settings.job_max_work and not prompt
        raise ApiError(f"this request is {cost.describe()}, above the model-work budget of {budget:,} ({setting}; "
                       "query slices x labels x support size x ensemble); reduce the ensemble, the support size, "
                       f"the labels or the slices{later}", field="ensemble" if cost.ensemble > 1 else "support_images",
                       code="use_jobs" if fits_job and not is_job else "too_much_work")
