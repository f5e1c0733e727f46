"""icseg eval's core: support sets from other patients only, every method on the same queries, rows only."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from data.datasets import DatasetFolder, case_group, may_pair
from model.evaluate import evaluate, latency_table, summary_table


def test_case_groups_and_pairing():
    assert case_group("10002_135") == "10002" and case_group("deep_1005") == case_group("superficial_1005")
    assert case_group("TCGA-18-5592-01Z-00-DX1") == "5592" and case_group("IMD002") == "IMD002"
    assert may_pair("10002_135", "10002_173") and not may_pair("10002_135", "10002_140")
    assert not may_pair("100_1_2", "100_2_1") and may_pair("100_1_2", "101_1_1")


def _folder(root, cases):
    (root / "ds" / "images").mkdir(parents=True)
    (root / "ds" / "masks").mkdir(parents=True)
    (root / "ds" / "labels.json").write_text(json.dumps({"1": "disc", "modality": "synthetic"}))
    rng = np.random.default_rng(0)
    for case in cases:
        yy, xx = np.mgrid[:32, :32]
        disc = (yy - rng.uniform(10, 22)) ** 2 + (xx - rng.uniform(10, 22)) ** 2 < 36
        image = (disc * 150 + rng.integers(0, 60, (32, 32))).astype(np.uint8)
        Image.fromarray(image).save(root / "ds" / "images" / f"{case}.png")
        Image.fromarray(disc.astype(np.uint8)).save(root / "ds" / "masks" / f"{case}.png")
    return DatasetFolder(root)


def test_support_never_shares_the_query_patient(tmp_path):
    cases = ["100_1_1", "100_1_2", "100_2_1", "101_1_1", "102_1_1", "103_1_1"]
    folder = _folder(tmp_path, cases)
    seen = []

    def spy(query, support_images, support_masks):
        key = query.tobytes()
        seen.append((key, [s.tobytes() for s in support_images]))
        return np.zeros(query.shape[:2], np.float32)

    rows = evaluate({"spy": spy}, folder, ("ds",), [1, 4], n_queries=5, seed=0, progress=False)
    by_image = {}
    for case in cases:
        by_image[np.asarray(Image.open(tmp_path / "ds" / "images" / f"{case}.png")).tobytes()] = case
    assert seen
    for query, support in seen:
        for s in support:
            assert case_group(by_image[query]) != case_group(by_image[s])
    methods = {r["method"] for r in rows}
    assert methods == {"spy", "naive_bayes", "mean_mask"}
    assert all(0.0 <= r["dice"] <= 1.0 and r["seconds"] >= 0 for r in rows)
    assert all(r["dice"] == 0.0 for r in rows if r["method"] == "spy")  # an empty prediction of a disc
    assert "spy" in summary_table(rows, [1, 4]) and "s / prediction" in latency_table(rows, [1, 4])


def test_selection_eval_runs_every_method_on_the_same_pools(tmp_path, tiny_net):
    from model.evaluate_select import evaluate_selection, selection_means, selection_table
    from model.segmenter import Segmenter

    folder = _folder(tmp_path, [f"{100 + i}_1_1" for i in range(12)])
    rows = evaluate_selection(Segmenter(tiny_net), folder, ("ds",), [2, 4], pool_size=6, n_queries=3, seed=0,
                              progress=False)
    methods = {(r["method"], r["support_size"]) for r in rows}
    assert methods == {(m, k) for m in ("similar", "random", "similar ens4", "random ens4") for k in (2, 4)} | {
        ("all", 6)}
    assert all(r["n"] == 3 and r["pool"] == 6 and 0.0 <= r["dice"] <= 1.0 for r in rows)
    table = selection_table(rows, [2, 4])
    assert "similar ens4" in table and "all (pool)" in table and table.count("mean over datasets") == 2
    assert set(selection_means(rows)) == methods
