"""The dataset folder reader and episode sampling, on a tiny generated folder (2D PNGs and a NIfTI dataset)."""

import json

import nibabel as nib
import numpy as np
from PIL import Image

from data.datasets import DatasetFolder, choose_task, load_tasks, sample_episode


def _make_folder(root):
    rng = np.random.default_rng(0)
    d = root / "toy2d"
    (d / "images").mkdir(parents=True)
    (d / "masks").mkdir()
    (d / "labels.json").write_text(json.dumps({"1": "disc", "2": "bar", "modality": "toy"}))
    for i in range(6):
        img = (rng.random((40, 50)) * 50).astype(np.uint8)
        mask = np.zeros((40, 50), np.uint8)
        mask[10 + i : 20 + i, 10:20] = 1
        if i % 2 == 0:
            mask[30:35, 30:45] = 2
        img[mask == 1] += 150
        Image.fromarray(img).save(d / "images" / f"case{i}.png")
        Image.fromarray(mask).save(d / "masks" / f"case{i}.png")
    v = root / "toy3d"
    (v / "images").mkdir(parents=True)
    (v / "masks").mkdir()
    for i in range(2):
        vol = rng.random((12, 14, 10)).astype(np.float32)
        lab = np.zeros((12, 14, 10), np.uint8)
        lab[3:8, 4:9, 2:7] = 1
        nib.save(nib.Nifti1Image(vol, np.eye(4)), v / "images" / f"v{i}.nii.gz")
        nib.save(nib.Nifti1Image(lab, np.eye(4)), v / "masks" / f"v{i}.nii.gz")


def test_reader_tasks_and_labels(tmp_path):
    _make_folder(tmp_path)
    folder = DatasetFolder(tmp_path)
    assert folder.names() == ["toy2d", "toy3d"]
    assert folder.labels("toy2d") == {1: "disc", 2: "bar"}
    tasks = folder.load_tasks("toy2d", 32)
    assert [t.label for t in tasks] == [1, 2]
    assert tasks[0].images.shape == (6, 32, 32) and tasks[0].present.all()
    assert tasks[1].present.tolist() == [True, False] * 3
    vol_tasks = folder.load_tasks("toy3d", 16, slice_step=1)
    assert {t.axis for t in vol_tasks} == {0, 1, 2}
    axis2 = next(t for t in vol_tasks if t.axis == 2)
    assert len(axis2.images) == 2 * 5  # slices 2..6 of each volume hold the label


def test_episode_sampling_distinct_images_and_balance(tmp_path):
    _make_folder(tmp_path)
    tasks = load_tasks(tmp_path, None, 32)
    rng = np.random.default_rng(1)
    disc = {"toy2d": [t for t in tasks["toy2d"] if t.label == 1]}
    for _ in range(10):
        images, masks = sample_episode(disc, rng, n_support=5)
        assert images.shape == masks.shape == (6, 32, 32)
        assert len({round(images[i].sum().item(), 3) for i in range(6)}) == 6  # 6 distinct images of 6
        assert all(m.sum() > 0 for m in masks)  # the label is present in query and support
    # datasets are balanced: toy3d has 12 tasks (4 labels x 3 axes... here 3), toy2d 2, yet each is drawn ~half
    assert len(tasks["toy3d"]) != len(tasks["toy2d"])
    drawn = [choose_task(tasks, rng).dataset for _ in range(400)]
    assert 150 < drawn.count("toy2d") < 250
    # a controlled fraction of queries without the label
    bar = {"toy2d": [t for t in tasks["toy2d"] if t.label == 2]}
    empty = sum(float(sample_episode(bar, rng, 1, empty_query_fraction=0.5)[1][0].sum()) == 0 for _ in range(200))
    assert 60 < empty < 140
