"""Prompt storage: a prepared support set (its arrays) plus metadata, on disk or in Redis behind one interface.

A prompt is written once and never changed, so readers can cache its arrays by id; they only check
that its metadata still exists (not deleted, not expired) on each use.

Disk layout (``ICSEG_DATA_DIR/prompts``): ``<id>.npz`` (arrays) and ``<id>.json`` (metadata). Both go
through ``data.io.write_atomic`` (fsynced), arrays first: the metadata file is the commit marker, so a crash
never leaves a half-written prompt visible. One server per directory; several replicas share prompts through
Redis, where both keys are set in one MULTI/EXEC transaction.

Storage raises domain errors (``StoreUnavailable``, ``PromptTooLarge``); ``app/errors.py`` maps them to HTTP.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path

from app.errors import PromptTooLarge, StoreUnavailable
from data.io import write_atomic

log = logging.getLogger(__name__)

PROMPT_ID = re.compile(r"^[0-9a-f]{32}$")
STORE_RETRY_AFTER_S = 5  # what a 503 asks clients to wait while Redis is away (redis-py reconnects by itself)
REDIS_TIMEOUT_S = 2.0  # the longest one Redis operation may take
ORPHAN_AGE_S = 3600  # a temporary or orphan file this old is the leftover of a crash, not a write in progress


def new_id() -> str:
    return uuid.uuid4().hex


def valid_id(prompt_id: str) -> bool:
    return bool(PROMPT_ID.fullmatch(prompt_id or ""))


@dataclass
class PromptRecord:
    """What ``GET /prompts/{id}`` shows: metadata, never pixels."""

    id: str
    labels: list[int]
    support_size: int
    network_size: int
    created_at: float
    expires_at: float | None = None
    name: str | None = None
    label_names: dict[str, str] = field(default_factory=dict)
    bytes: int = 0
    owner: str | None = None  # the tenant (API key name) that created it; None: created without keys

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> PromptRecord:
        return cls(**json.loads(data))

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (now or time.time()) >= self.expires_at


def _store_full(size: int, cap: int) -> PromptTooLarge:
    return PromptTooLarge(f"the prompt needs {size} bytes, more than the whole store holds ({cap}); send fewer "
                          "or smaller support items, or raise ICSEG_PROMPT_STORE_MB", field="support_images")


class PromptStore(ABC):
    """Blocking storage of (record, arrays); call from a worker thread."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes

    @abstractmethod
    def put(self, record: PromptRecord, blob: bytes) -> None: ...

    @abstractmethod
    def get_record(self, prompt_id: str) -> PromptRecord | None: ...

    @abstractmethod
    def get_blob(self, prompt_id: str) -> bytes | None: ...

    @abstractmethod
    def list(self) -> list[PromptRecord]:
        """The prompts not expired, oldest first."""

    @abstractmethod
    def delete(self, prompt_id: str) -> bool: ...

    @abstractmethod
    def sweep(self) -> int:
        """Remove expired prompts; returns how many."""

    def ping(self) -> None:
        """Raise when the store cannot be used."""
        return None

    def close(self) -> None:
        return None

    def _evict(self, keep: str) -> None:
        """Delete the oldest prompts, never ``keep`` (the one just written), until the store fits its cap."""
        records = self.list()
        total = sum(r.bytes for r in records)
        for record in records:
            if total <= self.max_bytes:
                break
            if record.id != keep:
                self.delete(record.id)
                total -= record.bytes
                log.info("prompt store over its size cap: evicted the oldest prompt")


class DiskPromptStore(PromptStore):
    def __init__(self, data_dir: Path, max_bytes: int):
        super().__init__(max_bytes)
        self.dir = Path(data_dir) / "prompts"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._clean_leftovers()

    def _paths(self, prompt_id: str) -> tuple[Path, Path]:
        if not valid_id(prompt_id):  # ids are uuid hex: nothing else ever becomes a path
            raise ValueError("invalid prompt id")
        return self.dir / f"{prompt_id}.json", self.dir / f"{prompt_id}.npz"

    def _clean_leftovers(self) -> None:
        now = time.time()
        for path in self.dir.iterdir():
            try:
                old = now - path.stat().st_mtime > ORPHAN_AGE_S
                orphan = path.suffix == ".npz" and not path.with_suffix(".json").exists()
                if old and (orphan or path.name.endswith(".tmp")):
                    path.unlink(missing_ok=True)
            except FileNotFoundError:
                pass

    def put(self, record: PromptRecord, blob: bytes) -> None:
        meta = record.to_json()
        if len(blob) + len(meta) > self.max_bytes:
            raise _store_full(len(blob) + len(meta), self.max_bytes)
        meta_path, npz_path = self._paths(record.id)
        with self._lock:
            write_atomic(npz_path, blob, fsync=True)
            write_atomic(meta_path, meta, fsync=True)  # the commit: from here on the prompt is visible
            self._evict(keep=record.id)

    def _read_record(self, path: Path) -> PromptRecord | None:
        try:
            return PromptRecord.from_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):
            log.warning("unreadable prompt metadata %s ignored", path.name)
            return None

    def get_record(self, prompt_id: str) -> PromptRecord | None:
        if not valid_id(prompt_id):
            return None
        record = self._read_record(self._paths(prompt_id)[0])
        if record is not None and record.expired():
            self.delete(prompt_id)
            return None
        return record

    def get_blob(self, prompt_id: str) -> bytes | None:
        if not valid_id(prompt_id):
            return None
        try:
            return self._paths(prompt_id)[1].read_bytes()
        except FileNotFoundError:
            return None

    def _all(self) -> list[PromptRecord]:
        records = []
        for path in self.dir.glob("*.json"):
            if valid_id(path.stem) and (record := self._read_record(path)) is not None:
                records.append(record)
        return records

    def list(self) -> list[PromptRecord]:
        now = time.time()
        live = [r for r in self._all() if not r.expired(now)]
        return sorted(live, key=lambda r: r.created_at)

    def delete(self, prompt_id: str) -> bool:
        if not valid_id(prompt_id):
            return False
        meta_path, npz_path = self._paths(prompt_id)
        existed = meta_path.exists()
        meta_path.unlink(missing_ok=True)  # invisible first, then the arrays
        npz_path.unlink(missing_ok=True)
        return existed

    def ping(self) -> None:
        if not os.access(self.dir, os.W_OK | os.X_OK):
            raise StoreUnavailable("the prompt store directory is not writable; check ICSEG_DATA_DIR")

    def sweep(self) -> int:
        now = time.time()
        expired = [r.id for r in self._all() if r.expired(now)]
        for prompt_id in expired:
            self.delete(prompt_id)
        return len(expired)

    def _evict(self, keep: str) -> None:
        self.sweep()  # expired files first: they hold disk space but are no longer listed
        super()._evict(keep)


