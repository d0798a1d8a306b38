"""The networks: one file each (mobilenet_v1, mobilenet_v2, deeplabv3), on the shared base class.

`model_class(name)` turns an architecture name of mobilenet_np/registry.py into its class, and
`load(path)` builds the model a weights file stores: for each numerics of registry.NUMERICS, LOADERS
says which class builds it from the architecture's class (the float model itself, or the integer
network of mobilenet_np/quantized/network.py on that class's layer descriptions).
"""

from __future__ import annotations

from ..errors import WeightsError
from ..formats.weights import read_weights
from ..quantized.network import QuantizedModel
from ..registry import ARCHITECTURES
from . import deeplabv3, mobilenet_v1, mobilenet_v2
from .base import PreTrainedModel

_MODULES = {"mobilenet_v1": mobilenet_v1, "mobilenet_v2": mobilenet_v2, "deeplabv3": deeplabv3}


def model_class(name: str) -> type[PreTrainedModel]:
    """The class of architecture `name` (a transformers class name listed in registry.ARCHITECTURES)."""
    if name not in ARCHITECTURES:
        raise WeightsError(f"unknown architecture {name!r}, expected one of {sorted(ARCHITECTURES)}")
    return getattr(_MODULES[ARCHITECTURES[name].module], name)


def _load_float(cls: type[PreTrainedModel], weights) -> PreTrainedModel:
    return cls.from_weights_file(weights)


# numerics (registry.NUMERICS) -> (architecture class, weights file) -> model
LOADERS = {"float": _load_float, "integer": QuantizedModel.from_weights_file}


def load(path) -> PreTrainedModel | QuantizedModel:
    """Load a weights file as the architecture it stores (`mobilenet_np.load("weights.h5")`): a float
    model, or for an integer file (`import-tflite --quantized`) the integer network on its layers."""
    weights = read_weights(path)
    return LOADERS[weights.numerics](model_class(weights.architecture), weights)
