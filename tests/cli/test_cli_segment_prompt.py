"""`icseg segment` (local and --url) and `icseg prompt` on folders of files; exit codes 0, 1 and 2."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from testkit.fixtures import API_KEY
from testkit.inputs import AFFINE, ball_volume, save_nifti, save_png, write_task

from cli.main import main
from data.io import read_image, read_mask
from model import weights as weights_module
from model.segmenter import Segmenter
from model.weights import load_model


def run_cli(*argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's usage errors
        return int(exc.code)


def _support_args(root):
    return ["--support-images", root / "support/images", "--support-masks", root / "support/masks"]


def _expected(files, weights):
    segmenter = Segmenter(load_model(weights))
    images = [read_image(p).array for p in files["images"]]
    masks = [read_mask(p).array for p in files["masks"]]
    return {p.name: segmenter.predict(read_image(p).array, images, masks) for p in files["queries"]}


def _written(out):
    masks = {p.name: np.asarray(Image.open(p)) for p in sorted(out.glob("*.png"))}
    overlays = sorted(p.name for p in (out / "overlays").glob("*.png"))
    return masks, overlays


def _check_three_masks(out, files, weights) -> dict:
    """OUT holds a mask and an overlay per query of ``write_task``, each mask equal to a direct call's."""
    masks, overlays = _written(out)
    assert sorted(masks) == overlays == ["scan0.v1.png", "scan1.v1.png", "scan2.v1.png"]
    for name, expected in _expected(files, weights).items():
        np.testing.assert_array_equal(masks[name], expected)
    return masks


def test_local_mode_on_a_folder_of_three_pngs(tmp_path, rng, tiny_weights, capsys):
    files = write_task(tmp_path, rng)
    out = tmp_path / "out"
    code = run_cli("segment", "--weights", tiny_weights, *_support_args(tmp_path), "--query", tmp_path / "queries",
                   "--out", out, "--overlay")
    assert code == 0, capsys.readouterr().err
    masks = _check_three_masks(out, files, tiny_weights)
    overlay = np.asarray(Image.open(out / "overlays" / "scan1.v1.png"))
    assert overlay.shape == (*masks["scan1.v1.png"].shape, 3)
    assert "3/3" in capsys.readouterr().err  # the progress bar over the folder


def test_local_weights_from_the_environment_and_single_files(tmp_path, rng, tiny_weights, monkeypatch, capsys):
    files = write_task(tmp_path, rng, n_queries=1)
    monkeypatch.setenv("ICSEG_WEIGHTS", str(tiny_weights))
    code = run_cli("segment", "--support-images", *files["images"], "--support-masks", *files["masks"],
                   "--query", files["queries"][0], "--out", tmp_path / "out", "--no-progress")
    assert code == 0
    assert (tmp_path / "out" / "scan0.v1.png").is_file()
    # no progress bar and no log noise; only the quality warnings a flagged answer prints (cli/quality.py)
    assert all(line.startswith("warning: ") for line in capsys.readouterr().err.splitlines())


def test_url_mode_on_a_folder_of_three_pngs(server, tmp_path, rng, tiny_weights, monkeypatch, capsys):
    files = write_task(tmp_path, rng)
    monkeypatch.setenv("ICSEG_API_KEY", API_KEY)
    out = tmp_path / "out"
    code = run_cli("segment", "--url", server.url, *_support_args(tmp_path), "--query", tmp_path / "queries",
                   "--out", out, "--overlay")
    assert code == 0, capsys.readouterr().err
    # the server runs the same weights: the same masks as a direct call (and as the local mode)
    _check_three_masks(out, files, tiny_weights)
    assert "3/3" in capsys.readouterr().err


def test_volumes_local_and_url_give_the_same_nifti(server, tmp_path, rng, tiny_weights, monkeypatch):
    volume, _ = ball_volume(rng, (20, 18, 8))
    query = save_nifti(volume, tmp_path / "ct.nii.gz")
    support = [ball_volume(rng, (20, 20, 10)) for _ in range(2)]
    images = [save_nifti(v, tmp_path / f"s{i}.nii.gz") for i, (v, _) in enumerate(support)]
    masks = [save_nifti(m, tmp_path / f"m{i}.nii.gz") for i, (_, m) in enumerate(support)]
    monkeypatch.setenv("ICSEG_API_KEY", API_KEY)
    common = ["--support-images", *images, "--support-masks", *masks, "--query", query, "--no-progress", "--overlay"]
    assert run_cli("segment", "--weights", tiny_weights, "--out", tmp_path / "local", *common) == 0
    assert run_cli("segment", "--url", server.url, "--out", tmp_path / "remote", *common) == 0
    local, remote = (nib.load(tmp_path / d / "ct.nii.gz") for d in ("local", "remote"))
    assert local.shape == remote.shape == volume.shape
    np.testing.assert_allclose(local.affine, AFFINE)
    np.testing.assert_allclose(remote.affine, AFFINE)
    np.testing.assert_array_equal(np.asarray(local.dataobj), np.asarray(remote.dataobj))
    for where in ("local", "remote"):
        assert np.asarray(Image.open(tmp_path / where / "overlays" / "ct.png")).shape == (20, 18, 3)


