"""`import-tflite`: TFLite MobileNet V1 / V2 / DeepLabV3 files -> mobilenet-np weights, checked against the
TFLite interpreter (ai_edge_litert) running the same files.

* Float DeepLabV3 (deeplabv3_257_mv_gpu): the interpreter's output (logits resized bilinearly with
  align_corners=True to 257x257) and its 33x33 logits must equal mobilenet_np's within float32 rounding.
* Quantized files (uint8): mobilenet_np runs the float emulation (dequantized weights, float
  arithmetic); it must agree with the interpreter's dequantized logits within a few output
  quantization steps, pick the same top-1 class on the real images, and the same DeepLab class for
  almost every pixel.
* Real images: the ImageNet classifiers put a cat first on cat.bmp; the DeepLab models label the bird
  in bird_segmentation.bmp "bird" with a mask close to the ground truth (IoU printed and asserted).
* Per-channel int8 weights (none of the real files has them): a two-op graph written here with the
  `tflite` flatbuffer builders; the importer's dequantized OIHW weights must reproduce the
  interpreter's CONV_2D and DEPTHWISE_CONV_2D. The same graph is refused as "not a MobileNet".
* Bad files (not TFLite, truncated, HDF5) raise ConversionError naming the file and write nothing.

Preprocessing here is a plain PIL bilinear resize to the model's input size and x / 127.5 - 1 (the
quantized graphs take uint8 pixels q with real value (q - 128) / 128; mobilenet_np gets exactly that).
"""

from __future__ import annotations

import warnings

import flatbuffers
import numpy as np
import pytest
import tflite
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from PIL import Image

import mobilenet_np
from mobilenet_np import ops
from mobilenet_np.commandline import build_parser, run_command
from mobilenet_np.errors import ConversionError, OutputExistsError
from weights_tools.import_tflite import conv_from_op, dequantize, import_tflite, read_graph, recognise

FILES = {  # file -> labels file (the facts about each file are in shared/data/SOURCES.md)
    "mobilenet_v1_0.5_160_quant.tflite": "imagenet_labels.txt",
    "mobilenet_v2_1.0_224_quant.tflite": "imagenet_labels.txt",
    "deeplabv3_mnv2_pascal_quant.tflite": "pascal_voc_segmentation_labels.txt",
    "deeplabv3_257_mv_gpu.tflite": "pascal_voc_segmentation_labels.txt",
}
IMAGES = ["cat.bmp", "bird.bmp", "bird_segmentation.bmp"]

# Float graph vs mobilenet_np, both float32: summation order only (~1e-6 relative per layer, ~60 layers).
FLOAT_RTOL = 1e-4
# Quantized graph vs its float emulation: every one of ~30-70 layers rounds its output to 8 bits (half a
# step of its scale) and those errors propagate; measured up to ~6 steps of the logits' scale. A wrong
# weight, bias or layout moves logits by many units and changes the top-1 class.
QUANT_MAX_STEPS = 8
# Quantized DeepLab: pixels where the argmax of the float emulation may differ (class borders), measured 0.1%.
MIN_PIXEL_AGREEMENT = 0.99
MIN_IOU = 0.8  # measured 0.86 (257 float, 0.5 width) and 0.92 (513 quantized)


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------

