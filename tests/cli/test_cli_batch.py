"""`icseg batch`: the run on a real local Ray (2 actors, then a rerun), and its parts without Ray.

Ray starts once for this module (it takes seconds); the tests without Ray replace the Ray stage by the same
per-batch function run in-process, so that planning, skipping and reporting are tested quickly.
"""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
from batchkit import AFFINE, write_inputs, write_prompt
from PIL import Image

from cli import batch as batch_cli
from cli import batch_ray
from cli.main import main
from data.io import read_image, read_mask, save_image
from model import retrieval
from model.segmenter import Segmenter


def run_cli(*argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's usage errors
        return int(exc.code)


def _summary(path) -> dict[str, dict]:
    with open(path, newline="") as f:
        return {row["input"].rsplit("/", 1)[-1]: row for row in csv.DictReader(f)}


def _masks(out) -> dict[str, np.ndarray]:
    return {p.name: read_mask(p).array for p in sorted(out.iterdir()) if not p.name.endswith((".csv", ".quality.json"))}


@pytest.fixture(scope="module")
def ray_session():
    import ray
    from ray.data import DataContext

    started = batch_ray.start_ray(ray, None, 2)  # the CLI's own local start, shared by this module's runs
    # Ray Data hands blocks to the actors that are up; the tiny model is so fast that the first actor could
    # finish all twelve inputs before the second has imported torch. Waiting for the whole pool makes "both
    # actors did work" a property of the code, not of the timing
    DataContext.get_current().wait_for_min_actors_s = 120
    yield ray
    if started:
        ray.shutdown()


@pytest.mark.slow
def test_two_actors_on_local_ray_then_a_rerun_that_does_no_work(ray_session, tmp_path, rng, tiny_weights, capsys):
    prompt, inputs, out = write_prompt(tmp_path, rng), write_inputs(tmp_path, rng), tmp_path / "out"
    args = ["batch", "--weights", tiny_weights, "--prompt-dir", prompt, "--inputs", inputs, "--out", out,
            "--replicas", 2, "--batch-size", 2, "--no-progress"]

    assert run_cli(*args) == 1  # one input failed
    captured = capsys.readouterr()
    assert "11 segmented, 0 skipped, 1 failed of 12 inputs" in captured.out
    assert "on 2 replicas" in captured.out  # both actors of the pool did work
    summary = _summary(out / "batch-summary.csv")
    assert len(summary) == 12 and sum(r["status"] == "ok" for r in summary.values()) == 11
    assert summary["broken.png"]["status"] == "failed" and "truncated" in summary["broken.png"]["error"]
    assert "broken.png" in captured.err
    masks = _masks(out)
    assert len(masks) == 11 and "broken.png" not in masks
    assert summary["volB.nii"]["output"].endswith("volB.nii.gz")  # NIfTI in, gzipped NIfTI out
    for name, row in summary.items():  # geometry kept: PNG size, NIfTI shape and affine
        if row["status"] == "ok":
            query = read_image(inputs / name)
            assert masks[row["output"].rsplit("/", 1)[-1]].shape == query.shape
            if query.kind == "volume":
                np.testing.assert_array_equal(nib.load(row["output"]).affine, nib.load(inputs / name).affine)
                np.testing.assert_allclose(nib.load(row["output"]).affine, AFFINE, rtol=1e-6)  # not the identity
            else:
                assert Image.open(row["output"]).size == Image.open(inputs / name).size
    # the same masks as the single-process command (support prepared on the driver, shared with the actors)
    assert run_cli("segment", "--weights", tiny_weights, "--support-images", prompt / "images", "--support-masks",
                   prompt / "masks", "--query", inputs, "--out", tmp_path / "single", "--no-progress") == 1
    single = _masks(tmp_path / "single")
    assert single.keys() == masks.keys()
    for name in masks:
        np.testing.assert_array_equal(masks[name], single[name], err_msg=name)
    assert any(m.any() for m in masks.values())  # a run that wrote only zeros would pass the comparison above
    capsys.readouterr()

    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != "batch-summary.csv"}
    assert run_cli(*args) == 1
    captured = capsys.readouterr()
    assert "0 segmented, 11 skipped, 1 failed of 12 inputs" in captured.out
    assert "not retried" in captured.err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != "batch-summary.csv"} == mtimes
    statuses = {name: row["status"] for name, row in _summary(out / "batch-summary.csv").items()}
    assert sorted(statuses.values()) == ["failed"] + ["skipped"] * 11 and statuses["broken.png"] == "failed"


