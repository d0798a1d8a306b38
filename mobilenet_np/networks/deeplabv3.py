"""DeepLabV3 with a MobileNet V2 backbone (Chen et al. 2017, https://arxiv.org/abs/1706.05587).

transformers' `MobileNetV2ForSemanticSegmentation`. The backbone runs with output_stride 8 or 16:
its last strides become dilations (atrous convolution), so the feature map stays large while each
depthwise filter still sees as far as before. The head (transformers calls it `MobileNetV2DeepLabV3Plus`,
but it is the DeepLabV3 head with ASPP reduced to two branches, as in the MobileNetV2 paper):

    features (N, 320a, h, w) --> global average pool -> 1x1 conv "conv_pool" -> upsample to (h, w) --+
                            \\-> 1x1 conv "conv_aspp" ----------------------------------------------+-> concat (N, 512, h, w)
    -> 1x1 conv "conv_projection" (N, 256, h, w) -> 1x1 conv "classifier" with bias (N, num_labels, h, w)

The head's BatchNorms use eps 1e-5 (the backbone's use config.layer_norm_eps, 1e-3), and its
activations are ReLU, not ReLU6. The logits stay at the feature map's resolution (h = ceil(H / stride));
`post_process_semantic_segmentation` upsamples them to the image.
"""

from __future__ import annotations

from typing import Iterator

from ..errors import ConfigError
from ..layers import ConvLayer, Dropout, Graph, ImagePoolingASPP
from ..training import losses
from ..outputs import SemanticSegmenterOutput
from .base import PreTrainedModel
from .mobilenet_v2 import BATCH_NORM_MOMENTUM, MobileNetV2Config, MobileNetV2Model, scaled_channels

HEAD_CHANNELS = 256
HEAD_NORM_EPS = 1e-5


class MobileNetV2ForSemanticSegmentation(PreTrainedModel):
    """DeepLabV3 on MobileNet V2 (Pascal VOC: 21 classes, output stride 8 or 16)."""

    config_class = MobileNetV2Config
    base_model_prefix = "mobilenet_v2"

    def _build(self) -> None:
        c = self.config
        self.mobilenet_v2 = MobileNetV2Model(c, seed=None, add_pooling_layer=False, params=self.params,
                                             prefix="mobilenet_v2.")
        features = scaled_channels(c, 320)
        head = dict(norm_eps=HEAD_NORM_EPS, activation="relu", tf_padding=c.tf_padding,
                    norm_momentum=BATCH_NORM_MOMENTUM)
        self.segmentation_head = ImagePoolingASPP(
            "segmentation_head",
            conv_pool=ConvLayer("segmentation_head.conv_pool", features, HEAD_CHANNELS, 1, **head),
            conv_aspp=ConvLayer("segmentation_head.conv_aspp", features, HEAD_CHANNELS, 1, **head),
            conv_projection=ConvLayer("segmentation_head.conv_projection", 2 * HEAD_CHANNELS, HEAD_CHANNELS, 1,
                                      **head))
        # (transformers: nn.Dropout2d(config.classifier_dropout_prob) between projection and classifier)
        self.dropout = Dropout("segmentation_head.dropout", c.classifier_dropout_prob, channels=True)
        self.classifier = ConvLayer("segmentation_head.classifier", HEAD_CHANNELS, c.num_labels, 1, bias=True,
                                    norm_eps=None, activation=None, tf_padding=c.tf_padding)

    def conv_layers(self) -> Iterator[ConvLayer]:
        yield from self.mobilenet_v2.conv_layers()
        yield from self.segmentation_head.conv_layers()
        yield self.classifier

    def forward(self, pixel_values, output_hidden_states, record):
        # transformers runs the whole backbone, conv_1x1 included, although the head reads the last
        # block's output (hidden_states[-1]) and nothing uses conv_1x1's.
        outputs = self.mobilenet_v2.forward(pixel_values, True, record)
        features = outputs.hidden_states[-1]                                  # (N, 320a, h, w)
        x = self.segmentation_head(features, self.params, record)             # (N, 256, h, w)
        logits = self.classifier(x, self.params, record)                      # (N, num_labels, h, w)
        record("segmentation_head", logits)
        return SemanticSegmenterOutput(logits=logits,
                                       hidden_states=outputs.hidden_states if output_hidden_states else None)

    def graph(self) -> Graph:
        backbone = self.mobilenet_v2.backbone_graph(conv_1x1=False)
        return Graph(units=(*backbone.units, self.segmentation_head, self.dropout, self.classifier),
                     hidden_states=backbone.hidden_states,
                     unused=((len(backbone.units) - 1, self.mobilenet_v2.conv_1x1),))

    def check_labels(self, labels) -> None:
        if self.config.num_labels == 1:                      # (transformers checks before the forward pass)
            raise ConfigError("The number of labels should be greater than one: config field 'num_labels' is 1")

    def loss_from(self, outputs, labels):
        """Logits upsampled (bilinear, align_corners=False) to the labels' size, cross-entropy over the pixels
        whose label is not config.semantic_loss_ignore_index (all ignored: NaN, as PyTorch)."""
        return losses.segmentation_loss(outputs.logits, labels, self.config.semantic_loss_ignore_index)

    def outputs_from(self, result, output_hidden_states):
        return SemanticSegmenterOutput(logits=result["last"],
                                       hidden_states=result["hidden_states"] if output_hidden_states else None)
