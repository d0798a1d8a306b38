"""`import-keras` and the label files: Keras applications MobileNet V1 / V2 .h5 -> mobilenet-np weights.

* Synthetic Keras files written here with the group/dataset layout Keras uses (inspected from the real
  V1 file: `model_weights/<layer>/<layer>/kernel:0`, attributes `layer_names` and `weight_names`),
  holding the weights of a random transformers model in Keras layouts: the import must give back that
  model's state_dict exactly and its outputs (V1 and V2, with and without a classifier, whole-model
  and save_weights files).
* Keras' own channel rules for every released V2 width (0.35 .. 1.4) build files that import with
  that width: real Keras V2 files will fit.
* The real Keras MobileNet V1 0.25 (no TensorFlow here): its model_config is run by a small NHWC
  interpreter of Keras layer semantics written below (explicit ZeroPadding2D, "valid"/"same" as
  TensorFlow defines them, BatchNormalization with the file's epsilon), on the raw Keras tensors.
  mobilenet_np on the imported file must agree with it, and put a cat first on cat.bmp.
* Padding: Keras V1's ZeroPadding2D((0, 1), (0, 1)) + "valid" equals TF "SAME" on even sizes only,
  which is every stride-2 layer for inputs that are multiples of 32.
* Labels, errors (never a half-written OUT), the command line.
"""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

import mobilenet_np
from mobilenet_np import ops
from mobilenet_np.commandline import build_parser, run_command
from mobilenet_np.errors import ConversionError, OutputExistsError
from mobilenet_np.networks.mobilenet_v1 import MobileNetV1Config, MobileNetV1Model
from mobilenet_np.layers import ConvLayer
from weights_tools.import_keras import import_keras
from weights_tools.labels import fit_labels, read_labels

from torch_reference import numpy_state_dict, random_transformers_model, torch_outputs

# float32 network outputs computed two ways (NumPy vs PyTorch, or NumPy NCHW vs the NHWC interpreter
# below) differ by summation order only: ~1e-6 relative per layer over ~30 layers.
OUTPUT_ATOL = 1e-4

KERAS_BN = ("gamma", "beta", "moving_mean", "moving_variance")
TORCH_BN = ("weight", "bias", "running_mean", "running_var")


# --------------------------------------------------------------------------------------------------
# writing Keras files
# --------------------------------------------------------------------------------------------------

def write_keras_h5(path, layers: dict[str, dict[str, np.ndarray]], whole_model: bool = True, model_config=None):
    """A Keras 2 HDF5 file: `model.save` layout (under model_weights/) or `save_weights` layout (at the root)."""
    with h5py.File(path, "w") as f:
        if model_config is not None:
            f.attrs["model_config"] = json.dumps(model_config)
        root = f.create_group("model_weights") if whole_model else f
        root.attrs["layer_names"] = np.array([name.encode() for name in layers], dtype="S")
        root.attrs["backend"] = b"tensorflow"
        root.attrs["keras_version"] = b"2.8.0"
        for layer, weights in layers.items():
            group = root.create_group(layer)
            group.attrs["weight_names"] = (np.array([f"{layer}/{w}:0".encode() for w in weights], dtype="S")
                                           if weights else np.array([], dtype=np.float64))  # as Keras writes it
            for w, value in weights.items():
                group.create_dataset(f"{layer}/{w}:0", data=value)
    return path


def keras_conv(weight: np.ndarray, depthwise: bool) -> dict[str, np.ndarray]:
    """PyTorch OIHW -> Keras: Conv2D kernel (kH, kW, C_in, C_out) or DepthwiseConv2D kernel (kH, kW, C, 1)."""
    if depthwise:
        return {"depthwise_kernel": np.ascontiguousarray(np.moveaxis(weight, (0, 1), (2, 3)))}  # (C,1,kH,kW) -> (kH,kW,C,1)
    return {"kernel": np.ascontiguousarray(np.moveaxis(weight, (0, 1), (3, 2)))}                # (O,I,kH,kW) -> (kH,kW,I,O)


def keras_v1_names():
    """(Keras conv layer, its BatchNorm layer, transformers module, depthwise?) of MobileNet V1."""
    names = [("conv1", "conv1_bn", "conv_stem", False)]
    for n in range(1, 14):
        names += [(f"conv_dw_{n}", f"conv_dw_{n}_bn", f"layer.{2 * (n - 1)}", True),
                  (f"conv_pw_{n}", f"conv_pw_{n}_bn", f"layer.{2 * (n - 1) + 1}", False)]
    return names


