"""Write small TF2/Keras-style TFLite and Keras fixtures: `python -m weights_tools.make_tflite_fixtures OUT_DIR`.

This script is run once by a maintainer (it needs TensorFlow, which is not a dependency of mobilenet-np) and
its outputs are committed in tests/fixtures/tflite/. They let the importers be tested on files written by the
real tools, in the style of the released Keras-converted TFLite MobileNets, without downloading anything:

    keras_mobilenet_v1_0.25_96_float.tflite        float32, no quantization
    keras_mobilenet_v1_0.25_96_int8_uint8io.tflite full-integer post-training quantization, uint8 input/output
    keras_mobilenet_v1_0.25_96_int8_int8io.tflite  the same with int8 input/output (no QUANTIZE ops at the ends)
    keras_mobilenet_v2_0.35_96_float.tflite        (the 1000-class Dense head alone is 1280 x 1000 floats = 5.1 MB)
    keras_mobilenet_v2_0.35_96_int8_uint8io.tflite
    keras_mobilenet_v1_0.25_112_int8_uint8io.tflite one stride-2 layer sees an odd size: an explicit PAD op
    keras_mobilenet_v1_0.25_96.weights.h5          Keras 3 `save_weights` (layers/<class name>_<n>/vars/<i>)
    keras_mobilenet_v1_0.25_96.h5                  Keras 2 (tf_keras) `save_weights` (the released files' layout)
    keras_mobilenet_v2_0.35_96_notop.weights.h5    V2 backbone only (include_top=False): with the 1000-class
    keras_mobilenet_v2_0.35_96_notop.h5            head each file would be 6.7 MB
    keras_outputs.npz                              each Keras model's softmax on two seeded images (`images`)
    fixtures.json                                  manifest: styles, op lists, every op's inputs and options

The models are `tf.keras.applications` MobileNet (V1, alpha 0.25) and MobileNetV2 (alpha 0.35), 96 x 96 x 3
inputs, 1000 classes, include_top=True (V1's head: global mean -> dropout -> 1x1 Conv2D `conv_preds` ->
Reshape -> softmax; V2's: global mean -> Dense `predictions` with softmax). Their weights are not Keras'
initial values but drawn here with NumPy from fixed seeds (so they do not depend on TensorFlow's random
number generators), in the order of `model.weights`:

    Conv2D / DepthwiseConv2D / Dense kernel   normal(0, sqrt(2 / fan_in))  (He: activations keep their scale)
    bias (the classifiers only)               uniform(-0.1, 0.1)
    BatchNormalization gamma                  uniform(0.5, 1.5)
                       beta                   uniform(-0.5, 0.5)
                       moving_mean            normal(0, 0.2)
                       moving_variance        uniform(0.5, 2.0)

so the BatchNorm folding the converter does (w * gamma / sqrt(var + eps), beta - mean * gamma / sqrt(var + eps))
is exercised. `build_keras_model(ARCHITECTURES[name])` rebuilds the same Keras model (tests use it).

Conversion is `tf.lite.TFLiteConverter.from_keras_model`:
  float:        no options.
  int8_*io:     optimizations = [Optimize.DEFAULT], supported_ops = [TFLITE_BUILTINS_INT8], a representative
                dataset of CALIBRATION_IMAGES images uniform in [-1, 1] (seeded), inference_input_type =
                inference_output_type = uint8 (or int8).

What the converter (TensorFlow 2.21, Keras 3 or tf_keras: the same op lists) makes of these models:

* BatchNorm is folded into the preceding conv (a bias appears); ReLU6 is fused (activation RELU6) into the
  CONV_2D / DEPTHWISE_CONV_2D before it; V2's projections have no activation; ADD has none.
* Stride-2 layers: Keras pads explicitly (ZeroPadding2D: V1 ((0, 1), (0, 1)), V2 `correct_pad`) and then
  convolves "valid". The converter folds each ZeroPadding2D into the conv as padding SAME when the two agree
  (every layer here at 96 x 96), and otherwise keeps PAD + VALID (V1 at 112: conv_dw_12 sees 7 x 7).
  The first conv (V1 conv1, V2 Conv1) is SAME stride 2 in Keras itself. V2's Conv_1 (1x1 to 1280) is VALID.
* Global pooling is MEAN over axes [1, 2] (keep_dims True for V1, False for V2), never AVERAGE_POOL_2D.
* Classifier: V1 MEAN (1x1x256) -> CONV_2D 1x1 (1000 filters, bias, no activation) -> SHAPE -> STRIDED_SLICE
  -> PACK -> RESHAPE (Keras' Reshape keeps the batch dimension dynamic: the new shape [1, 1000] is computed)
  -> SOFTMAX. V2: MEAN -> FULLY_CONNECTED (weights (1000, 1280), bias) -> SOFTMAX.
* Integer files: int8 activations per tensor (ReLU6 outputs s = 6/255, z = -128, once some value reaches 6
  in calibration), int8 weights symmetric per output channel (zero points 0; CONV_2D and FULLY_CONNECTED
  axis 0, DEPTHWISE_CONV_2D axis 3), int32 biases per channel; SOFTMAX output s = 1/256, z = -128;
  uint8 I/O adds QUANTIZE uint8 -> int8 first (zero point 127 -> -1) and int8 -> uint8 last (-128 -> 0).
* Keras 3 `.weights.h5` names layers by class and counter (layers/conv2d_3/vars/0, layers/batch_normalization_7/
  vars/0..3 = gamma, beta, moving_mean, moving_variance), not by layer name, and holds no model config;
  Keras 2 `.h5` (save_weights) has root attribute layer_names and groups <layer>/<layer>/<weight>:0.

The manifest lists, for each file, its style, op counts and op sequence (each op's inputs and outputs with
shape, dtype and quantization, and its options: padding, stride, dilation, fused activation, ...), read back
with the LiteRT interpreter (ops, tensors, quantization) and the `tflite` flatbuffer schema (options).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

SEED = 20240611
CALIBRATION_IMAGES = 20   # representative dataset of the integer conversion
BATCH_NORM_IMAGES = 16    # images whose statistics set the BatchNorm moving mean / variance
GAMMA = (1.0, 3.0)        # BatchNorm gamma ~ uniform(GAMMA), beta ~ uniform(BETA): some ReLU6 outputs reach 6
BETA = (-0.5, 1.5)
HEAD_GAIN = 4.0           # the classifier kernel's std is HEAD_GAIN * sqrt(2 / fan_in): a peaked softmax
MEAN_JITTER = 0.2
OUTPUT_IMAGES_SEED = 500  # keras_outputs.npz: the Keras models' outputs on images(spec, 2, seed + 500)
CLASSIFIERS = ("conv_preds", "predictions")  # V1's 1x1 Conv2D and V2's Dense
VARIANCE_FACTOR = (0.5, 2.0)
NUM_CLASSES = 1000
IMAGE_SIZE = 96

# name -> how to build it (keyword arguments of the keras.applications function)
ARCHITECTURES = {
    "keras_mobilenet_v1_0.25_96": {"application": "MobileNet", "alpha": 0.25, "image_size": IMAGE_SIZE,
                                   "classes": NUM_CLASSES, "seed": SEED + 1},
    "keras_mobilenet_v2_0.35_96": {"application": "MobileNetV2", "alpha": 0.35, "image_size": IMAGE_SIZE,
                                   "classes": NUM_CLASSES, "seed": SEED + 2},
    # 112 = 16 * 7: conv_dw_12 (stride 2) sees 7 x 7, where Keras V1's ZeroPadding2D((0, 1), (0, 1)) differs from
    # SAME's (1, 1); the converter keeps that one as PAD + VALID DEPTHWISE_CONV_2D (at 96 every PAD became SAME)
    "keras_mobilenet_v1_0.25_112": {"application": "MobileNet", "alpha": 0.25, "image_size": 112,
                                    "classes": NUM_CLASSES, "seed": SEED + 3},
}
# (architecture, style) pairs written as .tflite. The int8-I/O style is written for V1 only: it differs from the
# uint8-I/O one in the same way for both networks (no QUANTIZE op at the input and the output), and V2's would
# add another 1.7 MB.
TFLITE_FILES = [
    ("keras_mobilenet_v1_0.25_96", "float"),
    ("keras_mobilenet_v1_0.25_96", "int8_uint8io"),
    ("keras_mobilenet_v1_0.25_96", "int8_int8io"),
    ("keras_mobilenet_v2_0.35_96", "float"),
    ("keras_mobilenet_v2_0.35_96", "int8_uint8io"),
    ("keras_mobilenet_v1_0.25_112", "int8_uint8io"),
]
# architecture -> include_top of its Keras weight files (see the module docstring for V2's)
KERAS_FILES = {"keras_mobilenet_v1_0.25_96": True, "keras_mobilenet_v2_0.35_96": False}  # none for V1 at 112

STYLES = {
    "float": "float32 weights and activations, no quantization",
    "int8_uint8io": "full-integer post-training quantization (int8 activations, per-channel int8 weights), "
                    "uint8 input and output through QUANTIZE ops",
    "int8_int8io": "full-integer post-training quantization, int8 input and output (no QUANTIZE ops)",
}


# --------------------------------------------------------------------------------------------------
# Keras models with seeded weights
# --------------------------------------------------------------------------------------------------

def seeded_weights(model, seed: int) -> list[np.ndarray]:
    """Values for every variable of `model.weights`, in order, drawn from numpy's PCG64 with `seed`.

    BatchNorm moving statistics are placeholders here (mean 0, variance 1): `calibrate_batch_norm` sets them.
    """
    rng = np.random.default_rng(seed)
    values = []
    for variable in model.weights:
        name = variable.path if hasattr(variable, "path") else variable.name  # Keras 3: "conv1/kernel"; Keras 2: "conv1/kernel:0"
        kind = name.split("/")[-1].split(":")[0]
        shape = tuple(variable.shape)
        if kind in ("kernel", "depthwise_kernel"):
            # Conv2D (kH, kW, C_in, C_out), DepthwiseConv2D (kH, kW, C, 1), Dense (C_in, C_out)
            fan_in = int(np.prod(shape[:-1])) if kind == "kernel" else int(np.prod(shape[:2]))
            gain = HEAD_GAIN if name.startswith(CLASSIFIERS) else 1.0
            value = rng.normal(0.0, gain * np.sqrt(2.0 / fan_in), shape)
        elif kind == "bias":
            value = rng.uniform(-0.1, 0.1, shape)
        elif kind == "gamma":
            value = rng.uniform(*GAMMA, shape)
        elif kind == "beta":
            value = rng.uniform(*BETA, shape)
        elif kind == "moving_mean":
            value = np.zeros(shape)
        elif kind == "moving_variance":
            value = np.ones(shape)
        else:
            raise ValueError(f"seeded_weights: unexpected variable {name!r}")
        values.append(value.astype(np.float32))
    return values


def calibrate_batch_norm(model, images: np.ndarray, seed: int) -> None:
    """Set every BatchNormalization's moving statistics from the statistics of its input on `images`.

    Layer by layer in model order (each layer sees the earlier ones already set): with per-channel mean m and
    standard deviation s of the layer's input over the images and pixels,

        moving_mean = m + MEAN_JITTER * s * normal(0, 1),   moving_variance = s**2 * uniform(*VARIANCE_FACTOR)

    so every BatchNorm output is about gamma * normal(0, 1) + beta. With random moving statistics instead,
    the per-channel offsets that ReLU creates are never removed and a deep plain network (V1) maps every input
    to nearly the same output, which would make the fixtures useless for comparing outputs.
    """
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    norms = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.BatchNormalization)]
    for layer in norms:
        probe = tf.keras.Model(model.input, layer.input)
        x = np.asarray(probe(images), np.float64)
        mean, std = x.mean(axis=(0, 1, 2)), x.std(axis=(0, 1, 2)) + 1e-3
        gamma, beta, _, _ = layer.get_weights()
        moving_mean = mean + MEAN_JITTER * std * rng.normal(0.0, 1.0, mean.shape)
        moving_variance = std ** 2 * rng.uniform(*VARIANCE_FACTOR, std.shape)
        layer.set_weights([gamma, beta, moving_mean.astype(np.float32), moving_variance.astype(np.float32)])


def build_keras_model(spec: dict, include_top: bool = True):
    """The tf.keras (Keras 3) applications model `spec` describes (an ARCHITECTURES entry), with its weights.

    Kernels, biases, gamma and beta come from `seeded_weights`; the BatchNorm moving statistics from
    `calibrate_batch_norm` on `images(spec, BATCH_NORM_IMAGES, ...)`. Those go through TensorFlow's float
    arithmetic, so they are not bit-reproducible across versions: tests load the committed Keras files
    (`keras_model_from_fixtures`) rather than calling this. include_top=False gives the same backbone.
    """
    import tensorflow as tf

    build = getattr(tf.keras.applications, spec["application"])
    size = spec["image_size"]
    full = build(input_shape=(size, size, 3), alpha=spec["alpha"], include_top=True, weights=None,
                 classes=spec["classes"])
    full.set_weights(seeded_weights(full, spec["seed"]))
    calibrate_batch_norm(full, images(spec, BATCH_NORM_IMAGES, spec["seed"] + 100), spec["seed"] + 200)
    return full if include_top else _backbone_of(full, spec)


def _backbone_of(full, spec: dict):
    """The include_top=False tf.keras model of `spec` holding `full`'s backbone weights."""
    import tensorflow as tf

    size = spec["image_size"]
    backbone = getattr(tf.keras.applications, spec["application"])(input_shape=(size, size, 3), alpha=spec["alpha"],
                                                                include_top=False, weights=None)
    for layer in backbone.layers:
        if layer.weights:
            layer.set_weights(full.get_layer(layer.name).get_weights())
    return backbone


