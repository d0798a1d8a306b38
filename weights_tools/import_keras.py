"""`import-keras`: Keras applications MobileNet (V1) and MobileNetV2 weights (.h5) -> mobilenet-np HDF5.

    python -m weights_tools import-keras mobilenet_v1_0.25_224.h5 out.h5 --labels imagenet_labels.txt

A Keras 2 HDF5 file (`model.save` or `save_weights`) stores one group per layer; the root (or
`model_weights/` for a whole saved model) lists them in the attribute `layer_names`, and each layer
group lists its tensors in `weight_names`, e.g. `conv_dw_1/depthwise_kernel:0`. A Keras 3
`.weights.h5` file (`model.save_weights`) has `layers/<class name>[_N]/vars/0, 1, ...` instead, the
layer's own name in the `name` attribute of `vars`, and the variables in the layer's order:
Conv2D / Dense (kernel, bias), DepthwiseConv2D (depthwise_kernel, bias), BatchNormalization (gamma,
beta, moving_mean, moving_variance). Both read into the same {layer: {weight: array}}. Layouts:

    Keras                                         transformers (PyTorch)
    Conv2D kernel          (kH, kW, C_in, C_out)  -> convolution.weight (C_out, C_in, kH, kW)
    DepthwiseConv2D kernel (kH, kW, C, 1)         -> convolution.weight (C, 1, kH, kW)
    Dense kernel           (C_in, C_out)          -> classifier.weight  (C_out, C_in)
    V1 conv_preds (1x1 Conv2D with bias on the pooled features) = a Dense layer
    BatchNormalization gamma, beta, moving_mean, moving_variance -> weight, bias, running_mean, running_var

Layer names: V1 `conv1`, `conv_dw_N`, `conv_pw_N` (N = 1..13), each followed by `<name>_bn`, and the
classifier `conv_preds`; V2 `Conv1`/`bn_Conv1`, `expanded_conv_depthwise`/`_project` (the stem),
`block_N_expand`/`_depthwise`/`_project` (N = 1..16) with `_BN`, `Conv_1`/`Conv_1_bn`, and the
classifier `Logits` (keras_applications) or `predictions` (tf.keras). Without a classifier the file
imports as the backbone (MobileNetV1Model / MobileNetV2Model).

Keras ImageNet classifiers have 1000 classes, no background class: the config gets num_labels 1000
(see weights_tools/labels.py for fitting a 1001-line label file).

Padding: Keras V1 pads before each stride-2 depthwise conv with ZeroPadding2D(((0, 1), (0, 1))) and
then convolves "valid"; V2 pads with `correct_pad` (((0, 1), (0, 1)) for even sizes, ((1, 1), (1, 1))
for odd ones). TensorFlow "SAME" (transformers' tf_padding) pads a 3x3 stride-2 conv by
total = 1 -> (0, 1) on even sizes and total = 2 -> (1, 1) on odd sizes. So V2 always agrees, and V1
agrees whenever every stride-2 layer sees an even size: input sizes that are multiples of 32, which
includes all the released sizes (128, 160, 192, 224). See docs/importers.md.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py

import numpy as np

from mobilenet_np.errors import ConversionError
from mobilenet_np.fileio import open_hdf5
from mobilenet_np.networks.mobilenet_v1 import MobileNetV1ForImageClassification, MobileNetV1Model
from mobilenet_np.networks.mobilenet_v2 import MobileNetV2ForImageClassification, MobileNetV2Model

from .importing import (depth_multiplier_candidates, fit_config, id2label_or_default,
                        register_import_command, save_imported)

DEFAULT_IMAGE_SIZE = 224   # when the file has no model_config (a save_weights file)
DEFAULT_EPS = 1e-3         # Keras applications' BatchNormalization epsilon

BATCH_NORM_NAMES = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
V2_CLASSIFIERS = ("Logits", "predictions")


# --------------------------------------------------------------------------------------------------
# reading the Keras file
# --------------------------------------------------------------------------------------------------

def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_keras_h5(path) -> tuple[dict[str, dict[str, np.ndarray]], dict | None]:
    """(layer name -> {weight name -> array}, model_config or None) of a Keras 2 HDF5 file.

    Weight names lose their layer prefix and ":0" suffix: "conv_dw_1/depthwise_kernel:0" -> "depthwise_kernel".
    Layers without weights (ReLU, padding, pooling, dropout) are left out.
    """
    path = Path(path)
    f = open_hdf5(path, ConversionError, "Keras weights file")
    try:
        with f:
            model_config = json.loads(_text(f.attrs["model_config"])) if "model_config" in f.attrs else None
            root = f["model_weights"] if "model_weights" in f else f
            if "layer_names" not in root.attrs and isinstance(f.get("layers"), h5py.Group):
                return _read_keras3_layers(f["layers"], path), model_config
            if "layer_names" not in root.attrs:
                raise ConversionError(f"{path}: not a Keras HDF5 weights file (no 'layer_names' attribute of a "
                                      "Keras 2 file, no 'layers' group of a Keras 3 .weights.h5 file)")
            layers = {}
            for layer in (_text(n) for n in root.attrs["layer_names"]):
                names = [_text(n) for n in root[layer].attrs.get("weight_names", [])]
                if names:
                    layers[layer] = {n.split("/")[-1].split(":")[0]: np.asarray(root[layer][n][()]) for n in names}
    except ConversionError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:  # truncated or damaged
        raise ConversionError(f"{path}: damaged Keras HDF5 file ({str(e).splitlines()[0][:100] or type(e).__name__})") from None
    return layers, model_config


# The variables of a Keras 3 layer, in the order `layers/<layer>/vars/0, 1, ...` stores them, by the
# layer class (the group name is the class in snake case, with "_N" for the second and later ones).
KERAS3_VARIABLES = {"depthwise_conv2d": ("depthwise_kernel", "bias"), "conv2d": ("kernel", "bias"),
                    "dense": ("kernel", "bias"),
                    "batch_normalization": ("gamma", "beta", "moving_mean", "moving_variance")}


def _read_keras3_layers(layers_group, path) -> dict[str, dict[str, np.ndarray]]:
    """{layer name: {weight name: array}} of a Keras 3 .weights.h5 file's `layers` group."""
    import h5py

    layers = {}
    for key, group in layers_group.items():
        variables = group.get("vars") if isinstance(group, h5py.Group) else None
        if not isinstance(variables, h5py.Group) or not len(variables):
            continue                                          # no weights (activation, padding, pooling)
        kind = re.sub(r"_\d+$", "", key)
        if kind not in KERAS3_VARIABLES:
            raise ConversionError(f"{path}: Keras 3 layer group layers/{key} ({kind}) has weights, but MobileNet "
                                  f"has only {', '.join(KERAS3_VARIABLES)} layers with weights")
        names = KERAS3_VARIABLES[kind]
        count = len(variables)
        if count > len(names) or any(str(i) not in variables for i in range(count)):
            raise ConversionError(f"{path}: Keras 3 layer group layers/{key}/vars holds {sorted(variables)}, expected "
                                  f"0..{len(names) - 1} ({', '.join(names)})")
        name = _text(variables.attrs.get("name", key))
        layers[name] = {names[i]: np.asarray(variables[str(i)][()]) for i in range(count)}
    if not layers:
        raise ConversionError(f"{path}: a Keras 3 weights file without any weights")
    return layers