def keras_v2_names():
    names = [("Conv1", "bn_Conv1", "conv_stem.first_conv", False),
             ("expanded_conv_depthwise", "expanded_conv_depthwise_BN", "conv_stem.conv_3x3", True),
             ("expanded_conv_project", "expanded_conv_project_BN", "conv_stem.reduce_1x1", False)]
    for n in range(1, 17):
        names += [(f"block_{n}_expand", f"block_{n}_expand_BN", f"layer.{n - 1}.expand_1x1", False),
                  (f"block_{n}_depthwise", f"block_{n}_depthwise_BN", f"layer.{n - 1}.conv_3x3", True),
                  (f"block_{n}_project", f"block_{n}_project_BN", f"layer.{n - 1}.reduce_1x1", False)]
    return names + [("Conv_1", "Conv_1_bn", "conv_1x1", False)]


def keras_layers_from_state_dict(state_dict, family: str, classifier: str | None) -> dict[str, dict[str, np.ndarray]]:
    """A transformers MobileNet's weights as Keras layers (the inverse of what import_keras does)."""
    prefix = f"mobilenet_{family}." if classifier else ""
    layers = {}
    for conv, bn, module, depthwise in (keras_v1_names() if family == "v1" else keras_v2_names()):
        layers[conv] = keras_conv(state_dict[f"{prefix}{module}.convolution.weight"], depthwise)
        layers[bn] = {k: state_dict[f"{prefix}{module}.normalization.{t}"] for k, t in zip(KERAS_BN, TORCH_BN)}
        layers[f"{conv}_relu"] = {}  # layers without weights are listed too
    if classifier == "conv_preds":    # V1: a 1x1 Conv2D with bias on the pooled features
        layers[classifier] = {"kernel": state_dict["classifier.weight"].T[None, None], "bias": state_dict["classifier.bias"]}
    elif classifier:                  # V2: Dense, kernel (C_in, C_out)
        layers[classifier] = {"kernel": state_dict["classifier.weight"].T, "bias": state_dict["classifier.bias"]}
    return layers


# --------------------------------------------------------------------------------------------------
# synthetic files from random transformers models
# --------------------------------------------------------------------------------------------------

SYNTHETIC = [
    # (family, Keras classifier layer or None, transformers config, whole-model file?)
    ("v1", "conv_preds", dict(depth_multiplier=0.25, num_labels=10), True),
    ("v1", None, dict(depth_multiplier=0.5), False),
    ("v2", "predictions", dict(depth_multiplier=0.35, num_labels=10), True),
    ("v2", "Logits", dict(depth_multiplier=1.4, num_labels=10), False),
    ("v2", None, dict(depth_multiplier=0.75), True),
]


@pytest.mark.parametrize("family, classifier, config, whole_model", SYNTHETIC,
                         ids=[f"{f}-{c or 'no_top'}-{cfg['depth_multiplier']}" for f, c, cfg, _ in SYNTHETIC])
def test_synthetic_keras_file_imports_as_the_transformers_model(tmp_path, family, classifier, config, whole_model):
    head = "ForImageClassification" if classifier else "Model"
    architecture = f"MobileNet{family.upper()}{head}"
    torch_model = random_transformers_model(architecture, seed=3, image_size=64, **config)
    state_dict = numpy_state_dict(torch_model)
    keras_file = write_keras_h5(tmp_path / "keras.h5", keras_layers_from_state_dict(state_dict, family, classifier),
                                whole_model=whole_model)

    model = mobilenet_np.load(import_keras(keras_file, tmp_path / "out.h5"))

    assert type(model).__name__ == architecture
    assert model.config.depth_multiplier == config["depth_multiplier"]
    assert model.config.num_labels == config.get("num_labels", model.config.num_labels)
    for key, value in state_dict.items():
        if not key.endswith("num_batches_tracked"):  # Keras does not count batches; imported as 0
            np.testing.assert_array_equal(model.params[key], value, err_msg=key)
    assert set(model.params) == set(state_dict)

    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 64, 64)).astype(np.float32)
    expected = torch_outputs(torch_model, x)
    ours = model(x)
    actual, reference = (ours.logits, expected.logits) if classifier else (ours.pooler_output, expected.pooler_output)
    np.testing.assert_allclose(actual, reference.numpy(), atol=OUTPUT_ATOL, rtol=0)


