"""Integer networks (`import-tflite --quantized` + `mobilenet_np.load`) against TFLite, bit for bit.

* Every intermediate tensor of every quantized file -- the shared uint8 TF1 files (MobileNet V1 0.5-160,
  V2 1.0-224, DeepLabV3 513) and the generated TF2/Keras int8 fixtures (uint8 and int8 I/O, MEAN,
  FULLY_CONNECTED or CONV_2D classifiers, PAD + VALID) -- equals the LiteRT interpreter's with the
  reference kernels (BUILTIN_REF, all tensors preserved): max |difference| = 0 (np.array_equal), on the
  real images (cat, bird, bird_segmentation) and on random inputs; on the small fixtures also on
  hypothesis-drawn inputs. The import maps every TFLite activation tensor onto a record (the Keras
  int32 shape arithmetic aside), so "every" is checked, not assumed.
* tflite-micro (a second implementation of the reference kernels) agrees on the int8 fixtures' outputs.
* The float import of the TF2/Keras float graphs agrees with the float interpreter to 1e-4.
* Bad files: one-line ConversionErrors naming the op and the tensor.

The interpreter runs are cached per (file, input) for the module. Without ../shared the shared files
are skipped (the fixtures still run).
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from hypothesis import given, settings, strategies as st

import flatbuffers
import mobilenet_np
from mobilenet_np.cli import main
from mobilenet_np.errors import ConversionError, ShapeError, WeightsError
from mobilenet_np.formats.weights import read_weights
from mobilenet_np.image_processing import load_image
from mobilenet_np.pipelines import image_processor_for, pipeline
from mobilenet_np.quantized.network import QuantizedModel
from weights_tools.import_tflite import import_tflite

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tflite"
SHARED = ["mobilenet_v1_0.5_160_quant.tflite", "mobilenet_v2_1.0_224_quant.tflite",
          "deeplabv3_mnv2_pascal_quant.tflite"]
INT8_FIXTURES = ["keras_mobilenet_v1_0.25_96_int8_uint8io.tflite", "keras_mobilenet_v1_0.25_96_int8_int8io.tflite",
                 "keras_mobilenet_v1_0.25_112_int8_uint8io.tflite", "keras_mobilenet_v2_0.35_96_int8_uint8io.tflite"]
FLOAT_FIXTURES = ["keras_mobilenet_v1_0.25_96_float.tflite", "keras_mobilenet_v2_0.35_96_float.tflite"]
IMAGES = ["cat.bmp", "bird.bmp", "bird_segmentation.bmp"]
SEEDS = [0, 1]
# Float TFLite (reference kernels) vs the float import, float32 both: summation order only. The probabilities
# (the graph's output) agree to 1e-4 absolute, the logits to 1e-4 of their largest magnitude (measured: logits
# up to 1.1e-4 apart at magnitudes ~5, probabilities ~1e-6).
FLOAT_ATOL = 1e-4


def source_path(name: str, shared_data=None) -> Path:
    if name in SHARED:
        return shared_data / "weights" / "tflite" / name
    return FIXTURES / name


def path_of(request, name: str) -> Path:
    """The .tflite file `name`: a shared one (the test is skipped without ../shared) or a fixture."""
    return source_path(name, request.getfixturevalue("shared_data") if name in SHARED else None)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """name -> the integer model imported from it (imported once, on first use)."""
    folder = tmp_path_factory.mktemp("quantized")
    cache = {}

    def get(name: str, path: Path) -> QuantizedModel:
        if name not in cache:
            out = import_tflite(path, folder / name.replace(".tflite", ".h5"), quantized=True)
            cache[name] = mobilenet_np.load(out)
        return cache[name]
    return get


@pytest.fixture(scope="module")
def reference():
    """(path, input key, codes) -> {tensor index: value} of every tensor of one BUILTIN_REF run, cached."""
    cache = {}

    def run(path: Path, key, codes: np.ndarray) -> dict[int, np.ndarray]:
        if (path, key) not in cache:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                it = Interpreter(model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
                                 experimental_preserve_all_tensors=True)
            it.allocate_tensors()
            it.set_tensor(it.get_input_details()[0]["index"], codes)
            it.invoke()
            cache[(path, key)] = {d["index"]: it.get_tensor(d["index"]).copy() for d in it.get_tensor_details()}
        return cache[(path, key)]
    return run


def nhwc_codes(model: QuantizedModel, pixel_values: np.ndarray) -> np.ndarray:
    """The graph input's codes (NHWC) for float pixel values, as the model quantizes them."""
    seen = {}
    model.input_codes(pixel_values, lambda name, v: seen.setdefault(name, v))
    return np.ascontiguousarray(seen["pixel_values"].transpose(0, 2, 3, 1))