class RedisPromptStore(PromptStore):
    """Prompts in Redis: ``<prefix>:prompt:<id>:meta`` and ``:arrays`` with native TTL, an index sorted by age."""

    def __init__(self, url: str, prefix: str, max_bytes: int):
        import redis  # only needed with ICSEG_REDIS_URL

        super().__init__(max_bytes)
        self._redis_error = redis.RedisError
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # every operation ends within REDIS_TIMEOUT_S: a paused Redis is a fast 503, inside the compose health
        # check's 5 s (redis-py would otherwise retry 3 times with backoff); the next call reconnects by itself
        self.r = redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S,
                                      retry=Retry(NoBackoff(), 0))
        self.prefix = prefix

    def _meta(self, prompt_id: str) -> str:
        return f"{self.prefix}:prompt:{prompt_id}:meta"

    def _arrays(self, prompt_id: str) -> str:
        return f"{self.prefix}:prompt:{prompt_id}:arrays"

    @property
    def _index(self) -> str:
        return f"{self.prefix}:prompts"

    @property
    def _sizes(self) -> str:
        return f"{self.prefix}:prompt-bytes"

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except self._redis_error as exc:
            log.error("redis unavailable: %s", type(exc).__name__)
            raise StoreUnavailable("the prompt store (Redis) is unavailable; try again shortly",
                                   retry_after=STORE_RETRY_AFTER_S) from exc

    def put(self, record: PromptRecord, blob: bytes) -> None:
        meta = record.to_json()
        size = len(blob) + len(meta)
        if size > self.max_bytes:
            raise _store_full(size, self.max_bytes)
        ttl = None if record.expires_at is None else max(1, int(round(record.expires_at - record.created_at)))

        def write():
            pipe = self.r.pipeline(transaction=True)  # MULTI/EXEC: both keys appear together
            pipe.set(self._arrays(record.id), blob, ex=ttl)
            pipe.set(self._meta(record.id), meta, ex=ttl)
            pipe.zadd(self._index, {record.id: record.created_at})
            pipe.hset(self._sizes, record.id, size)
            pipe.execute()
            self._evict(keep=record.id)

        self._call(write)

    def get_record(self, prompt_id: str) -> PromptRecord | None:
        if not valid_id(prompt_id):
            return None
        data = self._call(self.r.get, self._meta(prompt_id))
        return None if data is None else PromptRecord.from_json(data)

    def get_blob(self, prompt_id: str) -> bytes | None:
        if not valid_id(prompt_id):
            return None
        return self._call(self.r.get, self._arrays(prompt_id))

    def _live(self) -> list[PromptRecord]:
        """Records in the index; entries whose keys expired are dropped from the index on the way."""
        ids = [i.decode() for i in self.r.zrange(self._index, 0, -1)]
        if not ids:
            return []
        metas = self.r.mget([self._meta(i) for i in ids])
        gone = [i for i, m in zip(ids, metas) if m is None]
        if gone:
            pipe = self.r.pipeline(transaction=True)
            pipe.zrem(self._index, *gone)
            pipe.hdel(self._sizes, *gone)
            pipe.execute()
        return [PromptRecord.from_json(m) for m in metas if m is not None]

    def list(self) -> list[PromptRecord]:
        return self._call(self._live)

    def delete(self, prompt_id: str) -> bool:
        if not valid_id(prompt_id):
            return False

        def remove():
            pipe = self.r.pipeline(transaction=True)
            pipe.delete(self._meta(prompt_id), self._arrays(prompt_id))
            pipe.zrem(self._index, prompt_id)
            pipe.hdel(self._sizes, prompt_id)
            return pipe.execute()[0] > 0

        return self._call(remove)

    def sweep(self) -> int:
        # Redis expires the keys itself; this only trims the index
        before = self._call(self.r.zcard, self._index)
        return before - len(self.list())

    def ping(self) -> None:
        self._call(self.r.ping)

    def close(self) -> None:
        self.r.close()


def make_store(settings) -> PromptStore:
    cap = int(settings.prompt_store_mb * 1024 * 1024)
    if settings.redis_url:
        return RedisPromptStore(settings.redis_url, settings.redis_prefix, cap)
    return DiskPromptStore(settings.data_dir, cap)