# -- without Ray ---------------------------------------------------------------------------------------------


@pytest.fixture
def in_process(monkeypatch, tiny_weights):
    """The Ray stage replaced by the actor's per-batch function in this process; records what it was given."""
    calls: list[list[str]] = []

    def fake(ray, args, plan, todo, support_arrays, weights):
        from model.segmenter import PreparedSupport

        calls.append(sorted(item.input.name for item in todo))
        segmenter = Segmenter.from_pretrained(weights)
        options = SimpleNamespace(**batch_ray.actor_options(args))  # what the driver hands each actor
        for row in batch_cli.segment_items(segmenter, PreparedSupport.from_arrays(support_arrays), todo, options):
            yield row | {"replica": "here"}

    monkeypatch.setattr(batch_ray, "_segment_on_ray", fake)
    return calls


def test_rerun_skips_complete_masks_and_redoes_damaged_or_changed_inputs(in_process, tmp_path, rng, tiny_weights,
                                                                        capsys):
    prompt, inputs, out = write_prompt(tmp_path, rng), write_inputs(tmp_path, rng, n_png=3), tmp_path / "out"
    names = sorted(p.name for p in inputs.iterdir())
    manifest = tmp_path / "list.txt"
    manifest.write_text("# scans of the study\n" + "".join(f"inputs/{n}\n" for n in names) + "inputs/gone.png\n")
    args = ["batch", "--weights", tiny_weights, "--prompt-dir", prompt, "--inputs", manifest, "--out", out,
            "--no-progress"]

    assert run_cli(*args) == 1
    assert in_process[-1] == sorted([*names, "gone.png"])
    summary = _summary(out / "batch-summary.csv")
    assert list(summary) == [*names, "gone.png"]  # the summary keeps the manifest's order
    assert {n for n, r in summary.items() if r["status"] == "failed"} == {"broken.png", "gone.png"}
    assert "file not found" in summary["gone.png"]["error"]

    assert run_cli(*args) == 1  # nothing to do: the Ray stage is not even started
    assert len(in_process) == 1
    assert "0 segmented, 5 skipped, 2 failed" in capsys.readouterr().out

    (out / "scan01.png").write_bytes((out / "scan01.png").read_bytes()[:40])  # a damaged mask is redone
    time.sleep(0.01)
    save_image(read_image(inputs / "scan00.png").array, inputs / "broken.png")  # the corrupt input was replaced
    assert run_cli(*args) == 1  # gone.png is still missing
    assert in_process[-1] == ["broken.png", "scan01.png"]
    assert "2 segmented, 4 skipped, 1 failed" in capsys.readouterr().out

    assert run_cli(*args, "--retry-failed") == 1
    assert in_process[-1] == ["gone.png"]


