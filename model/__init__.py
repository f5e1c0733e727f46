"""The in-context segmentation network, its weights and the numpy Segmenter API.

Names are imported lazily: ``data`` uses ``model.errors`` while ``model.segmenter`` uses ``data``, and a lazy
package keeps that free of import cycles.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "IcsegError": "model.errors",
    "InputError": "model.errors",
    "WeightsError": "model.errors",
    "NetworkConfig": "model.config",
    "universeg_v1_config": "model.config",
    "UniverSegNet": "model.network",
    "build_network": "model.network",
    "count_parameters": "model.network",
    "Segmenter": "model.segmenter",
    "PreparedSupport": "model.segmenter",
    "load_model": "model.weights",
    "save_checkpoint": "model.weights",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
