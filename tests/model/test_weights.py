"""Weights: strict loading of an official-format v1 state dict, our safetensors round trip, clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import model.weights
from model.config import universeg_v1_config
from model.errors import WeightsError
from model.network import build_network
from model.weights import load_model, read_metadata, save_checkpoint

OFFICIAL_NAME = "universeg_v1_nf64_ss64_STA.pt"


def _official_shapes() -> dict[str, tuple[int, ...]]:
    """Key names and shapes of the released v1 state dict, written out from the architecture (nf = 64).

    Encoder block i takes (query, support) channels (1, 2) then (64, 64); decoder blocks take the upsampled
    features plus the skip, 64 + 64 on each side; the cross conv's input channels are (query, support).
    """
    shapes = {}
    blocks = [(f"enc_blocks.{i}", q, s) for i, (q, s) in enumerate([(1, 2), (64, 64), (64, 64), (64, 64)])]
    blocks += [(f"dec_blocks.{j}", 128, 128) for j in range(3)]
    for prefix, q, s in blocks:
        shapes[f"{prefix}.cross.cross_conv.weight"] = (64, q + s, 3, 3)
        shapes[f"{prefix}.cross.cross_conv.bias"] = (64,)
        for branch in ("target", "support"):
            shapes[f"{prefix}.{branch}.vmapped.conv.weight"] = (64, 64, 3, 3)
            shapes[f"{prefix}.{branch}.vmapped.conv.bias"] = (64,)
    shapes["out_conv.conv.weight"] = (1, 64, 1, 1)
    shapes["out_conv.conv.bias"] = (1,)
    return shapes


def _official_state(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in _official_shapes().items():
        fan_in = shape[1] * shape[2] * shape[3] if len(shape) == 4 else 100
        state[name] = torch.randn(shape, generator=gen) * (2.0 / fan_in) ** 0.5
    return state


def _official_logits(state: dict[str, torch.Tensor], query, support_images, support_masks) -> torch.Tensor:
    """UniverSeg v1 written from the paper with plain functional ops, reading only the state dict.

    query: (B, 1, H, W); support_images, support_masks: (B, S, 1, H, W). Returns (B, 1, H, W) logits.
    """

    def per_item(fn, x):  # (B, N, C, H, W) -> fn over the B * N items
        return fn(x.flatten(0, 1)).unflatten(0, x.shape[:2])

    def conv(prefix, x):
        w, b = state[f"{prefix}.weight"], state[f"{prefix}.bias"]
        return per_item(lambda t: F.leaky_relu(F.conv2d(t, w, b, padding=1), 0.01), x)

    def block(prefix, target, support):
        s = support.shape[1]
        pairs = torch.cat([target.expand(-1, s, -1, -1, -1), support], dim=2)
        w, b = state[f"{prefix}.cross.cross_conv.weight"], state[f"{prefix}.cross.cross_conv.bias"]
        interaction = per_item(lambda t: F.conv2d(t, w, b, padding=1), pairs)
        target = interaction.mean(dim=1, keepdim=True)
        return conv(f"{prefix}.target.vmapped.conv", target), conv(f"{prefix}.support.vmapped.conv", interaction)

    def up(t):
        return F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=True)

    target, support = query[:, None], torch.cat([support_images, support_masks], dim=2)
    skips = []
    for i in range(4):
        target, support = block(f"enc_blocks.{i}", target, support)
        if i < 3:
            skips.append((target, support))
            target, support = (
                per_item(lambda t: F.max_pool2d(t, 2), target),
                per_item(lambda t: F.max_pool2d(t, 2), support),
            )
    for j in range(3):
        target_skip, support_skip = skips.pop()
        target = torch.cat([per_item(up, target), target_skip], dim=2)
        support = torch.cat([per_item(up, support), support_skip], dim=2)
        target, support = block(f"dec_blocks.{j}", target, support)
    return F.conv2d(target[:, 0], state["out_conv.conv.weight"], state["out_conv.conv.bias"])


def _inputs(s: int = 3, size: int = 32):
    gen = torch.Generator().manual_seed(5)
    query = torch.rand(1, 1, size, size, generator=gen)
    support_images = torch.rand(1, s, 1, size, size, generator=gen)
    support_masks = (torch.rand(1, s, 1, size, size, generator=gen) > 0.5).float()
    return query, support_images, support_masks


def test_official_shapes_are_the_v1_network():
    shapes = _official_shapes()
    assert sum(torch.Size(s).numel() for s in shapes.values()) == 1_182_785
    net = build_network(universeg_v1_config())
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == shapes


@torch.no_grad()
def test_official_state_dict_loads_strictly(tmp_path):
    state = _official_state()
    path = tmp_path / OFFICIAL_NAME
    torch.save(state, path)
    net = load_model(path)
    assert not net.training
    assert net.weights_info["path"] == str(path)
    assert "UniverSeg" in net.weights_info["source"]

    inputs = _inputs()
    expected = _official_logits(state, *inputs)
    torch.testing.assert_close(net(*inputs), expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(net.forward_reference(*inputs), expected, atol=1e-4, rtol=0)

    loaded = dict(net.named_parameters())
    by_hand = build_network(universeg_v1_config()).eval()
    for name, param in by_hand.named_parameters():
        assert torch.equal(loaded[name], state[name]), name
        param.copy_(state[name])
    # load_model picks channels-last on CPU: compare within the same memory format
    by_hand = by_hand.to(memory_format=torch.channels_last)
    torch.testing.assert_close(net(*inputs), by_hand(*inputs), atol=1e-5, rtol=0)


def test_official_state_dict_nested_under_state_dict_key(tmp_path):
    state = _official_state(1)
    path = tmp_path / OFFICIAL_NAME
    torch.save({"state_dict": state, "epoch": 3}, path)
    net = load_model(path, channels_last=False)
    assert torch.equal(net.out_conv.conv.weight, state["out_conv.conv.weight"])


@pytest.mark.parametrize("change", ["missing", "extra"])
def test_official_state_dict_mismatch_raises(tmp_path, change):
    state = _official_state()
    if change == "missing":
        del state["dec_blocks.1.support.vmapped.conv.bias"]
    else:
        state["dec_blocks.3.cross.cross_conv.weight"] = torch.zeros(64, 256, 3, 3)
    path = tmp_path / OFFICIAL_NAME
    torch.save(state, path)
    with pytest.raises(WeightsError) as info:
        load_model(path)
    assert info.value.field == "weights"
    assert ("dec_blocks.1.support" if change == "missing" else "dec_blocks.3") in info.value.message


def test_official_state_dict_wrong_shape_raises_weights_error(tmp_path):
    state = _official_state()
    state["out_conv.conv.weight"] = torch.zeros(1, 32, 1, 1)
    path = tmp_path / OFFICIAL_NAME
    torch.save(state, path)
    with pytest.raises(WeightsError):
        load_model(path)


def test_unreadable_official_file_raises(tmp_path):
    path = tmp_path / OFFICIAL_NAME
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(WeightsError):
        load_model(path)


@torch.no_grad()
def test_safetensors_round_trip(tmp_path, tiny_net):
    path = tmp_path / "ckpt" / "tiny.safetensors"
    save_checkpoint(tiny_net, path, metadata={"source": "unit test", "steps": 12})
    assert read_metadata(path)["steps"] == "12"
    for channels_last in (False, True):
        net = load_model(path, channels_last=channels_last)
        assert net.config == tiny_net.config
        assert net.config.name == "tiny-test"
        assert net.weights_info["source"] == "unit test"
        for (name, a), (_, b) in zip(net.state_dict().items(), tiny_net.state_dict().items(), strict=True):
            assert torch.equal(a, b), name
        q = torch.rand(2, 1, 16, 16)
        si, sm = torch.rand(2, 3, 1, 16, 16), (torch.rand(2, 3, 1, 16, 16) > 0.5).float()
        torch.testing.assert_close(net(q, si, sm), tiny_net(q, si, sm), atol=1e-5, rtol=0)


def test_safetensors_without_config_raises(tmp_path, tiny_net):
    path = tmp_path / "foreign.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_net.state_dict().items()}, str(path))
    with pytest.raises(WeightsError, match="config"):
        load_model(path)


def test_missing_default_weights_names_the_setting(tmp_path, monkeypatch):
    monkeypatch.setattr(model.weights, "DEFAULT_WEIGHTS", tmp_path / "no-such-default.safetensors")
    with pytest.raises(WeightsError) as info:
        load_model(None)
    assert "ICSEG_WEIGHTS" in info.value.message
    assert info.value.field == "weights"


def test_missing_file_raises(tmp_path):
    with pytest.raises(WeightsError, match="ICSEG_WEIGHTS"):
        load_model(tmp_path / "nowhere.pt")


def test_average_weights_script_writes_the_mean_of_its_inputs(tmp_path, tiny_config):
    """scripts/average-weights.py: every parameter of the output is the mean of the inputs', and it loads."""
    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        paths.append(tmp_path / f"in{seed}.safetensors")
        save_checkpoint(build_network(tiny_config), paths[-1], metadata={"steps": str(seed)})
    out = tmp_path / "soup" / "model.safetensors"
    script = Path(__file__).resolve().parents[2] / "scripts" / "average-weights.py"
    subprocess.run([sys.executable, str(script), *map(str, paths), "--out", str(out)], check=True)
    soup, a, b = (load_model(p, channels_last=False).state_dict() for p in (out, *paths))
    for name, value in soup.items():
        torch.testing.assert_close(value, (a[name] + b[name]) / 2)
    assert not torch.equal(a[next(iter(a))], b[next(iter(b))])  # the two inputs differ, so the mean is a real test
    meta = read_metadata(out)
    assert meta["steps"] == "1" and str(paths[1]) in meta["averaged_from"]