def interpreter(model, preserve: bool = False) -> Interpreter:
    """A TFLite interpreter for a file path or flatbuffer bytes; `preserve` keeps intermediate tensors readable
    (with the reference kernels: a delegate would fuse them away)."""
    kwargs = dict(model_path=str(model)) if not isinstance(model, bytes) else dict(model_content=model)
    if preserve:
        kwargs.update(experimental_preserve_all_tensors=True,
                      experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "preserve_all_tensors is for debugging"
        it = Interpreter(**kwargs)
    it.allocate_tensors()
    return it


def real_tensor(it: Interpreter, index: int) -> np.ndarray:
    """An interpreter tensor's real values (dequantized if it is quantized), float64."""
    details = next(d for d in it.get_tensor_details() if d["index"] == index)
    values = it.get_tensor(index).astype(np.float64)
    scale, zero_point = details["quantization"]
    return (values - zero_point) * scale if scale else values


def run_tflite(path, image_u8: np.ndarray) -> tuple[Interpreter, np.ndarray]:
    """Run a file on one (H, W, 3) uint8 image; returns the interpreter and mobilenet_np's matching input (1, 3, H, W)."""
    it = interpreter(path, preserve=True)
    source = it.get_input_details()[0]
    if source["dtype"] == np.uint8:   # quantized input: real = (q - 128) / 128
        scale, zero_point = source["quantization"]
        it.set_tensor(source["index"], image_u8[None])
        pixels = (image_u8.astype(np.float32) - zero_point) * np.float32(scale)
    else:
        pixels = image_u8.astype(np.float32) / 127.5 - 1
        it.set_tensor(source["index"], pixels[None])
    it.invoke()
    return it, pixels.transpose(2, 0, 1)[None]


def load_image(path, size: int) -> np.ndarray:
    image = Image.open(path).convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    return np.asarray(image)


@pytest.fixture(scope="module")
def imported(shared_data, tmp_path_factory):
    """Every real TFLite file imported once: file name -> (source path, mobilenet_np model)."""
    folder = tmp_path_factory.mktemp("tflite")
    models = {}
    for name, labels in FILES.items():
        source = shared_data / "weights" / "tflite" / name
        out = import_tflite(source, folder / name.replace(".tflite", ".h5"), labels=shared_data / "labels" / labels)
        models[name] = (source, mobilenet_np.load(out))
    return models


# --------------------------------------------------------------------------------------------------
# what the importer infers from the graphs
# --------------------------------------------------------------------------------------------------

# architecture, depth_multiplier, input size, output stride, classes: as SOURCES.md describes the files.
DESCRIBED = {
    "mobilenet_v1_0.5_160_quant.tflite": ("MobileNetV1ForImageClassification", 0.5, 160, None, 1001),
    "mobilenet_v2_1.0_224_quant.tflite": ("MobileNetV2ForImageClassification", 1.0, 224, 32, 1001),
    "deeplabv3_mnv2_pascal_quant.tflite": ("MobileNetV2ForSemanticSegmentation", 1.0, 513, 16, 21),
    "deeplabv3_257_mv_gpu.tflite": ("MobileNetV2ForSemanticSegmentation", 0.5, 257, 8, 21),
}


@pytest.mark.parametrize("name", FILES)
def test_config_inferred_from_the_graph(imported, shared_data, name):
    _, model = imported[name]
    c = model.config
    architecture, width, size, stride, classes = DESCRIBED[name]
    assert (type(model).__name__, c.depth_multiplier, c.image_size, c.num_labels) == (architecture, width, size, classes)
    assert getattr(c, "output_stride", None) == stride
    labels_file = (shared_data / "labels" / FILES[name]).read_text().split("\n\n")[0].splitlines()
    assert c.id2label == dict(enumerate(labels_file))
    if name == "deeplabv3_257_mv_gpu.tflite":  # TF DeepLab rounds channels to multiples of 1 at width 0.5
        assert c.depth_divisible_by == 1
    # BatchNorm folded: stored as weight 1, mean 0, running_var + eps == 1 exactly (float32), bias = folded bias.
    for layer in model.conv_layers():
        if layer.norm_eps is not None:
            p = f"{layer.name}.normalization."
            assert np.all(model.params[p + "weight"] == 1) and np.all(model.params[p + "running_mean"] == 0)
            assert np.all(model.params[p + "running_var"] + np.float32(layer.norm_eps) == np.float32(1)), layer.name
    provenance = model.metadata["provenance"]
    assert provenance["source"] == name and "folded" in provenance["batch_norm"]


# --------------------------------------------------------------------------------------------------
# agreement with the TFLite interpreter, and the real images
# --------------------------------------------------------------------------------------------------

def test_float_deeplab_equals_the_interpreter(imported, shared_data):
    source, model = imported["deeplabv3_257_mv_gpu.tflite"]
    graph = read_graph(source)
    image = load_image(shared_data / "images" / "bird_segmentation.bmp", 257)
    it, pixels = run_tflite(source, image)

    logits = model(pixels).logits                                                     # (1, 21, 33, 33)
    upsampled = ops.interpolate_bilinear(logits, (257, 257), align_corners=True)      # as the graph's RESIZE_BILINEAR
    graph_output = it.get_tensor(it.get_output_details()[0]["index"]).transpose(0, 3, 1, 2)  # (1, 21, 257, 257)
    graph_logits = real_tensor(it, recognise(graph).head[-1].output).transpose(0, 3, 1, 2)    # (1, 21, 33, 33)

    scale = max(1.0, float(np.abs(graph_output).max()))
    diff_logits = float(np.abs(logits - graph_logits).max())
    diff_output = float(np.abs(upsampled - graph_output).max())
    print(f"\n{source.name}: max |mobilenet_np - TFLite| = {diff_logits:.2e} on the 33x33 logits, {diff_output:.2e} on "
          f"the 257x257 output (logits up to {scale:.1f}); argmax agreement "
          f"{np.mean(upsampled.argmax(1) == graph_output.argmax(1)):.4f}")
    assert diff_logits <= FLOAT_RTOL * scale
    assert diff_output <= FLOAT_RTOL * scale


@pytest.mark.parametrize("name", ["mobilenet_v1_0.5_160_quant.tflite", "mobilenet_v2_1.0_224_quant.tflite"])
def test_quantized_classifier_float_emulation_and_cat(imported, shared_data, name):
    source, model = imported[name]
    graph = read_graph(source)
    logits_tensor = graph.producer(graph.outputs[0]).inputs[0]  # the SOFTMAX's input: (1, 1001) logits
    step = float(graph.tensors[logits_tensor].scale[0])
    size = model.config.image_size
    for image_name in IMAGES:
        it, pixels = run_tflite(source, load_image(shared_data / "images" / image_name, size))
        reference = real_tensor(it, logits_tensor)[0]           # (1001,) dequantized uint8 logits
        logits = model(pixels).logits[0]                         # (1001,) float emulation
        top, reference_top = int(logits.argmax()), int(reference.argmax())
        steps = float(np.abs(logits - reference).max()) / step
        print(f"\n{name} {image_name}: top-1 {model.config.id2label[top]!r} p={ops.softmax(logits)[top]:.3f} "
              f"(interpreter: {model.config.id2label[reference_top]!r}); max |float emulation - TFLite| = "
              f"{steps:.1f} steps of {step:.3f}")
        assert top == reference_top
        assert steps <= QUANT_MAX_STEPS
        if image_name == "cat.bmp":
            assert "cat" in model.config.id2label[top]


def bird_iou(model, logits, mask) -> tuple[float, dict[str, int]]:
    """IoU of the pixels labelled "bird" (logits upsampled to the mask's size) with the ground-truth mask,
    and the pixel count of every foreground class."""
    labels = ops.interpolate_bilinear(logits, mask.shape, align_corners=True)[0].argmax(0)  # (513, 513)
    bird = labels == model.config.label2id["bird"]
    classes, counts = np.unique(labels[labels != 0], return_counts=True)
    return float((bird & mask).sum() / (bird | mask).sum()), {model.config.id2label[int(c)]: int(n) for c, n in zip(classes, counts)}


@pytest.mark.parametrize("name", ["deeplabv3_mnv2_pascal_quant.tflite", "deeplabv3_257_mv_gpu.tflite"])
def test_deeplab_segments_the_bird(imported, shared_data, name):
    source, model = imported[name]
    mask = np.asarray(Image.open(shared_data / "images" / "bird_segmentation_mask.bmp")) > 0   # (513, 513)
    size = model.config.image_size
    it, pixels = run_tflite(source, load_image(shared_data / "images" / "bird_segmentation.bmp", size))
    logits = model(pixels).logits                                                             # (1, 21, h, w)
    iou, foreground = bird_iou(model, logits, mask)
    print(f"\n{name}: bird IoU {iou:.3f} vs the ground-truth mask; foreground pixels {foreground}")
    assert max(foreground, key=foreground.get) == "bird"
    assert iou >= MIN_IOU

    if name == "deeplabv3_mnv2_pascal_quant.tflite":  # the graph ends in resize + argmax: compare labels
        graph = read_graph(source)
        graph_labels = it.get_tensor(it.get_output_details()[0]["index"])[0]                 # (513, 513) int64
        labels = ops.interpolate_bilinear(logits, (513, 513), align_corners=True)[0].argmax(0)
        reference = real_tensor(it, recognise(graph).head[-1].output)[0].transpose(2, 0, 1)   # (21, 33, 33)
        step = float(graph.tensors[recognise(graph).head[-1].output].scale[0])
        agreement = float(np.mean(labels == graph_labels))
        graph_bird = graph_labels == model.config.label2id["bird"]
        graph_iou = float((graph_bird & mask).sum() / (graph_bird | mask).sum())
        steps = float(np.abs(logits[0] - reference).max()) / step
        print(f"  pixel agreement with the interpreter's argmax {agreement:.4f}; interpreter bird IoU {graph_iou:.3f}; "
              f"max |float emulation - TFLite| on the 33x33 logits = {steps:.1f} steps of {step:.3f}")
        assert agreement >= MIN_PIXEL_AGREEMENT
        assert steps <= QUANT_MAX_STEPS


# --------------------------------------------------------------------------------------------------
# per-channel int8 weights: a small graph built with the flatbuffer schema's builders
# --------------------------------------------------------------------------------------------------

def build_tflite(tensors: list[dict], operators: list[dict], inputs: list[int], outputs: list[int]) -> bytes:
    """A one-subgraph TFLite flatbuffer.

    tensors: dicts with name, shape, type (tflite.TensorType), optional data (constants), and for
    quantized tensors scale, zero_point, axis. operators: dicts with code (tflite.BuiltinOperator),
    inputs, outputs and options = (options table name, {field: value}) if the op has options.
    """
    b = flatbuffers.Builder(1024)
    int_vector = lambda values: b.CreateNumpyVector(np.asarray(values, np.int32))  # noqa: E731

    def table_vector(start, offsets):
        start(b, len(offsets))
        for offset in reversed(offsets):
            b.PrependUOffsetTRelative(offset)
        return b.EndVector()

    buffers = []
    for data in [None] + [t.get("data") for t in tensors]:  # buffer 0: the empty one, by convention
        raw = None if data is None else b.CreateNumpyVector(np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8))
        tflite.BufferStart(b)
        if raw is not None:
            tflite.BufferAddData(b, raw)
        buffers.append(tflite.BufferEnd(b))
    tensor_offsets = []
    for i, t in enumerate(tensors):
        name, shape = b.CreateString(t["name"]), int_vector(t["shape"])
        quantization = None
        if t.get("scale") is not None:
            scale = b.CreateNumpyVector(np.asarray(t["scale"], np.float32))
            zero_point = b.CreateNumpyVector(np.asarray(t["zero_point"], np.int64))
            tflite.QuantizationParametersStart(b)
            tflite.QuantizationParametersAddScale(b, scale)
            tflite.QuantizationParametersAddZeroPoint(b, zero_point)
            tflite.QuantizationParametersAddQuantizedDimension(b, t.get("axis", 0))
            quantization = tflite.QuantizationParametersEnd(b)
        tflite.TensorStart(b)
        tflite.TensorAddShape(b, shape)
        tflite.TensorAddType(b, t["type"])
        tflite.TensorAddBuffer(b, i + 1 if t.get("data") is not None else 0)
        tflite.TensorAddName(b, name)
        if quantization is not None:
            tflite.TensorAddQuantization(b, quantization)
        tensor_offsets.append(tflite.TensorEnd(b))
    codes = sorted({op["code"] for op in operators})
    code_offsets = []
    for code in codes:
        tflite.OperatorCodeStart(b)
        tflite.OperatorCodeAddBuiltinCode(b, code)
        tflite.OperatorCodeAddDeprecatedBuiltinCode(b, code)
        tflite.OperatorCodeAddVersion(b, 3)  # version 3: int8 per-channel kernels
        code_offsets.append(tflite.OperatorCodeEnd(b))
    operator_offsets = []
    for op in operators:
        table, fields = op.get("options") or (None, {})
        if table is not None:
            getattr(tflite, f"{table}Start")(b)
            for field, value in fields.items():
                getattr(tflite, f"{table}Add{field}")(b, value)
            options = getattr(tflite, f"{table}End")(b)
        op_inputs, op_outputs = int_vector(op["inputs"]), int_vector(op["outputs"])
        tflite.OperatorStart(b)
        tflite.OperatorAddOpcodeIndex(b, codes.index(op["code"]))
        tflite.OperatorAddInputs(b, op_inputs)
        tflite.OperatorAddOutputs(b, op_outputs)
        if table is not None:
            tflite.OperatorAddBuiltinOptionsType(b, getattr(tflite.BuiltinOptions, table))
            tflite.OperatorAddBuiltinOptions(b, options)
        operator_offsets.append(tflite.OperatorEnd(b))
    tensor_vector = table_vector(tflite.SubGraphStartTensorsVector, tensor_offsets)
    operator_vector = table_vector(tflite.SubGraphStartOperatorsVector, operator_offsets)
    input_vector, output_vector = int_vector(inputs), int_vector(outputs)
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, tensor_vector)
    tflite.SubGraphAddOperators(b, operator_vector)
    tflite.SubGraphAddInputs(b, input_vector)
    tflite.SubGraphAddOutputs(b, output_vector)
    subgraphs = table_vector(tflite.ModelStartSubgraphsVector, [tflite.SubGraphEnd(b)])
    code_vector = table_vector(tflite.ModelStartOperatorCodesVector, code_offsets)
    buffer_vector = table_vector(tflite.ModelStartBuffersVector, buffers)
    description = b.CreateString("test graph")
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, 3)
    tflite.ModelAddOperatorCodes(b, code_vector)
    tflite.ModelAddSubgraphs(b, subgraphs)
    tflite.ModelAddBuffers(b, buffer_vector)
    tflite.ModelAddDescription(b, description)
    b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


