"""`pip install ./client` in a fresh virtual environment installs no torch, and the SDK works there."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
import venv

import pytest
from testkit import ROOT
from testkit.fixtures import API_KEY
from testkit.inputs import disk_pair, save_png


@pytest.mark.slow
def test_pip_install_client_in_a_fresh_venv(server, tmp_path, rng):
    # a copy: building the wheel writes build/ and *.egg-info next to the sources
    source = shutil.copytree(ROOT / "client", tmp_path / "client",
                             ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True, system_site_packages=False)
    python = env_dir / "bin" / "python"
    install = subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-compile", str(source)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    listed = subprocess.run([python, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True)
    names = {line.split("==")[0].lower() for line in listed.stdout.splitlines()}
    assert {"icseg-client", "httpx", "numpy", "pillow", "tqdm"} <= names
    assert not names & {"torch", "nibabel", "fastapi", "monai"}, names

    for i, (image, mask) in enumerate([disk_pair(rng), disk_pair(rng)]):
        save_png(image, tmp_path / f"image{i}.png")
        save_png(mask, tmp_path / f"mask{i}.png")
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import icseg_client
        from icseg_client import Client, MissingDependencyError
        assert "torch" not in sys.modules
        try:
            import torch
        except ImportError:
            pass
        else:
            raise SystemExit("torch is importable")
        with Client({server.url!r}, api_key={API_KEY!r}) as client:
            result = client.segment("image0.png", ["image1.png"], ["mask1.png"])
            assert result.mask.shape == (48, 56), result
            try:
                client.segment(np.zeros((8, 8, 8), np.float32), ["image1.png"], ["mask1.png"])
            except MissingDependencyError as exc:
                assert "icseg-client[nifti]" in str(exc)
            else:
                raise SystemExit("a volume without nibabel did not say what to install")
        print("ok", icseg_client.__version__)
    """)
    run = subprocess.run([python, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.startswith("ok 0.1.0"), run.stdout + run.stderr
