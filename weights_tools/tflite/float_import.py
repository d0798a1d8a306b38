"""The float import of a TFLite graph: its (dequantized) weights as a transformers state_dict.

* BatchNorm is folded into the convolutions: each CONV_2D / DEPTHWISE_CONV_2D has a weight and a bias
  that already include the BatchNorm scale and shift. transformers keeps conv and BatchNorm apart, so
  a folded conv is stored exactly as: convolution.weight = folded weight; normalization.weight = 1,
  normalization.bias = folded bias, running_mean = 0, running_var = 1 - eps. BatchNorm then computes
  (x - 0) / sqrt(1 - eps + eps) * 1 + bias = x + bias (exactly in float32, see
  importing.batch_norm_identity). The classifiers have no BatchNorm and keep their own bias.
* Quantized files (uint8 or int8, per tensor or per output channel) import as their float emulation:
  real = (q - zero_point) * scale, the same weights in float arithmetic. `--quantized` keeps the
  integers instead (quantized_import.py).
* DeepLab graphs have no final 1x1 conv to 1280 channels (transformers' `conv_1x1`, which its
  segmentation head does not use); it is stored as zeros.
"""

from __future__ import annotations

import numpy as np

from mobilenet_np.errors import ConversionError

from ..importing import batch_norm_identity
from .graph import Graph
from .network import Network, check_conv_count


def network_tensors(network: Network, graph: Graph) -> dict[str, np.ndarray]:
    """The state_dict (without the parts the graph lacks) of the network's convs, BatchNorm stored as identity."""
    layers = check_conv_count(network, graph)
    tensors = {}
    for layer, conv in zip(layers, network.convs):
        if (layer is None or layer.norm_eps is None) and conv.bias is None:
            raise ConversionError(f"{graph.path}: the classifier (op {conv.op.index}, {conv.op.kind}) has no bias")
        if layer is None:  # classification logits: a 1x1 conv or a fully connected layer with bias -> Linear
            tensors["classifier.weight"] = conv.weight[:, :, 0, 0]
            tensors["classifier.bias"] = conv.bias
            continue
        weight = conv.weight
        if layer.name == "segmentation_head.conv_projection" and network.concat_swapped:
            weight = swap_halves(weight)
        tensors[f"{layer.name}.convolution.weight"] = weight
        if layer.norm_eps is None:  # the DeepLab classifier: conv with bias, no BatchNorm
            tensors[f"{layer.name}.convolution.bias"] = conv.bias
        else:
            bias = np.zeros(weight.shape[0], np.float32) if conv.bias is None else conv.bias
            for key, value in batch_norm_identity(weight.shape[0], layer.norm_eps, bias).items():
                tensors[f"{layer.name}.normalization.{key}"] = value
    return tensors


def swap_halves(weight: np.ndarray) -> np.ndarray:
    """The projection's input channels reordered: the graph's [aspp, pool] -> transformers' [pool, aspp]."""
    half = weight.shape[1] // 2
    return np.concatenate([weight[:, half:], weight[:, :half]], axis=1)


def skipped_modules_as_zeros(model, family_skipped: tuple[str, ...], eps: float) -> dict[str, np.ndarray]:
    """Zero weights (and identity BatchNorm) for the modules the graph lacks (DeepLab's conv_1x1)."""
    shapes = model.parameter_shapes()
    tensors = {}
    for module in family_skipped:
        weight_shape = shapes[f"{module}.convolution.weight"]
        tensors[f"{module}.convolution.weight"] = np.zeros(weight_shape, np.float32)
        for key, value in batch_norm_identity(weight_shape[0], eps).items():
            tensors[f"{module}.normalization.{key}"] = value
    return tensors
