"""Recognising a TFLite MobileNet V1 / V2 / DeepLabV3 graph and mapping it onto transformers' modules.

What the converters write, and how it maps onto transformers:

* TF1 / slim graphs (the published `*_quant.tflite`, DeepLab): SAME convs with BatchNorm folded in,
  AVERAGE_POOL_2D as the global pool, the classifier a 1x1 CONV_2D with bias, RESHAPE, SOFTMAX;
  DeepLab's head RESIZE_BILINEAR / CONCATENATION / ARG_MAX.
* TF2 / Keras graphs: QUANTIZE ops at the ends when the I/O type differs from the int8 inside; Keras'
  ZeroPadding2D as a PAD op before a VALID conv (the converter folds it into SAME when the two agree);
  MEAN over H, W as the global pool; the classifier a FULLY_CONNECTED (V2) or a 1x1 CONV_2D (V1, whose
  (N, 1, 1, classes) output is reshaped through SHAPE / STRIDED_SLICE / PACK / RESHAPE); 1000 classes.

Every CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED is one `Conv`, in execution order; the classification
graphs' last one is the classifier. `mapped_layers` pairs them with the network's ConvLayers (the
classifier pairs with None: it is transformers' Linear), and `check_structure` proves the pairing:
stride, dilation, groups, activation, padding and the wiring (residual ADDs, the DeepLab head).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mobilenet_np.errors import ConversionError
from mobilenet_np.networks.deeplabv3 import MobileNetV2ForSemanticSegmentation
from mobilenet_np.networks.mobilenet_v1 import MobileNetV1ForImageClassification
from mobilenet_np.networks.mobilenet_v2 import MobileNetV2ForImageClassification

from ..importing import depth_multiplier_candidates, fit_config
from .graph import CONV_OPS, KNOWN_OPS, Graph, Op

ACTIVATION_NAMES = {0: None, 1: "relu", 3: "relu6"}  # tflite.ActivationFunctionType NONE, RELU, RELU6
SAME, VALID = 0, 1                                    # tflite.Padding
WEIGHT_OPS = CONV_OPS + ("FULLY_CONNECTED",)
POOL_OPS = ("AVERAGE_POOL_2D", "MEAN")


# --------------------------------------------------------------------------------------------------
# convolutions in PyTorch layout
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Conv:
    """One CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED with its real weights in PyTorch layout (float32)."""

    op: Op
    weight: np.ndarray        # (C_out, C_in / groups, kH, kW); FULLY_CONNECTED (C_out, C_in, 1, 1)
    bias: np.ndarray | None   # (C_out,)
    activation: str | None    # "relu6", "relu" or None, as the graph computes it

    @property
    def input(self) -> int:
        return self.op.inputs[0]

    @property
    def output(self) -> int:
        return self.op.outputs[0]


def to_pytorch_layout(kind: str, weight: np.ndarray) -> np.ndarray:
    """TFLite weight layout -> PyTorch's: CONV_2D OHWI -> OIHW; DEPTHWISE 1HWC -> (C, 1, kH, kW);
    FULLY_CONNECTED (out, in) -> (out, in, 1, 1). Works on codes and on real values alike."""
    if kind == "CONV_2D":
        return np.ascontiguousarray(weight.transpose(0, 3, 1, 2))
    if kind == "DEPTHWISE_CONV_2D":
        return np.ascontiguousarray(weight[0].transpose(2, 0, 1)[:, None])
    return np.ascontiguousarray(weight[:, :, None, None])


# TFLite's quantized_dimension of each op's weights -> the axis in PyTorch layout (output channels: 0)
WEIGHT_AXES = {"CONV_2D": {0: 0}, "DEPTHWISE_CONV_2D": {3: 0}, "FULLY_CONNECTED": {0: 0}}


def conv_from_op(graph: Graph, op: Op) -> Conv:
    weight = to_pytorch_layout(op.kind, graph.constant(op.inputs[1], op))
    bias = graph.constant(op.inputs[2], op) if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
    return Conv(op, weight, bias, _activation(graph, op))


def _activation(graph: Graph, op: Op) -> str | None:
    """The activation a conv computes: the fused one, or ReLU6 when a quantized output can only hold [0, 6].

    (Converters may drop a RELU6 whose output quantization already clamps to [0, 6]. Any other range
    is taken as no activation: a linear layer's range may well start at 0.)
    """
    fused = op.options.get("activation", 0)
    if fused not in ACTIVATION_NAMES:
        raise ConversionError(f"{graph.path}: op {op.index} ({op.kind}) has fused activation {fused}; "
                              "MobileNet uses ReLU6 / ReLU")
    if fused != 0:
        return ACTIVATION_NAMES[fused]
    real_range = graph.tensors[op.outputs[0]].real_range()
    if real_range is not None:
        step = float(graph.tensors[op.outputs[0]].scale[0])
        if real_range[0] == 0 and abs(real_range[1] - 6) <= step:
            return "relu6"
    return None


def pad_op(graph: Graph, op: Op) -> Op | None:
    """The PAD op whose output `op` reads directly, if any (Keras' ZeroPadding2D before a VALID conv)."""
    producer = graph.producer(op.inputs[0])
    return producer if producer is not None and producer.kind == "PAD" else None


def explicit_padding(graph: Graph, op: Op) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) of the PAD before `op`, or None. Only H and W may be padded."""
    pad = pad_op(graph, op)
    if pad is None:
        return None
    amounts = graph.tensors[pad.inputs[1]].data
    if amounts is None or amounts.shape != (4, 2) or np.any(amounts[[0, 3]] != 0) or np.any(amounts < 0):
        raise ConversionError(f"{graph.path}: op {pad.index} (PAD) pads {None if amounts is None else amounts.tolist()}; "
                              "a MobileNet pads only height and width, by constants")
    if op.options.get("padding") != VALID:
        raise ConversionError(f"{graph.path}: op {op.index} ({op.kind}) reads a PAD but has SAME padding (padded twice)")
    return int(amounts[1, 0]), int(amounts[1, 1]), int(amounts[2, 0]), int(amounts[2, 1])


# --------------------------------------------------------------------------------------------------
# recognising the network
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Network:
    """The graph cut into the pieces transformers has."""

    family: str                       # "v1", "v2" or "deeplab"
    backbone: list[Conv]              # in execution order
    head: list[Conv]                  # classification: [logits]; DeepLab: [pool, aspp, projection, classifier]
    feature: int                      # the backbone's output tensor
    pool: Op                          # the global pool (AVERAGE_POOL_2D or MEAN over H, W)
    concat_swapped: bool = False      # DeepLab: the graph concatenates [aspp, pool] (transformers: [pool, aspp])

    @property
    def convs(self) -> list[Conv]:
        return self.backbone + self.head


def single(ops: list, what: str, graph: Graph):
    if len(ops) != 1:
        raise ConversionError(f"{graph.path}: expected one {what}, found {len(ops)}: not a MobileNet / DeepLab graph")
    return ops[0]


def _check_global_pool(graph: Graph, pool: Op, feature: int) -> None:
    feature_size = tuple(graph.tensors[feature].shape[1:3])
    if pool.kind == "AVERAGE_POOL_2D":
        if pool.options["filter"] != feature_size:
            raise ConversionError(f"{graph.path}: the average pool (op {pool.index}) has a {pool.options['filter']} "
                                  f"window on a {feature_size} feature map: not a global average pool")
        return
    axes = graph.tensors[pool.inputs[1]].data
    if axes is None or sorted(int(a) % 4 for a in np.atleast_1d(axes)) != [1, 2]:
        raise ConversionError(f"{graph.path}: op {pool.index} (MEAN) reduces axes "
                              f"{None if axes is None else np.atleast_1d(axes).tolist()}, not height and width")


def recognise(graph: Graph) -> Network:
    """Find the backbone, the head and the family (V1, V2, DeepLab) from the ops and their wiring."""
    unknown = [op for op in graph.ops if op.kind not in KNOWN_OPS]
    if unknown:
        raise ConversionError(f"{graph.path}: op {unknown[0].index} is {unknown[0].kind}, which MobileNet and "
                              "DeepLab graphs do not have (another network?)")
    pool = single([op for op in graph.ops if op.kind in POOL_OPS], "global average pool (AVERAGE_POOL_2D or MEAN)",
                  graph)
    feature = graph.origin(pool.inputs[0])
    _check_global_pool(graph, pool, feature)
    convs = {op.index: conv_from_op(graph, op) for op in graph.ops if op.kind in WEIGHT_OPS}

    def conv_reading(tensor: int) -> list[Conv]:
        return [c for c in convs.values() if graph.origin(c.input) == tensor]

    if any(op.kind == "CONCATENATION" for op in graph.ops):
        family = "deeplab"
        pool_conv = single(conv_reading(pool.outputs[0]), "conv after the image pooling", graph)
        aspp = single(conv_reading(feature), "ASPP 1x1 conv on the backbone features", graph)
        concat = single([op for op in graph.ops if op.kind == "CONCATENATION"], "concatenation", graph)
        branches = [graph.origin(t) for t in concat.inputs]
        pooled = upsampled(graph, pool_conv.output).outputs[0]
        if sorted(branches) != sorted([pooled, aspp.output]) or concat.options["axis"] not in (3, -1):
            raise ConversionError(f"{graph.path}: the concatenation (op {concat.index}) does not join the image "
                                  "pooling and ASPP branches along channels")
        projection = single(conv_reading(concat.outputs[0]), "projection conv after the concatenation", graph)
        classifier = single(conv_reading(projection.output), "classifier conv", graph)
        head = [pool_conv, aspp, projection, classifier]
        swapped = branches[0] != pooled
    else:
        family = "v2" if any(op.kind == "ADD" for op in graph.ops) else "v1"
        head = [single(conv_reading(pool.outputs[0]), "logits conv after the global average pool", graph)]
        swapped = False
    head_ops = {c.op.index for c in head}
    backbone = [c for i, c in sorted(convs.items()) if i not in head_ops]
    fc = [c.op.index for c in backbone if c.op.kind == "FULLY_CONNECTED"]
    if fc:
        raise ConversionError(f"{graph.path}: op {fc[0]} (FULLY_CONNECTED) is in the backbone; MobileNet has a "
                              "fully connected layer only as its classifier")
    return Network(family, backbone, head, feature, pool, swapped)


def upsampled(graph: Graph, tensor: int) -> Op:
    """The RESIZE_BILINEAR of `tensor` (the pooled branch, broadcast to the map)."""
    resize = [op for op in graph.consumers(tensor) if op.kind == "RESIZE_BILINEAR"]
    if len(resize) != 1:
        raise ConversionError(f"{graph.path}: the image pooling conv output is not upsampled by one RESIZE_BILINEAR")
    return resize[0]


# --------------------------------------------------------------------------------------------------
# mapping onto transformers
# --------------------------------------------------------------------------------------------------

MODEL_CLASSES = {"v1": MobileNetV1ForImageClassification, "v2": MobileNetV2ForImageClassification,
                 "deeplab": MobileNetV2ForSemanticSegmentation}
SKIPPED = {"deeplab": ("mobilenet_v2.conv_1x1",)}  # transformers modules the graph does not have


def mapped_layers(family: str, model=None) -> list:
    """The transformers ConvLayers the graph's convs map onto, in the same order; None for a classifier
    (transformers' Linear). Without `model`, any width will do (the names and kinds are the same)."""
    if model is None:
        model_class = MODEL_CLASSES[family]
        model = model_class(model_class.config_class(num_labels=2), seed=None)
    layers = [layer for layer in model.conv_layers() if layer.name not in SKIPPED.get(family, ())]
    if family != "deeplab":  # the classifier is a Linear layer, not a ConvLayer
        layers.append(None)
    return layers


def check_conv_count(network: Network, graph: Graph) -> list:
    layers = mapped_layers(network.family)
    if len(network.convs) != len(layers):
        raise ConversionError(f"{graph.path}: has {len(network.convs)} convolutions, a "
                              f"{MODEL_CLASSES[network.family].__name__} has {len(layers)}")
    return layers


def fit_tflite_config(network: Network, graph: Graph, shapes: dict[str, tuple], id2label):
    """The config whose network has exactly the graph's shapes; input size and output stride from the graph."""
    _, height, width, channels = graph.tensors[graph.inputs[0]].shape
    output_stride = int(np.prod([c.op.options["stride"][0] for c in network.backbone]))
    num_classes = network.head[-1].weight.shape[0]
    fixed = {"image_size": height if height == width else [height, width], "num_channels": channels,
             "num_labels": num_classes, "id2label": id2label, "hidden_act": "relu6", "tf_padding": True}
    first, last = network.backbone[0].weight.shape[0], network.backbone[-1].weight.shape[0]
    if network.family == "v1":
        search = {"depth_multiplier": depth_multiplier_candidates([(32, first), (1024, last)]), "min_depth": [8, 1]}
    else:
        last_block = network.backbone[-2 if network.family == "v2" else -1].weight.shape[0]  # V2 ends with Conv_1
        fixed["output_stride"] = output_stride
        # TF DeepLab rounds channels with divisible_by 1 when the width is not 1.0 (shared/data/SOURCES.md).
        search = {"depth_multiplier": depth_multiplier_candidates([(320, last_block), (32, first)]),
                  "depth_divisible_by": [8, 1], "min_depth": [8, 1], "finegrained_output": [True, False]}
    model_class = MODEL_CLASSES[network.family]
    return fit_config(model_class, shapes, fixed, search, graph.path, ignore=skipped_keys(network.family))


def skipped_keys(family: str) -> tuple[str, ...]:
    return tuple(f"{m}.{p}" for m in SKIPPED.get(family, ())
                 for p in ("convolution.weight", "normalization.weight", "normalization.bias",
                           "normalization.running_mean", "normalization.running_var",
                           "normalization.num_batches_tracked"))


def check_structure(network: Network, graph: Graph, model) -> list[str]:
    """Every conv's stride, dilation, groups, padding and activation, and the wiring, as in `model`.

    Returns the layers whose padding is a PAD + VALID conv that differs from TensorFlow "SAME" at the
    graph's sizes (Keras V1 on input sizes that are not multiples of 32): the float network pads them
    as "SAME" (transformers' tf_padding), the integer network as the graph does.
    """
    differs = []
    for layer, conv in zip(mapped_layers(network.family, model), network.convs):
        if layer is None:
            continue
        o = conv.op.options
        height, width = graph.tensors[graph.origin(conv.input)].shape[1:3]
        explicit = explicit_padding(graph, conv.op)
        same = layer.padding(height, width)
        if explicit is not None:
            padding = "SAME"
            if explicit != same:
                differs.append(f"{layer.name} (op {conv.op.index}: PAD {list(explicit)} + VALID, "
                               f"SAME pads {list(same)})")
        else:
            padding = "SAME" if o["padding"] == SAME or not any(same) else "VALID"
        found = {"stride": o["stride"], "dilation": o["dilation"], "depthwise": conv.op.kind == "DEPTHWISE_CONV_2D",
                 "activation": conv.activation, "padding": padding}
        expected = {"stride": (layer.stride,) * 2, "dilation": (layer.dilation,) * 2, "depthwise": layer.kind == "depthwise",
                    "activation": layer.activation, "padding": "SAME"}
        for field, value in expected.items():
            if found[field] != value:
                raise ConversionError(f"{graph.path}: op {conv.op.index} ({conv.op.kind}) maps onto {layer.name} but has "
                                      f"{field} {found[field]}, expected {value}")
    _check_backbone_wiring(network, graph, model)
    if network.family != "deeplab":
        logits = network.head[0]
        stride = logits.op.options.get("stride", (1, 1))
        if logits.activation is not None or logits.weight.shape[2:] != (1, 1) or logits.bias is None or stride != (1, 1):
            raise ConversionError(f"{graph.path}: op {logits.op.index} ({logits.op.kind}) is not a linear 1x1 "
                                  "logits layer with bias")
    return differs


def _check_backbone_wiring(network: Network, graph: Graph, model) -> None:
    """Each conv reads the previous output; residual ADDs exactly where transformers has them."""
    backbone = getattr(model, "mobilenet_v2", getattr(model, "mobilenet_v1", None))
    residual = {block.reduce_1x1.name: block.use_residual for block in getattr(backbone, "layer", [])
                if hasattr(block, "use_residual")}
    layers = mapped_layers(network.family, model)
    current, block_input, residual_adds = graph.origin(graph.inputs[0]), None, 0
    for layer, conv in zip(layers, network.backbone):
        if graph.origin(conv.input) != current:
            raise ConversionError(f"{graph.path}: op {conv.op.index} ({layer.name}) does not read the previous layer's output")
        if layer.name.endswith("expand_1x1"):
            block_input = current
        current = conv.output
        adds = residual_add(graph, current, block_input)
        if bool(adds) != residual.get(layer.name, False):
            raise ConversionError(f"{graph.path}: op {conv.op.index} ({layer.name}) is {'' if adds else 'not '}followed by a "
                                  f"residual ADD, transformers {'has none' if adds else 'adds the block input'} there")
        if adds:
            if adds.options["activation"]:
                raise ConversionError(f"{graph.path}: residual ADD op {adds.index} has an activation, transformers' has none")
            residual_adds += 1
            current = adds.outputs[0]
    if current != network.feature:
        raise ConversionError(f"{graph.path}: the global average pool does not read the backbone's last output")
    all_adds = sum(op.kind == "ADD" for op in graph.ops)
    if all_adds != residual_adds:
        raise ConversionError(f"{graph.path}: has {all_adds} ADD ops, {residual_adds} of them residuals where transformers has them")


def residual_add(graph: Graph, output: int, block_input: int | None) -> Op | None:
    """The ADD of a block's output and its input. (The output also feeds the next block's ADD as *its*
    block input, which is not this block's residual.)"""
    adds = [op for op in graph.consumers(output) if op.kind == "ADD"
            and sorted(graph.origin(t) for t in op.inputs) == sorted([output, block_input])]
    return adds[0] if adds else None


def graph_notes(network: Network, graph: Graph) -> dict:
    """What the provenance records about the graph: quantization, input encoding, what the output is."""
    weights = [graph.tensors[graph.origin(c.op.inputs[1])] for c in network.convs]
    per_channel = any(t.scale is not None and t.scale.size > 1 for t in weights)
    kinds = sorted({t.type.lower() for t in weights})
    input_tensor = graph.tensors[graph.inputs[0]]
    notes = {
        "source_format": f"TFLite flatbuffer ({graph.description or 'no description'})",
        "weights": "/".join(kinds) + (" quantized " + ("per channel" if per_channel else "per tensor")
                                      if weights[0].quantized else ""),
        "batch_norm": "folded into the convolutions by the converter; stored as BatchNorm weight 1, bias = folded "
                      "bias, running_mean 0, running_var = 1 - eps",
        "input": {"shape": list(input_tensor.shape), "dtype": input_tensor.type.lower()},
        "global_pool": network.pool.kind,
        "classifier_op": network.head[-1].op.kind,
    }
    if input_tensor.quantized:
        notes["input"].update(scale=float(input_tensor.scale[0]), zero_point=int(input_tensor.zero_point[0]))
    resizes = [op for op in graph.ops if op.kind == "RESIZE_BILINEAR" and op.index > network.head[-1].op.index]
    output = graph.tensors[graph.outputs[0]]
    produced_by = graph.producer(output.index)
    while produced_by is not None and produced_by.kind in ("QUANTIZE", "DEQUANTIZE"):
        produced_by = graph.producer(produced_by.inputs[0])
    if network.family == "deeplab":
        what = "argmax of the logits" if produced_by is not None and produced_by.kind == "ARG_MAX" else "logits"
        aligned = sorted({op.options["align_corners"] for op in resizes})
        notes["graph_output"] = (f"{what} resized bilinearly (align_corners={aligned[0] if len(aligned) == 1 else aligned}) "
                                 f"to {list(output.shape[1:3])}")
        notes["conv_1x1"] = "absent from the TFLite graph (the DeepLab head does not use it); stored as zeros"
    else:
        notes["graph_output"] = "softmax of the logits" if produced_by is not None and produced_by.kind == "SOFTMAX" else "logits"
    return notes