def random_codes(model: QuantizedModel, seed: int, kind: str = "uniform") -> np.ndarray:
    """Random NHWC codes of the graph input's dtype and size: uniform over the whole range, or a
    low-contrast image (a few codes around the zero point), or a constant."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(model.quantization["pixel_values"].dtype)
    size = model.config.image_size
    shape = (1, size, size, model.config.num_channels) if isinstance(size, int) else (1, *size, model.config.num_channels)
    info = np.iinfo(dtype)
    if kind == "uniform":
        return rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
    centre = int(model.quantization["pixel_values"].zero_point[0])
    if kind == "constant":
        return np.full(shape, rng.integers(info.min, info.max, endpoint=True), dtype)
    return np.clip(centre + rng.integers(-8, 9, shape), info.min, info.max).astype(dtype)


def compare_every_tensor(model: QuantizedModel, tensors: dict[int, np.ndarray], codes: np.ndarray):
    """Run the model on the NHWC `codes`, compare each recorded tensor with the interpreter's; return the output."""
    recorded = {}
    output = model(codes.transpose(0, 3, 1, 2), record=lambda name, value: recorded.__setitem__(name, value))
    mismatches, compared = [], 0
    for name, q in model.quantization.items():
        if q.op == "" and name != "pixel_values":
            continue                                   # weights and biases: constants, not computed
        assert name in recorded, f"{name} was never recorded"
        for index in q.source:
            expected = tensors[index]
            expected = expected.transpose(0, 3, 1, 2) if expected.ndim == 4 else expected
            ours = recorded[name]
            expected = expected.reshape(ours.shape)
            compared += 1
            if ours.dtype != expected.dtype or not np.array_equal(ours, expected):
                diff = np.abs(ours.astype(np.int64) - expected.astype(np.int64))
                mismatches.append(f"{name} (tensor {index}): max |diff| {diff.max()}, {(diff > 0).sum()} of {diff.size}")
    assert not mismatches, "\n".join(mismatches)
    return output, compared


