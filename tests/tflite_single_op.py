"""Single-op .tflite models built in memory, run on the LiteRT interpreter's reference kernels.

The quantized kernels of mobilenet_np are judged by TFLite's BUILTIN_REF resolver (the reference kernels,
no XNNPACK, no ruy). This helper writes a one-operator model with the flatbuffer object API of
`ai_edge_litert.schema_py_generated` (ModelT / SubGraphT / TensorT / QuantizationParametersT / OperatorT,
packed with file identifier b"TFL3") and runs it.

    x = Tensor((1, 5, 5, 3), np.uint8, scale=0.02, zero_point=128)            # a graph input (NHWC)
    w = Tensor((4, 3, 3, 3), np.uint8, scale=0.01, zero_point=120, data=w)    # a constant
    model = single_op_model("CONV_2D", [x, w, b], [y], options=("Conv2DOptions", {...}))
    (out,) = run_model(model, x_values)

Tensors are in TFLite's layout (NHWC activations, OHWI conv weights, [1, KH, KW, C*dm] depthwise
weights); the tests transpose to mobilenet_np's NCHW / OIHW.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter, OpResolverType

_TYPES = {np.dtype(np.float32): schema.TensorType.FLOAT32, np.dtype(np.int32): schema.TensorType.INT32,
          np.dtype(np.uint8): schema.TensorType.UINT8, np.dtype(np.int64): schema.TensorType.INT64,
          np.dtype(np.int8): schema.TensorType.INT8}

ACTIVATIONS = {"none": schema.ActivationFunctionType.NONE, "relu": schema.ActivationFunctionType.RELU,
               "relu6": schema.ActivationFunctionType.RELU6,
               "relu_n1_to_1": schema.ActivationFunctionType.RELU_N1_TO_1}
PADDINGS = {"same": schema.Padding.SAME, "valid": schema.Padding.VALID}


@dataclass
class Tensor:
    """One tensor of the model: shape, dtype, optional quantization, and data when it is a constant."""

    shape: tuple
    dtype: type
    scale: object = None          # float or sequence of floats (per-channel)
    zero_point: object = None     # int or sequence of ints
    axis: int = 0                 # quantized_dimension for per-channel scales
    data: np.ndarray | None = None


def _tensor_t(spec: Tensor, buffer: int, name: str):
    t = schema.TensorT()
    t.shape = list(spec.shape)
    t.type = _TYPES[np.dtype(spec.dtype)]
    t.buffer = buffer
    t.name = name
    if spec.scale is not None:
        q = schema.QuantizationParametersT()
        q.scale = [float(s) for s in np.atleast_1d(spec.scale)]
        q.zeroPoint = [int(z) for z in np.atleast_1d(spec.zero_point)]
        if len(q.zeroPoint) == 1 and len(q.scale) > 1:
            q.zeroPoint = q.zeroPoint * len(q.scale)
        q.quantizedDimension = spec.axis
        t.quantization = q
    return t


def single_op_model(op: str, inputs: list, outputs: list, options: tuple | None = None, version: int = 1) -> bytes:
    """A .tflite flatbuffer holding one builtin operator `op` (e.g. "CONV_2D").

    inputs / outputs: Tensor specs (None in inputs = an omitted optional input, index -1). Specs with
    `data` become constant buffers, the others are the graph's inputs, in order.
    options: (BuiltinOptions name, {field: value}) e.g. ("SoftmaxOptions", {"beta": 1.0}).
    """
    model = schema.ModelT()
    model.version = 3
    model.buffers = [schema.BufferT()]   # buffer 0: the empty sentinel
    graph = schema.SubGraphT()
    graph.tensors, graph.inputs = [], []

    def add(spec, name):
        buffer = 0
        if spec.data is not None:
            buf = schema.BufferT()
            buf.data = np.ascontiguousarray(spec.data, dtype=spec.dtype).tobytes()
            model.buffers.append(buf)
            buffer = len(model.buffers) - 1
        graph.tensors.append(_tensor_t(spec, buffer, name))
        index = len(graph.tensors) - 1
        if spec.data is None and not name.startswith("out"):
            graph.inputs.append(index)
        return index

    op_inputs = [-1 if spec is None else add(spec, f"in{i}") for i, spec in enumerate(inputs)]
    op_outputs = [add(spec, f"out{i}") for i, spec in enumerate(outputs)]
    graph.outputs = op_outputs

    code = schema.OperatorCodeT()
    code.builtinCode = getattr(schema.BuiltinOperator, op)
    code.deprecatedBuiltinCode = min(code.builtinCode, 127)
    code.version = version
    model.operatorCodes = [code]

    operator = schema.OperatorT()
    operator.opcodeIndex = 0
    operator.inputs, operator.outputs = op_inputs, op_outputs
    if options is not None:
        kind, fields = options
        operator.builtinOptionsType = getattr(schema.BuiltinOptions, kind)
        opts = getattr(schema, kind + "T")()
        for key, value in fields.items():
            if not hasattr(opts, key):
                raise AttributeError(f"{kind} has no field {key}")
            setattr(opts, key, value)
        operator.builtinOptions = opts
    graph.operators = [operator]
    model.subgraphs = [graph]

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def run_model(model: bytes, *arrays) -> list[np.ndarray]:
    """Run the model on the reference kernels (BUILTIN_REF); return copies of all its outputs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        it = Interpreter(model_content=model, experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
                         experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    for detail, array in zip(it.get_input_details(), arrays):
        it.set_tensor(detail["index"], np.ascontiguousarray(array, dtype=detail["dtype"]))
    it.invoke()
    return [it.get_tensor(d["index"]).copy() for d in it.get_output_details()]
