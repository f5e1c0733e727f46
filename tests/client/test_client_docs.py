"""docs/sdk.md runs: its Python blocks against a real server, its command lines through the parser."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from testkit.dicom import series
from testkit.fixtures import API_KEY
from testkit.inputs import ball_volume, disk_pair, save_nifti, save_png

from cli.main import build_parser
from data.io.nrrd_io import nrrd_bytes

DOC = Path(__file__).resolve().parents[2] / "docs" / "sdk.md"
QUICK_START = "## README: notebook quick start"


def _blocks(language: str, text: str | None = None) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text if text is not None else DOC.read_text(), flags=re.S)


def _doc_files(folder: Path, rng) -> None:
    """The files the examples name."""
    query, _ = disk_pair(rng, size=(64, 64))
    save_png(query, folder / "query.png")
    for i in (1, 2):
        image, mask = disk_pair(rng, size=(64, 64))
        save_png(image, folder / f"image{i}.png")
        save_png(mask, folder / f"mask{i}.png")
    save_png(np.zeros((64, 64), np.uint8), folder / "blank_mask.png")
    volume, _ = ball_volume(rng, (24, 20, 12))
    save_nifti(volume, folder / "volume.nii.gz")
    support, support_mask = ball_volume(rng, (24, 20, 10))
    save_nifti(support, folder / "support1.nii.gz")
    save_nifti(support_mask, folder / "support1_mask.nii.gz")
    for name, z in (("slice60", 4), ("slice80", 6)):  # 2D pairs cut from a support volume (support_positions)
        save_png(np.clip(support[..., z] / 2, 0, 255).astype(np.uint8), folder / f"{name}.png")
        save_png(support_mask[..., z], folder / f"{name}_mask.png")
    (folder / "ct").mkdir()
    for i, data in enumerate(series(np.clip(volume, 0, 4000).astype(np.uint16)[..., :6])):
        (folder / "ct" / f"IM{i:04d}.dcm").write_bytes(data)
    (folder / "volume.nrrd").write_bytes(nrrd_bytes(volume))


def test_the_quick_start_is_five_lines_from_install_to_a_mask():
    section = DOC.read_text().split(QUICK_START, 1)[1].split("\n## ", 1)[0]
    lines = [line for block in _blocks("bash", section) + _blocks("python", section)
             for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(lines) == 5 and lines[0].startswith("pip install ./client"), lines


def test_python_examples_run_against_a_server(server, tmp_path, rng, monkeypatch, capsys):
    _doc_files(tmp_path, rng)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ICSEG_API_KEY", API_KEY)
    namespace: dict = {}
    for i, block in enumerate(_blocks("python")):
        code = block.replace("http://localhost:8000", server.url)
        exec(compile(code, f"{DOC.name}[python block {i}]", "exec"), namespace)  # noqa: S102 - our own docs
    assert (tmp_path / "query_mask.png").is_file() and (tmp_path / "query_overlay.png").is_file()
    assert (tmp_path / "volume_mask.nii.gz").is_file()
    assert (tmp_path / "ct_seg.dcm").is_file() and (tmp_path / "volume_mask.seg.nrrd").is_file()
    assert len(namespace["results"]) == 2
    out = capsys.readouterr().out
    assert "support_masks - " in out and "foreground" in out  # the error example printed the field and message


def test_command_lines_parse():
    parser = build_parser()
    text = "\n".join(_blocks("bash")).replace("\\\n", " ")
    commands = [line.strip() for line in text.splitlines() if "icseg " in line and not line.strip().startswith("#")]
    assert len(commands) >= 6
    for command in commands:
        argv = shlex.split(command.split("$(", 1)[-1].rstrip(")").split("icseg ", 1)[1].replace('"$ID"', "ID"))
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"docs/sdk.md: `icseg {' '.join(argv)}` does not parse")
