"""The in-context segmentation network, its weights and the numpy Segmenter API."""

from model.config import NetworkConfig, universeg_v1_config
from model.errors import CodedError, InputError, WeightsError
from model.network import UniverSegNet, build_network, count_parameters
from model.segmenter import Segmenter
from model.support import PreparedSupport
from model.volume import VolumeSupport
from model.weights import load_model, save_checkpoint

__all__ = [
    "CodedError",
    "InputError",
    "NetworkConfig",
    "PreparedSupport",
    "Segmenter",
    "UniverSegNet",
    "VolumeSupport",
    "WeightsError",
    "build_network",
    "count_parameters",
    "load_model",
    "save_checkpoint",
    "universeg_v1_config",
]
