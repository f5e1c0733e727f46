"""The in-context segmentation network and its numpy door.

- ``model.network``: the network (fast path and reference formulation); ``model.config``: its config;
- ``model.weights``: loading (local disk only) and saving;
- ``model.segmenter``: ``Segmenter``, numpy in, label map out (and ``predict_torch`` for prepared tensors);
- ``model.support``, ``model.volume``, ``model.inputs``: support sets, volumes, support files -> support set;
- ``model.train``, ``model.evaluate``: training and evaluation.

The package re-exports only its torch-free names (errors, config), with plain imports, so that importing a
light module such as ``model.train_config`` (the command line's flags) does not load torch; import the
Segmenter from its module: ``from model.segmenter import Segmenter``.
"""

from model.config import NetworkConfig, universeg_v1_config
from model.errors import CodedError, InputError, WeightsError

__all__ = ["CodedError", "InputError", "NetworkConfig", "WeightsError", "universeg_v1_config"]
