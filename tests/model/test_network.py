"""The network: shapes, support-order invariance, fast path == reference formulation (values and gradients)."""

from __future__ import annotations

import pytest
import torch

from model.config import universeg_v1_config
from model.errors import InputError
from model.network import build_network, count_parameters


def _inputs(b: int, s: int, h: int, w: int, shared: bool = False, seed: int = 0):
    """query (B, 1, H, W), support_images and support_masks (B or 1, S, 1, H, W)."""
    gen = torch.Generator().manual_seed(seed)
    bs = 1 if shared else b
    query = torch.rand(b, 1, h, w, generator=gen)
    support_images = torch.rand(bs, s, 1, h, w, generator=gen)
    support_masks = (torch.rand(bs, s, 1, h, w, generator=gen) > 0.6).float()
    return query, support_images, support_masks


@pytest.mark.parametrize(
    ("b", "s", "h", "w", "shared"),
    [
        (1, 1, 8, 8, False),
        (1, 1, 8, 8, True),
        (2, 1, 16, 16, False),
        (2, 3, 16, 24, False),
        (2, 3, 16, 24, True),
        (3, 5, 40, 16, False),
        (3, 5, 40, 16, True),
        (1, 7, 32, 32, False),
        (4, 2, 24, 8, True),
    ],
)
@torch.no_grad()
def test_shape_grid_and_fast_equals_reference(tiny_net, b, s, h, w, shared):
    query, support_images, support_masks = _inputs(b, s, h, w, shared)
    logits = tiny_net(query, support_images, support_masks)
    assert logits.shape == (b, 1, h, w)
    assert torch.isfinite(logits).all()
    reference = tiny_net.forward_reference(query, support_images, support_masks)
    torch.testing.assert_close(logits, reference, atol=1e-4, rtol=0)


@torch.no_grad()
def test_shared_support_equals_repeated_support(tiny_net):
    query, support_images, support_masks = _inputs(3, 4, 16, 16, shared=True)
    shared = tiny_net(query, support_images, support_masks)
    repeated = tiny_net(query, support_images.expand(3, -1, -1, -1, -1), support_masks.expand(3, -1, -1, -1, -1))
    torch.testing.assert_close(shared, repeated, atol=1e-5, rtol=0)
    # each query row is the same as segmenting it alone
    alone = torch.cat([tiny_net(query[i : i + 1], support_images, support_masks) for i in range(3)])
    torch.testing.assert_close(shared, alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("formulation", ["forward", "forward_reference"])
@torch.no_grad()
def test_support_order_invariance(tiny_net, formulation):
    run = getattr(tiny_net, formulation)
    query, support_images, support_masks = _inputs(2, 6, 16, 24)
    logits = run(query, support_images, support_masks)
    for seed in range(3):
        perm = torch.randperm(6, generator=torch.Generator().manual_seed(seed))
        assert not torch.equal(perm, torch.arange(6))
        permuted = run(query, support_images[:, perm], support_masks[:, perm])
        torch.testing.assert_close(logits, permuted, atol=1e-5, rtol=0)


@torch.no_grad()
def test_logits_depend_on_support(tiny_net):
    """Keeps the invariance test honest: the output does change when the support set changes."""
    query, support_images, support_masks = _inputs(1, 4, 16, 16)
    logits = tiny_net(query, support_images, support_masks)
    flipped = tiny_net(query, support_images, 1 - support_masks)
    fewer = tiny_net(query, support_images[:, :2], support_masks[:, :2])
    assert (logits - flipped).abs().max() > 1e-3
    assert (logits - fewer).abs().max() > 1e-3


@torch.no_grad()
def test_fast_equals_reference_channels_last(tiny_net):
    net = tiny_net.to(memory_format=torch.channels_last)
    assert net.enc_blocks[0].cross.cross_conv.weight.is_contiguous(memory_format=torch.channels_last)
    for shared in (False, True):
        query, support_images, support_masks = _inputs(2, 5, 24, 32, shared=shared, seed=1)
        fast = net(query, support_images, support_masks)
        reference = net.forward_reference(query, support_images, support_masks)
        torch.testing.assert_close(fast, reference, atol=1e-4, rtol=0)


@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_equals_reference_gradients(tiny_config, channels_last):
    torch.manual_seed(1)
    net = build_network(tiny_config).train()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    query, support_images, support_masks = _inputs(2, 3, 16, 16, seed=2)
    target = (torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(3)) > 0.5).float()

    def grads(formulation: str) -> dict[str, torch.Tensor]:
        net.zero_grad()
        q = query.clone().requires_grad_(True)
        si = support_images.clone().requires_grad_(True)
        logits = getattr(net, formulation)(q, si, support_masks)
        torch.nn.functional.binary_cross_entropy_with_logits(logits, target).backward()
        out = {n: torch.zeros_like(p) if p.grad is None else p.grad.clone() for n, p in net.named_parameters()}
        out["query"], out["support_images"] = q.grad, si.grad
        return out

    fast, reference = grads("forward"), grads("forward_reference")
    assert fast.keys() == reference.keys()
    for name in fast:
        scale = reference[name].abs().max().item()
        torch.testing.assert_close(fast[name], reference[name], atol=1e-4 * max(scale, 1e-3), rtol=1e-4, msg=name)
    # the dead support branch of the last decoder block gets no gradient on either path
    assert fast["dec_blocks.2.support.vmapped.conv.weight"].abs().max() == 0


def test_v1_parameter_count():
    net = build_network(universeg_v1_config())
    assert count_parameters(net) == 1_182_785
    assert count_parameters(build_network()) == 1_182_785  # the default config has the v1 shape


@torch.no_grad()
def test_v1_tiny_forward():
    torch.manual_seed(0)
    net = build_network(universeg_v1_config()).eval()
    query, support_images, support_masks = _inputs(1, 2, 16, 16)
    fast = net(query, support_images, support_masks)
    torch.testing.assert_close(fast, net.forward_reference(query, support_images, support_masks), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("shapes", "field"),
    [
        (((2, 16, 16), (2, 3, 1, 16, 16), (2, 3, 1, 16, 16)), "query"),
        (((2, 1, 16, 16), (2, 3, 16, 16), (2, 3, 16, 16)), "support_images"),
        (((2, 1, 16, 16), (2, 3, 1, 16, 16), (2, 2, 1, 16, 16)), "support_masks"),
        (((2, 1, 16, 16), (3, 3, 1, 16, 16), (3, 3, 1, 16, 16)), "support_images"),
        (((2, 1, 16, 16), (2, 3, 1, 16, 24), (2, 3, 1, 16, 24)), "support_images"),
        (((2, 1, 16, 16), (2, 0, 1, 16, 16), (2, 0, 1, 16, 16)), "support_images"),
        (((2, 1, 12, 16), (2, 3, 1, 12, 16), (2, 3, 1, 12, 16)), "query"),
    ],
)
def test_bad_shapes_raise_input_error(tiny_net, shapes, field):
    tensors = [torch.zeros(shape) for shape in shapes]
    for formulation in (tiny_net.forward, tiny_net.forward_reference):
        with pytest.raises(InputError) as info:
            formulation(*tensors)
        assert info.value.field == field
