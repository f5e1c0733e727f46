"""One pair of names for support selection from the wire to the command line: select and support_size are form
fields of /segment and /jobs, arguments of every SDK call that segments and flags of `icseg segment` and `icseg
batch`; the SDK sends them and reads back what ran (``result.selection``, jobs too), bad values are refused naming
the field on each side, and the command line's local mode picks the same items as the service."""

from __future__ import annotations

import inspect
import time

import numpy as np
import pytest
from clientkit import cli_subparser, form_fields
from icseg_client import AsyncClient, Client, InvalidInputError, UnprocessableEntityError
from testkit.inputs import disk_pair, save_png

from cli.main import main
from data.io import read_image, read_mask
from model import retrieval
from model.segmenter import Segmenter
from model.weights import load_model

FIELDS = {"select", "support_size"}


def test_the_same_names_in_api_sdk_and_cli(app_client):
    for path in ("/segment", "/jobs"):
        assert FIELDS <= form_fields(app_client, path), path
    for cls in (Client, AsyncClient):
        for method in ("segment", "create_job", "segment_volume"):
            assert FIELDS <= set(inspect.signature(getattr(cls, method)).parameters), (cls.__name__, method)
    for command in ("segment", "batch"):
        parser = cli_subparser(command)
        assert FIELDS <= {a.dest for a in parser._actions}, command
        assert {"--select", "--support-size"} <= {s for a in parser._actions for s in a.option_strings}, command


def _pairs(rng, n: int):
    pairs = [disk_pair(rng, size=(24, 28)) for _ in range(n)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def test_sdk_sends_the_fields_and_reads_what_ran(client, rng):
    images, masks = _pairs(rng, 70)
    prompt = client.create_prompt(images, masks)
    assert prompt.support_size == 70  # over the 64 a prompt could hold before
    query, _ = disk_pair(rng, size=(24, 28))
    result = client.segment(query, prompt_id=prompt, select="random", support_size=6)
    assert result.selection == {"select": "random", "support_size": 6, "pool": 70}
    assert result.mask.shape == query.shape
    assert client.segment(query, prompt_id=prompt).selection["select"] == "similar"  # the large-prompt default
    with pytest.raises(UnprocessableEntityError) as info:
        client.segment(query, prompt_id=prompt, support_size=71)
    assert info.value.field == "support_size"
    job = client.create_job(query, prompt_id=prompt, select="random", support_size=6)
    assert job.selection == {"select": "random", "support_size": 6, "pool": 70}
    while not job.finished:
        time.sleep(0.02)
        job = client.get_job(job)
    done = client.job_result(job)
    assert done.selection == result.selection
    np.testing.assert_array_equal(done.mask, result.mask)


@pytest.mark.parametrize("kwargs,field", [
    ({"select": "nearest"}, "select"),
    ({"support_size": 0}, "support_size"),
    ({"support_size": 2.5}, "support_size"),
    ({"support_size": True}, "support_size"),
])
def test_sdk_refuses_bad_values_before_sending(client, rng, kwargs, field):
    images, masks = _pairs(rng, 2)
    with pytest.raises(InvalidInputError) as info:
        client.segment(images[0], images, masks, **kwargs)
    assert info.value.field == field


def test_cli_local_mode_picks_what_the_model_layer_picks(tmp_path, rng, tiny_weights, capsys):
    images, masks = _pairs(rng, 12)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    image_paths = [save_png(im, tmp_path / "images" / f"s{i:02d}.png") for i, im in enumerate(images)]
    mask_paths = [save_png(m, tmp_path / "masks" / f"s{i:02d}.png") for i, m in enumerate(masks)]
    query, _ = disk_pair(rng, size=(24, 28))
    query_path = save_png(query, tmp_path / "query.png")
    segmenter = Segmenter(load_model(tiny_weights))
    pool = segmenter.prepare_support([read_image(p).array for p in image_paths],
                                     [read_mask(p).array for p in mask_paths])
    picked = retrieval.select_support(retrieval.prepare_query(query, segmenter.size), pool, 3, "similar")
    # random weights answer near 0 everywhere: a threshold at the median makes the masks tell the sets apart
    threshold = float(np.median(segmenter.predict_proba(query, support=picked)))
    expected = segmenter.predict(query, support=picked, threshold=threshold)
    assert (expected != segmenter.predict(query, support=pool, threshold=threshold)).any()  # the test can fail
    out = tmp_path / "out"
    code = main(["segment", "--weights", str(tiny_weights), "--support-images", *map(str, image_paths),
                 "--support-masks", *map(str, mask_paths), "--query", str(query_path), "--out", str(out),
                 "--select", "similar", "--support-size", "3", "--threshold", repr(threshold), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    np.testing.assert_array_equal(read_mask(out / "query.png").array, expected)


@pytest.mark.parametrize("argv,text", [
    (["--support-size", "0"], "--support-size"),
    (["--select", "nearest"], "--select"),
])
def test_cli_refuses_bad_values_naming_the_flag(tmp_path, capsys, argv, text):
    query = save_png(np.zeros((4, 4), np.uint8), tmp_path / "q.png")
    try:
        code = main(["segment", "--query", str(query), "--support-images", str(query), "--support-masks", str(query),
                     "--out", str(tmp_path / "out"), *argv])
    except SystemExit as exc:  # argparse's choices
        code = int(exc.code)
    assert code == 2 and text in capsys.readouterr().err


def test_cli_local_mode_refuses_support_size_above_the_set(tmp_path, rng, tiny_weights, capsys):
    images, masks = _pairs(rng, 2)
    image_paths = [save_png(im, tmp_path / f"s{i}.png") for i, im in enumerate(images)]
    mask_paths = [save_png(m, tmp_path / f"m{i}.png") for i, m in enumerate(masks)]
    code = main(["segment", "--weights", str(tiny_weights), "--support-images", *map(str, image_paths),
                 "--support-masks", *map(str, mask_paths), "--query", str(image_paths[0]),
                 "--out", str(tmp_path / "out"), "--select", "random", "--support-size", "3", "--no-progress"])
    assert code == 1 and "support_size 3 is larger than the support set (2 items)" in capsys.readouterr().err