def keras_make_divisible(value: float, divisor: int = 8) -> int:
    """Keras applications' channel rounding (the same rule as TF-slim's)."""
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new_value + divisor if new_value < 0.9 * value else new_value


def keras_v2_release_layers(alpha: float, rng) -> dict[str, dict[str, np.ndarray]]:
    """Random weights in the shapes Keras applications' MobileNetV2(alpha) builds (its rules, not transformers')."""
    def conv(name, k, c_in, c_out, depthwise=False):
        shape = (k, k, c_in, 1) if depthwise else (k, k, c_in, c_out)
        bn = "bn_Conv1" if name == "Conv1" else ("Conv_1_bn" if name == "Conv_1" else f"{name}_BN")
        layers[name] = {"depthwise_kernel" if depthwise else "kernel": rng.normal(0, 0.1, shape).astype(np.float32)}
        layers[bn] = {k_: (rng.uniform(0.5, 1.5, c_out) if k_ in ("gamma", "moving_variance") else rng.normal(0, 0.1, c_out))
                      .astype(np.float32) for k_ in KERAS_BN}

    layers = {}
    channels = keras_make_divisible(32 * alpha)
    conv("Conv1", 3, 3, channels)
    conv("expanded_conv_depthwise", 3, channels, channels, depthwise=True)
    out = keras_make_divisible(int(16 * alpha))
    conv("expanded_conv_project", 1, channels, out)
    channels = out
    block = 1
    for filters, repeats in ((24, 2), (32, 3), (64, 4), (96, 3), (160, 3), (320, 1)):
        for _ in range(repeats):
            expanded, out = 6 * channels, keras_make_divisible(int(filters * alpha))
            conv(f"block_{block}_expand", 1, channels, expanded)
            conv(f"block_{block}_depthwise", 3, expanded, expanded, depthwise=True)
            conv(f"block_{block}_project", 1, expanded, out)
            channels, block = out, block + 1
    last = keras_make_divisible(1280 * alpha) if alpha > 1.0 else 1280
    conv("Conv_1", 1, channels, last)
    layers["predictions"] = {"kernel": rng.normal(0, 0.01, (last, 1000)).astype(np.float32),
                             "bias": np.zeros(1000, np.float32)}
    return layers


@pytest.mark.parametrize("alpha", [0.35, 0.5, 0.75, 1.0, 1.3, 1.4])
def test_every_released_keras_v2_width_fits_a_transformers_config(tmp_path, alpha):
    keras_file = write_keras_h5(tmp_path / "v2.h5", keras_v2_release_layers(alpha, np.random.default_rng(1)))
    model = mobilenet_np.load(import_keras(keras_file, tmp_path / "out.h5"))
    assert model.config.depth_multiplier == alpha
    assert model.config.num_labels == 1000
    assert model.config.id2label[0] == "LABEL_0"  # no labels file: transformers' default names


# --------------------------------------------------------------------------------------------------
# the real Keras MobileNet V1 0.25, checked against Keras semantics run on its raw tensors
# --------------------------------------------------------------------------------------------------