def test_select_and_support_size_pick_each_inputs_items_as_the_model_layer(in_process, tmp_path, rng, tiny_weights,
                                                                           capsys):
    prompt, out = write_prompt(tmp_path, rng, n=12), tmp_path / "out"
    segmenter = Segmenter.from_pretrained(str(tiny_weights))
    pool = segmenter.prepare_support([read_image(p).array for p in sorted((prompt / "images").iterdir())],
                                     [read_mask(p).array for p in sorted((prompt / "masks").iterdir())])
    queries = {f"q{i}.png": np.clip(rng.normal(60 + 40 * i, 30, (30, 34)), 0, 255).astype(np.uint8) for i in range(3)}
    for name, query in queries.items():
        save_image(query, tmp_path / "inputs" / name)
    volume = np.stack([queries["q1.png"], queries["q2.png"]], axis=2)  # (H, W, D): picked by its slices
    save_image(volume, tmp_path / "inputs" / "v.nii.gz", affine=AFFINE)
    picked = {name: retrieval.select_support(retrieval.prepare_query(q, segmenter.size), pool, 3, "similar")
              for name, q in queries.items()}
    # random weights answer near 0 everywhere: a threshold at the median makes the masks tell the sets apart
    threshold = float(np.median(segmenter.predict_proba(queries["q0.png"], support=picked["q0.png"])))
    expected = {n: segmenter.predict(q, support=picked[n], threshold=threshold) for n, q in queries.items()}
    in_volume, _ = retrieval.for_query(retrieval.prepare_query(volume, segmenter.size, axis=2), pool, "similar", 3,
                                       segmenter.max_support)
    expected["v.nii.gz"] = segmenter.predict_volume(volume, support=in_volume, threshold=threshold)
    assert (expected["q0.png"] != segmenter.predict(queries["q0.png"], support=pool, threshold=threshold)).any()
    args = ["batch", "--weights", tiny_weights, "--prompt-dir", prompt, "--inputs", tmp_path / "inputs",
            "--threshold", repr(threshold), "--no-progress"]

    assert run_cli(*args, "--out", out, "--select", "similar", "--support-size", 3) == 0
    assert "support: similar, 3 of 12 items per input" in capsys.readouterr().out
    for name in expected:
        np.testing.assert_array_equal(read_mask(out / name).array, expected[name], err_msg=name)
    assert run_cli(*args, "--out", tmp_path / "all") == 0  # a set that fits the model: all of it by default
    assert "support: all, 12 of 12 items per input" in capsys.readouterr().out
    np.testing.assert_array_equal(read_mask(tmp_path / "all" / "q0.png").array,
                                  segmenter.predict(queries["q0.png"], support=pool, threshold=threshold))

    assert run_cli(*args, "--out", tmp_path / "o", "--select", "random", "--support-size", 13) == 1
    assert "support_size 13 is larger than the support set (12 items)" in capsys.readouterr().err
    assert run_cli(*args, "--out", tmp_path / "o", "--select", "all", "--support-size", 3) == 1
    assert "select=all uses every one of the 12 support items" in capsys.readouterr().err
    assert len(in_process) == 2  # refused before any input was segmented


