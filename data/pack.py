"""Training tasks packed into one compressed ``.npz``: the data of a training run, small enough to travel.

Images are stored once per (dataset, axis) as uint8, masks once per task as uint8 (soft masks quantised to
1/255), so a pack of the tasks ``load_tasks`` builds at N = 128 fits in a few tens of MB. ``read_pack``
gives back the same ``dict[str, list[Task]]``; values differ from the source by the uint8 rounding only.
Letters: n images, N side.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from data.datasets import Task


def _u8(x: torch.Tensor) -> np.ndarray:
    return (x.float().clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def write_pack(path: str | Path, tasks: dict[str, list[Task]], max_images: int | None = None) -> dict:
    """Write ``tasks`` to ``path`` (np.savez_compressed); returns the index stored in it.

    Args:
        max_images: keep at most this many images per (dataset, axis), the first ones (case order), so that
            one large dataset cannot blow the pack's size.
    """
    arrays: dict[str, np.ndarray] = {}
    index = []
    images_key: dict[tuple[str, int | None], str] = {}
    for dataset in sorted(tasks):
        for task in tasks[dataset]:
            group = (task.dataset, task.axis)
            keep = slice(0, max_images)
            if group not in images_key:
                images_key[group] = f"images{len(images_key)}"
                arrays[images_key[group]] = _u8(task.images[keep])
            key = f"masks{len(index)}"
            arrays[key] = _u8(task.masks[keep])
            present = task.present[keep]
            index.append({"dataset": task.dataset, "label": task.label, "axis": task.axis,
                          "images": images_key[group], "masks": key, "cases": task.cases[keep],
                          "present": present.tolist()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, index=np.frombuffer(json.dumps(index).encode(), dtype=np.uint8), **arrays)
    tmp.replace(path)
    return {"tasks": len(index), "groups": len(images_key)}


def read_pack(path: str | Path) -> dict[str, list[Task]]:
    """The tasks of a pack, grouped by dataset, as float16 tensors in [0, 1] (the layout of ``load_tasks``)."""
    with np.load(path) as z:
        index = json.loads(z["index"].tobytes().decode())
        images = {}
        out: dict[str, list[Task]] = {}
        for item in index:
            if item["images"] not in images:
                images[item["images"]] = torch.from_numpy(z[item["images"]]).half() / 255
            masks = torch.from_numpy(z[item["masks"]]).half() / 255
            present = np.array(item["present"], dtype=bool)
            if present.sum() < 2:
                continue
            task = Task(item["dataset"], item["label"], item["axis"], images[item["images"]], masks, present,
                        list(item["cases"]))
            out.setdefault(item["dataset"], []).append(task)
    return out