def tf_same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's definition of "SAME": output ceil(size / stride), the padding split with the extra after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def keras_conv_nhwc(x, kernel, stride, padding, depthwise):
    """Keras Conv2D / DepthwiseConv2D on one (H, W, C) image with its own kernel layout; no bias."""
    kh, kw = kernel.shape[:2]
    if padding == "same":
        x = np.pad(x, (tf_same_pads(x.shape[0], kh, stride), tf_same_pads(x.shape[1], kw, stride), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(0, 1))[::stride, ::stride]  # (H', W', C, kh, kw)
    if depthwise:
        return np.einsum("yxcij,ijc->yxc", windows, kernel[:, :, :, 0])
    return np.einsum("yxcij,ijco->yxo", windows, kernel)


def run_keras_model_config(model_config: dict, weights: dict[str, dict[str, np.ndarray]], image: np.ndarray):
    """Run a sequential Keras functional model_config on one (H, W, 3) image with the file's raw tensors.

    Only the layer kinds MobileNet V1 uses; returns the input of the final softmax (the logits).
    """
    x = image.astype(np.float64)
    for layer in model_config["config"]["layers"]:
        kind, cfg, w = layer["class_name"], layer["config"], weights.get(layer["config"]["name"], {})
        if kind in ("Conv2D", "DepthwiseConv2D"):
            assert cfg["strides"][0] == cfg["strides"][1] and cfg["dilation_rate"] in ([1, 1], 1, (1, 1))
            x = keras_conv_nhwc(x, w.get("kernel", w.get("depthwise_kernel")), cfg["strides"][0], cfg["padding"],
                                kind == "DepthwiseConv2D")
            if cfg["use_bias"]:
                x = x + w["bias"]
        elif kind == "BatchNormalization":
            x = (x - w["moving_mean"]) / np.sqrt(w["moving_variance"] + cfg["epsilon"]) * w["gamma"] + w["beta"]
        elif kind == "ReLU":
            x = np.clip(x, 0, cfg["max_value"])
        elif kind == "ZeroPadding2D":
            (top, bottom), (left, right) = cfg["padding"]
            x = np.pad(x, ((top, bottom), (left, right), (0, 0)))
        elif kind == "GlobalAveragePooling2D":
            x = x.mean(axis=(0, 1), keepdims=True)
        elif kind == "Reshape":
            x = x.reshape(cfg["target_shape"])
        elif kind == "Activation" and cfg["activation"] == "softmax":
            return x
        elif kind not in ("InputLayer", "Dropout"):  # dropout: identity at inference
            raise AssertionError(f"layer kind {kind} is not handled by this test interpreter")
    return x


def keras_file_contents(path):
    """(model_config, {layer: {weight name: array}}) of a Keras whole-model file, read directly with h5py."""
    text = lambda value: value.decode() if isinstance(value, bytes) else str(value)  # noqa: E731
    with h5py.File(path, "r") as f:
        model_config = json.loads(text(f.attrs["model_config"]))
        root = f["model_weights"]
        weights = {layer: {text(name).split("/")[-1].split(":")[0]: root[layer][text(name)][()]
                           for name in root[layer].attrs["weight_names"]}
                   for layer in map(text, root.attrs["layer_names"])}
    return model_config, weights


def load_image(path, size: int) -> np.ndarray:
    """(size, size, 3) uint8 RGB, a plain bilinear resize (the preprocessing these tests need, nothing more)."""
    return np.asarray(Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR))


@pytest.fixture(scope="module")
def real_keras_v1(shared_data, tmp_path_factory):
    source = shared_data / "weights" / "keras" / "mobilenet_v1_0.25_224.h5"
    out = import_keras(source, tmp_path_factory.mktemp("keras") / "v1.h5",
                       labels=shared_data / "labels" / "imagenet_labels.txt")
    return source, mobilenet_np.load(out)


def test_real_keras_v1_config_and_labels(real_keras_v1, shared_data):
    _, model = real_keras_v1
    labels = read_labels(shared_data / "labels" / "imagenet_labels.txt")
    assert type(model).__name__ == "MobileNetV1ForImageClassification"
    assert (model.config.depth_multiplier, model.config.image_size, model.config.layer_norm_eps) == (0.25, 224, 1e-3)
    assert labels[0] == "background" and len(labels) == 1001
    assert model.config.num_labels == 1000
    assert model.config.id2label == dict(enumerate(labels[1:]))  # Keras has no background class
    assert model.metadata["provenance"]["source"] == "mobilenet_v1_0.25_224.h5"


def test_real_keras_v1_equals_keras_semantics_and_sees_a_cat(real_keras_v1, shared_data):
    source, model = real_keras_v1
    model_config, weights = keras_file_contents(source)
    image = load_image(shared_data / "images" / "cat.bmp", 224)
    pixels = image.astype(np.float32) / 127.5 - 1                              # (224, 224, 3) in [-1, 1]

    keras_logits = run_keras_model_config(model_config, weights, pixels)       # (1000,), float64
    logits = model(pixels.transpose(2, 0, 1)[None]).logits[0]                  # (1000,), float32
    probabilities = ops.softmax(logits)
    top = int(np.argmax(logits))
    difference = float(np.max(np.abs(logits - keras_logits)))
    print(f"\nKeras V1 0.25 on cat.bmp: top-1 {model.config.id2label[top]!r} p={probabilities[top]:.3f}; "
          f"max |mobilenet_np - Keras semantics| = {difference:.2e} (logits up to {np.abs(keras_logits).max():.1f})")
    assert difference < OUTPUT_ATOL * max(1.0, float(np.abs(keras_logits).max()))
    assert top == int(np.argmax(keras_logits))
    assert "cat" in model.config.id2label[top]


