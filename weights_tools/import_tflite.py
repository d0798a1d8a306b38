"""`import-tflite`: TFLite MobileNet V1, V2 and DeepLabV3-MobileNetV2 flatbuffers -> mobilenet-np HDF5.

    python -m weights_tools import-tflite mobilenet_v2_1.0_224_quant.tflite out.h5 --labels imagenet_labels.txt

The file is read with the `tflite` package (the generated flatbuffer schema classes), never by hand.
What a TF-slim / TF DeepLab graph converted to TFLite looks like, and how it maps onto transformers:

* BatchNorm is folded into the convolutions: each CONV_2D / DEPTHWISE_CONV_2D has a weight and a bias
  that already include the BatchNorm scale and shift. transformers keeps conv and BatchNorm apart, so
  a folded conv is stored exactly as: convolution.weight = folded weight; normalization.weight = 1,
  normalization.bias = folded bias, running_mean = 0, running_var = 1 - eps. BatchNorm then computes
  (x - 0) / sqrt(1 - eps + eps) * 1 + bias = x + bias (exactly in float32, see
  importing.batch_norm_identity). The classifiers have no BatchNorm and keep their own bias.
* Layouts: CONV_2D weights are OHWI (C_out, kH, kW, C_in) -> OIHW; DEPTHWISE_CONV_2D weights are
  1HWC (1, kH, kW, C) -> (C, 1, kH, kW); the 1x1 logits conv of a classifier -> Linear (classes, C).
* Quantized files (uint8 or int8, per tensor or per output channel): real = (q - zero_point) * scale,
  with one scale/zero point per tensor or one per index along `quantized_dimension` (0 for conv
  weights, 3 for depthwise weights). int32 biases have zero point 0 and scale input_scale * weight_scale.
  The imported network is the float emulation of the quantized one: the same weights, float arithmetic.
* Padding: TFLite "SAME" = TensorFlow "SAME" = transformers' tf_padding, including dilated depthwise
  convs with stride 1 (both pad `dilation` on each side). Activations are fused into the convs
  (RELU6 in the backbone, RELU in the DeepLab head); a quantized conv without a fused RELU6 whose
  output range is exactly [0, 6] is taken as ReLU6, since the quantization clamps it.

The architecture, width multiplier, input size, output stride (product of the strides; later strides
are dilations) and class count come from the graph; the config is the one whose shapes match
(`importing.fit_config`), and every conv's stride, dilation, groups, activation and wiring (residual
ADDs, the DeepLab head) is checked against the mobilenet_np network built from it.
DeepLab graphs have no final 1x1 conv to 1280 channels (transformers' `conv_1x1`, which its
segmentation head does not use); it is stored as zeros.
"""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

import numpy as np

from mobilenet_np.networks.deeplabv3 import MobileNetV2ForSemanticSegmentation
from mobilenet_np.errors import ConversionError
from mobilenet_np.networks.mobilenet_v1 import MobileNetV1ForImageClassification
from mobilenet_np.networks.mobilenet_v2 import MobileNetV2ForImageClassification

from .importing import (batch_norm_identity, depth_multiplier_candidates, fit_config, id2label_or_default,
                        register_import_command, save_imported)

# Ops a MobileNet / DeepLab graph may contain. Anything else means another network.
CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D")
PASS_THROUGH_OPS = ("QUANTIZE", "DEQUANTIZE")  # requantization: same values, another scale
KNOWN_OPS = CONV_OPS + PASS_THROUGH_OPS + ("ADD", "AVERAGE_POOL_2D", "RESHAPE", "SQUEEZE", "SOFTMAX",
                                          "RESIZE_BILINEAR", "CONCATENATION", "ARG_MAX")
NUMPY_TYPES = {"FLOAT32": np.float32, "FLOAT16": np.float16, "FLOAT64": np.float64, "INT8": np.int8,
               "UINT8": np.uint8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64}


