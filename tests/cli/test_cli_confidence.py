"""`icseg segment` says how sure it is, in both modes: OUT/<name>.quality.json with the service's keys, and with
--uncertainty the maps in OUT/uncertainty/ (PNG per label for 2D, a float NIfTI for volumes)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
from PIL import Image
from testkit.fixtures import API_KEY
from testkit.inputs import ball_volume, save_nifti, write_task

from cli.main import main

KEYS = {"confidence", "low_confidence", "low_confidence_labels", "mismatch", "calibrated", "warnings"}


def run_cli(*argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:
        return int(exc.code)


def _support_args(root):
    return ["--support-images", root / "support/images", "--support-masks", root / "support/masks"]


def test_local_and_url_write_the_same_quality_and_uncertainty_maps(server, tmp_path, rng, tiny_weights,
                                                                   monkeypatch, capsys):
    write_task(tmp_path, rng)
    monkeypatch.setenv("ICSEG_API_KEY", API_KEY)
    common = [*_support_args(tmp_path), "--query", tmp_path / "queries", "--uncertainty", "--no-progress"]
    assert run_cli("segment", "--weights", tiny_weights, "--out", tmp_path / "local", *common) == 0
    assert run_cli("segment", "--url", server.url, "--out", tmp_path / "remote", *common) == 0
    for i in range(3):
        name = f"scan{i}.v1"
        local, remote = (json.loads((tmp_path / d / f"{name}.quality.json").read_text()) for d in ("local", "remote"))
        assert set(local) == KEYS and set(local["confidence"]) == {"1", "2"}
        assert local["calibrated"] is False and local["mismatch"]["flagged"] is None
        for label in ("1", "2"):
            assert abs(local["confidence"][label] - remote["confidence"][label]) < 1e-3
        assert abs(local["mismatch"]["score"] - remote["mismatch"]["score"]) < 1e-3
        for label in (1, 2):
            maps = [np.asarray(Image.open(tmp_path / d / "uncertainty" / f"{name}_label{label}.png"))
                    for d in ("local", "remote")]
            assert maps[0].shape == (40 + 4 * i, 52) and maps[0].dtype == np.uint8
            assert np.abs(maps[0].astype(int) - maps[1]).max() <= 1
    warned = "low confidence" in capsys.readouterr().err
    assert warned == any(json.loads(p.read_text())["low_confidence"] for p in (tmp_path / "local").glob("*.json"))


def test_local_volume_writes_a_float_uncertainty_nifti(tmp_path, rng, tiny_weights):
    volume, _ = ball_volume(rng, (20, 18, 8))
    query = save_nifti(volume, tmp_path / "ct.nii.gz")
    support = [ball_volume(rng, (20, 20, 8)) for _ in range(2)]
    images = [save_nifti(v, tmp_path / f"s{i}.nii.gz") for i, (v, _) in enumerate(support)]
    masks = [save_nifti(m, tmp_path / f"m{i}.nii.gz") for i, (_, m) in enumerate(support)]
    out = tmp_path / "out"
    assert run_cli("segment", "--weights", tiny_weights, "--support-images", *images, "--support-masks", *masks,
                   "--query", query, "--out", out, "--no-progress", "--uncertainty") == 0
    assert set(json.loads((out / "ct.quality.json").read_text())["confidence"]) == {"1"}
    maps = nib.load(out / "uncertainty" / "ct.nii.gz")
    assert maps.shape == (20, 18, 8, 1) and maps.get_data_dtype() == np.float32
