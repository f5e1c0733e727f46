"""Loading and saving weights. Local disk only: nothing is ever downloaded.

Two kinds of files load:

* our own checkpoints: a ``.safetensors`` file whose metadata holds the ``NetworkConfig`` (self-describing);
* an official UniverSeg v1 state dict (``.pt``, e.g. ``universeg_v1_nf64_ss64_STA.pt``), read with
  ``torch.load(..., weights_only=True)`` and loaded strictly into the v1 shape.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from data.io import write_atomic
from model.config import NetworkConfig, universeg_v1_config
from model.errors import WeightsError
from model.network import UniverSegNet, build_network

log = logging.getLogger(__name__)

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "icseg-default.safetensors"
DEFAULT_CARD = {
    "source": "icseg default model",
    "licence": "research and non-commercial use: trained on datasets under research-only and CC BY-NC terms "
    "(docs/model-card.md)",
}
UNSTATED_CARD = {"source": "icseg checkpoint", "licence": "not stated in the checkpoint's metadata"}
OFFICIAL_CARD = {"source": "UniverSeg v1 official checkpoint", "licence": "see the UniverSeg release (research use)"}


def save_checkpoint(net: UniverSegNet, path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Write weights and config to one ``.safetensors`` file, atomically (``data.io.write_atomic``)."""
    meta = {"config": net.config.to_json(), "format": "icseg"}
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()})
    tensors = {
        k: v.detach().to("cpu", memory_format=torch.contiguous_format).contiguous() for k, v in net.state_dict().items()
    }
    write_atomic(path, safetensors_bytes(tensors, metadata=meta))


def read_metadata(path: str | os.PathLike) -> dict:
    """The string metadata of one of our checkpoints."""
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def _load_safetensors(path: Path) -> tuple[UniverSegNet, dict]:
    meta = read_metadata(path)
    if "config" not in meta:
        raise WeightsError(f"{path} has no icseg config in its metadata; was it saved by icseg?", field="weights")
    net = build_network(NetworkConfig.from_json(meta["config"]))
    with safe_open(str(path), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    _load_strict(net, state, path)
    return net, meta


def _load_official(path: Path) -> tuple[UniverSegNet, dict]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle that is not a plain state dict, or a damaged file
        raise WeightsError(f"cannot read {path} as a plain state dict: {exc}", field="weights") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path} does not hold a state dict", field="weights")
    net = build_network(universeg_v1_config())
    _load_strict(net, state, path)
    return net, {"source": OFFICIAL_CARD["source"], "licence": OFFICIAL_CARD["licence"]}


def _load_strict(net: UniverSegNet, state: dict, path: Path) -> None:
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of the wrong shape
        raise WeightsError(f"{path} does not match the network: {exc}", field="weights") from exc
    if result.missing_keys or result.unexpected_keys:
        raise WeightsError(
            f"{path} does not match the network: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}",
            field="weights",
        )


def load_model(
    path: str | os.PathLike | None = None, device: str | torch.device = "cpu", channels_last: bool | None = None
) -> UniverSegNet:
    """Build the network from local weights, in eval mode.

    Args:
        path: an icseg ``.safetensors`` checkpoint or an official UniverSeg v1 ``.pt`` state dict;
            None means the embedded default model shipped in ``model/weights/``.
        device: torch device.
        channels_last: use the channels-last memory format (measured faster on CPU, see docs/performance.md);
            None chooses it on CPU.

    Returns:
        The network, with ``net.weights_info`` describing the source (path, name, licence).

    Raises:
        WeightsError: the file is missing or does not match; the message says what to set.
    """
    if path is None:
        path = DEFAULT_WEIGHTS
        if not path.exists():
            raise WeightsError(
                f"the embedded default model is missing ({path}). Train one with `icseg train` or point "
                "ICSEG_WEIGHTS (or path=) at an icseg .safetensors checkpoint or an official UniverSeg v1 .pt",
                field="weights",
            )
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}; set ICSEG_WEIGHTS to an existing file", field="weights")
    if path.suffix == ".safetensors":
        net, meta = _load_safetensors(path)
        fallback = DEFAULT_CARD if path == DEFAULT_WEIGHTS else UNSTATED_CARD
        info = {key: meta.get(key, fallback[key]) for key in ("source", "licence")}
    else:
        net, info = _load_official(path)
    device = torch.device(device)
    if channels_last is None:
        channels_last = device.type == "cpu"
    net = net.to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    net.eval()
    net.weights_info = {"path": str(path), "name": net.config.name, **info}
    log.info("loaded weights %s (%s)", path.name, net.config.name)
    return net
