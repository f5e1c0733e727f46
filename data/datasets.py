"""Segmentation tasks from a dataset folder, and episode sampling for in-context training.

Folder layout (the one of ../shared/datasets, usable anywhere a user points it)::

    ROOT/<dataset>/labels.json              {"1": "name", ..., "modality": ..., "description": ...}
    ROOT/<dataset>/images/<case>.png        8-bit L or RGB   (or <case>.nii.gz volumes)
    ROOT/<dataset>/masks/<case>.png         8-bit label map  (or <case>.nii.gz)

A task is (dataset, label[, axis]): every image holding that label, resized to N x N.
Letters: n images of a task, S support items, N the network side.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from PIL import Image

from data.preprocess import normalize, resize, to_gray

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
VOLUME_SUFFIXES = (".nii.gz", ".nii")


@dataclass
class Task:
    """One binary segmentation task.

    Attributes:
        dataset, label, axis: what it is (axis None for 2D datasets).
        images: (n, N, N) float16 in [0, 1].
        masks: (n, N, N) float16 in [0, 1] (soft after resizing).
        present: (n,) bool, whether the label is in the image.
        cases: case id of each image (slices as "<case>@<index>").
    """

    dataset: str
    label: int
    axis: int | None
    images: torch.Tensor
    masks: torch.Tensor
    present: np.ndarray
    cases: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.label}" + ("" if self.axis is None else f"/axis{self.axis}")


def _case_id(path: Path) -> str:
    name = path.name
    for suffix in VOLUME_SUFFIXES + IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


class DatasetFolder:
    """Reads the folder layout above."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset folder not found: {self.root}")

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if (p / "images").is_dir() and (p / "masks").is_dir())

    def labels(self, name: str) -> dict[int, str]:
        path = self.root / name / "labels.json"
        if not path.exists():
            return {}
        return {int(k): v for k, v in json.loads(path.read_text()).items() if k.isdigit()}

    def cases(self, name: str) -> list[tuple[str, Path, Path]]:
        """(case id, image path, mask path) for every image that has a mask."""
        masks = {_case_id(p): p for p in (self.root / name / "masks").iterdir()}
        out = []
        for image in sorted((self.root / name / "images").iterdir()):
            cid = _case_id(image)
            if cid in masks:
                out.append((cid, image, masks[cid]))
        return out

    def is_volume(self, name: str) -> bool:
        cases = self.cases(name)
        return bool(cases) and cases[0][1].name.lower().endswith(VOLUME_SUFFIXES)

    def load_tasks(
        self, name: str, size: int, axes: tuple[int, ...] = (0, 1, 2), slice_step: int = 2, empty_step: int = 0
    ) -> list[Task]:
        """All tasks of one dataset at N = size.

        Volumes give slices along ``axes``: every ``slice_step``-th slice holding a label and, when
        ``empty_step`` > 0, every ``empty_step``-th slice of the head that holds none (queries without the structure).
        """
        if self.is_volume(name):
            return self._volume_tasks(name, size, axes, slice_step, empty_step)
        return self._image_tasks(name, size)

    def _image_tasks(self, name: str, size: int) -> list[Task]:
        images, label_maps, cases = [], [], []
        for cid, image_path, mask_path in self.cases(name):
            with Image.open(image_path) as im:
                gray = normalize(to_gray(np.asarray(im)))
            with Image.open(mask_path) as im:
                mask = np.asarray(im)
            if mask.ndim == 3:
                mask = mask[..., 0]
            images.append(resize(torch.from_numpy(gray), (size, size)).clamp_(0, 1).half())
            label_maps.append(mask)
            cases.append(cid)
        if not images:
            return []
        stacked = torch.stack(images)
        labels = sorted(set().union(*(np.unique(m).tolist() for m in label_maps)) - {0})
        tasks = []
        for lab in labels:
            binary = [torch.from_numpy((m == lab).astype(np.float32)) for m in label_maps]
            masks = torch.stack([resize(b, (size, size)).clamp_(0, 1).half() for b in binary])
            present = np.array([bool((m == lab).any()) for m in label_maps])
            tasks.append(Task(name, int(lab), None, stacked, masks, present, cases))
        return tasks

    def _volume_tasks(
        self, name: str, size: int, axes: tuple[int, ...], slice_step: int, empty_step: int = 0
    ) -> list[Task]:
        per_axis: dict[int, tuple[list, list, list]] = {a: ([], [], []) for a in axes}
        for cid, image_path, mask_path in self.cases(name):
            vol = normalize(np.asarray(nib.load(image_path).dataobj, dtype=np.float32), (0.5, 99.5))
            lab = np.asarray(nib.load(mask_path).dataobj).astype(np.int64)
            for a in axes:
                v, m = np.moveaxis(vol, a, 0), np.moveaxis(lab, a, 0)
                labelled = m.any(axis=(1, 2))
                keep = np.flatnonzero(labelled)[::slice_step]
                if empty_step > 0:
                    content = v.reshape(v.shape[0], -1).max(1) > 0.05
                    keep = np.sort(np.concatenate([keep, np.flatnonzero(~labelled & content)[::empty_step]]))
                imgs, maps, names = per_axis[a]
                for i in keep:
                    imgs.append(resize(torch.from_numpy(np.ascontiguousarray(v[i])), (size, size)).clamp_(0, 1).half())
                    maps.append(m[i])
                    names.append(f"{cid}@{i}")
        tasks = []
        for a, (imgs, maps, names) in per_axis.items():
            if not imgs:
                continue
            stacked = torch.stack(imgs)
            labels = sorted(set().union(*(np.unique(m).tolist() for m in maps)) - {0})
            for lab in labels:
                masks = torch.stack(
                    [
                        resize(torch.from_numpy((m == lab).astype(np.float32)), (size, size)).clamp_(0, 1).half()
                        for m in maps
                    ]
                )
                present = np.array([bool((m == lab).any()) for m in maps])
                tasks.append(Task(name, int(lab), a, stacked, masks, present, names))
        return tasks


