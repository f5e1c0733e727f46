"""Volume jobs: a bounded worker pool, progress, cancellation and results kept for a limited time.

Jobs run in memory; their state is mirrored to ``ICSEG_DATA_DIR/jobs/<id>.json`` (written atomically at
every change of status) next to their result files. A new process reads those files back: finished jobs
and their results stay available until they expire, and a job that was queued or running when the
previous process died is reported ``failed`` with code ``interrupted`` (never left "running" forever).
One server per data directory, as for the disk prompt store.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from app.errors import Busy, JobNotFound
from app.metrics import Metrics
from app.prompts import visible
from data.errors import CodedError
from data.io import write_atomic
from model.cancel import Cancelled, stop_when

log = logging.getLogger(__name__)

# what a finished job says about its labels, and how sure it is (app.quality)
LABEL_KEYS = ("labels_present", "label_names", "segments", "confidence", "low_confidence", "low_confidence_labels",
              "mismatch", "calibrated", "warnings")
JOB_ID = re.compile(r"^[0-9a-f]{32}$")
# progress -> (bytes, media type, ext), or with a fourth item {"volume": what ran, "probs": NIfTI bytes or None}
JobWork = Callable[[Callable[[int, int], None]], tuple]


class JobCancelled(Exception):
    pass


@dataclass
class Job:
    id: str
    total: int
    labels: list[int] | None = None  # the support set's label values (None: a job of an older server)
    status: str = "queued"  # queued | running | done | failed | cancelled
    done: int = 0
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None
    error: dict | None = None
    result_path: Path | None = None
    media_type: str | None = None
    extension: str | None = None
    volume: dict | None = None  # a volume job's metadata once done: slices, skipped, tasks, options
    probs_path: Path | None = None  # output=probs: the float NIfTI of per-label probabilities
    uncertainty_path: Path | None = None  # uncertainty=true: the float NIfTI of per-label uncertainty maps
    owner: str | None = None  # the tenant that submitted it (None: no keys configured)
    label_info: dict | None = None  # once done: labels_present, label_names, segments (app.outputs.label_summary)
    selection: dict | None = None  # 2D support: {"select", "support_size", "pool"}, what the query uses (as /segment)
    cancel_event: threading.Event = field(default_factory=threading.Event)
    future: Future | None = None

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed", "cancelled")

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "status": self.status,
            "progress": {"done": self.done, "total": self.total},
            "labels": self.labels,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "expires_at": self.expires_at,
            "error": self.error,
            "result": f"/jobs/{self.id}/result" if self.status == "done" else None,
            "volume": self.volume,
            "probs": f"/jobs/{self.id}/probs" if self.status == "done" and self.probs_path else None,
            "uncertainty": f"/jobs/{self.id}/uncertainty" if self.status == "done" and self.uncertainty_path else None,
            "selection": self.selection,
            **{key: (self.label_info or {}).get(key) for key in LABEL_KEYS},
        }


class JobManager:
    """Runs ``JobWork`` callables on ``workers`` threads; at most ``workers + queue_size`` unfinished jobs."""

    def __init__(self, data_dir: Path, workers: int, queue_size: int, result_ttl_s: int, metrics: Metrics):
        self.dir = Path(data_dir) / "jobs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.workers = workers
        self.capacity = workers + queue_size
        self.result_ttl_s = result_ttl_s
        self.metrics = metrics
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="icseg-job")
        self._jobs: dict[str, Job] = {}
        self._active = 0  # submitted and not yet returned (a cancelled job counts until its thread lets go)
        self._durations: deque[float] = deque(maxlen=20)
        self._lock = threading.Lock()
        self._stopping = False
        self._restore()
        self._update_gauges()

    # -- state on disk -----------------------------------------------------------------------------------

    def _state_path(self, job_id: str) -> Path:
        return self.dir / f"{job_id}.json"

    def _save(self, job: Job) -> None:
        """Mirror the job's state to disk (atomic rename); a deleted job is not written back."""
        state = {**job.to_dict(), "result_file": job.result_path.name if job.result_path else None,
                 "probs_file": job.probs_path.name if job.probs_path else None,
                 "uncertainty_file": job.uncertainty_path.name if job.uncertainty_path else None,
                 "media_type": job.media_type, "extension": job.extension, "owner": job.owner}
        with self._lock:
            if job.id not in self._jobs:
                return
            try:
                write_atomic(self._state_path(job.id), json.dumps(state).encode())
            except OSError:
                log.warning("could not record the state of a job on disk", exc_info=True)

    def _forget_files(self, job: Job) -> None:
        self._state_path(job.id).unlink(missing_ok=True)
        if job.result_path is not None:
            job.result_path.unlink(missing_ok=True)
        for extra in (job.probs_path, job.uncertainty_path):
            if extra is not None:
                extra.unlink(missing_ok=True)

    def _restore(self) -> None:
        """Read back the jobs of a previous process; unfinished ones become failed (interrupted)."""
        now = time.time()
        for path in self.dir.glob("*.json"):
            try:
                state = json.loads(path.read_text())
                job = Job(id=state["id"], total=int(state["progress"]["total"]), status=state["status"],
                          done=int(state["progress"]["done"]), labels=state.get("labels"),
                          created_at=state["created_at"], started_at=state["started_at"],
                          finished_at=state["finished_at"], expires_at=state["expires_at"], error=state["error"],
                          result_path=self.dir / state["result_file"] if state.get("result_file") else None,
                          media_type=state.get("media_type"), extension=state.get("extension"),
                          volume=state.get("volume"),
                          probs_path=self.dir / state["probs_file"] if state.get("probs_file") else None,
                          uncertainty_path=self.dir / state["uncertainty_file"] if state.get("uncertainty_file")
                          else None,
                          owner=state.get("owner"), selection=state.get("selection"),
                          label_info={key: state.get(key) for key in LABEL_KEYS} if state.get("segments") else None)
                if not JOB_ID.fullmatch(job.id) or path.stem != job.id:
                    raise ValueError("file name and id differ")
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("unreadable job state %s removed", path.name)
                path.unlink(missing_ok=True)
                continue
            if job.expires_at is not None and now >= job.expires_at:
                self._forget_files(job)
                continue
            if not job.finished or (job.status == "done" and not (job.result_path and job.result_path.exists())):
                was = job.status if not job.finished else "done but its result is lost"
                job.status, job.finished_at, job.expires_at = "failed", now, now + self.result_ttl_s
                job.error = {"code": "interrupted", "message": f"the server stopped while this job was {was}; "
                             "submit it again", "field": None}
                job.result_path = None
                log.warning("a job that was %s when the server stopped is reported failed", was)
            self._jobs[job.id] = job
            self._save(job)
        known = {path.name for job in self._jobs.values()  # a job's result, probabilities and uncertainty maps
                 for path in (job.result_path, job.probs_path, job.uncertainty_path) if path is not None}
        for path in self.dir.iterdir():  # results without a job, temporary files of a crash
            if path.suffix != ".json" and path.name not in known:
                path.unlink(missing_ok=True)

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: mean job time x jobs ahead / workers."""
        mean = sum(self._durations) / len(self._durations) if self._durations else 5.0
        ahead = max(1, self._active - self.workers + 1)
        return int(min(3600, max(1, math.ceil(mean * ahead / self.workers))))

    def _busy(self) -> Busy:
        return Busy(f"{self._active} jobs are queued or running, the most this server takes; retry later",
                    retry_after=self.retry_after())

    def ensure_room(self) -> None:
        """429 before the upload is decoded when no slot is free (``submit`` checks again)."""
        if self._active >= self.capacity:
            raise self._busy()

    def submit(self, work: JobWork, total: int, labels: Sequence[int] | None = None, owner: str | None = None,
               selection: dict | None = None) -> Job:
        """Queue ``work``; ``total`` progress steps; ``labels``: the label values the mask will hold;
        ``selection``: which 2D support items the query uses (chosen before the 202, as /segment reports it)."""
        with self._lock:
            if self._active >= self.capacity:
                raise self._busy()
            job = Job(id=uuid.uuid4().hex, total=total, labels=None if labels is None else [int(v) for v in labels],
                      owner=owner, selection=None if selection is None else dict(selection))
            self._jobs[job.id] = job
            self._active += 1
        self._save(job)
        job.future = self._executor.submit(self._run, job, work)
        self._update_gauges()
        return job

    def _run(self, job: Job, work: JobWork) -> None:
        try:
            if job.cancel_event.is_set():
                raise JobCancelled
            job.status, job.started_at = "running", time.time()
            self._save(job)
            self._update_gauges()

            def progress(done: int, total: int) -> None:
                if job.cancel_event.is_set():
                    raise JobCancelled
                job.done, job.total = done, total

            with stop_when(job.cancel_event.is_set):  # the model stops at its next chunk, not the next slice batch
                payload, media_type, extension, *extra = work(progress)
            if job.cancel_event.is_set():
                raise JobCancelled
            extra = extra[0] if extra else {}
            job.volume = extra.get("volume")
            job.label_info = extra.get("labels")
            if extra.get("probs") is not None:
                job.probs_path = write_atomic(self.dir / f"{job.id}.probs.nii.gz", extra["probs"])
            if extra.get("uncertainty") is not None:
                job.uncertainty_path = write_atomic(self.dir / f"{job.id}.uncertainty.nii.gz", extra["uncertainty"])
            path = write_atomic(self.dir / f"{job.id}{extension}", payload)
            job.result_path, job.media_type, job.extension = path, media_type, extension
            job.done = job.total
            job.status = "done"
        except (JobCancelled, Cancelled):
            if self._stopping:  # the server is shutting down: the user did not cancel it
                job.status = "failed"
                job.error = {"code": "interrupted", "message": "the server stopped while this job was running; "
                             "submit it again", "field": None}
            else:
                job.status = "cancelled"
        except CodedError as exc:  # the user's input, found out while running
            job.status = "failed"
            job.error = {"code": exc.code, "message": exc.message, "field": exc.field}
        except Exception:  # noqa: BLE001 - reported on the job; details only in the log
            log.exception("job failed")
            job.status = "failed"
            job.error = {"code": "internal", "message": "the job failed on the server; see the server log",
                         "field": None}
        finally:
            job.finished_at = time.time()
            job.expires_at = job.finished_at + self.result_ttl_s
            if job.started_at is not None:
                self._durations.append(job.finished_at - job.started_at)
            with self._lock:
                self._active -= 1
                forgotten = job.id not in self._jobs
            if forgotten:  # deleted while it ran
                self._forget_files(job)
            else:
                self._save(job)
            self._update_gauges()

    def get(self, job_id: str, tenant: str | None = None) -> Job:
        """A job; another tenant's is answered as unknown (``app.prompts.visible``)."""
        with self._lock:
            job = self._jobs.get(job_id)
        if (job is None or (job.expires_at is not None and time.time() >= job.expires_at)
                or not visible(job.owner, tenant)):
            raise JobNotFound(f"no job with id {job_id!r} (unknown, deleted or expired)", field="job_id")
        return job

    def delete(self, job_id: str, tenant: str | None = None) -> Job:
        """Cancel a queued or running job, or forget a finished one and its result."""
        job = self.get(job_id, tenant)
        job.cancel_event.set()
        with self._lock:
            self._jobs.pop(job_id, None)
            if job.future is not None and job.future.cancel():  # never started: its thread will not count down
                self._active -= 1
                job.status = "cancelled"
            self._forget_files(job)
        self._update_gauges()
        return job

    def sweep(self) -> int:
        now = time.time()
        with self._lock:
            expired = [j for j in self._jobs.values() if j.expires_at is not None and now >= j.expires_at]
            for job in expired:
                self._jobs.pop(job.id, None)
        for job in expired:
            self._forget_files(job)
        if expired:
            self._update_gauges()
        return len(expired)

    def _update_gauges(self) -> None:
        with self._lock:
            jobs = list(self._jobs.values())
        for state in ("queued", "running", "done", "failed", "cancelled"):
            self.metrics.jobs.labels(state).set(sum(j.status == state for j in jobs))

    def shutdown(self) -> None:
        """Stop: running jobs end as failed (interrupted); queued ones stay queued on disk and the next
        process reports them failed too."""
        self._stopping = True
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel_event.set()
        self._executor.shutdown(wait=False, cancel_futures=True)
