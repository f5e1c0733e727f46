"""One set of names for a volume's cost from the wire to the command line: support_slices, ensemble, axis,
skip_margin and cascade are form fields of /segment and /jobs, arguments of every SDK call that segments, and
flags of `icseg segment` and `icseg batch`; the SDK sends them, the service echoes what ran, bad values are
refused naming the field on each side."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from clientkit import cli_subparser, form_fields
from icseg_client import AsyncClient, Client, InvalidInputError
from testkit.inputs import ball_volume, save_nifti

FIELDS = {"support_slices", "ensemble", "axis", "skip_margin", "cascade", "support_positions"}


def test_the_same_names_in_api_sdk_and_cli(app_client):
    for path in ("/segment", "/jobs"):
        assert FIELDS <= form_fields(app_client, path), path
    for cls in (Client, AsyncClient):
        for method in ("segment", "create_job", "segment_volume"):
            assert FIELDS <= set(inspect.signature(getattr(cls, method)).parameters), (cls.__name__, method)
    for command in ("segment", "batch"):
        dests = {a.dest for a in cli_subparser(command)._actions}
        assert FIELDS <= dests, command
    flags = {s for a in cli_subparser("segment")._actions for s in a.option_strings}
    assert {"--support-slices", "--skip-margin", "--cascade", "--no-cascade", "--ensemble", "--axis",
            "--support-positions"} <= flags


def test_sdk_sends_the_fields_and_the_service_echoes_them(client, rng, tmp_path):
    volume, _ = ball_volume(rng, (20, 18, 30))
    support = [ball_volume(rng, (20, 20, 10)) for _ in range(2)]
    query = save_nifti(volume, tmp_path / "q.nii.gz")
    images = [save_nifti(v, tmp_path / f"v{i}.nii.gz") for i, (v, _) in enumerate(support)]
    masks = [save_nifti(m, tmp_path / f"m{i}.nii.gz") for i, (_, m) in enumerate(support)]
    options = dict(support_slices=3, skip_margin=0.05, cascade=True)
    sync = client.segment(query, images, masks, **options)
    job = client.segment_volume(query, images, masks, progress=False, probs=True, **options)
    for result in (sync, job):
        assert result.volume["support_slices"] == 3 and result.volume["skip_margin"] == 0.05
        assert result.volume["cascade"] is True and result.volume["skipped"]
    np.testing.assert_array_equal(sync.mask, job.mask)
    assert job.probs.shape == (1, *volume.shape) and job.probs.dtype == np.float32
    assert np.all(job.probs[..., job.volume["skipped"]] == 0)


@pytest.mark.parametrize("kwargs,field", [
    ({"support_slices": 0}, "support_slices"),
    ({"support_slices": 2.5}, "support_slices"),
    ({"skip_margin": 1.5}, "skip_margin"),
    ({"cascade": "yes"}, "cascade"),
    ({"support_positions": [0.5, 1.2]}, "support_positions"),
    ({"support_positions": []}, "support_positions"),
    ({"support_positions": ["0.5"]}, "support_positions"),
])
def test_sdk_refuses_bad_values_before_sending(client, rng, kwargs, field):
    volume, mask = ball_volume(rng, (8, 8, 6))
    with pytest.raises(InvalidInputError) as info:
        client.segment_volume(volume, [volume], [mask], progress=False, **kwargs)
    assert info.value.field == field


@pytest.mark.parametrize("argv,flag", [
    (["--support-slices", "0"], "--support-slices"),
    (["--skip-margin", "2"], "--skip-margin"),
    (["--support-positions", "0.5", "-0.1"], "--support-positions"),
])
def test_cli_refuses_bad_values_naming_the_flag(tmp_path, capsys, argv, flag):
    from cli.main import main

    query = save_nifti(np.zeros((4, 4, 4), np.float32), tmp_path / "q.nii.gz")
    code = main(["segment", "--query", str(query), "--support-images", str(query), "--support-masks", str(query),
                 "--out", str(tmp_path / "out"), *argv])
    assert code == 2 and flag in capsys.readouterr().err


def test_sdk_sends_2d_support_positions_and_the_service_skips_far_slices(client, rng, tmp_path):
    volume, _ = ball_volume(rng, (20, 18, 30))
    other, mask = ball_volume(rng, (20, 18, 30))
    query = save_nifti(volume, tmp_path / "q.nii.gz")
    images = [save_nifti(other[..., z:z + 1], tmp_path / f"i{z}.nii.gz") for z in (14, 16)]  # one-slice NIfTIs: 2D
    masks = [save_nifti(mask[..., z:z + 1], tmp_path / f"m{z}.nii.gz") for z in (14, 16)]
    sync = client.segment(query, images, masks, support_positions=[0.48, 0.55], skip_margin=0.1)
    job = client.segment_volume(query, images, masks, progress=False, support_positions=(0.48, 0.55), skip_margin=0.1)
    for result in (sync, job):
        assert result.volume["support_positions"] == [0.48, 0.55]
        assert result.volume["skipped"] == list(range(0, 12)) + list(range(19, 30))
        assert not result.mask[..., result.volume["skipped"]].any()
    np.testing.assert_array_equal(sync.mask, job.mask)


def test_progress_bar_counts_skipped_slices_as_its_start(capsys):
    """Slices skipped when the job starts are done at once: the bar starts from them, so its rate (and ETA)
    is that of the slices the model runs, not an instant jump."""
    from icseg_client._base import ProgressReporter

    reporter = ProgressReporter(True, 0)
    reporter.update(0, 155, running=False)  # queued
    reporter.update(60, 155)  # running: 60 slices skipped at once
    bar = reporter._bar
    assert (bar.initial, bar.n, bar.total) == (60, 60, 155)
    reporter.update(64, 155)
    assert bar.n == 64 and bar.format_dict["initial"] == 60
    reporter.close()


def test_cli_local_support_positions_skip_far_slices(tmp_path, rng, tiny_weights):
    """`icseg segment --support-positions` in-process: the same skipping as the service's field."""
    import nibabel as nib
    from testkit.inputs import save_png

    from cli.main import main

    volume, _ = ball_volume(rng, (20, 18, 30))
    other, mask = ball_volume(rng, (20, 18, 30))
    query = save_nifti(volume, tmp_path / "q.nii.gz")
    images, masks = [], []
    for z in (14, 16):
        images.append(str(save_png(np.clip(other[..., z] / 4, 0, 255).astype(np.uint8), tmp_path / f"i{z}.png")))
        masks.append(str(save_png(mask[..., z], tmp_path / f"m{z}.png")))
    args = ["segment", "--weights", str(tiny_weights), "--query", str(query), "--support-images", *images,
            "--support-masks", *masks, "--no-progress", "--threshold", "0"]
    assert main([*args, "--out", str(tmp_path / "all")]) == 0
    assert main([*args, "--out", str(tmp_path / "near"), "--support-positions", "0.48", "0.55"]) == 0
    full, near = (np.asarray(nib.load(tmp_path / d / "q.nii.gz").dataobj) for d in ("all", "near"))
    assert full[..., :12].any() and not near[..., :12].any() and not near[..., 19:].any()  # 0.38..0.65 run
    np.testing.assert_array_equal(near[..., 12:19], full[..., 12:19])
