"""The in-context segmentation network (UniverSeg architecture) with an exact fast inference path.

Two formulations share one set of parameters:

* ``forward`` (the fast path): a conv is linear, so the cross conv over concat(query, support) is split
  into a query half computed once per query and a support half computed once per support item; the two
  are added by broadcasting and the mean over the support set follows. The S x (Cq + Cs) concatenation
  is never built, and support items shared by several queries are convolved once in the first block.
* ``forward_reference``: the plain concatenation formulation of the paper, kept for tests and benchmarks.

Parameter names match the released UniverSeg v1 state dict, so an official checkpoint loads strictly.

Letters: B queries, S support items, C channels (features), H x W pixels; B' is B or 1 (a shared support set).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.config import NetworkConfig
from model.errors import InputError


class _ConvOp(nn.Module):
    """3x3 (or 1x1) conv with optional LeakyReLU; parameters live under ``conv``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, negative_slope: float | None):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.negative_slope is not None:
            x = F.leaky_relu(x, self.negative_slope, inplace=True)
        return x


class _Vmap(nn.Module):
    """Applies a module to every item of a (B, N, C, H, W) tensor; parameters live under ``vmapped``."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.vmapped = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n = x.shape[:2]
        y = self.vmapped(x.flatten(0, 1))
        return y.unflatten(0, (b, n))


class _CrossOp(nn.Module):
    """Holds the cross conv, whose input channels are ordered (query, support)."""

    def __init__(self, query_channels: int, support_channels: int, out_channels: int):
        super().__init__()
        self.query_channels = query_channels
        self.cross_conv = nn.Conv2d(query_channels + support_channels, out_channels, 3, padding=1)


class CrossBlock(nn.Module):
    """Cross conv between the query and each support item, mean over the support set, then a conv per branch."""

    def __init__(self, query_channels: int, support_channels: int, features: int, negative_slope: float):
        super().__init__()
        self.cross = _CrossOp(query_channels, support_channels, features)
        self.target = _Vmap(_ConvOp(features, features, 3, negative_slope))
        self.support = _Vmap(_ConvOp(features, features, 3, negative_slope))

    def forward_reference(self, query: torch.Tensor, support: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenation formulation.

        Args:
            query: (B, 1, Cq, H, W).
            support: (B, S, Cs, H, W).

        Returns:
            (B, 1, C, H, W) new query features and (B, S, C, H, W) new support features.
        """
        b, s = support.shape[:2]
        pairs = torch.cat([query.expand(b, s, *query.shape[2:]), support], dim=2)  # (B, S, Cq+Cs, H, W)
        interaction = self.cross.cross_conv(pairs.flatten(0, 1)).unflatten(0, (b, s))  # (B, S, C, H, W)
        new_query = interaction.mean(dim=1, keepdim=True)  # (B, 1, C, H, W)
        return self.target(new_query), self.support(interaction)

    def forward_fast(
        self, query: torch.Tensor, support_parts: list[torch.Tensor], n_support: int, need_support: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Split formulation: never concatenates query and support features.

        Args:
            query: (B, Cq, H, W).
            support_parts: tensors of shape (B' * S, Ci, H, W) whose channels, in order, make up the support
                input (B' is B, or 1 when all queries share the support set).
            n_support: S.
            need_support: False in the last block, whose support features nothing reads: the support half
                of the cross conv is then taken of the support mean (a conv is linear), and the support
                branch is skipped.

        Returns:
            (B, C, H, W) new query features and (B * S, C, H, W) new support features (None when not needed).
        """
        weight, bias = self.cross.cross_conv.weight, self.cross.cross_conv.bias
        cq = query.shape[1]
        zq = F.conv2d(query, weight[:, :cq], bias, padding=1)  # (B, C, H, W)
        if not need_support:
            support_parts = [_mean_items(part, n_support) for part in support_parts]  # (B', Ci, H, W)
            n_support = 1
        zs = None
        start = cq
        for part in support_parts:
            stop = start + part.shape[1]
            z = F.conv2d(part, weight[:, start:stop], None, padding=1)  # (B'*S, C, H, W)
            zs = z if zs is None else zs.add_(z)
            start = stop
        new_query = self.target.vmapped(zq + _mean_items(zs, n_support))  # (B, C, H, W)
        if not need_support:
            return new_query, None
        zs = zs.unflatten(0, (-1, n_support))  # (B', S, C, H, W)
        if zs.shape[0] == zq.shape[0] and not torch.is_grad_enabled():
            interaction = zs.add_(zq.unsqueeze(1))
        else:
            interaction = zs + zq.unsqueeze(1)  # (B, S, C, H, W)
        new_support = self.support.vmapped(interaction.flatten(0, 1))  # (B*S, C, H, W)
        return new_query, new_support


def _mean_items(x: torch.Tensor, n: int) -> torch.Tensor:
    """Mean over groups of n consecutive items: (B' * n, C, H, W) -> (B', C, H, W), for either memory format."""
    if n == 1:
        return x
    if x.is_contiguous():
        return x.view(-1, n, *x.shape[1:]).mean(dim=1)
    if x.is_contiguous(memory_format=torch.channels_last):
        nhwc = x.permute(0, 2, 3, 1)
        return nhwc.reshape(-1, n, *nhwc.shape[1:]).mean(dim=1).permute(0, 3, 1, 2)
    return x.unflatten(0, (-1, n)).mean(dim=1)


def _down(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, 2)


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class UniverSegNet(nn.Module):
    """UniverSeg-style U-Net: 4 encoder and 3 decoder CrossBlocks, 1x1 output conv, logits out."""

    def __init__(self, config: NetworkConfig | None = None):
        super().__init__()
        self.config = config or NetworkConfig()
        slope = self.config.negative_slope
        self.enc_blocks = nn.ModuleList()
        self.dec_blocks = nn.ModuleList()
        query_ch, support_ch = 1, 2
        skips = []
        for features in self.config.encoder_features:
            self.enc_blocks.append(CrossBlock(query_ch, support_ch, features, slope))
            query_ch = support_ch = features
            skips.append(features)
        for features, skip in zip(self.config.decoder_features, skips[-2::-1]):
            self.dec_blocks.append(CrossBlock(query_ch + skip, support_ch + skip, features, slope))
            query_ch = support_ch = features
        self.out_conv = _ConvOp(query_ch, 1, 1, None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, a=self.config.negative_slope, nonlinearity="leaky_relu")
                nn.init.zeros_(module.bias)

    @property
    def multiple(self) -> int:
        """H and W must be multiples of this."""
        return 2 ** (len(self.enc_blocks) - 1)

    def _check(self, query: torch.Tensor, support_images: torch.Tensor, support_masks: torch.Tensor) -> None:
        if query.ndim != 4 or query.shape[1] != 1:
            raise InputError(f"query must be (B, 1, H, W), got {tuple(query.shape)}", field="query")
        for name, t in (("support_images", support_images), ("support_masks", support_masks)):
            if t.ndim != 5 or t.shape[2] != 1:
                raise InputError(f"{name} must be (B, S, 1, H, W), got {tuple(t.shape)}", field=name)
        if support_images.shape != support_masks.shape:
            raise InputError(
                f"support_images {tuple(support_images.shape)} and support_masks {tuple(support_masks.shape)} differ",
                field="support_masks",
            )
        if support_images.shape[0] not in (1, query.shape[0]):
            raise InputError("support batch must be 1 (shared) or equal to the query batch", field="support_images")
        if support_images.shape[-2:] != query.shape[-2:]:
            raise InputError("query and support items must share H and W", field="support_images")
        if support_images.shape[1] < 1:
            raise InputError("the support set is empty", field="support_images")
        h, w = query.shape[-2:]
        if h % self.multiple or w % self.multiple:
            raise InputError(f"H and W must be multiples of {self.multiple}, got {h}x{w}", field="query")

    def forward(self, query: torch.Tensor, support_images: torch.Tensor, support_masks: torch.Tensor) -> torch.Tensor:
        """Fast path.

        Args:
            query: (B, 1, H, W) float in [0, 1].
            support_images: (B, S, 1, H, W) or (1, S, 1, H, W) shared by all queries, float in [0, 1].
            support_masks: same shape as support_images, {0, 1}.

        Returns:
            logits: (B, 1, H, W).
        """
        self._check(query, support_images, support_masks)
        n_support = support_images.shape[1]
        query_feat = query
        support_parts = [support_images.flatten(0, 1), support_masks.flatten(0, 1)]  # (B'*S, 1, H, W) each
        skips = []
        last = len(self.enc_blocks) - 1
        for i, block in enumerate(self.enc_blocks):
            query_feat, support_feat = block.forward_fast(query_feat, support_parts, n_support)
            if i < last:
                skips.append((query_feat, support_feat))
                query_feat, support_feat = _down(query_feat), _down(support_feat)
            support_parts = [support_feat]
        for j, block in enumerate(self.dec_blocks):
            query_skip, support_skip = skips.pop()
            query_feat = torch.cat([_up(query_feat), query_skip], dim=1)
            need_support = j < len(self.dec_blocks) - 1
            low = support_parts[0] if need_support else _mean_items(support_parts[0], n_support)
            # the mean commutes with the (linear) upsampling: upsample S items only where they are needed
            support_parts = [_up(low), support_skip if need_support else _mean_items(support_skip, n_support)]
            query_feat, support_feat = block.forward_fast(
                query_feat, support_parts, n_support if need_support else 1, need_support
            )
            support_parts = [support_feat]
        return self.out_conv(query_feat)

    def forward_reference(
        self, query: torch.Tensor, support_images: torch.Tensor, support_masks: torch.Tensor
    ) -> torch.Tensor:
        """Concatenation formulation of the paper; same arguments and result as ``forward``."""
        self._check(query, support_images, support_masks)
        b = query.shape[0]
        query_feat = query.unsqueeze(1)  # (B, 1, 1, H, W)
        support_feat = torch.cat([support_images, support_masks], dim=2)  # (B', S, 2, H, W)
        support_feat = support_feat.expand(b, *support_feat.shape[1:])
        skips = []
        last = len(self.enc_blocks) - 1
        for i, block in enumerate(self.enc_blocks):
            query_feat, support_feat = block.forward_reference(query_feat, support_feat)
            if i < last:
                skips.append((query_feat, support_feat))
                query_feat, support_feat = _vmap(_down, query_feat), _vmap(_down, support_feat)
        for block in self.dec_blocks:
            query_skip, support_skip = skips.pop()
            query_feat = torch.cat([_vmap(_up, query_feat), query_skip], dim=2)
            support_feat = torch.cat([_vmap(_up, support_feat), support_skip], dim=2)
            query_feat, support_feat = block.forward_reference(query_feat, support_feat)
        return self.out_conv(query_feat[:, 0])


def _vmap(fn, x: torch.Tensor) -> torch.Tensor:
    return fn(x.flatten(0, 1)).unflatten(0, x.shape[:2])


def build_network(config: NetworkConfig | None = None) -> UniverSegNet:
    """The one builder of networks."""
    return UniverSegNet(config)


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