SAME_CONV = dict(Padding=0, StrideH=1, StrideW=1, DilationHFactor=1, DilationWFactor=1, FusedActivationFunction=0)


def per_channel_graph(rng) -> bytes:
    """int8 input (1, 8, 8, 3) -> CONV_2D 3x3 (6 channels) -> DEPTHWISE_CONV_2D 3x3, weights int8 per channel."""
    int8, int32 = tflite.TensorType.INT8, tflite.TensorType.INT32
    conv_scale, depthwise_scale = rng.uniform(0.001, 0.004, 6), rng.uniform(0.005, 0.02, 6)
    x_scale, middle_scale, y_scale = 0.02, 0.05, 0.1
    tensors = [
        dict(name="x", shape=(1, 8, 8, 3), type=int8, scale=[x_scale], zero_point=[3]),
        dict(name="conv_weight", shape=(6, 3, 3, 3), type=int8, data=rng.integers(-127, 128, (6, 3, 3, 3), dtype=np.int8),
             scale=conv_scale, zero_point=np.zeros(6), axis=0),                             # OHWI, per output channel
        dict(name="conv_bias", shape=(6,), type=int32, data=rng.integers(-500, 500, 6, dtype=np.int32),
             scale=x_scale * conv_scale, zero_point=np.zeros(6)),
        dict(name="middle", shape=(1, 8, 8, 6), type=int8, scale=[middle_scale], zero_point=[-5]),
        dict(name="depthwise_weight", shape=(1, 3, 3, 6), type=int8, data=rng.integers(-127, 128, (1, 3, 3, 6), dtype=np.int8),
             scale=depthwise_scale, zero_point=np.zeros(6), axis=3),                        # 1HWC, per channel
        dict(name="depthwise_bias", shape=(6,), type=int32, data=rng.integers(-500, 500, 6, dtype=np.int32),
             scale=middle_scale * depthwise_scale, zero_point=np.zeros(6)),
        dict(name="y", shape=(1, 8, 8, 6), type=int8, scale=[y_scale], zero_point=[2]),
    ]
    operators = [dict(code=tflite.BuiltinOperator.CONV_2D, inputs=[0, 1, 2], outputs=[3], options=("Conv2DOptions", SAME_CONV)),
                 dict(code=tflite.BuiltinOperator.DEPTHWISE_CONV_2D, inputs=[3, 4, 5], outputs=[6],
                      options=("DepthwiseConv2DOptions", dict(SAME_CONV, DepthMultiplier=1)))]
    return build_tflite(tensors, operators, [0], [6])


