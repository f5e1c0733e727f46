"""Shared fixtures: a tiny seeded network (no trained weights) and its checkpoint file, a seeded random
generator, no ICSEG_* variables from the developer. Helpers shared by several folders are in testkit/."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from model.config import NetworkConfig
from model.network import UniverSegNet, build_network
from model.weights import save_checkpoint

TINY_CONFIG = NetworkConfig(
    encoder_features=(8, 8, 8, 8), decoder_features=(8, 8, 8), size=32, max_support=8, name="tiny-test"
)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy machine OpenMP workers spinning
    against other processes made the network tests ~30x slower (measured: 30 s vs 1 s)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _no_icseg_env(monkeypatch):
    """A developer's ICSEG_* variables (ICSEG_WEIGHTS, ICSEG_URL, ICSEG_API_KEY) must not leak into tests."""
    for key in list(os.environ):
        if key.startswith("ICSEG_"):
            monkeypatch.delenv(key)


@pytest.fixture
def tiny_config() -> NetworkConfig:
    """A 4-level network with 8 features per block on 32 x 32 images: fast on a CPU."""
    return TINY_CONFIG


@pytest.fixture
def tiny_net(tiny_config: NetworkConfig) -> UniverSegNet:
    """The tiny network with seeded random weights, in eval mode."""
    torch.manual_seed(0)
    return build_network(tiny_config).eval()


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A checkpoint of a tiny seeded network (random weights: shapes, not quality) for the service, the CLI
    and real processes."""
    torch.manual_seed(0)
    net = build_network(NetworkConfig(encoder_features=(8, 8, 8, 8), decoder_features=(8, 8, 8), size=32))
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_checkpoint(net, path, metadata={"source": "seeded random test weights", "licence": "none (tests)"})
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
