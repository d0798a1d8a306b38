"""The networks: one file each (mobilenet_v1, mobilenet_v2, deeplabv3), on the shared base class.

`model_class(name)` turns an architecture name of mobilenet_np/registry.py into its class, and
`load(path)` builds the model a weights file stores.
"""

from __future__ import annotations

from ..errors import WeightsError
from ..formats.weights import read_weights
from ..registry import ARCHITECTURES
from . import deeplabv3, mobilenet_v1, mobilenet_v2
from .base import PreTrainedModel

_MODULES = {"mobilenet_v1": mobilenet_v1, "mobilenet_v2": mobilenet_v2, "deeplabv3": deeplabv3}


def model_class(name: str) -> type[PreTrainedModel]:
    """The class of architecture `name` (a transformers class name listed in registry.ARCHITECTURES)."""
    if name not in ARCHITECTURES:
        raise WeightsError(f"unknown architecture {name!r}, expected one of {sorted(ARCHITECTURES)}")
    return getattr(_MODULES[ARCHITECTURES[name].module], name)


def load(path) -> PreTrainedModel:
    """Load a weights file as the architecture it stores (`mobilenet_np.load("weights.h5")`)."""
    weights = read_weights(path)
    return model_class(weights.architecture).from_weights_file(weights)