# --------------------------------------------------------------------------------------------------
# layouts: Keras (channels last) -> PyTorch
# --------------------------------------------------------------------------------------------------

def conv_kernel_to_oihw(kernel: np.ndarray) -> np.ndarray:
    """Conv2D kernel (kH, kW, C_in, C_out) -> (C_out, C_in, kH, kW)."""
    return np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))


def depthwise_kernel_to_oihw(kernel: np.ndarray) -> np.ndarray:
    """DepthwiseConv2D kernel (kH, kW, C, m) -> (C * m, 1, kH, kW); output channel c * m + j reads input c."""
    kh, kw = kernel.shape[:2]
    return np.ascontiguousarray(kernel.transpose(2, 3, 0, 1).reshape(-1, 1, kh, kw))


def dense_kernel_to_linear(kernel: np.ndarray) -> np.ndarray:
    """Dense kernel (C_in, C_out), or a 1x1 Conv2D kernel (1, 1, C_in, C_out), -> Linear weight (C_out, C_in)."""
    return np.ascontiguousarray(kernel.reshape(kernel.shape[-2:]).T)


# --------------------------------------------------------------------------------------------------
# layer tables: Keras layer names -> transformers modules
# --------------------------------------------------------------------------------------------------

def v1_conv_layers(prefix: str) -> list[tuple[str, str, str]]:
    """(Keras conv layer, Keras BatchNorm layer, transformers module) of MobileNet V1, in network order."""
    layers = [("conv1", "conv1_bn", f"{prefix}conv_stem")]
    for n in range(1, 14):
        layers.append((f"conv_dw_{n}", f"conv_dw_{n}_bn", f"{prefix}layer.{2 * n - 2}"))  # depthwise 3x3
        layers.append((f"conv_pw_{n}", f"conv_pw_{n}_bn", f"{prefix}layer.{2 * n - 1}"))  # pointwise 1x1
    return layers


