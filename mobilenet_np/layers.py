"""The building blocks of the three networks, as data plus a readable forward (NCHW, PyTorch conventions).

A network (mobilenet_np/networks/) is a list of these layer descriptions, built from its config, plus
one flat dict of weights keyed exactly like the transformers state_dict
(e.g. "mobilenet_v2.layer.3.conv_3x3.convolution.weight"). Each description reads its weights from
that dict by name and can run itself on NCHW arrays (`layer(x, params, record)`): that is the readable
path. The fast engine (mobilenet_np/fast/) and, later, the integer and training paths read the same
descriptions -- their fields, not their code -- so no path can drift from the others.

    ConvLayer          [TF "SAME" pad] -> conv -> [BatchNorm] -> [activation]    (every conv of all three)
    InvertedResidual   [expand 1x1] -> depthwise 3x3 -> [project 1x1] [+ input]   (MobileNetV2 blocks and stem)
    ImagePoolingASPP   DeepLabV3's head up to its classifier (two branches, concat, projection)
    classify           the linear classifier on pooled features
    Graph              what a network computes, unit by unit, as the engines read it
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from . import ops

# record(name, tensor) is called with every intermediate tensor when a caller asks for it (golden
# references, notebooks); `name` is the transformers module path that produced the tensor.
Recorder = Callable[[str, np.ndarray], None]


def no_record(name: str, tensor: np.ndarray) -> None:
    pass


ACTIVATIONS = {"relu": ops.relu, "relu6": ops.relu6}


@dataclasses.dataclass(frozen=True)
class ConvLayer:
    """One transformers `MobileNetV*ConvLayer`: [TF "SAME" pad] -> conv -> [BatchNorm] -> [activation].

    `name` is the state_dict prefix, e.g. "mobilenet_v2.layer.3.conv_3x3"; its weights are
    `{name}.convolution.weight` (C_out, C_in / groups, k, k), optionally `{name}.convolution.bias`,
    and, with BatchNorm, `{name}.normalization.{weight,bias,running_mean,running_var,num_batches_tracked}`.
    """

    name: str
    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int = 1
    dilation: int = 1
    groups: int = 1
    bias: bool = False
    norm_eps: float | None = 1e-3    # None: no BatchNorm
    activation: str | None = "relu6"  # "relu6", "relu" or None (a linear layer)
    tf_padding: bool = True
    # PyTorch momentum of the BatchNorm (train mode: running = (1 - m) * running + m * batch). transformers
    # passes TensorFlow's *decay* here (0.9997 in V1, 0.997 in V2), see mobilenet_np/training/graph.py.
    norm_momentum: float | None = None

    @property
    def kind(self) -> str:
        """'depthwise', 'pointwise' or 'conv': what the layer does, for summaries and the fast path."""
        if self.groups == self.in_channels and self.groups > 1:
            return "depthwise"
        return "pointwise" if self.kernel_size == 1 and self.groups == 1 else "conv"

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        k = self.kernel_size
        shapes = {f"{self.name}.convolution.weight": (self.out_channels, self.in_channels // self.groups, k, k)}
        if self.bias:
            shapes[f"{self.name}.convolution.bias"] = (self.out_channels,)
        if self.norm_eps is not None:
            for p in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"{self.name}.normalization.{p}"] = (self.out_channels,)
            shapes[f"{self.name}.normalization.num_batches_tracked"] = ()
        return shapes

    def padding(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) zero padding for an input of this size."""
        if self.tf_padding:  # TensorFlow "SAME": depends on the input size, extra pixel bottom/right
            top, bottom = ops.tf_same_padding_amounts(height, self.kernel_size, self.stride, self.dilation)
            left, right = ops.tf_same_padding_amounts(width, self.kernel_size, self.stride, self.dilation)
            return top, bottom, left, right
        p = (self.kernel_size - 1) // 2 * self.dilation  # PyTorch-style symmetric padding
        return p, p, p, p

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        top, bottom, left, right = self.padding(height, width)
        return (ops.conv_output_size(height, self.kernel_size, self.stride, top + bottom, self.dilation),
                ops.conv_output_size(width, self.kernel_size, self.stride, left + right, self.dilation))

    def __call__(self, x: np.ndarray, params: dict[str, np.ndarray], record: Recorder = no_record) -> np.ndarray:
        if self.tf_padding:
            x = ops.pad_tf_same(x, self.kernel_size, self.stride, self.dilation)
            padding = 0
        else:
            padding = (self.kernel_size - 1) // 2 * self.dilation
        x = ops.conv2d(x, params[f"{self.name}.convolution.weight"], params.get(f"{self.name}.convolution.bias"),
                       stride=self.stride, padding=padding, dilation=self.dilation, groups=self.groups)
        record(f"{self.name}.convolution", x)                       # (N, C_out, H_out, W_out)
        if self.norm_eps is not None:
            p = f"{self.name}.normalization."
            x = ops.batch_norm(x, params[p + "running_mean"], params[p + "running_var"],
                               params[p + "weight"], params[p + "bias"], self.norm_eps)
            record(f"{self.name}.normalization", x)
        if self.activation is not None:
            x = ACTIVATIONS[self.activation](x)
            record(f"{self.name}.activation", x)
        record(self.name, x)
        return x