def test_prompt_commands(server, tmp_path, rng, tiny_weights, monkeypatch, capsys):
    files = write_task(tmp_path, rng)
    monkeypatch.setenv("ICSEG_API_KEY", API_KEY)
    capsys.readouterr()
    assert run_cli("prompt", "create", "--url", server.url, *_support_args(tmp_path), "--name", "disks",
                   "--label-name", "1=bright", "--label-name", "2=brighter") == 0
    prompt_id = capsys.readouterr().out.strip()
    assert len(prompt_id) == 32
    assert run_cli("prompt", "list", "--url", server.url) == 0
    listing = capsys.readouterr().out
    assert prompt_id in listing and "disks" in listing and "1:bright" in listing
    out = tmp_path / "out"
    assert run_cli("segment", "--url", server.url, "--prompt", prompt_id, "--query", tmp_path / "queries",
                   "--out", out, "--no-progress") == 0
    masks, _ = _written(out)
    for name, expected in _expected(files, tiny_weights).items():
        np.testing.assert_array_equal(masks[name], expected)
    assert run_cli("prompt", "delete", "--url", server.url, prompt_id) == 0
    assert run_cli("prompt", "delete", "--url", server.url, prompt_id) == 1
    assert "404 prompt_not_found" in capsys.readouterr().err
    assert run_cli("prompt", "create", "--url", server.url, *_support_args(tmp_path), "--label-name", "liver") == 2


@pytest.mark.parametrize(
    "argv,message",
    [
        (["segment", "--query", "q.png"], "--out"),  # argparse: a required flag missing
        (["segment", "--query", "empty", "--out", "o", "--support-images", "a.png", "--support-masks", "a.png"],
         "no image files"),
        (["segment", "--query", "a.png", "--out", "o", "--support-images", "a.png", "b.png", "--support-masks",
          "a.png"], "2 support images but 1 support masks"),
        (["segment", "--query", "a.png", "--out", "o", "--prompt", "abc"], "--prompt needs --url"),
        (["segment", "--query", "missing.png", "--out", "o", "--support-images", "a.png", "--support-masks", "a.png"],
         "no such file"),
        (["segment", "--query", "a.png", "--out", "o", "--support-images", "a.png", "--support-masks", "a.png",
          "--threshold", "2"], "--threshold"),
        (["prompt", "frobnicate"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    save_png(np.zeros((4, 4), np.uint8), tmp_path / "a.png")
    save_png(np.zeros((4, 4), np.uint8), tmp_path / "b.png")
    assert run_cli(*argv) == 2
    assert message in capsys.readouterr().err


def test_failures_exit_1_with_the_message(server, tmp_path, rng, monkeypatch, capsys):
    files = write_task(tmp_path, rng, n_queries=1)
    args = ["--support-images", files["images"][0], "--support-masks", files["masks"][0], "--query",
            files["queries"][0], "--out", tmp_path / "out", "--no-progress"]
    assert run_cli("segment", "--weights", tmp_path / "missing.safetensors", *args) == 1
    assert "weights file not found" in capsys.readouterr().err
    if not weights_module.DEFAULT_WEIGHTS.exists():  # no embedded default yet: its WeightsError, printed
        assert run_cli("segment", *args) == 1
        assert "embedded default model is missing" in capsys.readouterr().err
    assert run_cli("segment", "--url", server.url, "--api-key", "wrong", *args) == 1
    assert "401 unauthorized" in capsys.readouterr().err
    blank = save_png(np.zeros((48, 56), np.uint8), tmp_path / "blank.png")
    monkeypatch.setenv("ICSEG_API_KEY", API_KEY)
    args[3] = blank
    assert run_cli("segment", "--url", server.url, *args) == 1
    err = capsys.readouterr().err
    assert "400" in err and "foreground" in err and "support_masks" in err


def test_a_bad_query_is_reported_and_the_rest_segmented(server, tmp_path, rng, tiny_weights, monkeypatch, capsys):
    write_task(tmp_path, rng)
    (tmp_path / "queries" / "scan1.v1.png").write_bytes(b"not a png")
    monkeypatch.setenv("ICSEG_API_KEY", API_KEY)
    for mode in (["--weights", tiny_weights], ["--url", server.url]):
        out = tmp_path / f"out-{mode[0][2:]}"
        code = run_cli("segment", *mode, *_support_args(tmp_path), "--query", tmp_path / "queries", "--out", out,
                       "--no-progress")
        err = capsys.readouterr().err
        assert code == 1 and "scan1.v1.png" in err and "1 of 3 queries failed" in err
        assert sorted(p.name for p in out.glob("*.png")) == ["scan0.v1.png", "scan2.v1.png"]
