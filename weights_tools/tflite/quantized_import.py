"""The quantized import of a TFLite graph (`import-tflite --quantized`): the integers, not their float emulation.

The integer network (mobilenet_np/quantized/network.py) runs the float network's Graph with TFLite's
reference kernels; what it needs from the file is, keyed by transformers names:

* `/tensors`: every conv's weight codes in PyTorch layout (`{layer}.convolution.weight`, uint8 / int8)
  and int32 bias (`{layer}.convolution.bias`); the classifier's as `classifier.weight` (classes, C) and
  `classifier.bias`.
* `/quantization/<name>` (formats.weights.TensorQuantization): the scale / zero point (per tensor, or
  per output channel along axis 0) of each of those, and of every activation the graph computes, under
  the module path that computes it, with the TFLite op and the options the kernel needs:

    pixel_values                   the graph input (uint8 or int8)
    pixel_values.quantize          QUANTIZE of the input (TF2 int8 graphs with uint8 I/O)
    <conv layer>.pad               PAD before a VALID conv (Keras' ZeroPadding2D)
    <conv layer>                   CONV_2D / DEPTHWISE_CONV_2D output (options: activation, padding)
    <block>                        a MobileNetV2 block's residual ADD
    <backbone>.pooler              AVERAGE_POOL_2D or MEAN over H, W (classifiers)
    classifier                     the logits: CONV_2D 1x1 or FULLY_CONNECTED (and the RESHAPE after it)
    probabilities                  SOFTMAX (options: beta)
    probabilities.quantize         QUANTIZE of the probabilities (uint8 output)
    segmentation_head.avg_pool, .conv_pool, .conv_pool.resize[.requantize], .conv_aspp[.requantize],
    .concat, .conv_projection, .classifier, .upsample.0, .upsample.1, .argmax       (DeepLab)

Each record lists the TFLite tensors holding its codes (`source`), so a test can compare every
intermediate tensor with the interpreter's. Every op of the graph must land in a record (the Keras
SHAPE / STRIDED_SLICE / PACK shape arithmetic aside), every tensor needs its quantization parameters,
and a per-channel axis must be the output channels': anything else is a one-line ConversionError
naming the op and the tensor.
"""

from __future__ import annotations

import numpy as np

from mobilenet_np.errors import ConversionError
from mobilenet_np.formats.weights import TensorQuantization

from .float_import import swap_halves
from .graph import SHAPE_OPS, Graph, Op
from .network import (ACTIVATION_NAMES, SAME, WEIGHT_AXES, Network, explicit_padding, mapped_layers, pad_op,
                      residual_add, to_pytorch_layout)

INTEGER_TYPES = {"UINT8": "uint8", "INT8": "int8", "INT32": "int32", "INT64": "int64"}