# --------------------------------------------------------------------------------------------------
# reading the flatbuffer
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Tensor:
    index: int
    name: str
    shape: tuple[int, ...]
    type: str                              # "FLOAT32", "UINT8", ...
    data: np.ndarray | None                # the stored values (constants only), in the file's dtype
    scale: np.ndarray | None = None        # quantization: one value per tensor or per channel
    zero_point: np.ndarray | None = None
    axis: int = 0                          # quantized_dimension (per-channel quantization)

    @property
    def quantized(self) -> bool:
        return self.scale is not None and self.type not in ("FLOAT32", "FLOAT16", "FLOAT64")

    def real_range(self) -> tuple[float, float] | None:
        """The real values a per-tensor quantized tensor can hold, e.g. (0.0, 6.0); None if not quantized."""
        if not self.quantized or self.scale.size != 1:
            return None
        info = np.iinfo(NUMPY_TYPES[self.type])
        scale, zero = float(self.scale[0]), float(self.zero_point[0])
        return (info.min - zero) * scale, (info.max - zero) * scale


@dataclasses.dataclass
class Op:
    index: int
    kind: str                              # builtin operator name, e.g. "CONV_2D"
    inputs: list[int]                      # tensor indices (-1: optional input left out)
    outputs: list[int]
    options: dict


@dataclasses.dataclass
class Graph:
    path: Path
    tensors: list[Tensor]
    ops: list[Op]
    inputs: list[int]
    outputs: list[int]
    description: str

    def producer(self, tensor: int) -> Op | None:
        return next((op for op in self.ops if tensor in op.outputs), None)

    def consumers(self, tensor: int) -> list[Op]:
        return [op for op in self.ops if tensor in op.inputs]

    def origin(self, tensor: int) -> int:
        """The tensor before any QUANTIZE / DEQUANTIZE ops (they change the encoding, not the values)."""
        op = self.producer(tensor)
        while op is not None and op.kind in PASS_THROUGH_OPS:
            tensor = op.inputs[0]
            op = self.producer(tensor)
        return tensor

    def constant(self, tensor: int) -> np.ndarray:
        """A constant tensor's real values as float32 (dequantized; through a DEQUANTIZE op if there is one)."""
        t = self.tensors[self.origin(tensor)]
        if t.data is None:
            raise ConversionError(f"{self.path}: tensor {t.index} ({t.name}) should be a constant but has no data")
        return dequantize(t.data, t.scale, t.zero_point, t.axis)


def dequantize(values: np.ndarray, scale, zero_point, axis: int = 0) -> np.ndarray:
    """real = (q - zero_point) * scale as float32, per tensor (one scale) or per channel along `axis`.

    Float tensors (no scale, or a float dtype) are returned as float32 unchanged.
    """
    if scale is None or values.dtype.kind == "f":
        return values.astype(np.float32)
    scale = np.asarray(scale, np.float64)
    zero_point = np.zeros_like(scale) if zero_point is None or len(zero_point) == 0 else np.asarray(zero_point, np.float64)
    if scale.size > 1:  # per channel: broadcast along `axis`
        shape = [1] * values.ndim
        shape[axis] = scale.size
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    return ((values.astype(np.float64) - zero_point) * scale).astype(np.float32)


def _names(enum_class) -> dict[int, str]:
    return {v: k for k, v in vars(enum_class).items() if not k.startswith("_") and isinstance(v, int)}


