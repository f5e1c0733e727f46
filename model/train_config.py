"""Training configuration, kept free of torch so that the command line starts fast."""

from __future__ import annotations

from dataclasses import dataclass, field

from model.config import NetworkConfig


@dataclass
class TrainConfig:
    """Everything a run needs; saved in the run folder and in each checkpoint."""

    run_dir: str = "runs/default"
    data_root: str | None = None
    exclude: tuple[str, ...] = ()
    steps: int = 20000
    batch_size: int = 8
    support_min: int = 2
    support_max: int = 16
    synthetic_fraction: float = 0.5
    empty_query_fraction: float = 0.05
    size: int = 128
    warmup_size: int = 64
    warmup_steps: int = 0
    lr: float = 1e-3
    lr_warmup_steps: int = 200
    weight_decay: float = 1e-4
    augment_p: float = 0.5
    task_augment_p: float = 0.2
    features: int = 64
    seed: int = 0
    device: str = "cpu"
    bf16: bool = False
    channels_last: bool = True
    workers: int = 1
    checkpoint_minutes: float = 5.0
    max_minutes: float | None = None
    progress: bool = True
    name: str = "icseg-default"
    extra: dict = field(default_factory=dict)

    def network_config(self) -> NetworkConfig:
        nf = self.features
        return NetworkConfig(encoder_features=(nf,) * 4, decoder_features=(nf,) * 3, size=self.size, name=self.name)
