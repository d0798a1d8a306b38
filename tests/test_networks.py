"""mobilenet_np against transformers: configs, networks end to end, and the power of these tests.

The proof of the networks: build the transformers model with random weights and random BatchNorm
statistics (torch_reference.py), save_pretrained it, convert the folder with weights_tools, load
the HDF5 file with mobilenet_np, and compare the logits (or last hidden state and pooled output)
and every hidden state with transformers. Errors are measured relative to the scale of the
reference tensor: max |ours - theirs| / max |theirs|.

The readable layers (mobilenet_v1.py, mobilenet_v2.py, deeplabv3.py on ops.py) are the implementation
proven here: models are set to `reference = True` (see `readable`), since `model(x)` otherwise runs
the fast path (mobilenet_np/fast.py, tested in test_fast.py). The end-to-end test over the config
space checks the default call too, as that is what a user of a converted checkpoint gets.

The mutation tests at the end break the implementation on purpose (padding side, BatchNorm epsilon,
ReLU6 for ReLU, dilation) and check that the same comparison then fails.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from hypothesis import given, strategies as st

import mobilenet_np
from mobilenet_np import layers, ops
from mobilenet_np.networks import deeplabv3, mobilenet_v2
from mobilenet_np.errors import ConfigError
from weights_tools.convert import convert_checkpoint

from torch_reference import ARCHITECTURES, random_transformers_model, torch_outputs

# max |ours - theirs| / max |theirs| per output tensor. float32: both sides round differently (summation
# order, fused kernels); measured up to ~1e-5 on these random networks, so 1e-4 leaves a 10x margin.
# float64: measured ~1e-14; 1e-10 is what a golden reference promises.
FLOAT32_RTOL = 1e-4
FLOAT64_RTOL = 1e-10
HIDDEN_STATES = {"MobileNetV1": 26, "MobileNetV2": 16}
CONFIG_CLASSES = [(mobilenet_np.MobileNetV1Config, transformers.MobileNetV1Config),
                  (mobilenet_np.MobileNetV2Config, transformers.MobileNetV2Config)]


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------

def converted_twin(torch_model, folder: Path):
    """save_pretrained -> weights_tools convert -> mobilenet_np.load: the model a user would get."""
    torch_model.save_pretrained(folder / "checkpoint")
    return mobilenet_np.load(convert_checkpoint(folder / "checkpoint", folder / "weights.h5", progress=False))


def readable(model):
    """`model`, set to run its readable layers (the path `record` and the notebooks use), not the fast path."""
    model.reference = True
    return model


def relative_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    assert ours.shape == theirs.shape, f"shape {ours.shape} != transformers {theirs.shape}"
    scale = float(np.max(np.abs(theirs))) if theirs.size else 0.0
    return float(np.max(np.abs(ours - theirs))) / max(scale, 1e-30) if theirs.size else 0.0


def output_errors(ours, theirs) -> dict[str, float]:
    """Relative error of every output tensor (main fields and each hidden state), by name."""
    assert list(ours.keys()) == list(theirs.keys()), f"fields {ours.keys()} != transformers {list(theirs.keys())}"
    errors = {}
    for name in ours.keys():
        if name == "hidden_states":
            assert len(ours.hidden_states) == len(theirs.hidden_states)
            for i, (a, b) in enumerate(zip(ours.hidden_states, theirs.hidden_states)):
                errors[f"hidden_states[{i}]"] = relative_error(a, b.numpy())
        else:
            errors[name] = relative_error(ours[name], theirs[name].numpy())
    return errors


def assert_matches_transformers(np_model, torch_model, pixel_values: np.ndarray, rtol: float) -> float:
    """Run both models on `pixel_values` (whose dtype picks float32 or float64); return the worst error."""
    theirs = torch_outputs(torch_model, pixel_values)
    ours = np_model(pixel_values, output_hidden_states=True)
    for name in ours.keys():
        tensors = ours.hidden_states if name == "hidden_states" else [ours[name]]
        assert all(t.dtype == pixel_values.dtype for t in tensors), f"{name} is not {pixel_values.dtype}"
    errors = output_errors(ours, theirs)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= rtol, f"{worst}: relative error {errors[worst]:.3g} > {rtol:g}"
    return errors[worst]


def family(architecture: str) -> str:
    return architecture[:len("MobileNetV1")]


def assert_same_parameters(np_model, torch_model) -> None:
    """Same state_dict keys, in the same order, with the same shapes."""
    theirs = [(k, tuple(v.shape)) for k, v in torch_model.state_dict().items()]
    assert list(np_model.parameter_shapes().items()) == theirs


# --------------------------------------------------------------------------------------------------
# configs
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ours, theirs", CONFIG_CLASSES, ids=["v1", "v2"])
def test_config_fields_and_defaults_mirror_transformers(ours, theirs):
    own_fields = [f for f in dataclasses.fields(theirs) if f.name in theirs.__annotations__]
    label_fields = {"num_labels", "id2label", "label2id", "problem_type"}   # transformers' base-class fields
    assert [(f.name, f.default) for f in dataclasses.fields(ours) if f.name not in label_fields] == \
        [(f.name, f.default) for f in own_fields]
    assert ours.model_type == theirs.model_type
    assert ours().id2label == theirs().id2label and ours().label2id == theirs().label2id


@pytest.mark.parametrize("ours, theirs", CONFIG_CLASSES, ids=["v1", "v2"])
def test_from_dict_takes_a_transformers_config_dict_as_is(ours, theirs):
    changed = dict(depth_multiplier=0.35, min_depth=4, tf_padding=False, hidden_act="relu", layer_norm_eps=1e-5,
                   image_size=[160, 128], id2label={0: "cat", 1: "dog", 2: "bird"})
    if ours is mobilenet_np.MobileNetV2Config:
        changed.update(output_stride=16, expand_ratio=4, first_layer_is_expansion=False, depth_divisible_by=4)
    transformers_dict = theirs(**changed).to_dict()   # with transformers' bookkeeping keys, id2label keys as str
    config = ours.from_dict(transformers_dict)
    for name in theirs.__annotations__:
        assert getattr(config, name) == transformers_dict[name], name
    assert config.num_labels == 3 and config.id2label == {0: "cat", 1: "dog", 2: "bird"}
    assert ours.from_dict(config.to_dict()) == config  # our own dicts round-trip too


def test_published_configs_load_with_their_values(shared_data):
    for folder in sorted((shared_data / "hf_configs").iterdir()):
        d = json.loads((folder / "config.json").read_text())
        ours = ARCHITECTURES[d["architectures"][0]][1].config_class.from_dict(d)
        theirs = transformers.AutoConfig.from_pretrained(folder)
        for name in type(theirs).__annotations__:
            assert getattr(ours, name) == getattr(theirs, name), (folder.name, name)
        assert ours.id2label == theirs.id2label and ours.num_labels == theirs.num_labels


INVALID_CONFIGS = [
    ("v1", "depth_multiplier", 0), ("v1", "depth_multiplier", -0.5), ("v2", "depth_multiplier", 0.0),
    ("v1", "depth_multiplier", "1.0"), ("v1", "hidden_act", "gelu"), ("v2", "hidden_act", "swish"),
    ("v2", "output_stride", 12), ("v2", "output_stride", 64), ("v2", "output_stride", 0),
    ("v1", "min_depth", 0), ("v2", "depth_divisible_by", 0), ("v2", "expand_ratio", 0),
    ("v1", "num_channels", 0), ("v1", "image_size", "224"), ("v2", "image_size", [224, 224, 3]),
    ("v1", "layer_norm_eps", 0), ("v2", "layer_norm_eps", -1e-3), ("v1", "tf_padding", "yes"),
    ("v2", "first_layer_is_expansion", 1), ("v2", "finegrained_output", None), ("v1", "num_labels", -1),
    ("v1", "classifier_dropout_prob", 1.5), ("v1", "id2label", {"a": "cat"}),
]


@pytest.mark.parametrize("version, field, value", INVALID_CONFIGS)
def test_invalid_config_values_raise_a_value_error_naming_the_field(version, field, value):
    config_class = mobilenet_np.MobileNetV1Config if version == "v1" else mobilenet_np.MobileNetV2Config
    for build in (lambda: config_class(**{field: value}), lambda: config_class.from_dict({field: value})):
        with pytest.raises(ValueError, match=repr(field)) as error:
            build()
        assert isinstance(error.value, ConfigError) and "\n" not in str(error.value)


def test_from_dict_rejects_the_other_model_type():
    with pytest.raises(ConfigError, match="model_type"):
        mobilenet_np.MobileNetV1Config.from_dict(transformers.MobileNetV2Config().to_dict())


# --------------------------------------------------------------------------------------------------
# networks: random models, output objects
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_seeded_random_model_from_a_config(architecture):
    np_class = ARCHITECTURES[architecture][1]
    config = np_class.config_class(depth_multiplier=0.25, num_labels=3, output_stride=16) \
        if family(architecture) == "MobileNetV2" else np_class.config_class(depth_multiplier=0.25, num_labels=3)
    a, b, c = np_class(config, seed=7), np_class(config, seed=7), np_class(config, seed=8)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert not all(np.array_equal(a.params[k], c.params[k]) for k in a.params if k.endswith("weight"))
    # BatchNorm is random too, not PyTorch's 0 / 1 defaults that would hide BatchNorm bugs.
    assert not np.allclose(a.params[[k for k in a.params if k.endswith("running_var")][0]], 1.0)
    torch_class = ARCHITECTURES[architecture][0]
    with torch.device("meta"):
        assert_same_parameters(a, torch_class(torch_class.config_class.from_dict(config.to_dict())))
    out = a(np.random.default_rng(0).standard_normal((2, 3, 40, 33)).astype(np.float32), output_hidden_states=True)
    assert len(out.hidden_states) == HIDDEN_STATES[family(architecture)]
    assert all(np.isfinite(t).all() for t in out.to_tuple()[:-1])
    with pytest.raises(mobilenet_np.WeightsError, match="no weights"):  # seed=None: no weights, never random
        np_class(config, seed=None)(np.zeros((1, 3, 8, 8), np.float32))


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_output_objects_have_the_transformers_fields(architecture, tmp_path):
    torch_model = random_transformers_model(architecture, 0, depth_multiplier=0.25, num_labels=4)
    np_model = readable(converted_twin(torch_model, tmp_path))
    x = np.random.default_rng(1).standard_normal((2, 3, 30, 26)).astype(np.float32)
    ours, theirs = np_model(x), torch_outputs(torch_model, x)
    assert type(ours).__name__ == type(theirs).__name__
    with torch.no_grad():
        theirs = torch_model(torch.from_numpy(x))  # output_hidden_states=False
    assert list(ours.keys()) == list(theirs.keys()) and ours.hidden_states is None
    for name in ours.keys():
        assert ours[name].shape == tuple(theirs[name].shape)
    assert len(ours.to_tuple()) == len(theirs.to_tuple())


# --------------------------------------------------------------------------------------------------
# networks against transformers, through the converter, over the config space
# --------------------------------------------------------------------------------------------------

@st.composite
def network_cases(draw):
    """(architecture, config kwargs, pixel value shape, seed), small enough for a fast test."""
    architecture = draw(st.sampled_from(list(ARCHITECTURES)))
    config = dict(
        depth_multiplier=draw(st.sampled_from([0.25, 0.35, 0.5, 0.75, 1.0, 1.4]) | st.floats(0.1, 1.4)),
        min_depth=draw(st.sampled_from([1, 3, 8, 16])),
        tf_padding=draw(st.booleans()),
        hidden_act=draw(st.sampled_from(["relu6", "relu"])),
        layer_norm_eps=draw(st.sampled_from([1e-3, 1e-5, 0.1])),
    )
    if family(architecture) == "MobileNetV2":
        config.update(
            depth_divisible_by=draw(st.sampled_from([1, 4, 8, 16])),
            expand_ratio=draw(st.sampled_from([1.0, 2.5, 6.0]) | st.floats(1.0, 6.0)),
            output_stride=draw(st.sampled_from([2, 4, 8, 16, 32])),
            first_layer_is_expansion=draw(st.booleans()),
            finegrained_output=draw(st.booleans()),
        )
    if "For" in architecture:
        config["num_labels"] = draw(st.integers(1 if "Segmentation" in architecture else 0, 6))
    # Large feature maps (small output strides) get small images, to bound the work.
    limit = 24 if config.get("output_stride", 32) <= 4 else 64
    shape = (draw(st.integers(1, 3)), 3, draw(st.integers(1, limit)), draw(st.integers(1, limit)))
    return architecture, config, shape, draw(st.integers(0, 2**16))


@given(network_cases())
def test_networks_match_transformers_through_the_converter(case):
    """float32 to FLOAT32_RTOL, and the same model in float64 (model.double()) to FLOAT64_RTOL.

    Both the readable layers and the default call `model(x)` (the fast path) are checked.
    """
    architecture, config, shape, seed = case
    torch_model = random_transformers_model(architecture, seed, **config)
    with tempfile.TemporaryDirectory() as folder:
        np_model = converted_twin(torch_model, Path(folder))
    assert type(np_model).__name__ == architecture
    assert_same_parameters(np_model, torch_model)
    x = np.random.default_rng(seed).standard_normal(shape)
    assert_matches_transformers(np_model, torch_model, x.astype(np.float32), FLOAT32_RTOL)
    assert_matches_transformers(readable(np_model), torch_model, x.astype(np.float32), FLOAT32_RTOL)
    model64 = np_model.astype(np.float64)
    torch_model.double()
    assert_matches_transformers(model64, torch_model, x, FLOAT64_RTOL)
    assert_matches_transformers(readable(model64), torch_model, x, FLOAT64_RTOL)


# The published sizes and widths, each once (DeepLab at 513 with a thin backbone), then cases that make
# sure every config switch is exercised both ways whatever examples hypothesis picks.
EXPLICIT_CASES = [
    ("MobileNetV1ForImageClassification", dict(depth_multiplier=1.0, num_labels=1001), (1, 3, 224, 224)),
    ("MobileNetV1ForImageClassification", dict(depth_multiplier=0.75, num_labels=1001), (1, 3, 192, 192)),
    ("MobileNetV1ForImageClassification", dict(depth_multiplier=0.5, num_labels=10), (2, 3, 160, 160)),
    ("MobileNetV1Model", dict(depth_multiplier=0.25), (3, 3, 128, 128)),
    ("MobileNetV2ForImageClassification", dict(depth_multiplier=1.0, num_labels=1001), (1, 3, 224, 224)),
    ("MobileNetV2ForImageClassification", dict(depth_multiplier=1.4, num_labels=1001), (1, 3, 224, 224)),
    ("MobileNetV2ForImageClassification", dict(depth_multiplier=0.75, num_labels=10), (1, 3, 192, 192)),
    ("MobileNetV2Model", dict(depth_multiplier=0.5), (2, 3, 160, 160)),
    ("MobileNetV2ForImageClassification", dict(depth_multiplier=0.35, num_labels=10), (3, 3, 96, 96)),
    ("MobileNetV2ForSemanticSegmentation", dict(depth_multiplier=0.5, output_stride=8, num_labels=21), (1, 3, 513, 513)),
    ("MobileNetV2ForSemanticSegmentation", dict(depth_multiplier=1.0, output_stride=16, num_labels=21), (1, 3, 128, 128)),
    # the TFLite DeepLab 257 model's config (TF DeepLab rounds channels with divisible_by 1)
    ("MobileNetV2ForSemanticSegmentation", dict(depth_multiplier=0.5, output_stride=8, depth_divisible_by=1,
                                                num_labels=21), (1, 3, 257, 257)),
    ("MobileNetV2ForImageClassification", dict(depth_multiplier=0.5, tf_padding=False, first_layer_is_expansion=False,
                                               finegrained_output=False, num_labels=7), (2, 3, 97, 75)),
    ("MobileNetV2ForSemanticSegmentation", dict(depth_multiplier=0.35, output_stride=16, tf_padding=False,
                                                num_labels=3), (3, 3, 67, 51)),
    ("MobileNetV2Model", dict(depth_multiplier=1.4, min_depth=16, depth_divisible_by=4, expand_ratio=4.0,
                              output_stride=8), (1, 3, 45, 61)),
    ("MobileNetV1ForImageClassification", dict(depth_multiplier=0.75, hidden_act="relu", tf_padding=False,
                                               num_labels=5), (2, 3, 99, 67)),
    ("MobileNetV1Model", dict(depth_multiplier=0.25, min_depth=32), (3, 3, 3, 5)),
]


@pytest.mark.parametrize("architecture, config, shape", EXPLICIT_CASES,
                         ids=[f"{a}-{c['depth_multiplier']}-{s[2]}x{s[3]}" for a, c, s in EXPLICIT_CASES])
def test_explicit_cases_match_transformers(architecture, config, shape, tmp_path):
    torch_model = random_transformers_model(architecture, 1, **config)
    np_model = readable(converted_twin(torch_model, tmp_path))
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    assert_matches_transformers(np_model, torch_model, x, FLOAT32_RTOL)


@pytest.mark.parametrize("architecture, config, size", [
    ("MobileNetV1ForImageClassification", dict(depth_multiplier=0.5, num_labels=7), (31, 57)),
    ("MobileNetV2ForSemanticSegmentation", dict(depth_multiplier=0.5, output_stride=8, num_labels=5), (65, 47)),
])
def test_float64_golden_outputs(architecture, config, size, tmp_path):
    """Converted float32 weights cast to float64 and float64 inputs: float64 everywhere, ~1e-14 from torch."""
    torch_model = random_transformers_model(architecture, 2, **config)
    np_model = readable(converted_twin(torch_model, tmp_path).astype(np.float64))
    assert all(v.dtype == np.float64 for k, v in np_model.params.items() if not k.endswith("num_batches_tracked"))
    x = np.random.default_rng(2).standard_normal((2, 3, *size))
    assert_matches_transformers(np_model, torch_model.double(), x, FLOAT64_RTOL)


def test_published_checkpoint_configs_build_the_transformers_parameters(shared_data):
    """The five published configs: the same state_dict keys (num_batches_tracked included), order and shapes."""
    for folder in sorted((shared_data / "hf_configs").iterdir()):
        d = json.loads((folder / "config.json").read_text())
        torch_class, np_class = ARCHITECTURES[d["architectures"][0]]
        with torch.device("meta"):  # shapes only: no memory, no init
            torch_model = torch_class(transformers.AutoConfig.from_pretrained(folder))
        np_model = np_class(np_class.config_class.from_dict(d), seed=None)
        assert_same_parameters(np_model, torch_model)
        assert np_model.num_parameters() == sum(p.numel() for p in torch_model.parameters())


# --------------------------------------------------------------------------------------------------
# mutations: the comparison must fail when the implementation is wrong
# --------------------------------------------------------------------------------------------------

def _swap_padding_side(monkeypatch):
    correct = ops.tf_same_padding_amounts
    monkeypatch.setattr(ops, "tf_same_padding_amounts", lambda *args: correct(*args)[::-1])


def _drop_dilation(monkeypatch):
    correct = mobilenet_v2._conv

    def conv_without_dilation(config, name, in_channels, out_channels, kernel_size, stride=1, dilation=1, **kwargs):
        return correct(config, name, in_channels, out_channels, kernel_size, stride, 1, **kwargs)
    monkeypatch.setattr(mobilenet_v2, "_conv", conv_without_dilation)


MUTATIONS = {
    # Even sizes are the ones that need asymmetric TF padding (stride 2 on an even size pads 0 before, 1
    # after); sizes 2^k + 1 pad symmetrically everywhere and would not see this bug.
    "padding side swapped, V1": (_swap_padding_side, "MobileNetV1ForImageClassification",
                                 dict(depth_multiplier=0.25, num_labels=5), (2, 3, 48, 40)),
    "padding side swapped, V2": (_swap_padding_side, "MobileNetV2Model", dict(depth_multiplier=0.25), (1, 3, 48, 40)),
    "head BatchNorm eps 1e-3": (lambda mp: mp.setattr(deeplabv3, "HEAD_NORM_EPS", 1e-3),
                                "MobileNetV2ForSemanticSegmentation",
                                dict(depth_multiplier=0.25, output_stride=16, num_labels=4), (1, 3, 48, 40)),
    "backbone BatchNorm eps ignored": (lambda mp: mp.setattr(ops, "batch_norm", _batch_norm_with_eps(1e-5)),
                                       "MobileNetV2ForImageClassification",
                                       dict(depth_multiplier=0.25, num_labels=4), (1, 3, 40, 40)),
    "ReLU6 in the DeepLab head": (lambda mp: mp.setitem(layers.ACTIVATIONS, "relu", ops.relu6),
                                  "MobileNetV2ForSemanticSegmentation",
                                  dict(depth_multiplier=0.25, output_stride=16, num_labels=4), (1, 3, 48, 40)),
    "ReLU6 in a hidden_act=relu V1": (lambda mp: mp.setitem(layers.ACTIVATIONS, "relu", ops.relu6),
                                      "MobileNetV1ForImageClassification",
                                      dict(depth_multiplier=0.25, hidden_act="relu", num_labels=5), (1, 3, 48, 40)),
    "dilation dropped, output_stride 8": (_drop_dilation, "MobileNetV2ForSemanticSegmentation",
                                          dict(depth_multiplier=0.25, output_stride=8, num_labels=4), (1, 3, 48, 40)),
    "dilation dropped, output_stride 16": (_drop_dilation, "MobileNetV2Model",
                                           dict(depth_multiplier=0.25, output_stride=16), (1, 3, 48, 40)),
}


def _batch_norm_with_eps(eps):
    correct = ops.batch_norm
    return lambda x, mean, var, weight, bias, _eps: correct(x, mean, var, weight, bias, eps)


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_comparison_fails_on_a_mutated_implementation(mutation, tmp_path, monkeypatch):
    introduce_bug, architecture, config, shape = MUTATIONS[mutation]
    torch_model = random_transformers_model(architecture, 3, **config)
    torch_model.save_pretrained(tmp_path / "checkpoint")
    weights = convert_checkpoint(tmp_path / "checkpoint", tmp_path / "weights.h5", progress=False)
    x = np.random.default_rng(3).standard_normal(shape)
    assert_matches_transformers(readable(mobilenet_np.load(weights)), torch_model, x.astype(np.float32), FLOAT32_RTOL)

    introduce_bug(monkeypatch)
    mutant = readable(mobilenet_np.load(weights))  # built after the change (dilation is decided when building)
    with pytest.raises(AssertionError, match="relative error"):
        assert_matches_transformers(mutant, torch_model, x.astype(np.float32), FLOAT32_RTOL)
    with pytest.raises(AssertionError, match="relative error") as failure:
        assert_matches_transformers(readable(mutant.astype(np.float64)), torch_model.double(), x, FLOAT64_RTOL)
    error = float(str(failure.value).split("relative error ")[1].split()[0])
    assert error > 1e5 * FLOAT64_RTOL, f"{mutation}: error {error:.3g} is not far above the tolerance"


def test_align_corners_of_the_head_cannot_matter(tmp_path, monkeypatch):
    """The head upsamples a 1x1 map (the pooled branch), and both align_corners conventions broadcast it.

    Flipping align_corners there changes the logits by rounding only (align_corners=False blends the
    single pixel with itself at weights w and 1 - w), far below any tolerance: it is not a bug a
    comparison can catch, or needs to. This test pins that down instead of pretending to detect it.
    """
    torch_model = random_transformers_model("MobileNetV2ForSemanticSegmentation", 4, depth_multiplier=0.25,
                                            output_stride=8, num_labels=3)
    np_model = readable(converted_twin(torch_model, tmp_path).astype(np.float64))
    x = np.random.default_rng(4).standard_normal((1, 3, 45, 38))
    correct, interpolate = np_model(x).logits, ops.interpolate_bilinear
    upsampled_shapes = []

    def flipped(x, size, align_corners):
        upsampled_shapes.append(x.shape[-2:])
        return interpolate(x, size, not align_corners)
    monkeypatch.setattr(ops, "interpolate_bilinear", flipped)
    assert relative_error(np_model(x).logits, correct) < 1e-14
    assert upsampled_shapes == [(1, 1)]
