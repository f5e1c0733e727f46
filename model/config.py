"""Network configuration: a frozen dataclass saved next to the weights so a checkpoint rebuilds itself."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class NetworkConfig:
    """Hyper-parameters of the in-context network.

    Attributes:
        encoder_features: output features of each encoder CrossBlock (4 for UniverSeg v1).
        decoder_features: output features of each decoder CrossBlock (one fewer than the encoder).
        size: side of the square images the network was trained on (H = W = size).
        negative_slope: LeakyReLU slope.
        max_support: largest support set size the model is meant to be used with.
        name: a human-readable model name, reported by the service.
    """

    encoder_features: tuple[int, ...] = (64, 64, 64, 64)
    decoder_features: tuple[int, ...] = (64, 64, 64)
    size: int = 128
    negative_slope: float = 0.01
    max_support: int = 64
    name: str = "icseg"
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoder_features", tuple(int(f) for f in self.encoder_features))
        object.__setattr__(self, "decoder_features", tuple(int(f) for f in self.decoder_features))
        if len(self.decoder_features) != len(self.encoder_features) - 1:
            raise ValueError("decoder_features must have exactly one entry fewer than encoder_features")
        if self.size % (2 ** (len(self.encoder_features) - 1)):
            raise ValueError(f"size {self.size} must be divisible by {2 ** (len(self.encoder_features) - 1)}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> NetworkConfig:
        return cls(**json.loads(text))


def universeg_v1_config() -> NetworkConfig:
    """The shape of the released UniverSeg v1 network (nf = 64, 1,182,785 parameters)."""
    return NetworkConfig(name="universeg-v1")