class QuantizedGraph:
    """Collects the integer tensors and the quantization records while walking the graph."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.tensors: dict[str, np.ndarray] = {}
        self.records: dict[str, TensorQuantization] = {}
        self.used_ops: set[int] = set()

    def fail(self, op: Op | None, tensor: int, problem: str):
        t = self.graph.tensors[tensor]
        where = f"op {op.index} ({op.kind})" if op is not None else "the graph input"
        raise ConversionError(f"{self.graph.path}: {where}: tensor {t.index} ({t.name!r}) {problem}")

    def params(self, tensor: int, op: Op | None, per_channel_ok: bool = False):
        """(dtype name, scale, zero_point, TFLite axis) of a quantized tensor, or ConversionError."""
        t = self.graph.tensors[tensor]
        if t.type not in INTEGER_TYPES:
            self.fail(op, tensor, f"is {t.type.lower()}, not integer codes (import it without --quantized)")
        if t.scale is None or t.zero_point is None or t.scale.size == 0:
            self.fail(op, tensor, "has no quantization parameters (scale / zero point)")
        if t.scale.size != t.zero_point.size:
            self.fail(op, tensor, f"has {t.scale.size} scales but {t.zero_point.size} zero points")
        if t.scale.size > 1 and not per_channel_ok:
            self.fail(op, tensor, f"is quantized per channel ({t.scale.size} scales along axis {t.axis}); "
                                  "activations must be per tensor")
        if not np.all(np.isfinite(t.scale)) or not np.all(t.scale > 0):
            self.fail(op, tensor, "has a scale that is not finite and positive")
        return INTEGER_TYPES[t.type], t.scale.astype(np.float32), t.zero_point.astype(np.int64), t.axis

    def activation(self, name: str, tensor: int, op: Op | None, options: dict | None = None,
                   also: tuple[int, ...] = ()) -> None:
        """Record the per-tensor quantization of activation `tensor`, computed by `op`, as `name`."""
        dtype, scale, zero_point, _ = self.params(tensor, op)
        self.records[name] = TensorQuantization(dtype, scale, zero_point, None, op.kind if op else "",
                                                options or {}, (tensor,) + tuple(also))
        if op is not None:
            self.used_ops.add(op.index)

    def weights(self, key: str, op: Op, swap: bool = False) -> None:
        """A conv / FC op's weight codes and int32 bias in PyTorch layout, and their quantization."""
        graph = self.graph
        weight_index, bias_index = op.inputs[1], op.inputs[2] if len(op.inputs) > 2 else -1
        t = graph.tensors[weight_index]
        if t.data is None:
            producer = graph.producer(weight_index)
            self.fail(op, weight_index, "is not a constant" + (f" (computed by {producer.kind}: float weights?)"
                                                                 if producer is not None else ""))
        dtype, scale, zero_point, axis = self.params(weight_index, op, per_channel_ok=True)
        codes = to_pytorch_layout(op.kind, t.data)                       # (C_out, C_in/groups, kH, kW)
        channels = codes.shape[0]
        torch_axis = None
        if scale.size > 1:
            torch_axis = WEIGHT_AXES[op.kind].get(axis)
            if torch_axis is None or scale.size != channels:
                self.fail(op, weight_index, f"has {scale.size} per-channel scales along quantized_dimension {axis} "
                                            f"of shape {t.shape}; {op.kind} needs one per output channel "
                                            f"({channels}) along dimension {next(iter(WEIGHT_AXES[op.kind]))}")
            torch_axis = 0
        if swap:
            codes = swap_halves(codes)
        if key == "classifier":
            codes = codes[:, :, 0, 0]                                    # the Linear's (classes, C)
        if bias_index < 0:
            self.fail(op, weight_index, "belongs to a layer without bias (TFLite converters always give one)")
        b = graph.tensors[bias_index]
        if b.data is None or b.type != "INT32":
            self.fail(op, bias_index, f"should be a constant int32 bias, is {b.type.lower()}")
        _, bias_scale, bias_zero, _ = self.params(bias_index, op, per_channel_ok=True)
        if b.data.shape != (channels,) or bias_scale.size not in (1, channels):
            self.fail(op, bias_index, f"has shape {b.data.shape} and {bias_scale.size} scales for {channels} channels")
        prefix = "classifier" if key == "classifier" else f"{key}.convolution"
        self.tensors[f"{prefix}.weight"] = np.ascontiguousarray(codes)
        self.tensors[f"{prefix}.bias"] = b.data.astype(np.int32)
        self.records[f"{prefix}.weight"] = TensorQuantization(dtype, scale, zero_point, torch_axis, "", {},
                                                              (weight_index,))
        self.records[f"{prefix}.bias"] = TensorQuantization("int32", bias_scale, bias_zero,
                                                            None if bias_scale.size == 1 else 0, "", {}, (bias_index,))

    def single_consumer(self, tensor: int, kinds: tuple[str, ...]) -> Op | None:
        found = [op for op in self.graph.consumers(tensor) if op.kind in kinds]
        return found[0] if len(found) == 1 else None