def _keras2_copy(model, spec: dict, include_top: bool, tf_keras):
    """The same network built with Keras 2 (tf_keras) holding `model`'s weights (copied layer by layer by name)."""
    size = spec["image_size"]
    kwargs = {"classes": spec["classes"]} if include_top else {}
    copy = getattr(tf_keras.applications, spec["application"])(input_shape=(size, size, 3), alpha=spec["alpha"],
                                                               include_top=include_top, weights=None, **kwargs)
    for layer in copy.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    assert len(copy.weights) == len(model.weights)
    return copy


def keras_model_from_fixtures(name: str, folder):
    """The include_top=True tf.keras model of fixture `name` rebuilt from the committed files in `folder`.

    With a whole-model weights file, its weights are loaded. V2's file is the backbone only: the backbone
    is loaded from it and the classifier (Dense kernel and bias, drawn by `seeded_weights` and never
    calibrated) is drawn again from the seed.
    """
    import tensorflow as tf

    spec = ARCHITECTURES[name]
    size = spec["image_size"]
    build = getattr(tf.keras.applications, spec["application"])
    model = build(input_shape=(size, size, 3), alpha=spec["alpha"], include_top=True, weights=None,
                  classes=spec["classes"])
    if KERAS_FILES[name]:
        model.load_weights(Path(folder) / f"{name}.weights.h5")
        return model
    model.set_weights(seeded_weights(model, spec["seed"]))
    backbone = build(input_shape=(size, size, 3), alpha=spec["alpha"], include_top=False, weights=None)
    backbone.load_weights(Path(folder) / f"{name}_notop.weights.h5")
    for layer in backbone.layers:
        if layer.weights:
            model.get_layer(layer.name).set_weights(layer.get_weights())
    return model


