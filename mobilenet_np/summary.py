"""What a network costs: per-layer output shapes, parameters and multiply-accumulates (MACs).

The table is built from the networks' own layer descriptions (the `ConvLayer`s and the head
structure of each model), never from a separate copy of the architecture, so it cannot drift
from the code that computes. The counting convention (docs/costs.md explains it and shows that
it reproduces the published MobileNet V1 and V2 figures):

    convolution   MACs = H_out * W_out * C_out * (C_in / groups) * k * k   (zero padding included)
    linear        MACs = in_features * out_features
    BatchNorm, activations, biases, residual adds, pooling, upsampling, concatenation: 0 MACs
    (they are additions, comparisons or per-channel scalings; BatchNorm folds into the conv)
    params        every learned tensor: conv/linear weights and biases, BatchNorm weight and bias.
                  BatchNorm running statistics are buffers, not parameters.

    summary = summarize(model)                    # at config.image_size
    summary = summarize(model, image_size=160)    # or (height, width)
    print(summary.format_table())
    summary.total_macs, summary.total_params, summary.to_dict()
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from .configuration_utils import image_size_pair
from .errors import ConfigError
from .layers import ConvLayer, Dropout, ImagePoolingASPP, InvertedResidual
from .tables import format_table

SUMMARY_FORMAT = "mobilenet-np-summary"
SUMMARY_FORMAT_VERSION = 1

# BatchNorm tensors that are running statistics (buffers), not learned parameters.
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


@dataclasses.dataclass(frozen=True)
class LayerCost:
    """One row of the table: a layer, what it produces and what it costs (for one image).

    `output_shape` is (C, H, W) for feature maps and (num_labels,) for logits: the batch dimension
    is left out. `params` counts every learned tensor of the layer, `batchnorm_params` the part of
    it that is BatchNorm weight and bias. `used` is False for a layer whose output nothing reads
    (the backbone's conv_1x1 under the DeepLab head): it is listed, but its MACs are not in the total.
    """

    name: str                        # state_dict prefix (or transformers module path) of the layer
    op: str                          # conv, depthwise, pointwise, linear, global_avg_pool, upsample_bilinear, concat
    output_shape: tuple[int, ...]
    params: int
    macs: int
    batchnorm_params: int = 0
    kernel_size: int | None = None
    stride: int | None = None
    dilation: int | None = None
    groups: int | None = None
    used: bool = True

    def describe_op(self) -> str:
        """The op for people: 'depthwise 3x3 s2', 'pointwise 1x1', 'conv 3x3 s2 d2', 'linear'."""
        if self.kernel_size is None:
            return self.op
        text = f"{self.op} {self.kernel_size}x{self.kernel_size}"
        if self.stride != 1:
            text += f" s{self.stride}"
        if self.dilation != 1:
            text += f" d{self.dilation}"
        return text

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["output_shape"] = list(self.output_shape)
        return d


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    """The per-layer costs of one network at one input size, with totals."""

    architecture: str
    input_shape: tuple[int, int, int]          # (C, H, W)
    layers: tuple[LayerCost, ...]
    config: dict[str, Any]

    @property
    def total_macs(self) -> int:
        """Multiply-accumulates to compute the model's output for one image."""
        return sum(layer.macs for layer in self.layers if layer.used)

    @property
    def total_params(self) -> int:
        """Every learned parameter (= model.num_parameters())."""
        return sum(layer.params for layer in self.layers)

    @property
    def total_batchnorm_params(self) -> int:
        return sum(layer.batchnorm_params for layer in self.layers)

    @property
    def params_without_batchnorm(self) -> int:
        """Conv and linear weights and biases only: the convention of the published MobileNet tables."""
        return self.total_params - self.total_batchnorm_params

    def to_dict(self) -> dict[str, Any]:
        """The JSON document `mobilenet-np summary --json` prints (schema in docs/costs.md)."""
        return {
            "format": SUMMARY_FORMAT,
            "format_version": SUMMARY_FORMAT_VERSION,
            "architecture": self.architecture,
            "input_shape": list(self.input_shape),
            "config": self.config,
            "layers": [layer.to_dict() for layer in self.layers],
            "totals": {
                "macs": self.total_macs,
                "params": self.total_params,
                "batchnorm_params": self.total_batchnorm_params,
                "params_without_batchnorm": self.params_without_batchnorm,
            },
        }

    def totals_line(self) -> str:
        """e.g. '300.8 M MACs, 3.54 M params'."""
        return f"{self.total_macs / 1e6:.1f} M MACs, {self.total_params / 1e6:.2f} M params"

    def format_table(self) -> str:
        """An aligned text table: one row per layer, then the totals."""
        rows = [(layer.name + ("" if layer.used else " *"), layer.describe_op(),
                 "x".join(str(n) for n in layer.output_shape), f"{layer.params:,}", f"{layer.macs:,}")
                for layer in self.layers]
        total = ("total", "", "", f"{self.total_params:,}", f"{self.total_macs:,}")
        lines = format_table(("layer", "op", "output", "params", "MACs"), rows + [total], align="lllrr").split("\n")
        lines.insert(-1, lines[1])  # the header's rule again, above the totals
        c, h, w = self.input_shape
        out = [f"{self.architecture}, input {c}x{h}x{w}", "", *lines, ""]
        if not all(layer.used for layer in self.layers):
            out.append("* output unused by the head (transformers computes it anyway); not in the MAC total")
        out.append(f"{self.totals_line()} ({self.params_without_batchnorm / 1e6:.2f} M without BatchNorm "
                   f"weight and bias, the convention of the published MobileNet tables)")
        return "\n".join(out)


# --------------------------------------------------------------------------------------------------
# rows
# --------------------------------------------------------------------------------------------------

def conv_cost(layer: ConvLayer, height: int, width: int) -> LayerCost:
    """The cost of a ConvLayer applied to a (C_in, height, width) input."""
    out_h, out_w = layer.output_size(height, width)
    k = layer.kernel_size
    macs = out_h * out_w * layer.out_channels * (layer.in_channels // layer.groups) * k * k
    params = batchnorm = 0
    for key, shape in layer.parameter_shapes().items():
        if key.endswith(_BUFFER_SUFFIXES):
            continue
        size = math.prod(shape)
        params += size
        if ".normalization." in key:
            batchnorm += size
    return LayerCost(layer.name, layer.kind, (layer.out_channels, out_h, out_w), params, macs, batchnorm,
                     kernel_size=k, stride=layer.stride, dilation=layer.dilation, groups=layer.groups)


def _conv_chain(layers, channels_hw: tuple[int, int, int]) -> tuple[list[LayerCost], tuple[int, int, int]]:
    """Rows of ConvLayers applied one after the other; returns them and the final (C, H, W)."""
    rows = []
    for layer in layers:
        row = conv_cost(layer, *channels_hw[1:])
        rows.append(row)
        channels_hw = row.output_shape
    return rows, channels_hw


def _pool_row(name: str, shape: tuple[int, int, int]) -> LayerCost:
    return LayerCost(name, "global_avg_pool", (shape[0], 1, 1), params=0, macs=0)


def _classifier_row(model) -> LayerCost:
    """The linear classifier on the pooled features: weight (K, C) and bias (K,), one MAC per weight."""
    shapes = model.parameter_shapes()
    num_labels, in_features = shapes["classifier.weight"]
    return LayerCost("classifier", "linear", (num_labels,), params=math.prod(shapes["classifier.weight"]) +
                     math.prod(shapes["classifier.bias"]), macs=num_labels * in_features)


def _unit_rows(unit, shape: tuple[int, int, int]) -> tuple[list[LayerCost], tuple[int, int, int]]:
    """Rows of one unit of a network's Graph applied to a (C, H, W) input; returns them and its output shape."""
    if isinstance(unit, Dropout):
        return [], shape                                   # the identity at inference: no cost
    if isinstance(unit, ImagePoolingASPP):
        _, h, w = shape
        rows = [_pool_row(f"{unit.name}.avg_pool", shape), conv_cost(unit.conv_pool, 1, 1),
                # From 1x1, bilinear upsampling with align_corners is a broadcast: no multiplies.
                LayerCost(f"{unit.name}.upsample", "upsample_bilinear", (unit.conv_pool.out_channels, h, w), 0, 0),
                conv_cost(unit.conv_aspp, h, w)]
        concat_channels = unit.conv_pool.out_channels + unit.conv_aspp.out_channels
        rows.append(LayerCost(f"{unit.name}.concat", "concat", (concat_channels, h, w), 0, 0))
        projection, shape = _conv_chain([unit.conv_projection], (concat_channels, h, w))
        return rows + projection, shape
    return _conv_chain(unit.conv_layers() if isinstance(unit, InvertedResidual) else [unit], shape)


def summarize(model, image_size: int | tuple[int, int] | list[int] | None = None) -> ModelSummary:
    """The per-layer cost table of `model` for one (num_channels, H, W) image.

    `image_size` is an int, a (height, width) pair, or None for `model.config.image_size`.
    Works on any of the five architectures, with or without weights: the rows follow the network's
    Graph (mobilenet_np/layers.py), the same description the fast engine runs.
    """
    config = model.config
    height, width = _image_size(config.image_size if image_size is None else image_size)
    input_shape = (config.num_channels, height, width)
    graph = model.graph()
    rows, shape = [], input_shape
    for i, unit in enumerate(graph.units):
        unit_rows, output_shape = _unit_rows(unit, shape)
        rows += unit_rows
        for reads, unused in graph.unused:     # e.g. DeepLab's conv_1x1: transformers computes it anyway
            if reads == i:
                rows += [dataclasses.replace(row, used=False) for row in _unit_rows(unused, output_shape)[0]]
        shape = output_shape
    if graph.pool is not None:
        rows.append(_pool_row(graph.pool, shape))
    if graph.classifier is not None:  # no labels: transformers uses nn.Identity, the logits are the pooled features
        rows.append(_classifier_row(model))
    config_dict = {k: v for k, v in config.to_dict().items() if k not in ("id2label", "label2id")}
    return ModelSummary(type(model).__name__, input_shape, tuple(rows), config_dict)


def _image_size(image_size) -> tuple[int, int]:
    """(height, width) from an int or a pair, or a ConfigError."""
    sizes = [image_size] if isinstance(image_size, int) else image_size
    if (not isinstance(sizes, (list, tuple)) or len(sizes) not in (1, 2)
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sizes)):
        raise ConfigError(f"image_size must be a positive int or a (height, width) pair, got {image_size!r}")
    return image_size_pair(list(sizes))
