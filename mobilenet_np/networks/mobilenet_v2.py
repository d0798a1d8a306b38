"""MobileNet V2 (Sandler et al. 2018, https://arxiv.org/abs/1801.04381), as transformers builds it.

The building block is the inverted residual with a linear bottleneck:
    1x1 "expand" conv (C -> t*C, ReLU6) -> 3x3 depthwise conv (ReLU6) -> 1x1 "reduce" conv (t*C -> C', no activation)
plus a skip connection when the block keeps both its resolution and its channel count. The blocks
are thin at their ends and wide in the middle (the opposite of ResNet's bottlenecks), and the
projection back to the thin representation is linear, because ReLU would destroy information in a
low-dimensional space.

transformers calls the first block `conv_stem` (it has no expand conv, since the stem's 3x3
convolution already produces the 32 channels), numbers the other 16 blocks `layer.0` .. `layer.15`
(their outputs are the 16 hidden states), and ends with a 1x1 conv to 1280 channels (`conv_1x1`).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator


from ..configuration_utils import PretrainedConfig, _check, _check_int, _is_number
from ..layers import ConvLayer, Graph, InvertedResidual
from ..outputs import BaseModelOutputWithPoolingAndNoAttention
from .base import BackboneModel, ImageClassificationModel


@dataclasses.dataclass
class MobileNetV2Config(PretrainedConfig):
    """The fields and defaults of `transformers.MobileNetV2Config` (google/mobilenet_v2_1.0_224)."""

    model_type = "mobilenet_v2"

    num_channels: int = 3
    image_size: int | list[int] = 224
    depth_multiplier: float = 1.0            # the width multiplier: scales every layer's channels
    depth_divisible_by: int = 8              # channel counts are rounded to a multiple of this
    min_depth: int = 8
    expand_ratio: float = 6.0                # t: expanded channels = t * input channels
    output_stride: int = 32                  # input size / feature map size; 8 or 16 use dilated convs (DeepLab)
    first_layer_is_expansion: bool = True    # False: the stem gets its own 1x1 expand conv
    finegrained_output: bool = True          # keep 1280 output channels when depth_multiplier < 1
    hidden_act: str = "relu6"
    tf_padding: bool = True
    classifier_dropout_prob: float = 0.8
    initializer_range: float = 0.02
    layer_norm_eps: float = 0.001            # BatchNorm epsilon of the backbone (the DeepLab head uses 1e-5)
    semantic_loss_ignore_index: int = 255
    num_labels: int | None = None
    id2label: dict | None = None
    label2id: dict | None = None
    problem_type: str | None = None          # set by the first loss computed with labels (see training/losses.py)

    def __post_init__(self):
        self._validate_common()
        _check_int(self.depth_divisible_by, "depth_divisible_by", minimum=1)
        _check(_is_number(self.expand_ratio) and self.expand_ratio > 0, "expand_ratio", "a number > 0", self.expand_ratio)
        _check(self.output_stride in OUTPUT_STRIDES and not isinstance(self.output_stride, bool), "output_stride",
               f"one of {OUTPUT_STRIDES} (the strides the network passes through)", self.output_stride)
        _check(isinstance(self.first_layer_is_expansion, bool), "first_layer_is_expansion", "true or false",
               self.first_layer_is_expansion)
        _check(isinstance(self.finegrained_output, bool), "finegrained_output", "true or false", self.finegrained_output)
        _check(isinstance(self.semantic_loss_ignore_index, int), "semantic_loss_ignore_index", "an int",
               self.semantic_loss_ignore_index)
        self._init_labels()


OUTPUT_STRIDES = (2, 4, 8, 16, 32)

# The architecture after the stem (Table 2 of the paper): each row is a stage of n blocks with c output
# channels (at depth_multiplier 1.0), whose first block has stride s. Every block expands by
# config.expand_ratio (t = 6 in the paper).
#   (c, n, s)
BLOCK_STAGES = [
    (24, 2, 2),
    (32, 3, 2),
    (64, 4, 2),
    (96, 3, 1),
    (160, 3, 2),
    (320, 1, 1),
]
STEM_CHANNELS, STEM_OUTPUT_CHANNELS, LAST_CHANNELS = 32, 16, 1280
# transformers' nn.BatchNorm2d(momentum=0.997) (backbone and DeepLab head): TF's bn_decay, passed as
# PyTorch's momentum.
BATCH_NORM_MOMENTUM = 0.997


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to the nearest multiple of `divisor`, but never down by more than 10%."""
    if min_value is None:
        min_value = divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return int(new_value)


def scaled_channels(config: MobileNetV2Config, channels: int) -> int:
    """Channels of a layer at this width (transformers' `apply_depth_multiplier`)."""
    return make_divisible(int(round(channels * config.depth_multiplier)), config.depth_divisible_by, config.min_depth)


