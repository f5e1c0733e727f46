"""Shared fixtures: a tiny seeded network (no trained weights) and a seeded random generator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.config import NetworkConfig
from model.network import UniverSegNet, build_network

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


@pytest.fixture
def tiny_config() -> NetworkConfig:
    """A 4-level network with 8 features per block on 32 x 32 images: fast on a CPU."""
    return TINY_CONFIG


@pytest.fixture
def tiny_net(tiny_config: NetworkConfig) -> UniverSegNet:
    """The tiny network with seeded random weights, in eval mode."""
    torch.manual_seed(0)
    return build_network(tiny_config).eval()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