def test_per_channel_int8_weights_reproduce_the_interpreter(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "per_channel.tflite"
    path.write_bytes(per_channel_graph(rng))
    it = interpreter(path, preserve=True)
    it.set_tensor(0, rng.integers(-128, 128, (1, 8, 8, 3), dtype=np.int8))
    it.invoke()

    graph = read_graph(path)
    conv, depthwise = (conv_from_op(graph, op) for op in graph.ops)
    assert conv.weight.shape == (6, 3, 3, 3) and depthwise.weight.shape == (6, 1, 3, 3)  # OIHW
    for layer, x_index, y_index, groups in ((conv, 0, 3, 1), (depthwise, 3, 6, 6)):
        x = real_tensor(it, x_index).astype(np.float32).transpose(0, 3, 1, 2)          # (1, C, 8, 8)
        expected = real_tensor(it, y_index).transpose(0, 3, 1, 2)
        ours = ops.conv2d(ops.pad_tf_same(x, 3, 1), layer.weight, layer.bias, groups=groups)
        step = float(graph.tensors[y_index].scale[0])
        low, high = graph.tensors[y_index].real_range()
        assert np.mean((ours < low) | (ours > high)) < 0.05  # hardly any saturation, so values are compared
        # the interpreter rounds its output to a step: within one step (rounding + fixed-point rescaling)
        assert np.abs(np.clip(ours, low, high) - expected).max() <= step, layer.op.kind


def test_float16_weights_behind_dequantize_reproduce_the_interpreter(tmp_path):
    """float16 weights -> DEQUANTIZE -> CONV_2D (how float16-quantized files store weights)."""
    rng = np.random.default_rng(2)
    f16, f32 = tflite.TensorType.FLOAT16, tflite.TensorType.FLOAT32
    tensors = [dict(name="x", shape=(1, 6, 6, 3), type=f32),
               dict(name="weight16", shape=(4, 3, 3, 3), type=f16, data=rng.normal(size=(4, 3, 3, 3)).astype(np.float16)),
               dict(name="weight", shape=(4, 3, 3, 3), type=f32),
               dict(name="bias", shape=(4,), type=f32, data=rng.normal(size=4).astype(np.float32)),
               dict(name="y", shape=(1, 6, 6, 4), type=f32)]
    operators = [dict(code=tflite.BuiltinOperator.DEQUANTIZE, inputs=[1], outputs=[2]),
                 dict(code=tflite.BuiltinOperator.CONV_2D, inputs=[0, 2, 3], outputs=[4], options=("Conv2DOptions", SAME_CONV))]
    path = tmp_path / "float16.tflite"
    path.write_bytes(build_tflite(tensors, operators, [0], [4]))
    x = rng.normal(size=(1, 6, 6, 3)).astype(np.float32)
    it = interpreter(path)
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()

    graph = read_graph(path)
    conv = conv_from_op(graph, graph.ops[1])
    ours = ops.conv2d(ops.pad_tf_same(x.transpose(0, 3, 1, 2), 3, 1), conv.weight, conv.bias)
    expected = it.get_tensor(it.get_output_details()[0]["index"]).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(ours, expected, atol=1e-5 * np.sqrt(27) * max(1.0, np.abs(expected).max()), rtol=0)


@pytest.mark.parametrize("zero_point, scale, expected", [(0, 6 / 255, "relu6"), (0, 10 / 255, None), (10, 6 / 255, None)])
def test_relu6_implied_by_a_0_to_6_output_range(tmp_path, zero_point, scale, expected):
    uint8, int32 = tflite.TensorType.UINT8, tflite.TensorType.INT32
    tensors = [dict(name="x", shape=(1, 4, 4, 2), type=uint8, scale=[0.05], zero_point=[128]),
               dict(name="weight", shape=(2, 1, 1, 2), type=uint8, data=np.full((2, 1, 1, 2), 130, np.uint8),
                    scale=[0.01], zero_point=[128]),
               dict(name="bias", shape=(2,), type=int32, data=np.zeros(2, np.int32), scale=[0.0005], zero_point=[0]),
               dict(name="y", shape=(1, 4, 4, 2), type=uint8, scale=[scale], zero_point=[zero_point])]
    operators = [dict(code=tflite.BuiltinOperator.CONV_2D, inputs=[0, 1, 2], outputs=[3], options=("Conv2DOptions", SAME_CONV))]
    path = tmp_path / "conv.tflite"
    path.write_bytes(build_tflite(tensors, operators, [0], [3]))
    graph = read_graph(path)
    assert conv_from_op(graph, graph.ops[0]).activation == expected


def test_dequantize_per_tensor_and_per_channel():
    rng = np.random.default_rng(1)
    q = rng.integers(-128, 128, (4, 3, 3, 5)).astype(np.int8)
    scale, zero_point = rng.uniform(0.01, 0.1, 5), rng.integers(-10, 10, 5)
    per_channel = dequantize(q, scale, zero_point, axis=3)
    for c in range(5):
        np.testing.assert_allclose(per_channel[..., c], (q[..., c].astype(np.float64) - zero_point[c]) * scale[c], rtol=1e-6)
    per_tensor = dequantize(q.astype(np.uint8), scale[:1], zero_point[:1])
    np.testing.assert_allclose(per_tensor, (q.astype(np.uint8) - float(zero_point[0])) * scale[0], rtol=1e-6)
    floats = rng.normal(size=(2, 3)).astype(np.float32)
    assert dequantize(floats, None, None).dtype == np.float32 and np.array_equal(dequantize(floats, None, None), floats)


# --------------------------------------------------------------------------------------------------
# refusing what is not a MobileNet, never leaving OUT behind
# --------------------------------------------------------------------------------------------------

def test_bad_files_raise_conversion_error_and_write_nothing(tmp_path, shared_data):
    real = (shared_data / "weights" / "tflite" / "mobilenet_v1_0.5_160_quant.tflite").read_bytes()
    cases = {"per_channel.tflite": (per_channel_graph(np.random.default_rng(0)), "expected one global average pool"),
             "text.tflite": (b"this is not a flatbuffer at all", "not a TFLite flatbuffer"),
             "tiny.tflite": (b"TF", "not a TFLite flatbuffer"),
             "hdf5.tflite": ((shared_data / "weights" / "keras" / "mobilenet_v1_0.25_224.h5").read_bytes(), "not a TFLite"),
             "half.tflite": (real[: len(real) // 2], "damaged|truncated"),
             "most.tflite": (real[: len(real) * 9 // 10], "damaged|truncated"),
             "head.tflite": (real[:4096], "damaged|truncated")}
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    for name, (content, message) in cases.items():
        source = tmp_path / name
        source.write_bytes(content)
        with pytest.raises(ConversionError, match=message) as caught:
            import_tflite(source, outputs / "out.h5")
        assert str(source) in str(caught.value)
        assert list(outputs.iterdir()) == [], f"{name} left {list(outputs.iterdir())}"
    with pytest.raises(ConversionError, match="no such TFLite file"):
        import_tflite(tmp_path / "absent.tflite", outputs / "out.h5")


def test_labels_mismatch_existing_output_and_command_line(tmp_path, shared_data, capsys):
    source = shared_data / "weights" / "tflite" / "mobilenet_v1_0.5_160_quant.tflite"
    voc = shared_data / "labels" / "pascal_voc_segmentation_labels.txt"
    out = tmp_path / "v1.h5"
    with pytest.raises(ConversionError, match="has 21 labels but the model has 1001 classes"):
        import_tflite(source, out, labels=voc)
    assert not out.exists()

    parser = build_parser("python -m weights_tools", "", "weights_tools", ["import_tflite"])
    assert run_command(parser, ["import-tflite", str(source), str(out)]) == 0
    assert "MobileNetV1ForImageClassification, depth_multiplier 0.5, image_size 160, 1001 labels" in capsys.readouterr().out
    before = out.read_bytes()
    with pytest.raises(OutputExistsError):
        import_tflite(source, out)
    assert out.read_bytes() == before
    assert run_command(parser, ["import-tflite", str(source), str(out), "--labels", str(voc), "--force"]) == 2
    assert "pascal_voc_segmentation_labels.txt: has 21 labels" in capsys.readouterr().err
    assert out.read_bytes() == before