@pytest.mark.parametrize("name", SHARED + INT8_FIXTURES)
def test_every_activation_tensor_of_the_graph_is_mapped(models, request, name):
    """The import names the graph input and every tensor an op computes (bar Keras' int32 shape arithmetic)."""
    path = path_of(request, name)
    model = models(name, path)
    mapped = {i for q in model.quantization.values() for i in q.source}
    it = Interpreter(model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    computed = {it.get_input_details()[0]["index"]}
    for op in it._get_ops_details():
        if op["op_name"] not in ("SHAPE", "STRIDED_SLICE", "PACK"):
            computed.update(op["outputs"])
    assert computed - mapped == set(), f"{name}: tensors not mapped: {sorted(computed - mapped)}"


@pytest.mark.parametrize("name", SHARED + INT8_FIXTURES)
def test_every_intermediate_tensor_on_the_real_images(models, reference, shared_data, name):
    path = source_path(name, shared_data)
    model = models(name, path)
    processor = image_processor_for(model)
    total = 0
    for image in IMAGES:
        pixel_values = processor(load_image(shared_data / "images" / image))["pixel_values"]
        codes = nhwc_codes(model, pixel_values)
        output, compared = compare_every_tensor(model, reference(path, image, codes), codes)
        total += compared
    assert total >= 3 * 30
    if model.task == "image-classification" and name in SHARED:
        assert model.config.id2label is not None


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", SHARED + INT8_FIXTURES)
def test_every_intermediate_tensor_on_random_inputs(models, reference, request, name, seed):
    if name == "deeplabv3_mnv2_pascal_quant.tflite" and seed > 0:
        pytest.skip("one random input is enough for the 513x513 DeepLab (2.5 s per interpreter run)")
    path = path_of(request, name)
    model = models(name, path)
    codes = random_codes(model, seed)
    compare_every_tensor(model, reference(path, ("random", seed), codes), codes)


@settings(max_examples=15)
@given(seed=st.integers(0, 2 ** 31 - 1), kind=st.sampled_from(["uniform", "low-contrast", "constant"]),
       name=st.sampled_from(["keras_mobilenet_v1_0.25_96_int8_int8io.tflite",
                             "keras_mobilenet_v1_0.25_112_int8_uint8io.tflite",
                             "keras_mobilenet_v2_0.35_96_int8_uint8io.tflite"]))
def test_hypothesis_inputs_on_the_int8_fixtures(models, reference, name, seed, kind):
    path = source_path(name)
    model = models(name, path)
    codes = random_codes(model, seed, kind)
    compare_every_tensor(model, reference(path, (kind, seed), codes), codes)


def test_outputs_of_a_classifier_and_of_deeplab(models, reference, shared_data):
    path = source_path("mobilenet_v2_1.0_224_quant.tflite", shared_data)
    model = models(path.name, path)
    pixel_values = image_processor_for(model)(load_image(shared_data / "images" / "cat.bmp"))["pixel_values"]
    out = model(pixel_values)
    assert out.quantized_logits.dtype == np.uint8 and out.quantized_logits.shape == (1, 1001)
    q = model.quantization["classifier"]
    np.testing.assert_array_equal(out.logits, (q.scale[0].astype(np.float64)
                                               * (out.quantized_logits.astype(np.int64) - q.zero_point[0])).astype(np.float32))
    assert out.logits.dtype == np.float32
    assert np.array_equal(out.probabilities, out.quantized_probabilities / np.float32(256))
    assert int(np.argmax(out.quantized_probabilities)) in range(282, 287)       # a cat (1001 labels: tabby 282 .. Egyptian 286)
    # integer input of the input's dtype is used as it is; anything else is refused
    codes = nhwc_codes(model, pixel_values).transpose(0, 3, 1, 2)
    assert np.array_equal(model(codes).quantized_logits, out.quantized_logits)
    model.threads = 2                      # convs split by output channels over two threads: the same codes
    try:
        assert np.array_equal(model(codes).quantized_probabilities, out.quantized_probabilities)
    finally:
        model.threads = 1
    with pytest.raises(ShapeError, match="uint8 codes"):
        model(codes.astype(np.int16))
    with pytest.raises(ShapeError, match=r"\(N, 3, H, W\)"):
        model(pixel_values[:, :2])

    path = source_path("deeplabv3_mnv2_pascal_quant.tflite", shared_data)
    deeplab = models(path.name, path)
    pixel_values = image_processor_for(deeplab)(load_image(shared_data / "images" / "bird_segmentation.bmp"))["pixel_values"]
    codes = nhwc_codes(deeplab, pixel_values)
    tensors = reference(path, "bird_segmentation.bmp", codes)
    out = deeplab(pixel_values)
    assert out.quantized_logits.shape == (1, 21, 33, 33) and out.labels.shape == (1, 513, 513)
    graph_labels = tensors[deeplab.quantization["segmentation_head.argmax"].source[0]]
    assert out.labels.dtype == graph_labels.dtype == np.int64 and np.array_equal(out.labels, graph_labels)
    feeding_final_resize = tensors[deeplab.quantization["segmentation_head.upsample.0"].source[0]]
    assert np.array_equal(out.quantized_logits, feeding_final_resize.transpose(0, 3, 1, 2))
    assert (out.labels == 3).mean() > 0.1                                     # Pascal VOC "bird"


def test_pipelines_and_tflite_micro_on_the_int8_fixtures(models, reference):
    """tflite-micro (TFLM's reference kernels, a second implementation) gives the same outputs; a pipeline
    scores with the graph's own softmax."""
    runtime = pytest.importorskip("tflite_micro.python.tflite_micro.runtime")
    for name in INT8_FIXTURES:
        path = source_path(name)
        model = models(name, path)
        codes = random_codes(model, 7)
        try:
            micro = runtime.Interpreter.from_file(str(path))
            micro.set_input(codes, 0)
            micro.invoke()
        except Exception as e:   # noqa: BLE001 - TFLM refusing a model is a skip, not our failure
            pytest.skip(f"tflite-micro does not run {name}: {e}")
        final = model.quantization["probabilities.quantize" if "probabilities.quantize" in model.quantization
                                   else "probabilities"].source[0]
        ours = compare_every_tensor(model, reference(path, ("micro", 7), codes), codes)[0]
        tflite = reference(path, ("micro", 7), codes)[final]
        assert np.array_equal(micro.get_output(0), tflite), name
        assert np.array_equal(ours.quantized_probabilities.reshape(-1), reference(path, ("micro", 7), codes)[
            model.quantization["probabilities"].source[0]].reshape(-1))
    classifier = pipeline("image-classification", model)
    image = np.random.default_rng(3).integers(0, 256, (120, 100, 3)).astype(np.uint8)
    scores = classifier.scores(image)
    assert np.allclose(scores * 256, np.round(scores * 256)) and abs(scores.sum() - 1) < 0.1


@pytest.mark.parametrize("name", FLOAT_FIXTURES)
def test_float_import_of_keras_graphs_equals_the_float_interpreter(tmp_path, name):
    path = source_path(name)
    model = mobilenet_np.load(import_tflite(path, tmp_path / "float.h5"))
    it = Interpreter(model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
                     experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    softmax = next(op for op in it._get_ops_details() if op["op_name"] == "SOFTMAX")
    for seed in range(3):
        x = np.random.default_rng(seed).uniform(-1, 1, (1, 96, 96, 3)).astype(np.float32)
        it.set_tensor(it.get_input_details()[0]["index"], x)
        it.invoke()
        logits = model(x.transpose(0, 3, 1, 2)).logits
        expected = it.get_tensor(softmax["inputs"][0]).reshape(logits.shape)
        np.testing.assert_allclose(logits, expected, atol=FLOAT_ATOL * max(1.0, np.abs(expected).max()), rtol=0)
        probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        np.testing.assert_allclose(probabilities, it.get_tensor(softmax["outputs"][0]), atol=FLOAT_ATOL, rtol=0)


# --------------------------------------------------------------------------------------------------
# bad quantized files
# --------------------------------------------------------------------------------------------------

def edited(name: str, edit) -> bytes:
    """The fixture `name` with its flatbuffer object tree changed by `edit(model)`."""
    model = schema.ModelT.InitFromPackedBuf(bytearray((FIXTURES / name).read_bytes()), 0)
    edit(model)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def first_op(model, kind: str):
    graph = model.subgraphs[0]
    code = getattr(schema.BuiltinOperator, kind)
    return next(op for op in graph.operators if model.operatorCodes[op.opcodeIndex].builtinCode == code)


def _drop_quantization(model):
    graph = model.subgraphs[0]
    graph.tensors[first_op(model, "DEPTHWISE_CONV_2D").outputs[0]].quantization = None


def _wrong_axis(model):
    graph = model.subgraphs[0]
    graph.tensors[first_op(model, "CONV_2D").inputs[1]].quantization.quantizedDimension = 3


def _extra_op(model):
    """A DEQUANTIZE of the softmax output, as a second graph output: an op the network does not have."""
    graph = model.subgraphs[0]
    softmax = first_op(model, "SOFTMAX")
    out = schema.TensorT()
    out.name, out.shape, out.type, out.buffer = b"extra", list(graph.tensors[softmax.outputs[0]].shape), \
        schema.TensorType.FLOAT32, 0
    graph.tensors.append(out)
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.DEQUANTIZE
    code.version = 1
    model.operatorCodes.append(code)
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = len(model.operatorCodes) - 1, [softmax.outputs[0]], [len(graph.tensors) - 1]
    graph.operators.append(op)
    graph.outputs = list(graph.outputs) + [len(graph.tensors) - 1]


@pytest.mark.parametrize("edit, message", [
    (_drop_quantization, r"op 2 \(DEPTHWISE_CONV_2D\): tensor \d+ \('.*'\) has no quantization parameters"),
    (_wrong_axis, r"op 1 \(CONV_2D\): tensor \d+ \('.*'\) has 8 per-channel scales along quantized_dimension 3"),
    (_extra_op, r"op \d+ \(DEQUANTIZE, output tensor \d+ 'extra'\) is not part of the integer"),
])
def test_bad_quantized_files_raise_one_line_conversion_errors(tmp_path, edit, message):
    source = tmp_path / "bad.tflite"
    source.write_bytes(edited("keras_mobilenet_v1_0.25_96_int8_uint8io.tflite", edit))
    with pytest.raises(ConversionError, match=message) as caught:
        import_tflite(source, tmp_path / "out.h5", quantized=True)
    assert "\n" not in str(caught.value) and str(source) in str(caught.value)
    assert not (tmp_path / "out.h5").exists()


def test_float_files_refuse_the_quantized_import(tmp_path):
    with pytest.raises(ConversionError, match=r"the graph input: tensor 0 .* is float32, not integer codes"):
        import_tflite(source_path(FLOAT_FIXTURES[0]), tmp_path / "out.h5", quantized=True)


# --------------------------------------------------------------------------------------------------
# the integer weights file (format version 2)
# --------------------------------------------------------------------------------------------------

def test_integer_weights_files_read_back_and_damage_is_refused(tmp_path):
    path = import_tflite(source_path(INT8_FIXTURES[1]), tmp_path / "integer.h5", quantized=True)
    weights = read_weights(path)
    assert (weights.format_version, weights.numerics) == (2, "integer")
    assert weights.tensors["mobilenet_v1.conv_stem.convolution.weight"].dtype == np.int8
    assert weights.tensors["classifier.bias"].dtype == np.int32
    stem = weights.quantization["mobilenet_v1.conv_stem.convolution.weight"]
    assert stem.axis == 0 and stem.scale.dtype == np.float32 and stem.scale.size == 8 and not stem.zero_point.any()
    assert weights.quantization["mobilenet_v1.layer.0"].options == {"activation": "relu6", "padding": "same"}
    assert isinstance(mobilenet_np.load(path), QuantizedModel)
    with pytest.raises(WeightsError, match="dtype int8, expected float32"):
        mobilenet_np.MobileNetV1ForImageClassification.from_pretrained(path)   # the float class: refused

    def damaged(edit) -> Path:
        copy = tmp_path / f"damaged_{len(list(tmp_path.iterdir()))}.h5"
        shutil.copy(path, copy)
        with h5py.File(copy, "a") as f:
            edit(f)
        return copy

    cases = [
        (lambda f: f.__delitem__("quantization"), r"needs the /quantization group"),
        (lambda f: f["quantization/mobilenet_v1.layer.3"].attrs.__delitem__("scale"), r"layer.3 has no attribute 'scale'"),
        (lambda f: f["quantization/mobilenet_v1.layer.3"].attrs.__setitem__("scale", np.float32([-1])),
         r"scales must be finite and positive"),
        (lambda f: f["quantization/mobilenet_v1.layer.3"].attrs.__setitem__("scale", np.float32([0.1, 0.2])),
         r"1-D float / integer arrays of one length, got float32 \(2,\) and int64 \(1,\)"),
        (lambda f: f["quantization/classifier.weight"].attrs.__setitem__("axis", np.int64(-1)),
         r"classifier.weight: 1000 scales with axis None"),
        (lambda f: f["quantization"].__delitem__("mobilenet_v1.layer.3"), r"no quantization record for mobilenet_v1.layer.3"),
        (lambda f: f["quantization/mobilenet_v1.layer.4.convolution.weight"].attrs.__setitem__("axis", np.int64(2)),
         r"layer.4.convolution.weight has 32 per-channel scales along axis 2, which does not fit"),
        (lambda f: f.attrs.__setitem__("numerics", b"fixed"), r"'numerics' is 'fixed'"),
    ]
    for edit, message in cases:
        with pytest.raises(WeightsError, match=message) as caught:
            mobilenet_np.load(damaged(edit))
        assert "\n" not in str(caught.value)


@pytest.mark.parametrize("name", INT8_FIXTURES)
def test_int8_fixtures_import_as_float_too(models, tmp_path, name):
    """Without --quantized an int8 graph imports as its float emulation (the dequantized weights). It is close
    to the integer network, not equal: every layer of the integer one rounds to 8 bits (measured 15-26 logit
    steps apart on these small post-training-quantized models, correlation 0.98-0.99; 45 steps and 0.90 on
    the 112 one, whose float network pads one layer as TF "SAME" where the graph pads (0, 1) + VALID, as its
    provenance says)."""
    path = source_path(name)
    integer = models(name, path)
    float_model = mobilenet_np.load(import_tflite(path, tmp_path / "float.h5"))
    assert type(float_model).__name__ == integer.architecture
    assert ("padding" in float_model.metadata["provenance"]) == ("112" in name)
    size = integer.config.image_size
    x = np.random.default_rng(0).uniform(-1, 1, (4, 3, size, size)).astype(np.float32)
    ours, theirs = float_model(x).logits, integer(x).logits
    correlation = np.corrcoef(ours.ravel(), theirs.ravel())[0, 1]
    print(f"{name}: correlation of float and integer logits {correlation:.3f}")
    assert correlation > (0.8 if "112" in name else 0.95)


def test_command_line_on_integer_files(models, shared_data, tmp_path, capsys):
    """classify / segment / summary take integer files (architecture: the float one they run)."""
    for name in ("mobilenet_v1_0.5_160_quant.tflite", "deeplabv3_mnv2_pascal_quant.tflite"):
        models(name, source_path(name, shared_data))
    v1 = import_tflite(source_path(SHARED[0], shared_data), tmp_path / "v1.h5", quantized=True,
                       labels=shared_data / "labels" / "imagenet_labels.txt")
    assert main(["classify", str(shared_data / "images" / "cat.bmp"), "--weights", str(v1), "--top-k", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["architecture"] == "MobileNetV1ForImageClassification"
    scores = [p["score"] for p in result["results"][0]["predictions"]]
    assert all(s * 256 == round(s * 256) for s in scores) and "cat" in result["results"][0]["predictions"][0]["label"]
    assert main(["summary", "--weights", str(v1), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["architecture"] == "MobileNetV1ForImageClassification"
    deeplab = import_tflite(source_path(SHARED[2], shared_data), tmp_path / "deeplab.h5", quantized=True,
                            labels=shared_data / "labels" / "pascal_voc_segmentation_labels.txt")
    assert main(["segment", str(shared_data / "images" / "bird_segmentation.bmp"), "--weights", str(deeplab),
                 "--out", str(tmp_path / "mask.png"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["architecture"] == "MobileNetV2ForSemanticSegmentation" and (tmp_path / "mask.png").is_file()
    assert "bird" in json.dumps(result)