def _fused(graph: Graph, op: Op) -> str:
    fused = op.options.get("activation", 0)
    if fused not in ACTIVATION_NAMES:
        raise ConversionError(f"{graph.path}: op {op.index} ({op.kind}) has fused activation {fused}; "
                              "MobileNet uses ReLU6 / ReLU")
    return ACTIVATION_NAMES[fused] or "none"


def _conv(q: QuantizedGraph, name: str, op: Op, swap: bool = False) -> None:
    """A conv layer (or the classifier): its PAD, weights and output."""
    graph = q.graph
    padding = explicit_padding(graph, op) if op.kind in ("CONV_2D", "DEPTHWISE_CONV_2D") else None
    if padding is not None:
        pad = pad_op(graph, op)
        q.activation(f"{name}.pad", pad.outputs[0], pad, {"paddings": list(padding)})
    q.weights(name, op, swap)
    options = {"activation": _fused(graph, op)}
    if op.kind != "FULLY_CONNECTED":
        options["padding"] = "same" if op.options["padding"] == SAME else "valid"
    also = []
    if name == "classifier":             # the RESHAPE / SQUEEZE to (N, classes) keeps the codes
        tensor = op.outputs[0]
        while (reshape := q.single_consumer(tensor, ("RESHAPE", "SQUEEZE"))) is not None:
            q.used_ops.add(reshape.index)
            tensor = reshape.outputs[0]
            also.append(tensor)
    q.activation(name, op.outputs[0], op, options, tuple(also))


def _input(q: QuantizedGraph) -> None:
    graph = q.graph
    first = graph.inputs[0]
    q.activation("pixel_values", first, None)
    quantize = q.single_consumer(first, ("QUANTIZE",))
    if quantize is not None:
        q.activation("pixel_values.quantize", quantize.outputs[0], quantize)


def _backbone(q: QuantizedGraph, network: Network, model) -> None:
    graph = q.graph
    layers = mapped_layers(network.family, model)
    residual = {}
    for unit in model.graph().units:
        if getattr(unit, "use_residual", False):
            residual[unit.reduce_1x1.name] = unit.name
    block_input = graph.origin(graph.inputs[0])
    current = block_input
    for layer, conv in zip(layers, network.backbone):
        _conv(q, layer.name, conv.op)
        if layer.name.endswith("expand_1x1"):
            block_input = current
        current = conv.output
        if layer.name in residual:
            add = residual_add(graph, current, block_input)
            q.activation(residual[layer.name], add.outputs[0], add, {"activation": _fused(graph, add)})
            current = add.outputs[0]


def _pool(q: QuantizedGraph, name: str, pool: Op) -> None:
    options = {"keep_dims": pool.options.get("keep_dims", True)} if pool.kind == "MEAN" else {
        "kernel_size": list(pool.options["filter"]), "stride": list(pool.options["stride"]),
        "padding": "same" if pool.options["padding"] == SAME else "valid", "activation": _fused(q.graph, pool)}
    q.activation(name, pool.outputs[0], pool, options)


def _classification_tail(q: QuantizedGraph, network: Network, model) -> None:
    _pool(q, model.graph().pool, network.pool)
    logits = network.head[0]
    _conv(q, "classifier", logits.op)
    tensor = q.records["classifier"].source[-1]
    softmax = q.single_consumer(tensor, ("SOFTMAX",))
    if softmax is None:
        return
    q.activation("probabilities", softmax.outputs[0], softmax, {"beta": softmax.options.get("beta", 1.0)})
    quantize = q.single_consumer(softmax.outputs[0], ("QUANTIZE",))
    if quantize is not None:
        q.activation("probabilities.quantize", quantize.outputs[0], quantize)


def _requantized(q: QuantizedGraph, name: str, tensor: int, concat: Op) -> int:
    """Record a QUANTIZE (requantization) between `tensor` and the concatenation as `name`.requantize."""
    quantize = q.single_consumer(tensor, ("QUANTIZE",))
    if quantize is not None and concat.index in [op.index for op in q.graph.consumers(quantize.outputs[0])]:
        q.activation(f"{name}.requantize", quantize.outputs[0], quantize)
        return quantize.outputs[0]
    return tensor