def test_segment_items_formats_geometry_and_failures(tmp_path, rng, tiny_weights):
    write_prompt(tmp_path, rng)
    segmenter = Segmenter.from_pretrained(str(tiny_weights))
    images = [read_image(p).array for p in sorted((tmp_path / "prompt/images").iterdir())]
    masks = [read_mask(p).array for p in sorted((tmp_path / "prompt/masks").iterdir())]
    support = segmenter.prepare_support(images, masks)
    image = np.clip(rng.normal(100, 40, (33, 47)), 0, 255).astype(np.uint8)
    save_image(image, tmp_path / "a.png")
    save_image(image, tmp_path / "b.tif")
    save_image(rng.random((20, 18, 3)).astype(np.float32), tmp_path / "c.nii.gz", affine=AFFINE)
    (tmp_path / "d.png").write_bytes(b"\x89PNG\r\n\x1a\n but no more")
    out = tmp_path / "out"
    items = [batch_cli.Item(tmp_path / n, out / m) for n, m in
             [("a.png", "a.png"), ("b.tif", "b.tif"), ("c.nii.gz", "c.nii.gz"), ("d.png", "d.png"),
              ("e.png", "e.png")]]
    options = type("Options", (), {"threshold": 0.5, "ensemble": 1, "axis": 2})
    rows = batch_cli.segment_items(segmenter, support, items, options)

    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "failed", "failed"]
    assert rows[3]["error"].startswith("query: cannot read this PNG")
    assert "file not found" in rows[4]["error"]
    assert all(r["seconds"] >= 0 for r in rows)
    expected = segmenter.predict(image, support=support)
    np.testing.assert_array_equal(read_mask(out / "a.png").array, expected)  # batched == one at a time
    np.testing.assert_array_equal(read_mask(out / "b.tif").array, expected)
    volume = nib.load(out / "c.nii.gz")
    assert volume.shape == (20, 18, 3)
    np.testing.assert_array_equal(volume.affine, nib.load(tmp_path / "c.nii.gz").affine)
    np.testing.assert_allclose(volume.affine, AFFINE, rtol=1e-6)
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.tif", "c.nii.gz"]  # no temporary files left


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--replicas", "0"], "--replicas must be 1 or more"),
        (["--batch-size", "0"], "--batch-size must be 1 or more"),
        (["--gpus-per-replica", "-1"], "--gpus-per-replica"),
        (["--support-size", "0"], "--support-size must be 1 or more"),
        (["--select", "nearest"], "--select: invalid choice"),
    ],
)
def test_usage_errors_exit_2(extra, message, tmp_path, rng, capsys):
    prompt, inputs = write_prompt(tmp_path, rng), write_inputs(tmp_path, rng, n_png=1)
    assert run_cli("batch", "--prompt-dir", prompt, "--inputs", inputs, "--out", tmp_path / "o", *extra) == 2
    assert message in capsys.readouterr().err


def test_usage_errors_about_files_exit_2(tmp_path, rng, capsys):
    prompt, inputs = write_prompt(tmp_path, rng), write_inputs(tmp_path, rng, n_png=1)
    save_image(np.zeros((8, 8), np.uint8), inputs / "scan00.jpg")
    assert run_cli("batch", "--prompt-dir", prompt, "--inputs", inputs, "--out", tmp_path / "o") == 2
    assert "would both write" in capsys.readouterr().err
    assert run_cli("batch", "--prompt-dir", tmp_path, "--inputs", inputs, "--out", tmp_path / "o") == 2
    assert "images/ and masks/" in capsys.readouterr().err
    (tmp_path / "empty.txt").write_text("# nothing\n")
    assert run_cli("batch", "--prompt-dir", prompt, "--inputs", tmp_path / "empty.txt", "--out", tmp_path / "o") == 2
    assert "lists no files" in capsys.readouterr().err


def test_without_ray_the_command_says_how_to_install_it(monkeypatch, tmp_path, rng, capsys):
    prompt, inputs = write_prompt(tmp_path, rng), write_inputs(tmp_path, rng, n_png=1)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    assert run_cli("batch", "--prompt-dir", prompt, "--inputs", inputs, "--out", tmp_path / "o") == 1
    assert "pip install -e '.[batch]'" in capsys.readouterr().err


def test_the_rest_of_the_product_does_not_import_ray():
    code = ("import sys, cli.main, app.main, cli.batch, cli.batch_ray; cli.main.build_parser(); "
            "assert 'ray' not in sys.modules, sorted(m for m in sys.modules if m.startswith('ray'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_a_cluster_without_room_for_one_replica_is_an_error_not_a_wait(caplog):
    args = type("Args", (), {"replicas": 4, "cpus_per_replica": 1.0, "gpus_per_replica": 0.5})
    batch_ray._check_resources({"CPU": 16.0, "GPU": 1.0}, args)  # 2 of 4 fit at once: a warning
    assert "2 of 4 replicas fit" in caplog.text
    with pytest.raises(batch_cli.UsageError, match="not enough for one replica"):
        batch_ray._check_resources({"CPU": 16.0}, args)