@given(size=st.integers(4, 64))
def test_keras_v1_stride2_padding_equals_tf_same_on_even_sizes_only(size):
    """ZeroPadding2D(((0, 1), (0, 1))) + 'valid' (Keras V1) vs TF 'SAME' (ConvLayer tf_padding), 3x3 stride 2."""
    rng = np.random.default_rng(size)
    x = rng.normal(size=(1, 4, size, size)).astype(np.float32)
    weight = rng.normal(size=(4, 1, 3, 3)).astype(np.float32)
    keras = ops.conv2d(np.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1))), weight, stride=2, groups=4)
    layer = ConvLayer("dw", 4, 4, 3, stride=2, groups=4, norm_eps=None, activation=None)
    ours = layer(x, {"dw.convolution.weight": weight})
    if size % 2 == 0:
        np.testing.assert_array_equal(ours, keras)
    else:  # TF pads (1, 1) here: one output row/column more than Keras
        assert ours.shape[-1] == keras.shape[-1] + 1


@pytest.mark.parametrize("image_size", [32 * k for k in range(1, 17)])
def test_multiples_of_32_give_even_sizes_at_every_stride2_layer_of_v1(image_size):
    model = MobileNetV1Model(MobileNetV1Config(depth_multiplier=0.25), seed=None)
    height = image_size
    for layer in model.conv_layers():
        if layer.stride == 2:
            assert height % 2 == 0, f"{layer.name} sees {height} rows"
        height = layer.output_size(height, height)[0]


# --------------------------------------------------------------------------------------------------
# labels
# --------------------------------------------------------------------------------------------------

def test_label_files(shared_data, tmp_path):
    imagenet = read_labels(shared_data / "labels" / "imagenet_labels.txt")
    voc = read_labels(shared_data / "labels" / "pascal_voc_segmentation_labels.txt")
    assert len(voc) == 21 and voc[0] == "background" and voc[-1] == "tvmonitor"  # the note after the blank line is not a label
    assert fit_labels(imagenet, 1001) == dict(enumerate(imagenet))
    assert fit_labels(imagenet, 1000) == dict(enumerate(imagenet[1:]))
    assert fit_labels(imagenet[1:], 1000) == dict(enumerate(imagenet[1:]))
    with pytest.raises(ConversionError, match="1000 labels but the model has 1001 classes.*background"):
        fit_labels(imagenet[1:], 1001)
    with pytest.raises(ConversionError, match="999 labels but the model has 1000"):
        fit_labels(imagenet[2:], 1000)
    with pytest.raises(ConversionError, match="one too many.*not 'background'"):
        fit_labels(["cat", "dog", "bird"], 2)
    (tmp_path / "empty.txt").write_text("\n\n")
    for bad, message in ((tmp_path / "empty.txt", "no labels"), (tmp_path / "absent.txt", "no such labels file")):
        with pytest.raises(ConversionError, match=message):
            read_labels(bad)


# --------------------------------------------------------------------------------------------------
# errors: the file is named, OUT is never left behind
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def v1_layers():
    """Keras layers of a small random transformers MobileNet V1 with a 10-class classifier."""
    torch_model = random_transformers_model("MobileNetV1ForImageClassification", seed=5, depth_multiplier=0.25, num_labels=10)
    return keras_layers_from_state_dict(numpy_state_dict(torch_model), "v1", "conv_preds")