def case_group(case_id: str) -> str:
    """The patient or volume a case comes from, as far as its id tells: support and query of a validation
    episode come from different groups, so that neighbouring slices or augmented copies are never paired.

    ``10002_135`` (volume 10002, slice 135) -> ``10002``; ``deep_1005`` -> ``1005``; ``TCGA-18-5592-01Z`` ->
    ``5592``; an id without a separated number of three or more digits is its own group.
    """
    for token in re.split(r"[_\-]", case_id)[: 3 if "_" in case_id or "-" in case_id else 0]:
        if token.isdigit() and len(token) >= 3:
            return token
    return case_id


def may_pair(query_case: str, support_case: str, min_slice_gap: int = 16) -> bool:
    """Whether a validation episode may use ``support_case`` with ``query_case``: a different patient or volume
    (``case_group``), or, for ids of the form ``<volume>_<slice>``, a slice of the same volume at least
    ``min_slice_gap`` slices away (a set whose cases all come from one scan keeps a support pool, and
    neighbouring slices are never paired)."""
    if case_group(query_case) != case_group(support_case):
        return True
    q, s = re.fullmatch(r"(\d+)_(\d+)", query_case), re.fullmatch(r"(\d+)_(\d+)", support_case)
    return bool(q and s) and abs(int(q[2]) - int(s[2])) >= min_slice_gap


def load_tasks(
    root: str | Path, names: list[str] | None, size: int, exclude: tuple[str, ...] = (), empty_step: int = 0
) -> dict[str, list[Task]]:
    """Tasks grouped by dataset, for the given dataset names (None: all in the folder but ``exclude``)."""
    folder = DatasetFolder(root)
    names = names or [n for n in folder.names() if n not in exclude]
    out = {}
    for name in names:
        tasks = [t for t in folder.load_tasks(name, size, empty_step=empty_step) if t.present.sum() >= 2]
        if tasks:
            out[name] = tasks
            log.info("dataset %s: %d tasks, %d images", name, len(tasks), len(tasks[0].images))
    return out


def choose_task(tasks_by_dataset: dict[str, list[Task]], rng: np.random.Generator) -> Task:
    """A dataset uniformly (big datasets do not drown small ones), then one of its tasks uniformly."""
    names = sorted(tasks_by_dataset)
    tasks = tasks_by_dataset[names[rng.integers(len(names))]]
    return tasks[rng.integers(len(tasks))]


def sample_episode(
    tasks_by_dataset: dict[str, list[Task]], rng: np.random.Generator, n_support: int, empty_query_fraction: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """One episode: a task drawn with datasets balanced, then S + 1 distinct images of it (the first is the query).

    Support images are distinct while the task has enough images holding the label; beyond that they repeat.

    Returns:
        images (S + 1, N, N) and masks (S + 1, N, N), float32 in [0, 1].
    """
    task = choose_task(tasks_by_dataset, rng)
    with_label = np.flatnonzero(task.present)
    without = np.flatnonzero(~task.present)
    if without.size and rng.random() < empty_query_fraction:
        query = int(rng.choice(without))
    else:
        query = int(rng.choice(with_label))
    pool = with_label[with_label != query]
    support = rng.choice(pool, size=n_support, replace=pool.size < n_support)
    index = torch.from_numpy(np.concatenate([[query], support]).astype(np.int64))
    return task.images[index].float(), task.masks[index].float()
