"""MobileNet V1 (Howard et al. 2017, https://arxiv.org/abs/1704.04861), as transformers builds it.

The network is a 3x3 stem convolution followed by 13 depthwise separable convolutions: a 3x3
depthwise convolution (one filter per channel) then a 1x1 pointwise convolution (mixes channels).
Every convolution is followed by BatchNorm and ReLU6. Global average pooling and a linear classifier
finish it. transformers numbers the 26 depthwise/pointwise layers `layer.0` .. `layer.25`, and each of
them is one hidden state.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator


from ..configuration_utils import PretrainedConfig
from ..layers import ConvLayer, Graph
from ..outputs import BaseModelOutputWithPoolingAndNoAttention
from .base import BackboneModel, ImageClassificationModel


@dataclasses.dataclass
class MobileNetV1Config(PretrainedConfig):
    """The fields and defaults of `transformers.MobileNetV1Config` (google/mobilenet_v1_1.0_224)."""

    model_type = "mobilenet_v1"

    num_channels: int = 3
    image_size: int | list[int] = 224
    depth_multiplier: float = 1.0          # the width multiplier "alpha": scales every layer's channels
    min_depth: int = 8                     # no layer gets fewer channels than this
    hidden_act: str = "relu6"
    tf_padding: bool = True                # TensorFlow "SAME" padding (what the released weights used)
    classifier_dropout_prob: float = 0.999  # training only; inference ignores it
    initializer_range: float = 0.02
    layer_norm_eps: float = 0.001          # BatchNorm epsilon
    num_labels: int | None = None
    id2label: dict | None = None
    label2id: dict | None = None
    problem_type: str | None = None          # set by the first loss computed with labels (see training/losses.py)

    def __post_init__(self):
        self._validate_common()
        self._init_labels()


# The architecture (Table 1 of the paper, TF-slim's MOBILENETV1_CONV_DEFS):
# (kind, stride, output channels at depth_multiplier 1.0).
CONV_DEFS = [
    ("conv", 2, 32),
    ("separable", 1, 64),
    ("separable", 2, 128),
    ("separable", 1, 128),
    ("separable", 2, 256),
    ("separable", 1, 256),
    ("separable", 2, 512),
    ("separable", 1, 512),
    ("separable", 1, 512),
    ("separable", 1, 512),
    ("separable", 1, 512),
    ("separable", 1, 512),
    ("separable", 2, 1024),
    ("separable", 1, 1024),
]


# transformers' nn.BatchNorm2d(momentum=0.9997): TF-slim's batch_norm_decay, passed as PyTorch's momentum.
BATCH_NORM_MOMENTUM = 0.9997


def scaled_channels(config: MobileNetV1Config, channels: int) -> int:
    """Channels of a layer at this width: int(channels * alpha), at least min_depth (transformers' rule)."""
    return max(int(channels * config.depth_multiplier), config.min_depth)


class MobileNetV1Model(BackboneModel):
    """The MobileNet V1 backbone: stem + 13 separable blocks (+ global average pooling)."""

    config_class = MobileNetV1Config
    base_model_prefix = "mobilenet_v1"

    def _build(self) -> None:
        c, p = self.config, self.prefix
        conv = dict(norm_eps=c.layer_norm_eps, activation=c.hidden_act, tf_padding=c.tf_padding,
                    norm_momentum=BATCH_NORM_MOMENTUM)
        _, stride, channels = CONV_DEFS[0]
        out_channels = scaled_channels(c, channels)
        self.conv_stem = ConvLayer(f"{p}conv_stem", c.num_channels, out_channels, 3, stride, **conv)
        self.layer: list[ConvLayer] = []
        for _, stride, channels in CONV_DEFS[1:]:
            in_channels, out_channels = out_channels, scaled_channels(c, channels)
            i = len(self.layer)
            self.layer.append(ConvLayer(f"{p}layer.{i}", in_channels, in_channels, 3, stride,
                                        groups=in_channels, **conv))          # depthwise 3x3
            self.layer.append(ConvLayer(f"{p}layer.{i + 1}", in_channels, out_channels, 1, **conv))  # pointwise 1x1
        self.hidden_size = out_channels

    def conv_layers(self) -> Iterator[ConvLayer]:
        yield self.conv_stem
        yield from self.layer

    def forward(self, pixel_values, output_hidden_states, record):
        x = self.conv_stem(pixel_values, self.params, record)  # (N, 32a, H/2, W/2)
        hidden_states = []
        for layer in self.layer:                               # 26 layers, down to (N, 1024a, H/32, W/32)
            x = layer(x, self.params, record)
            hidden_states.append(x)
        pooled = self.pool(x, record) if self.add_pooling_layer else None   # (N, 1024a)
        return BaseModelOutputWithPoolingAndNoAttention(
            last_hidden_state=x, pooler_output=pooled,
            hidden_states=tuple(hidden_states) if output_hidden_states else None)

    def backbone_graph(self) -> Graph:
        # the stem, then the 26 layers, each one a hidden state
        return Graph(units=(self.conv_stem, *self.layer), hidden_states=tuple(range(1, len(self.layer) + 1)))


class MobileNetV1ForImageClassification(ImageClassificationModel):
    """MobileNet V1 with its linear classifier on the pooled features (ImageNet: 1001 classes)."""

    config_class = MobileNetV1Config
    base_model_prefix = "mobilenet_v1"
    backbone_class = MobileNetV1Model