def v2_conv_layers(prefix: str) -> list[tuple[str, str, str]]:
    """(Keras conv layer, Keras BatchNorm layer, transformers module) of MobileNetV2, in network order."""
    layers = [("Conv1", "bn_Conv1", f"{prefix}conv_stem.first_conv"),
              ("expanded_conv_depthwise", "expanded_conv_depthwise_BN", f"{prefix}conv_stem.conv_3x3"),
              ("expanded_conv_project", "expanded_conv_project_BN", f"{prefix}conv_stem.reduce_1x1")]
    for n in range(1, 17):
        for keras_part, module in (("expand", "expand_1x1"), ("depthwise", "conv_3x3"), ("project", "reduce_1x1")):
            layers.append((f"block_{n}_{keras_part}", f"block_{n}_{keras_part}_BN", f"{prefix}layer.{n - 1}.{module}"))
    layers.append(("Conv_1", "Conv_1_bn", f"{prefix}conv_1x1"))
    return layers


def _weight(layers, layer: str, name: str, source) -> np.ndarray:
    try:
        return layers[layer][name]
    except KeyError:
        have = sorted(layers.get(layer, {}))
        raise ConversionError(f"{source}: Keras layer {layer!r} has no weight {name!r} (it has {have})") from None


def keras_to_state_dict(layers: dict[str, dict[str, np.ndarray]], source) -> tuple[str, dict[str, np.ndarray], int | None]:
    """Map Keras layers onto transformers state_dict keys: (family "v1" | "v2", tensors, classes or None).

    Every layer with weights must be known and every expected layer present, or ConversionError.
    """
    if "conv1" in layers and "conv_dw_1" in layers:
        family, classifier = "v1", "conv_preds"
        table = v1_conv_layers
    elif "Conv1" in layers and "block_1_expand" in layers:
        family, classifier = "v2", next((name for name in V2_CLASSIFIERS if name in layers), "predictions")
        table = v2_conv_layers
    else:
        raise ConversionError(f"{source}: not a Keras MobileNet or MobileNetV2 (layers with weights: "
                              f"{', '.join(list(layers)[:6])}{', ...' if len(layers) > 6 else ''})")
    has_classifier = classifier in layers
    prefix = f"mobilenet_{family}." if has_classifier else ""
    conv_layers = table(prefix)

    known = {name for conv, bn, _ in conv_layers for name in (conv, bn)} | {classifier}
    unknown = [name for name in layers if name not in known]
    if unknown:
        raise ConversionError(f"{source}: unknown Keras layers for a MobileNet {family.upper()}: {', '.join(unknown[:5])}")
    missing = [name for conv, bn, _ in conv_layers for name in (conv, bn) if name not in layers]
    if missing:
        raise ConversionError(f"{source}: Keras MobileNet {family.upper()} layers missing: {', '.join(missing[:5])}"
                              + (f" and {len(missing) - 5} more (truncated file?)" if len(missing) > 5 else ""))

    tensors = {}
    for conv, bn, module in conv_layers:
        weights = layers[conv]
        if "depthwise_kernel" in weights:
            tensors[f"{module}.convolution.weight"] = depthwise_kernel_to_oihw(weights["depthwise_kernel"])
        else:
            tensors[f"{module}.convolution.weight"] = conv_kernel_to_oihw(_weight(layers, conv, "kernel", source))
        if "bias" in weights:
            raise ConversionError(f"{source}: Keras layer {conv!r} has a bias; MobileNet convolutions have none")
        for keras_name, torch_name in BATCH_NORM_NAMES.items():
            tensors[f"{module}.normalization.{torch_name}"] = _weight(layers, bn, keras_name, source)
        tensors[f"{module}.normalization.num_batches_tracked"] = np.array(0, np.int64)

    num_classes = None
    if has_classifier:
        kernel = _weight(layers, classifier, "kernel", source)
        tensors["classifier.weight"] = dense_kernel_to_linear(kernel)
        tensors["classifier.bias"] = _weight(layers, classifier, "bias", source)
        num_classes = kernel.shape[-1]
    return family, tensors, num_classes


# --------------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------------

def settings_from_model_config(model_config: dict | None, source) -> tuple[int | list[int], float, dict]:
    """(image_size, BatchNorm eps, provenance notes) from the file's model_config, or the Keras defaults."""
    if model_config is None:
        return DEFAULT_IMAGE_SIZE, DEFAULT_EPS, {"image_size": f"assumed {DEFAULT_IMAGE_SIZE} (no model_config in the file)"}
    layer_list = model_config.get("config", {}).get("layers", [])
    eps = {layer["config"].get("epsilon", DEFAULT_EPS) for layer in layer_list
           if layer.get("class_name") == "BatchNormalization"}
    if len(eps) > 1:
        raise ConversionError(f"{source}: BatchNormalization layers use different epsilons {sorted(eps)}; "
                              "mobilenet_np has one layer_norm_eps")
    image_size: int | list[int] = DEFAULT_IMAGE_SIZE
    notes = {"image_size": f"assumed {DEFAULT_IMAGE_SIZE} (model_config has no fixed input size)"}
    for layer in layer_list:
        shape = layer.get("config", {}).get("batch_input_shape")
        if layer.get("class_name") == "InputLayer" and shape and len(shape) == 4 and shape[1] and shape[2]:
            image_size = shape[1] if shape[1] == shape[2] else [shape[1], shape[2]]
            notes = {"image_size": "from model_config (InputLayer batch_input_shape)"}
    return image_size, (eps.pop() if eps else DEFAULT_EPS), notes