def images(spec: dict, count: int, seed: int) -> np.ndarray:
    """(count, H, W, 3) float32 images in [-1, 1] (the models' input range), seeded.

    Each is a colour uniform in [-0.6, 0.6] plus a 6 x 6 grid of normal(0, 0.5) blocks plus normal(0, 0.2)
    pixel noise, clipped: images that differ in colour and layout, unlike i.i.d. pixel noise, whose pooled
    features are all alike.
    """
    size = spec["image_size"]
    rng = np.random.default_rng(seed)
    colour = rng.uniform(-0.6, 0.6, (count, 1, 1, 3))
    blocks = rng.normal(0.0, 0.5, (count, 6, 6, 3))
    blocks = np.repeat(np.repeat(blocks, -(-size // 6), axis=1), -(-size // 6), axis=2)[:, :size, :size]
    noise = rng.normal(0.0, 0.2, (count, size, size, 3))
    return np.clip(colour + blocks + noise, -1.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# conversion
# --------------------------------------------------------------------------------------------------

def convert(model, spec: dict, style: str) -> bytes:
    """The TFLite flatbuffer of `model` in `style` ("float", "int8_uint8io" or "int8_int8io")."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if style != "float":
        dataset = images(spec, CALIBRATION_IMAGES, spec["seed"] + 300)

        def representative_dataset():
            for image in dataset:
                yield [image[None]]

        io_type = {"int8_uint8io": tf.uint8, "int8_int8io": tf.int8}[style]
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = io_type
        converter.inference_output_type = io_type
    return converter.convert()


# --------------------------------------------------------------------------------------------------
# reading a .tflite back (interpreter + flatbuffer schema)
# --------------------------------------------------------------------------------------------------

def _enum_names(enum_class) -> dict[int, str]:
    return {v: k for k, v in vars(enum_class).items() if not k.startswith("_") and isinstance(v, int)}


def _flatbuffer_info(path) -> tuple[list[dict], set[int]]:
    """(each operator's builtin options (padding, strides, fused activation, ...) in order, the constant tensors)."""
    import tflite

    padding = _enum_names(tflite.Padding)
    activation = _enum_names(tflite.ActivationFunctionType)
    buf = Path(path).read_bytes()
    model = tflite.Model.GetRootAs(buf, 0)
    graph = model.Subgraphs(0)
    constants = set()
    for i in range(graph.TensorsLength()):
        buffer = model.Buffers(graph.Tensors(i).Buffer())
        if buffer is not None and (buffer.DataLength() or buffer.Offset() > 1):
            constants.add(i)
    result = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        options = {"version": code.Version()}
        table = op.BuiltinOptions()
        kind = op.BuiltinOptionsType()
        names = _enum_names(tflite.BuiltinOptions)
        kind_name = names.get(kind, "NONE")
        if table is not None and hasattr(tflite, kind_name):
            opt = getattr(tflite, kind_name)()
            opt.Init(table.Bytes, table.Pos)
            if kind_name in ("Conv2DOptions", "DepthwiseConv2DOptions"):
                options.update(padding=padding[opt.Padding()], stride=[opt.StrideH(), opt.StrideW()],
                               dilation=[opt.DilationHFactor(), opt.DilationWFactor()])
                if kind_name == "DepthwiseConv2DOptions":
                    options["depth_multiplier"] = opt.DepthMultiplier()
            if kind_name == "Pool2DOptions":
                options.update(padding=padding[opt.Padding()], stride=[opt.StrideH(), opt.StrideW()],
                               filter=[opt.FilterHeight(), opt.FilterWidth()])
            if kind_name == "FullyConnectedOptions":
                options.update(keep_num_dims=bool(opt.KeepNumDims()), weights_format=opt.WeightsFormat())
            if kind_name == "ReducerOptions":
                options["keep_dims"] = bool(opt.KeepDims())
            if kind_name == "SoftmaxOptions":
                options["beta"] = float(opt.Beta())
            if hasattr(opt, "FusedActivationFunction"):
                options["activation"] = activation[opt.FusedActivationFunction()]
        result.append(options)
    return result, constants


def _quantization(detail: dict) -> dict | None:
    """A tensor's quantization as the manifest writes it: None (float), or scheme, axis, scales, zero points."""
    q = detail["quantization_parameters"]
    scales, zeros = q["scales"], q["zero_points"]
    if len(scales) == 0:
        return None
    if len(scales) == 1:
        return {"scheme": "per-tensor", "scale": float(scales[0]), "zero_point": int(zeros[0])}
    return {"scheme": "per-channel", "axis": int(q["quantized_dimension"]), "channels": len(scales),
            "zero_points": sorted({int(z) for z in zeros}),
            "scale_range": [float(scales.min()), float(scales.max())]}


def describe_tflite(path) -> dict:
    """What the manifest records about one .tflite file: ops (counts and sequence), tensor count, I/O."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    interpreter.allocate_tensors()
    tensors = {d["index"]: d for d in interpreter.get_tensor_details()}
    options, constants = _flatbuffer_info(path)

    def tensor(index: int) -> dict:
        d = tensors[index]
        entry = {"index": index, "shape": [int(s) for s in d["shape"]], "dtype": np.dtype(d["dtype"]).name}
        quantization = _quantization(d)
        if quantization is not None:
            entry["quantization"] = quantization
        if index in constants:
            entry["constant"] = True
            if d["dtype"] == np.int32 and np.prod(d["shape"]) <= 8:  # axes, new shapes, paddings
                entry["value"] = interpreter.get_tensor(index).tolist()
        return entry

    sequence = []
    for op, opts in zip(interpreter._get_ops_details(), options):
        sequence.append({"op": op["op_name"], "inputs": [tensor(int(i)) for i in op["inputs"] if i >= 0],
                         "outputs": [tensor(int(i)) for i in op["outputs"]], "options": opts})
    return {
        "op_counts": dict(sorted(Counter(op["op"] for op in sequence).items())),
        "op_list": [op["op"] for op in sequence],
        "tensor_count": len(tensors),
        "input": tensor(interpreter.get_input_details()[0]["index"]),
        "input_shape_signature": [int(s) for s in interpreter.get_input_details()[0]["shape_signature"]],
        "output": tensor(interpreter.get_output_details()[0]["index"]),
        "ops": sequence,
    }


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------

def write_fixtures(out_dir) -> dict:
    """Write every fixture and fixtures.json into out_dir; return the manifest."""
    import tensorflow as tf

    try:
        import tf_keras  # Keras 2, for the legacy save_weights .h5 layout
    except ImportError:
        tf_keras = None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tf.keras.utils.set_random_seed(SEED)  # nothing random is used at inference; set for any layer that draws
    manifest = {"generator": "python -m weights_tools.make_tflite_fixtures",
                "tensorflow": tf.__version__, "keras": tf.keras.__version__,
                "tf_keras": tf_keras.__version__ if tf_keras else None,
                "numpy": np.__version__, "seed": SEED, "calibration_images": CALIBRATION_IMAGES,
                "batch_norm_images": BATCH_NORM_IMAGES,
                "architectures": ARCHITECTURES, "styles": STYLES, "files": {}}
    outputs = {}  # architecture -> Keras' softmax outputs on two images (for checks without TensorFlow)
    for name, spec in ARCHITECTURES.items():
        model = build_keras_model(spec)
        common = {"architecture": name, "application": spec["application"], "alpha": spec["alpha"],
                  "image_size": spec["image_size"], "classes": spec["classes"]}
        for arch, style in TFLITE_FILES:
            if arch != name:
                continue
            path = out_dir / f"{name}_{style}.tflite"
            path.write_bytes(convert(model, spec, style))
            manifest["files"][path.name] = {**common, "kind": "tflite", "style": style, "bytes": path.stat().st_size,
                                            "sha256": sha256(path), **describe_tflite(path)}
            print(f"{path.name}: {path.stat().st_size} bytes", file=sys.stderr)
        if name not in KERAS_FILES:
            continue
        include_top = KERAS_FILES[name]
        keras3 = model if include_top else _backbone_of(model, spec)
        suffix = "" if include_top else "_notop"
        path = out_dir / f"{name}{suffix}.weights.h5"
        keras3.save_weights(path)
        manifest["files"][path.name] = {**common, "kind": "keras", "include_top": include_top,
                                        "style": "Keras 3 save_weights (.weights.h5)", "bytes": path.stat().st_size,
                                        "sha256": sha256(path)}
        if tf_keras is not None:
            keras2 = _keras2_copy(keras3, spec, include_top, tf_keras)
            path = out_dir / f"{name}{suffix}.h5"
            keras2.save_weights(path)
            manifest["files"][path.name] = {**common, "kind": "keras", "include_top": include_top,
                                            "style": "Keras 2 (tf_keras) save_weights (.h5)",
                                            "bytes": path.stat().st_size, "sha256": sha256(path)}
            check = images(spec, 2, spec["seed"] + 400)
            for a, b in zip(keras2.get_weights(), keras3.get_weights()):
                np.testing.assert_array_equal(a, b)
            # same weights; the two Kerases sum in different orders: measured 2e-5 on V1's probabilities and
            # 2e-4 on V2's backbone features (values up to ~10)
            np.testing.assert_allclose(np.asarray(keras2(check)), np.asarray(keras3(check)), atol=1e-3)
        else:
            print("tf_keras is not installed: no Keras 2 .h5 written", file=sys.stderr)
        # the tests rebuild the model from the committed files: it must be this one
        check = images(spec, 2, spec["seed"] + 400)
        np.testing.assert_array_equal(np.asarray(keras_model_from_fixtures(name, out_dir)(check)), np.asarray(model(check)))
        outputs[name] = np.asarray(model(images(spec, 2, spec["seed"] + OUTPUT_IMAGES_SEED)), np.float32)
    path = out_dir / "keras_outputs.npz"
    np.savez(path, **outputs)
    manifest["files"][path.name] = {"kind": "keras_outputs", "bytes": path.stat().st_size, "sha256": sha256(path),
                                    "images": f"images(spec, 2, spec['seed'] + {OUTPUT_IMAGES_SEED})",
                                    "architectures": sorted(outputs)}
    (out_dir / "fixtures.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m weights_tools.make_tflite_fixtures",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="folder to write the fixtures and fixtures.json into")
    args = parser.parse_args(argv)
    manifest = write_fixtures(args.out_dir)
    total = sum(f["bytes"] for f in manifest["files"].values())
    print(f"{len(manifest['files'])} files, {total} bytes in {args.out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