def classifier_shapes(num_labels: int, hidden_size: int) -> dict[str, tuple[int, ...]]:
    """The image-classification head's weights; transformers uses nn.Identity (no weights) for 0 labels."""
    if num_labels == 0:
        return {}
    return {"classifier.weight": (num_labels, hidden_size), "classifier.bias": (num_labels,)}


def classify(pooled: np.ndarray, params: dict[str, np.ndarray], num_labels: int, record: Recorder) -> np.ndarray:
    """(N, hidden_size) pooled features -> (N, num_labels) logits. Dropout is the identity at inference."""
    logits = pooled
    if num_labels > 0:
        logits = ops.linear(pooled, params["classifier.weight"], params["classifier.bias"])  # (N, num_labels)
    record("classifier", logits)
    return logits


@dataclasses.dataclass(frozen=True)
class InvertedResidual:
    """`[expand_1x1 ->] conv_3x3 (depthwise) -> reduce_1x1 (linear) [+ input]`, recorded as `name` at the end.

    MobileNetV2's blocks (`layer.i`, with an expand conv) and the depthwise part of its stem
    (`conv_stem`, expand only when config.first_layer_is_expansion is False).
    """

    name: str
    expand_1x1: ConvLayer | None
    conv_3x3: ConvLayer
    reduce_1x1: ConvLayer
    use_residual: bool

    def conv_layers(self) -> list[ConvLayer]:
        return [layer for layer in (self.expand_1x1, self.conv_3x3, self.reduce_1x1) if layer is not None]

    def __call__(self, x, params, record):
        residual = x
        if self.expand_1x1 is not None:
            x = self.expand_1x1(x, params, record)  # (N, t*C, H, W)
        x = self.conv_3x3(x, params, record)        # (N, t*C, H/s, W/s)
        x = self.reduce_1x1(x, params, record)      # (N, C', H/s, W/s)
        if self.use_residual:
            x = residual + x
        record(self.name, x)
        return x


@dataclasses.dataclass(frozen=True)
class ImagePoolingASPP:
    r"""DeepLabV3's head (transformers' `segmentation_head`) up to its classifier:

        features (N, C, h, w) --> global average pool -> conv_pool (1x1) -> broadcast to (h, w) --+
                             \-> conv_aspp (1x1) ------------------------------------------------+-> concat
        -> conv_projection (1x1) (N, 256, h, w)
    """

    name: str
    conv_pool: ConvLayer
    conv_aspp: ConvLayer
    conv_projection: ConvLayer

    def conv_layers(self) -> list[ConvLayer]:
        return [self.conv_pool, self.conv_aspp, self.conv_projection]

    def __call__(self, features, params, record):
        size = features.shape[-2:]
        pooled = ops.global_avg_pool2d(features)                              # (N, C, 1, 1)
        record(f"{self.name}.avg_pool", pooled)
        pooled = self.conv_pool(pooled, params, record)                       # (N, 256, 1, 1)
        pooled = ops.interpolate_bilinear(pooled, size, align_corners=True)   # (N, 256, h, w): a broadcast
        aspp = self.conv_aspp(features, params, record)                       # (N, 256, h, w)
        x = np.concatenate([pooled, aspp], axis=1)                            # (N, 512, h, w)
        return self.conv_projection(x, params, record)                        # (N, 256, h, w)


@dataclasses.dataclass(frozen=True)
class Dropout:
    """transformers' `nn.Dropout(p)` (channels=False) or `nn.Dropout2d(p)` (channels=True: whole channels).

    The identity at inference (the readable path and the fast engine skip it); in train mode the training
    path draws its mask (mobilenet_np/training/graph.py). `p` is the config's `classifier_dropout_prob`,
    which transformers uses as the drop probability although its defaults (0.999 in V1, 0.8 in V2) are
    TensorFlow keep probabilities.
    """

    name: str
    p: float
    channels: bool = False


Unit = ConvLayer | InvertedResidual | ImagePoolingASPP | Dropout


@dataclasses.dataclass(frozen=True)
class Graph:
    """What a network computes, as the engines read it: `units` one after the other (each takes the
    previous one's output), then optionally a global average pool and a linear classifier.

    `hidden_states` are the indices of the units whose outputs are the transformers hidden states.
    A network lists here only what its outputs need: DeepLab's backbone `conv_1x1`, whose output
    transformers computes but never uses, is in its readable forward and in `unused`, not in `units`.
    """

    units: tuple[Unit, ...]
    hidden_states: tuple[int, ...] = ()
    pool: str | None = None            # module path of a global average pool of the last unit's output (N, C)
    classifier: str | None = None      # state_dict prefix of a Linear on the pooled features
    classifier_dropout: Dropout | None = None   # applied to the pooled features before the classifier
    # (i, unit): units transformers also runs on unit i's output, whose own output nothing reads
    # (DeepLab's backbone conv_1x1). Inference skips them; training runs them (their BatchNorm statistics
    # update) and gives them no gradient; the summary shows them apart.
    unused: tuple[tuple[int, Unit], ...] = ()