# What the Keras applications models drop before their classifier, as a drop *rate* (what transformers'
# classifier_dropout_prob is used as): MobileNet's `dropout=1e-3` argument, MobileNetV2 has no dropout.
# (The transformers config defaults 0.999 / 0.8 are TensorFlow keep probabilities: storing them would make
# a train-mode step drop 99.9% of the pooled features.)
KERAS_DROP_RATE = {"v1": 1e-3, "v2": 0.0}


def fit_keras_config(family: str, tensors, num_classes, image_size, eps, id2label, source):
    """(model class, config) whose parameter shapes are exactly `tensors`'."""
    shapes = {k: v.shape for k, v in tensors.items()}
    prefix = f"mobilenet_{family}." if num_classes else ""
    channels = lambda module: shapes[f"{prefix}{module}.convolution.weight"][0]  # noqa: E731
    fixed = {"image_size": image_size, "layer_norm_eps": eps, "tf_padding": True, "hidden_act": "relu6",
             "classifier_dropout_prob": KERAS_DROP_RATE[family],
             "num_channels": shapes[f"{prefix}conv_stem{'.first_conv' if family == 'v2' else ''}.convolution.weight"][1]}
    if num_classes:
        fixed.update(num_labels=num_classes, id2label=id2label)
    if family == "v1":
        model_class = MobileNetV1ForImageClassification if num_classes else MobileNetV1Model
        search = {"depth_multiplier": depth_multiplier_candidates([(32, channels("conv_stem")),
                                                                   (1024, channels("layer.25"))]),
                  "min_depth": [8, 1]}
    else:
        model_class = MobileNetV2ForImageClassification if num_classes else MobileNetV2Model
        search = {"depth_multiplier": depth_multiplier_candidates([(320, channels("layer.15.reduce_1x1")),
                                                                   (32, channels("conv_stem.first_conv"))]),
                  "depth_divisible_by": [8], "min_depth": [8], "finegrained_output": [True, False]}
    return model_class, fit_config(model_class, shapes, fixed, search, source)


# --------------------------------------------------------------------------------------------------
# the importer
# --------------------------------------------------------------------------------------------------

def import_keras(src, out, labels=None, overwrite: bool = False) -> Path:
    """Convert a Keras applications MobileNet / MobileNetV2 .h5 file into a mobilenet-np weights file `out`.

    `labels`: optional text file, one class name per line (see weights_tools/labels.py). Returns `out`.
    Raises ConversionError (naming the file) for anything that is not a Keras MobileNet; `out` is
    written atomically and an existing one only replaced with overwrite=True.
    """
    src = Path(src)
    layers, model_config = read_keras_h5(src)
    keras3 = src.name.endswith(".weights.h5") and model_config is None
    family, tensors, num_classes = keras_to_state_dict(layers, src)
    if num_classes is None and labels is not None:
        raise ConversionError(f"{src}: has no classifier (include_top=False), so --labels does not apply")
    id2label = id2label_or_default(labels, num_classes) if num_classes else None
    image_size, eps, notes = settings_from_model_config(model_config, src)
    model_class, config = fit_keras_config(family, tensors, num_classes, image_size, eps, id2label, src)
    notes.update({
        "source_format": ("Keras 3 .weights.h5" if keras3 else "Keras HDF5") + " (keras applications MobileNet"
                         + (" V1)" if family == "v1" else "V2)"),
        "labels": "1000 ImageNet classes, no background class" if num_classes == 1000 else f"{num_classes} classes",
        "padding": "Keras zero-pads stride-2 convs (0, 1) / correct_pad then 'valid': equal to TF 'SAME' "
                   "(tf_padding) for input sizes that are multiples of 32",
    })
    if labels is not None:
        notes["labels_file"] = Path(labels).name
    return save_imported(out, model_class, config, tensors, source=src, converter="weights_tools.import_keras",
                         notes=notes, overwrite=overwrite)


def register(subparsers) -> None:
    register_import_command(subparsers, "import-keras", import_keras, "Keras applications MobileNet V1/V2 .h5 weights",
                            "a Keras MobileNet or MobileNetV2 .h5 file (model.save or save_weights, Keras 2) "
                            "or a Keras 3 .weights.h5 file")
