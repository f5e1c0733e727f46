"""The one atomic writer of the tree: masks, stored prompts, job state and results, batch summaries,
weights and training checkpoints all go through ``write_atomic``."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def write_atomic(path: str | os.PathLike, payload: bytes, *, fsync: bool = False) -> Path:
    """Write ``payload`` to ``path`` (parents created) through a temporary file and a rename: a reader, or a
    rerun after a crash, never sees half a file. Safe for several threads and processes writing at once.

    Args:
        path: the destination.
        payload: the whole file.
        fsync: flush the data to the disk before the rename (for files that must survive a power loss once
            acknowledged, such as stored prompts).

    Returns:
        The path written. The temporary file (``.<name>.<random>.tmp`` beside it) never outlives the call.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
