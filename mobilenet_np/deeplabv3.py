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

import numpy as np

from . import ops
from .mobilenet_v2 import MobileNetV2Config, MobileNetV2Model, scaled_channels
from .modeling_utils import ConvLayer, PreTrainedModel, SemanticSegmenterOutput, no_record

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
        head = dict(norm_eps=HEAD_NORM_EPS, activation="relu", tf_padding=c.tf_padding)
        self.conv_pool = ConvLayer("segmentation_head.conv_pool", features, HEAD_CHANNELS, 1, **head)
        self.conv_aspp = ConvLayer("segmentation_head.conv_aspp", features, HEAD_CHANNELS, 1, **head)
        self.conv_projection = ConvLayer("segmentation_head.conv_projection", 2 * HEAD_CHANNELS, HEAD_CHANNELS, 1, **head)
        self.classifier = ConvLayer("segmentation_head.classifier", HEAD_CHANNELS, c.num_labels, 1, bias=True,
                                    norm_eps=None, activation=None, tf_padding=c.tf_padding)

    def conv_layers(self) -> Iterator[ConvLayer]:
        yield from self.mobilenet_v2.conv_layers()
        yield from (self.conv_pool, self.conv_aspp, self.conv_projection, self.classifier)

    def forward(self, pixel_values, output_hidden_states, record):
        # transformers also runs the backbone's conv_1x1, whose output nothing uses. We run it only
        # when someone records the intermediate tensors, so that golden files list the same tensors.
        outputs = self.mobilenet_v2.forward(pixel_values, True, record,
                                            compute_conv_1x1=record is not no_record)
        features = outputs.hidden_states[-1]                                  # (N, 320a, h, w)
        size = features.shape[-2:]

        pooled = ops.global_avg_pool2d(features)                              # (N, 320a, 1, 1)
        record("segmentation_head.avg_pool", pooled)
        pooled = self.conv_pool(pooled, self.params, record)                  # (N, 256, 1, 1)
        pooled = ops.interpolate_bilinear(pooled, size, align_corners=True)   # (N, 256, h, w): a broadcast
        aspp = self.conv_aspp(features, self.params, record)                  # (N, 256, h, w)
        x = np.concatenate([pooled, aspp], axis=1)                            # (N, 512, h, w)
        x = self.conv_projection(x, self.params, record)                      # (N, 256, h, w)
        logits = self.classifier(x, self.params, record)                      # (N, num_labels, h, w)
        record("segmentation_head", logits)
        return SemanticSegmenterOutput(logits=logits,
                                       hidden_states=outputs.hidden_states if output_hidden_states else None)