def _options(op, kind: str) -> dict:
    """The builtin options the importer checks, as a dict."""
    import tflite

    table = op.BuiltinOptions()
    if table is None:
        return {}
    classes = {"CONV_2D": tflite.Conv2DOptions, "DEPTHWISE_CONV_2D": tflite.DepthwiseConv2DOptions,
               "AVERAGE_POOL_2D": tflite.Pool2DOptions, "ADD": tflite.AddOptions,
               "RESIZE_BILINEAR": tflite.ResizeBilinearOptions, "CONCATENATION": tflite.ConcatenationOptions}
    if kind not in classes:
        return {}
    options = classes[kind]()
    options.Init(table.Bytes, table.Pos)
    result = {}
    if kind in CONV_OPS:
        result.update(padding=options.Padding(), stride=(options.StrideH(), options.StrideW()),
                      dilation=(options.DilationHFactor(), options.DilationWFactor()))
        if kind == "DEPTHWISE_CONV_2D":
            result["depth_multiplier"] = options.DepthMultiplier()
    if kind == "AVERAGE_POOL_2D":
        result.update(padding=options.Padding(), filter=(options.FilterHeight(), options.FilterWidth()))
    if kind == "RESIZE_BILINEAR":
        result.update(align_corners=bool(options.AlignCorners()), half_pixel_centers=bool(options.HalfPixelCenters()))
    if kind == "CONCATENATION":
        result["axis"] = options.Axis()
    if kind in CONV_OPS + ("ADD", "CONCATENATION"):
        result["activation"] = options.FusedActivationFunction()
    return result