def broken_files(tmp_path, layers, shared_data):
    """(file, expected message) pairs that import_keras must refuse."""
    cases = []
    text = tmp_path / "text.h5"
    text.write_text("not an HDF5 file\n")
    cases.append((text, "not a readable HDF5 file"))
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes((shared_data / "weights" / "keras" / "mobilenet_v1_0.25_224.h5").read_bytes()[:1_000_000])
    cases.append((truncated, "HDF5|damaged"))
    resnet = write_keras_h5(tmp_path / "resnet.h5", {"conv1_conv": {"kernel": np.zeros((7, 7, 3, 64), np.float32)},
                                                      "conv1_bn": {k: np.zeros(64, np.float32) for k in KERAS_BN}})
    cases.append((resnet, "not a Keras MobileNet or MobileNetV2"))
    cases.append((write_keras_h5(tmp_path / "extra.h5", {**layers, "fc_extra": {"kernel": np.zeros((4, 4), np.float32)}}),
                  "unknown Keras layers.*fc_extra"))
    cases.append((write_keras_h5(tmp_path / "missing.h5", {k: v for k, v in layers.items() if k != "conv_pw_13_bn"}),
                  "layers missing: conv_pw_13_bn"))
    wrong = dict(layers, conv_pw_5={"kernel": np.zeros((1, 1, 16, 64), np.float32)})
    cases.append((write_keras_h5(tmp_path / "wrong_shape.h5", wrong), "no MobileNetV1ForImageClassification config builds"))
    no_beta = dict(layers, conv_dw_3_bn={"gamma": layers["conv_dw_3_bn"]["gamma"]})
    cases.append((write_keras_h5(tmp_path / "no_beta.h5", no_beta), "'conv_dw_3_bn' has no weight 'beta'"))
    ours = tmp_path / "mobilenet_np_weights.h5"
    mobilenet_np.MobileNetV1Model(MobileNetV1Config(depth_multiplier=0.25)).save_pretrained(ours)
    cases.append((ours, "not a Keras HDF5 weights file"))
    cases.append((tmp_path / "absent.h5", "no such Keras weights file"))
    return cases


def test_bad_files_raise_conversion_error_and_write_nothing(tmp_path, v1_layers, shared_data):
    sources = tmp_path / "sources"
    sources.mkdir()
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    for source, message in broken_files(sources, v1_layers, shared_data):
        with pytest.raises(ConversionError, match=message) as caught:
            import_keras(source, outputs / "out.h5")
        assert str(source) in str(caught.value)
        assert list(outputs.iterdir()) == [], f"{source.name} left {list(outputs.iterdir())}"


def test_labels_problems_and_existing_output(tmp_path, v1_layers):
    keras_file = write_keras_h5(tmp_path / "v1.h5", v1_layers)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"class {i}" for i in range(9)) + "\n")
    out = tmp_path / "out.h5"
    with pytest.raises(ConversionError, match="labels.txt: has 9 labels but the model has 10 classes"):
        import_keras(keras_file, out, labels=labels)
    assert not out.exists()

    labels.write_text("background\n" + "\n".join(f"class {i}" for i in range(10)) + "\n")
    import_keras(keras_file, out, labels=labels)
    assert mobilenet_np.load(out).config.id2label == {i: f"class {i}" for i in range(10)}
    before = out.read_bytes()
    with pytest.raises(OutputExistsError):
        import_keras(keras_file, out)
    assert out.read_bytes() == before
    import_keras(keras_file, out, overwrite=True)
    assert mobilenet_np.load(out).config.id2label[0] == "LABEL_0"

    no_top = write_keras_h5(tmp_path / "no_top.h5", {k: v for k, v in v1_layers.items() if k != "conv_preds"})
    with pytest.raises(ConversionError, match="no classifier"):
        import_keras(no_top, tmp_path / "no_top_out.h5", labels=labels)


def test_command_line(tmp_path, v1_layers, capsys):
    parser = build_parser("python -m weights_tools", "", "weights_tools", ["import_keras"])
    keras_file = write_keras_h5(tmp_path / "v1.h5", v1_layers)
    out = tmp_path / "out.h5"
    assert run_command(parser, ["import-keras", str(keras_file), str(out)]) == 0
    assert "MobileNetV1ForImageClassification, depth_multiplier 0.25" in capsys.readouterr().out
    assert run_command(parser, ["import-keras", str(keras_file), str(out)]) == 2
    assert "exists already" in capsys.readouterr().err
    assert run_command(parser, ["import-keras", str(keras_file), str(out), "--force"]) == 0
    assert run_command(parser, ["import-keras", str(tmp_path / "nothing.h5"), str(tmp_path / "x.h5")]) == 2
    assert "nothing.h5: no such Keras weights file" in capsys.readouterr().err
