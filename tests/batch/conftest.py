"""Fixtures of the `icseg batch` tests: no ICSEG_* variables from the developer, a tiny seeded checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from model.config import NetworkConfig
from model.network import build_network
from model.weights import save_checkpoint


@pytest.fixture(autouse=True)
def _no_icseg_env(monkeypatch):
    """A developer's ICSEG_* variables (ICSEG_WEIGHTS) must not leak into tests."""
    for key in list(os.environ):
        if key.startswith("ICSEG_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net = build_network(NetworkConfig(encoder_features=(8, 8, 8, 8), decoder_features=(8, 8, 8), size=32))
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_checkpoint(net, path, metadata={"source": "seeded random test weights", "licence": "none (tests)"})
    return path