def read_graph(path) -> Graph:
    """Parse a .tflite file's first subgraph: tensors (constants with their data), ops in execution order."""
    import tflite
    from tflite.utils import opcode2name

    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such TFLite file" + (" (it is a folder)" if path.is_dir() else ""))
    buf = path.read_bytes()
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise ConversionError(f"{path}: not a TFLite flatbuffer (no 'TFL3' file identifier at byte 4)")
    type_names = _names(tflite.TensorType)
    try:
        model = tflite.Model.GetRootAs(buf, 0)
        if model.SubgraphsLength() != 1:
            raise ConversionError(f"{path}: has {model.SubgraphsLength()} subgraphs, expected 1")
        graph = model.Subgraphs(0)
        tensors = []
        for i in range(graph.TensorsLength()):
            t = graph.Tensors(i)
            shape = tuple(int(s) for s in t.ShapeAsNumpy()) if t.ShapeLength() else ()
            type_name = type_names.get(t.Type(), str(t.Type()))
            data = _buffer_data(model.Buffers(t.Buffer()), buf, shape, type_name, path, i)
            scale = zero_point = None
            axis = 0
            q = t.Quantization()
            if q is not None and q.ScaleLength():
                scale = q.ScaleAsNumpy().astype(np.float64)
                zero_point = q.ZeroPointAsNumpy().astype(np.int64) if q.ZeroPointLength() else np.zeros(len(scale), np.int64)
                axis = q.QuantizedDimension()
            tensors.append(Tensor(i, t.Name().decode(errors="replace"), shape, type_name, data, scale, zero_point, axis))
        ops = []
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            code = model.OperatorCodes(op.OpcodeIndex())
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())  # the schema moved the field
            try:
                kind = opcode2name(builtin)
            except ValueError:
                kind = f"CUSTOM({code.CustomCode().decode(errors='replace') if code.CustomCode() else builtin})"
            ops.append(Op(i, kind, [int(j) for j in op.InputsAsNumpy()], [int(j) for j in op.OutputsAsNumpy()],
                          _options(op, kind)))
        inputs = [int(j) for j in graph.InputsAsNumpy()]
        outputs = [int(j) for j in graph.OutputsAsNumpy()]
        description = model.Description().decode(errors="replace") if model.Description() else ""
    except ConversionError:
        raise
    except (struct.error, IndexError, ValueError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise ConversionError(f"{path}: damaged or truncated TFLite file ({type(e).__name__}: {str(e)[:80]})") from None
    return Graph(path, tensors, ops, inputs, outputs, description)


def _buffer_data(buffer, buf: bytes, shape, type_name: str, path, index: int) -> np.ndarray | None:
    """A tensor's constant values from its buffer (inline, or at an offset past the flatbuffer), or None."""
    if buffer is None:
        return None
    if buffer.Offset() > 1:  # large models keep the data after the flatbuffer
        start, size = buffer.Offset(), buffer.Size()
        if start + size > len(buf):
            raise ConversionError(f"{path}: truncated TFLite file (tensor {index}'s data ends past the file end)")
        raw = buf[start: start + size]
    elif buffer.DataLength():
        raw = buffer.DataAsNumpy().tobytes()
    else:
        return None
    if type_name not in NUMPY_TYPES:
        raise ConversionError(f"{path}: constant tensor {index} has type {type_name}, which the importer cannot read")
    dtype = np.dtype(NUMPY_TYPES[type_name]).newbyteorder("<")
    if len(raw) != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
        raise ConversionError(f"{path}: tensor {index} holds {len(raw)} bytes, its shape {shape} needs "
                              f"{dtype.itemsize * int(np.prod(shape))} (damaged file?)")
    return np.frombuffer(raw, dtype).reshape(shape)


# --------------------------------------------------------------------------------------------------
# convolutions in PyTorch layout
# --------------------------------------------------------------------------------------------------

ACTIVATION_NAMES = {0: None, 1: "relu", 3: "relu6"}  # tflite.ActivationFunctionType NONE, RELU, RELU6
SAME, VALID = 0, 1                                    # tflite.Padding


@dataclasses.dataclass
class Conv:
    """One CONV_2D / DEPTHWISE_CONV_2D with its weights in PyTorch layout (float32)."""

    op: Op
    weight: np.ndarray        # (C_out, C_in / groups, kH, kW)
    bias: np.ndarray | None   # (C_out,)
    activation: str | None    # "relu6", "relu" or None, as the graph computes it

    @property
    def input(self) -> int:
        return self.op.inputs[0]

    @property
    def output(self) -> int:
        return self.op.outputs[0]


def conv_from_op(graph: Graph, op: Op) -> Conv:
    weight = graph.constant(op.inputs[1])
    if op.kind == "CONV_2D":      # OHWI (C_out, kH, kW, C_in) -> OIHW
        weight = weight.transpose(0, 3, 1, 2)
    else:                         # depthwise 1HWC (1, kH, kW, C) -> (C, 1, kH, kW)
        weight = weight[0].transpose(2, 0, 1)[:, None]
    bias = graph.constant(op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
    return Conv(op, np.ascontiguousarray(weight), bias, _activation(graph, op))


def _activation(graph: Graph, op: Op) -> str | None:
    """The activation a conv computes: the fused one, or ReLU6 when a quantized output can only hold [0, 6].

    (Converters may drop a RELU6 whose output quantization already clamps to [0, 6]. Any other range
    is taken as no activation: a linear layer's range may well start at 0.)
    """
    fused = op.options["activation"]
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
    concat_swapped: bool = False      # DeepLab: the graph concatenates [aspp, pool] (transformers: [pool, aspp])


def _single(ops: list[Op], what: str, graph: Graph) -> Op:
    if len(ops) != 1:
        raise ConversionError(f"{graph.path}: expected one {what}, found {len(ops)}: not a MobileNet / DeepLab graph")
    return ops[0]


def recognise(graph: Graph) -> Network:
    """Find the backbone, the head and the family (V1, V2, DeepLab) from the ops and their wiring."""
    unknown = [op for op in graph.ops if op.kind not in KNOWN_OPS]
    if unknown:
        raise ConversionError(f"{graph.path}: op {unknown[0].index} is {unknown[0].kind}, which MobileNet and "
                              "DeepLab graphs do not have (another network?)")
    pool = _single([op for op in graph.ops if op.kind == "AVERAGE_POOL_2D"], "global average pool", graph)
    feature = graph.origin(pool.inputs[0])
    feature_size = graph.tensors[feature].shape[1:3]
    if pool.options["filter"] != tuple(feature_size):
        raise ConversionError(f"{graph.path}: the average pool (op {pool.index}) has a {pool.options['filter']} window on a "
                              f"{tuple(feature_size)} feature map: not a global average pool")
    convs = {op.index: conv_from_op(graph, op) for op in graph.ops if op.kind in CONV_OPS}

    def conv_reading(tensor: int) -> list[Conv]:
        return [c for c in convs.values() if graph.origin(c.input) == tensor]

    if any(op.kind == "CONCATENATION" for op in graph.ops):
        family = "deeplab"
        pool_conv = _single(conv_reading(pool.outputs[0]), "conv after the image pooling", graph)
        aspp = _single(conv_reading(feature), "ASPP 1x1 conv on the backbone features", graph)
        concat = _single([op for op in graph.ops if op.kind == "CONCATENATION"], "concatenation", graph)
        branches = [graph.origin(t) for t in concat.inputs]
        pooled = _upsampled_source(graph, pool_conv.output)
        if sorted(branches) != sorted([pooled, aspp.output]) or concat.options["axis"] not in (3, -1):
            raise ConversionError(f"{graph.path}: the concatenation (op {concat.index}) does not join the image "
                                  "pooling and ASPP branches along channels")
        projection = _single(conv_reading(concat.outputs[0]), "projection conv after the concatenation", graph)
        classifier = _single(conv_reading(projection.output), "classifier conv", graph)
        head = [pool_conv, aspp, projection, classifier]
        swapped = branches[0] != pooled
    else:
        family = "v2" if any(op.kind == "ADD" for op in graph.ops) else "v1"
        head = [_single(conv_reading(pool.outputs[0]), "logits conv after the global average pool", graph)]
        swapped = False
    head_ops = {c.op.index for c in head}
    backbone = [c for i, c in sorted(convs.items()) if i not in head_ops]
    return Network(family, backbone, head, feature, swapped)


def _upsampled_source(graph: Graph, tensor: int) -> int:
    """The tensor that a RESIZE_BILINEAR of `tensor` produces (the pooled branch, broadcast to the map)."""
    resize = [op for op in graph.consumers(tensor) if op.kind == "RESIZE_BILINEAR"]
    if len(resize) != 1:
        raise ConversionError(f"{graph.path}: the image pooling conv output is not upsampled by one RESIZE_BILINEAR")
    return resize[0].outputs[0]


# --------------------------------------------------------------------------------------------------
# mapping onto transformers
# --------------------------------------------------------------------------------------------------

MODEL_CLASSES = {"v1": MobileNetV1ForImageClassification, "v2": MobileNetV2ForImageClassification,
                 "deeplab": MobileNetV2ForSemanticSegmentation}
SKIPPED = {"deeplab": ("mobilenet_v2.conv_1x1",)}  # transformers modules the graph does not have


def mapped_conv_layers(family: str) -> list:
    """The transformers ConvLayers the graph's convs map onto, in the same order (any width will do)."""
    model_class = MODEL_CLASSES[family]
    config = model_class.config_class(num_labels=2)
    layers = [layer for layer in model_class(config, seed=None).conv_layers() if layer.name not in SKIPPED.get(family, ())]
    if family != "deeplab":  # the classifier is a Linear layer, not a ConvLayer
        layers.append(None)
    return layers


def network_tensors(network: Network, graph: Graph) -> dict[str, np.ndarray]:
    """The state_dict (without the parts the graph lacks) of the network's convs, BatchNorm stored as identity."""
    layers = mapped_conv_layers(network.family)
    convs = network.backbone + network.head
    if len(convs) != len(layers):
        raise ConversionError(f"{graph.path}: has {len(convs)} convolutions, a {MODEL_CLASSES[network.family].__name__} "
                              f"has {len(layers)}")
    tensors = {}
    for layer, conv in zip(layers, convs):
        if (layer is None or layer.norm_eps is None) and conv.bias is None:
            raise ConversionError(f"{graph.path}: the classifier conv (op {conv.op.index}) has no bias")
        if layer is None:  # classification logits: a 1x1 conv with bias -> Linear
            tensors["classifier.weight"] = conv.weight[:, :, 0, 0]
            tensors["classifier.bias"] = conv.bias
            continue
        weight = conv.weight
        if layer.name == "segmentation_head.conv_projection" and network.concat_swapped:
            half = weight.shape[1] // 2  # the graph's channels are [aspp, pool]; transformers' [pool, aspp]
            weight = np.concatenate([weight[:, half:], weight[:, :half]], axis=1)
        tensors[f"{layer.name}.convolution.weight"] = weight
        if layer.norm_eps is None:  # the DeepLab classifier: conv with bias, no BatchNorm
            tensors[f"{layer.name}.convolution.bias"] = conv.bias
        else:
            bias = np.zeros(weight.shape[0], np.float32) if conv.bias is None else conv.bias
            for key, value in batch_norm_identity(weight.shape[0], layer.norm_eps, bias).items():
                tensors[f"{layer.name}.normalization.{key}"] = value
    return tensors


def fit_tflite_config(network: Network, graph: Graph, tensors, id2label):
    """The config whose network has exactly the graph's shapes; input size and output stride from the graph."""
    shapes = {k: v.shape for k, v in tensors.items()}
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
    return fit_config(model_class, shapes, fixed, search, graph.path, ignore=_skipped_keys(network.family))


def _skipped_keys(family: str) -> tuple[str, ...]:
    return tuple(f"{m}.{p}" for m in SKIPPED.get(family, ())
                 for p in ("convolution.weight", "normalization.weight", "normalization.bias",
                           "normalization.running_mean", "normalization.running_var",
                           "normalization.num_batches_tracked"))


def check_structure(network: Network, graph: Graph, model) -> None:
    """Every conv's stride, dilation, groups, padding and activation, and the wiring, as in `model`."""
    layers = [layer for layer in model.conv_layers() if layer.name not in SKIPPED.get(network.family, ())]
    for layer, conv in zip(layers, network.backbone + network.head):
        o = conv.op.options
        found = {"stride": o["stride"], "dilation": o["dilation"], "depthwise": conv.op.kind == "DEPTHWISE_CONV_2D",
                 "activation": conv.activation, "padding": "SAME" if o["padding"] == SAME or layer.kernel_size == 1 else "VALID"}
        expected = {"stride": (layer.stride,) * 2, "dilation": (layer.dilation,) * 2, "depthwise": layer.kind == "depthwise",
                    "activation": layer.activation, "padding": "SAME"}
        for field, value in expected.items():
            if found[field] != value:
                raise ConversionError(f"{graph.path}: op {conv.op.index} ({conv.op.kind}) maps onto {layer.name} but has "
                                      f"{field} {found[field]}, expected {value}")
    _check_backbone_wiring(network, graph, model)
    if network.family != "deeplab":
        logits = network.head[0]
        if logits.activation is not None or logits.weight.shape[2:] != (1, 1) or logits.bias is None:
            raise ConversionError(f"{graph.path}: op {logits.op.index} is not a linear 1x1 logits conv with bias")


def _check_backbone_wiring(network: Network, graph: Graph, model) -> None:
    """Each conv reads the previous output; residual ADDs exactly where transformers has them."""
    backbone = getattr(model, "mobilenet_v2", getattr(model, "mobilenet_v1", None))
    residual = {block.reduce_1x1.name: block.use_residual for block in getattr(backbone, "layer", [])
                if hasattr(block, "use_residual")}
    layers = [layer for layer in model.conv_layers() if layer.name not in SKIPPED.get(network.family, ())]
    current, block_input, residual_adds = graph.origin(graph.inputs[0]), None, 0
    for layer, conv in zip(layers, network.backbone):
        if graph.origin(conv.input) != current:
            raise ConversionError(f"{graph.path}: op {conv.op.index} ({layer.name}) does not read the previous layer's output")
        if layer.name.endswith("expand_1x1"):
            block_input = current
        current = conv.output
        # The residual: an ADD of this output and the block's input (the output also feeds the next
        # block's ADD as *its* block input, which is not this block's residual).
        adds = [op for op in graph.consumers(current) if op.kind == "ADD"
                and sorted(graph.origin(t) for t in op.inputs) == sorted([current, block_input])]
        if bool(adds) != residual.get(layer.name, False):
            raise ConversionError(f"{graph.path}: op {conv.op.index} ({layer.name}) is {'' if adds else 'not '}followed by a "
                                  f"residual ADD, transformers {'has none' if adds else 'adds the block input'} there")
        if adds:
            if adds[0].options["activation"]:
                raise ConversionError(f"{graph.path}: residual ADD op {adds[0].index} has an activation, transformers' has none")
            residual_adds += 1
            current = adds[0].outputs[0]
    if current != network.feature:
        raise ConversionError(f"{graph.path}: the global average pool does not read the backbone's last output")
    all_adds = sum(op.kind == "ADD" for op in graph.ops)
    if all_adds != residual_adds:
        raise ConversionError(f"{graph.path}: has {all_adds} ADD ops, {residual_adds} of them residuals where transformers has them")


def graph_notes(network: Network, graph: Graph) -> dict:
    """What the provenance records about the graph: quantization, input encoding, what the output is."""
    weights = [graph.tensors[graph.origin(c.op.inputs[1])] for c in network.backbone + network.head]
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
    }
    if input_tensor.quantized:
        notes["input"].update(scale=float(input_tensor.scale[0]), zero_point=int(input_tensor.zero_point[0]))
    resizes = [op for op in graph.ops if op.kind == "RESIZE_BILINEAR" and op.index > network.head[-1].op.index]
    output = graph.tensors[graph.outputs[0]]
    produced_by = graph.producer(output.index)
    if network.family == "deeplab":
        what = "argmax of the logits" if produced_by is not None and produced_by.kind == "ARG_MAX" else "logits"
        aligned = sorted({op.options["align_corners"] for op in resizes})
        notes["graph_output"] = (f"{what} resized bilinearly (align_corners={aligned[0] if len(aligned) == 1 else aligned}) "
                                 f"to {list(output.shape[1:3])}")
        notes["conv_1x1"] = "absent from the TFLite graph (the DeepLab head does not use it); stored as zeros"
    else:
        notes["graph_output"] = "softmax of the logits" if produced_by is not None and produced_by.kind == "SOFTMAX" else "logits"
    return notes


# --------------------------------------------------------------------------------------------------
# the importer
# --------------------------------------------------------------------------------------------------

def import_tflite(src, out, labels=None, overwrite: bool = False) -> Path:
    """Convert a TFLite MobileNet V1 / V2 / DeepLabV3 file (float or quantized) into a mobilenet-np weights file.

    `labels`: optional text file, one class name per line (see weights_tools/labels.py). Returns `out`.
    Raises ConversionError (naming the file) for anything else; `out` is written atomically and an
    existing one only replaced with overwrite=True.
    """
    src = Path(src)
    graph = read_graph(src)
    network = recognise(graph)
    tensors = network_tensors(network, graph)
    id2label = id2label_or_default(labels, network.head[-1].weight.shape[0])
    config = fit_tflite_config(network, graph, tensors, id2label)
    model_class = MODEL_CLASSES[network.family]
    model = model_class(config, seed=None)
    check_structure(network, graph, model)
    shapes = model.parameter_shapes()
    for module in SKIPPED.get(network.family, ()):  # e.g. DeepLab's unused conv_1x1: zeros
        weight_shape = shapes[f"{module}.convolution.weight"]
        tensors[f"{module}.convolution.weight"] = np.zeros(weight_shape, np.float32)
        for key, value in batch_norm_identity(weight_shape[0], config.layer_norm_eps).items():
            tensors[f"{module}.normalization.{key}"] = value
    notes = graph_notes(network, graph)
    if labels is not None:
        notes["labels_file"] = Path(labels).name
    return save_imported(out, model_class, config, tensors, source=src, converter="weights_tools.import_tflite",
                         notes=notes, overwrite=overwrite)


def register(subparsers) -> None:
    register_import_command(subparsers, "import-tflite", import_tflite,
                            "TFLite MobileNet V1/V2 or DeepLabV3-MobileNetV2 files (float or quantized)",
                            "a .tflite MobileNet V1, MobileNet V2 or DeepLabV3 MobileNetV2 flatbuffer")
