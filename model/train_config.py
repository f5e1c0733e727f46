"""Training configuration, kept free of torch so that the command line starts fast."""

from __future__ import annotations

from dataclasses import dataclass, field

from model.config import NetworkConfig


@dataclass
class TrainConfig:
    """Everything a run needs; saved in the run folder and in each checkpoint."""

    run_dir: str = "runs/default"
    data_root: str | None = None
    data_pack: str | None = None  # a pack of data/pack.py instead of data_root (the GPU burst)
    exclude: tuple[str, ...] = ()
    steps: int = 20000
    batch_size: int = 8
    support_min: int = 2
    support_max: int = 16
    support_dist: str = "uniform"  # or "loguniform": small support sets more often, up to support_max
    synthetic_fraction: float = 0.5
    empty_query_fraction: float = 0.05
    empty_slice_step: int = 0  # > 0: volumes also give every k-th slice without the structure (empty queries)
    shape_fraction: float = 0.0  # of synthetic episodes: the shape families of data/synthetic_shapes.py
    superpixel_fraction: float = 0.0  # of all episodes: superpixel tasks on real training images
    size: int = 128
    warmup_size: int = 64
    warmup_steps: int = 0
    lr: float = 1e-3
    lr_warmup_steps: int = 200
    schedule: str = "cosine"  # or "wsd": warm-up, stable, then a linear decay over the last decay_steps
    decay_steps: int = 0
    ema_decay: float = 0.0  # > 0: keep an EMA of the weights and export it
    loss: str = "dice_bce"  # or "focal_dice": focal (gamma 20) + soft Dice
    init_weights: str | None = None  # start a new run from these weights (not used when resuming)
    weight_decay: float = 1e-4
    augment_p: float = 0.5
    augment_backend: str = "monai"  # or "batched": the same in-task ranges, one grid_sample per episode
    task_augment_p: float = 0.2
    features: int = 64
    seed: int = 0
    device: str = "cpu"
    bf16: bool = False
    channels_last: bool = True
    workers: int = 1
    threads: int = 0  # torch threads of the training process (0: torch's default)
    checkpoint_minutes: float = 5.0
    max_minutes: float | None = None
    progress: bool = True
    name: str = "icseg-default"
    extra: dict = field(default_factory=dict)

    def network_config(self) -> NetworkConfig:
        nf = self.features
        return NetworkConfig(encoder_features=(nf,) * 4, decoder_features=(nf,) * 3, size=self.size, name=self.name)