def _resize_options(op: Op, target: str) -> dict:
    return {"align_corners": op.options["align_corners"], "half_pixel_centers": op.options["half_pixel_centers"],
            "target": target}


def _deeplab_head(q: QuantizedGraph, network: Network) -> None:
    graph = q.graph
    pool_conv, aspp, projection, classifier = network.head
    _pool(q, "segmentation_head.avg_pool", network.pool)
    _conv(q, "segmentation_head.conv_pool", pool_conv.op)
    resize = q.single_consumer(pool_conv.output, ("RESIZE_BILINEAR",))
    q.activation("segmentation_head.conv_pool.resize", resize.outputs[0], resize, _resize_options(resize, "features"))
    _conv(q, "segmentation_head.conv_aspp", aspp.op)
    concat = graph.producer(projection.input)
    _requantized(q, "segmentation_head.conv_pool.resize", resize.outputs[0], concat)
    _requantized(q, "segmentation_head.conv_aspp", aspp.output, concat)
    order = ["aspp", "pool"] if network.concat_swapped else ["pool", "aspp"]
    q.activation("segmentation_head.concat", concat.outputs[0], concat,
                 {"graph_order": order, "activation": _fused(graph, concat)})
    _conv(q, "segmentation_head.conv_projection", projection.op, swap=network.concat_swapped)
    _conv(q, "segmentation_head.classifier", classifier.op)
    feature_size = tuple(graph.tensors[network.feature].shape[1:3])
    input_size = tuple(graph.tensors[graph.inputs[0]].shape[1:3])
    tensor, n = classifier.output, 0
    while (resize := q.single_consumer(tensor, ("RESIZE_BILINEAR",))) is not None:
        size = tuple(graph.tensors[resize.outputs[0]].shape[1:3])
        target = "features" if size == feature_size else "input" if size == input_size else None
        if target is None:
            q.fail(resize, resize.outputs[0], f"resizes the logits to {size}, neither the feature map "
                                              f"{feature_size} nor the input {input_size}")
        q.activation(f"segmentation_head.upsample.{n}", resize.outputs[0], resize, _resize_options(resize, target))
        tensor, n = resize.outputs[0], n + 1
    arg_max = q.single_consumer(tensor, ("ARG_MAX",))
    if arg_max is not None:
        axis = graph.tensors[arg_max.inputs[1]].data
        if axis is None or int(np.atleast_1d(axis)[0]) % 4 != 3:
            q.fail(arg_max, arg_max.inputs[1], "is not the channel axis (3)")
        out = graph.tensors[arg_max.outputs[0]]
        if out.type not in ("INT32", "INT64"):
            q.fail(arg_max, out.index, f"is {out.type.lower()}, expected int32 or int64 labels")
        q.records["segmentation_head.argmax"] = TensorQuantization(
            INTEGER_TYPES[out.type], np.ones(1, np.float32), np.zeros(1, np.int64), None, "ARG_MAX", {"axis": 1},
            (out.index,))
        q.used_ops.add(arg_max.index)


def quantized_network(network: Network, graph: Graph, model) -> tuple[dict[str, np.ndarray],
                                                                       dict[str, TensorQuantization]]:
    """(integer tensors, quantization records) of the graph, keyed by the names of `model`'s modules."""
    q = QuantizedGraph(graph)
    _input(q)
    _backbone(q, network, model)
    if network.family == "deeplab":
        _deeplab_head(q, network)
    else:
        _classification_tail(q, network, model)
    left = [op for op in graph.ops if op.index not in q.used_ops and op.kind not in SHAPE_OPS]
    if left:
        op = left[0]
        raise ConversionError(f"{graph.path}: op {op.index} ({op.kind}, output tensor {op.outputs[0]} "
                              f"{graph.tensors[op.outputs[0]].name!r}) is not part of the integer "
                              f"{type(model).__name__} (an op the network does not have)")
    return q.tensors, q.records