def _conv(config, name, in_channels, out_channels, kernel_size, stride=1, dilation=1, depthwise=False,
          activation=True) -> ConvLayer:
    return ConvLayer(name, in_channels, out_channels, kernel_size, stride, dilation,
                     groups=in_channels if depthwise else 1, norm_eps=config.layer_norm_eps,
                     activation=config.hidden_act if activation else None, tf_padding=config.tf_padding,
                     norm_momentum=BATCH_NORM_MOMENTUM)


class MobileNetV2Model(BackboneModel):
    """The MobileNet V2 backbone: stem, 16 inverted residual blocks, 1x1 conv (+ global average pooling)."""

    config_class = MobileNetV2Config
    base_model_prefix = "mobilenet_v2"

    def _build(self) -> None:
        c, p = self.config, self.prefix
        stem_channels = scaled_channels(c, STEM_CHANNELS)
        channels = scaled_channels(c, STEM_OUTPUT_CHANNELS)
        # The stem (transformers' `conv_stem`): a 3x3 conv with stride 2, then a block without residual:
        # [1x1 expand], 3x3 depthwise, linear 1x1 projection.
        self.first_conv = _conv(c, f"{p}conv_stem.first_conv", c.num_channels, stem_channels, 3, stride=2)
        self.conv_stem = InvertedResidual(
            f"{p}conv_stem",
            expand_1x1=None if c.first_layer_is_expansion else
            _conv(c, f"{p}conv_stem.expand_1x1", stem_channels, stem_channels, 1),
            conv_3x3=_conv(c, f"{p}conv_stem.conv_3x3", stem_channels, stem_channels, 3, depthwise=True),
            reduce_1x1=_conv(c, f"{p}conv_stem.reduce_1x1", stem_channels, channels, 1, activation=False),
            use_residual=False)

        # The blocks. Once the feature map is output_stride times smaller than the input, further
        # strides become dilations instead (atrous convolution), starting with the next block.
        self.layer: list[InvertedResidual] = []
        current_stride, dilation = 2, 1
        for stage_channels, repeats, first_stride in BLOCK_STAGES:
            for r in range(repeats):
                stride = first_stride if r == 0 else 1
                if current_stride == c.output_stride:
                    block_dilation = dilation
                    dilation *= stride  # the larger dilation starts with the next block
                    stride = 1
                else:
                    block_dilation = 1
                    current_stride *= stride
                in_channels, channels = channels, scaled_channels(c, stage_channels)
                expanded = make_divisible(int(round(in_channels * c.expand_ratio)), c.depth_divisible_by, c.min_depth)
                name = f"{p}layer.{len(self.layer)}"
                self.layer.append(InvertedResidual(
                    name,
                    expand_1x1=_conv(c, f"{name}.expand_1x1", in_channels, expanded, 1),
                    conv_3x3=_conv(c, f"{name}.conv_3x3", expanded, expanded, 3, stride, block_dilation, depthwise=True),
                    reduce_1x1=_conv(c, f"{name}.reduce_1x1", expanded, channels, 1, activation=False),
                    use_residual=stride == 1 and in_channels == channels))

        last_channels = LAST_CHANNELS if c.finegrained_output and c.depth_multiplier < 1.0 \
            else scaled_channels(c, LAST_CHANNELS)
        self.conv_1x1 = _conv(c, f"{p}conv_1x1", channels, last_channels, 1)
        self.hidden_size = last_channels

    def conv_layers(self) -> Iterator[ConvLayer]:
        yield self.first_conv
        for block in (self.conv_stem, *self.layer):
            yield from block.conv_layers()
        yield self.conv_1x1

    def forward(self, pixel_values, output_hidden_states, record):
        x = self.first_conv(pixel_values, self.params, record)      # (N, 32a, H/2, W/2)
        x = self.conv_stem(x, self.params, record)                  # (N, 16a, H/2, W/2)
        hidden_states = []
        for block in self.layer:                                    # 16 blocks, down to (N, 320a, H/32, W/32)
            x = block(x, self.params, record)
            hidden_states.append(x)
        last_hidden_state = self.conv_1x1(x, self.params, record)  # (N, 1280, H/32, W/32)
        pooled = self.pool(last_hidden_state, record) if self.add_pooling_layer else None   # (N, 1280)
        return BaseModelOutputWithPoolingAndNoAttention(
            last_hidden_state=last_hidden_state, pooler_output=pooled,
            hidden_states=tuple(hidden_states) if output_hidden_states else None)

    def backbone_graph(self, conv_1x1: bool = True) -> Graph:
        # first conv, stem block, the 16 blocks (each a hidden state), conv_1x1 (DeepLab leaves it out)
        units = (self.first_conv, self.conv_stem, *self.layer) + ((self.conv_1x1,) if conv_1x1 else ())
        return Graph(units=units, hidden_states=tuple(range(2, 2 + len(self.layer))))


class MobileNetV2ForImageClassification(ImageClassificationModel):
    """MobileNet V2 with its linear classifier on the pooled features (ImageNet: 1001 classes)."""

    config_class = MobileNetV2Config
    base_model_prefix = "mobilenet_v2"
    backbone_class = MobileNetV2Model
