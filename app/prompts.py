"""Stored prompts as routes use them: create, load (cached, one shared object per prompt), list, delete.

The arrays of a ``PreparedSupport`` are kept as an ``.npz`` blob in a ``PromptStore`` (``app/prompt_store.py``).
Missing and stale prompts are domain errors (``PromptNotFound``, ``PromptStale``), mapped to HTTP in
``app/errors.py``.
"""

from __future__ import annotations

import io
import threading
import time
from collections import OrderedDict

import numpy as np

from app.errors import PromptNotFound, PromptStale
from app.prompt_store import PromptRecord, PromptStore, new_id, valid_id
from app.settings import ADMIN
from model.support import PreparedSupport


def visible(owner: str | None, tenant: str | None) -> bool:
    """Whether ``tenant`` (None: no keys configured) sees what ``owner`` created: its own, or all for the admin."""
    return tenant is None or tenant == ADMIN or owner == tenant


def _nbytes(support: PreparedSupport) -> int:
    return support.images.nbytes + support.masks.nbytes


def dump_support(support: PreparedSupport) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **support.to_arrays())
    return buf.getvalue()


def load_support(blob: bytes) -> PreparedSupport:
    with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
        return PreparedSupport.from_arrays({k: npz[k] for k in ("images", "masks", "labels")})


class Prompts:
    """The prompt store as routes use it: create, load (cached, one shared object per prompt), list, delete.

    Args:
        store: the backend.
        ttl_s: lifetime of new prompts (0: forever).
        cache_items: prepared supports kept in memory; the same object is handed to every request for a
            prompt so that the micro-batcher can group them.
        cache_bytes: and at most this many bytes of them (a 512-item prompt is 64 MB per label at N = 128);
            the one just loaded always stays.
    """

    def __init__(self, store: PromptStore, ttl_s: int, cache_items: int = 32, cache_bytes: int = 512 * 1024 * 1024):
        self.store = store
        self.ttl_s = ttl_s
        self._cache: OrderedDict[str, PreparedSupport] = OrderedDict()
        self._cache_items = cache_items
        self._cache_bytes = cache_bytes
        self._lock = threading.Lock()

    def create(self, support: PreparedSupport, network_size: int, name: str | None = None,
               label_names: dict[str, str] | None = None, owner: str | None = None) -> PromptRecord:
        now = time.time()
        blob = dump_support(support)
        record = PromptRecord(
            id=new_id(), labels=list(support.labels), support_size=support.size, network_size=network_size,
            created_at=now, expires_at=now + self.ttl_s if self.ttl_s else None, name=name,
            label_names=label_names or {}, owner=owner,
        )
        record.bytes = len(blob) + len(record.to_json()) + 8  # +8: the digits of `bytes` itself
        self.store.put(record, blob)
        return record

    def get(self, prompt_id: str, field: str = "prompt_id", tenant: str | None = None) -> PromptRecord:
        """A prompt's record; another tenant's prompt is answered as unknown (``visible``)."""
        record = self.store.get_record(prompt_id) if valid_id(prompt_id) else None
        if record is None or not visible(record.owner, tenant):
            with self._lock:
                self._cache.pop(prompt_id, None)
            raise PromptNotFound(f"no prompt with id {prompt_id!r} (unknown, deleted or expired)", field=field)
        return record

    def load(self, prompt_id: str, network_size: int,
             tenant: str | None = None) -> tuple[PromptRecord, PreparedSupport]:
        record = self.get(prompt_id, tenant=tenant)
        if record.network_size != network_size:
            raise PromptStale(f"prompt {prompt_id} was prepared for a {record.network_size}px network but the "
                              f"model is {network_size}px; create the prompt again", field="prompt_id")
        with self._lock:
            support = self._cache.get(prompt_id)
            if support is not None:
                self._cache.move_to_end(prompt_id)
                return record, support
        blob = self.store.get_blob(prompt_id)
        if blob is None:
            raise PromptNotFound(f"no prompt with id {prompt_id!r}", field="prompt_id")
        support = load_support(blob)
        with self._lock:
            support = self._cache.setdefault(prompt_id, support)  # a racing loader's object wins: one per id
            while len(self._cache) > 1 and (len(self._cache) > self._cache_items
                                            or sum(map(_nbytes, self._cache.values())) > self._cache_bytes):
                self._cache.popitem(last=False)
        return record, support

    def list(self, tenant: str | None = None) -> list[PromptRecord]:
        return [r for r in self.store.list() if visible(r.owner, tenant)]

    def delete(self, prompt_id: str, tenant: str | None = None) -> None:
        self.get(prompt_id, tenant=tenant)  # another tenant's prompt is not found, and stays
        with self._lock:
            self._cache.pop(prompt_id, None)
        if not self.store.delete(prompt_id):
            raise PromptNotFound(f"no prompt with id {prompt_id!r}", field="prompt_id")
