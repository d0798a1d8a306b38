"""Reading a .tflite flatbuffer into plain Python: tensors (with their constant data and quantization), ops.

The file is read with the `tflite` package (the generated flatbuffer schema classes), never by hand.
Only the first subgraph is read; ops come in execution order. A tensor's quantization is one scale and
zero point per tensor, or one per index along `quantized_dimension` (`axis`, TFLite's layout: 0 for
CONV_2D / FULLY_CONNECTED weights, 3 for DEPTHWISE_CONV_2D weights), real = (q - zero_point) * scale.
"""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

import numpy as np

from mobilenet_np.errors import ConversionError

# Ops a MobileNet / DeepLab graph may contain (TF1/slim and TF2/Keras converters). Anything else means
# another network.
CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D")
PASS_THROUGH_OPS = ("QUANTIZE", "DEQUANTIZE", "PAD")  # requantization or a border: the same values
SHAPE_OPS = ("SHAPE", "STRIDED_SLICE", "PACK")        # Keras' dynamic reshape: int32 shape arithmetic only
KNOWN_OPS = CONV_OPS + PASS_THROUGH_OPS + SHAPE_OPS + (
    "ADD", "AVERAGE_POOL_2D", "MEAN", "FULLY_CONNECTED", "RESHAPE", "SQUEEZE", "SOFTMAX", "RESIZE_BILINEAR",
    "CONCATENATION", "ARG_MAX")
NUMPY_TYPES = {"FLOAT32": np.float32, "FLOAT16": np.float16, "FLOAT64": np.float64, "INT8": np.int8,
               "UINT8": np.uint8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64}

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
        """The tensor before any QUANTIZE / DEQUANTIZE / PAD ops (they change the encoding or add a border of
        zeros, not the values the network computes)."""
        op = self.producer(tensor)
        while op is not None and op.kind in PASS_THROUGH_OPS:
            tensor = op.inputs[0]
            op = self.producer(tensor)
        return tensor

    def constant(self, tensor: int, op: "Op | None" = None) -> np.ndarray:
        """A constant tensor's real values as float32 (dequantized; through a DEQUANTIZE op if there is one).
        `op`: the op reading it, named in errors."""
        t = self.tensors[self.origin(tensor)]
        where = f"op {op.index} ({op.kind}): " if op is not None else ""
        if t.data is None:
            raise ConversionError(f"{self.path}: {where}tensor {t.index} ({t.name!r}) should be a constant but has no data")
        if t.scale is not None and t.scale.size > 1 and (t.axis >= t.data.ndim or t.data.shape[t.axis] != t.scale.size):
            raise ConversionError(f"{self.path}: {where}tensor {t.index} ({t.name!r}) has {t.scale.size} per-channel "
                                  f"scales along quantized_dimension {t.axis} of shape {t.data.shape}")
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
               "RESIZE_BILINEAR": tflite.ResizeBilinearOptions, "CONCATENATION": tflite.ConcatenationOptions,
               "FULLY_CONNECTED": tflite.FullyConnectedOptions, "MEAN": tflite.ReducerOptions,
               "SOFTMAX": tflite.SoftmaxOptions, "ARG_MAX": tflite.ArgMaxOptions}
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
    if kind == "MEAN":
        result["keep_dims"] = bool(options.KeepDims())
    if kind == "SOFTMAX":
        result["beta"] = float(options.Beta())
    if kind == "ARG_MAX":
        result["output_type"] = _names(tflite.TensorType).get(options.OutputType(), str(options.OutputType()))
    if kind in CONV_OPS + ("ADD", "CONCATENATION", "FULLY_CONNECTED", "AVERAGE_POOL_2D"):
        result["activation"] = options.FusedActivationFunction()
    if kind == "AVERAGE_POOL_2D":
        result["stride"] = (options.StrideH(), options.StrideW())
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
