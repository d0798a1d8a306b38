"""The HDF5 weights format: round trips, every loading error, and the specification in docs/weights_format.md.

Loading must either give back exactly the weights in the file or raise one WeightsError that lists
everything wrong: it never runs a network on weights that are not in the file.
"""

from __future__ import annotations

import ast
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest

import mobilenet_np
from mobilenet_np.errors import OutputExistsError, WeightsError
from mobilenet_np.formats.weights import FORMAT_NAME, FORMAT_VERSION, TENSORS_GROUP, read_weights
from weights_tools.import_tflite import import_tflite

from torch_reference import ARCHITECTURES

DOC = Path(__file__).resolve().parents[1] / "docs" / "weights_format.md"
IMAGE_PROCESSOR = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "crop_size": {"height": 96, "width": 96}}
PROVENANCE = {"source": "test", "converter": "tests"}


def small_model(architecture: str, seed: int = 0, **config):
    np_class = ARCHITECTURES[architecture][1]
    if np_class.config_class is mobilenet_np.MobileNetV2Config:
        config.setdefault("output_stride", 16)
    return np_class(np_class.config_class(**{"depth_multiplier": 0.25, "num_labels": 3, **config}), seed=seed)


@pytest.fixture
def weights_file(tmp_path) -> Path:
    """A small MobileNetV2ForImageClassification weights file."""
    path = tmp_path / "weights.h5"
    small_model("MobileNetV2ForImageClassification").save_pretrained(path, image_processor=IMAGE_PROCESSOR,
                                                                     provenance=PROVENANCE)
    return path


def pixels(shape=(2, 3, 35, 29), dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


# --------------------------------------------------------------------------------------------------
# round trips
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_save_and_load_give_back_exactly_the_model(architecture, tmp_path):
    model = small_model(architecture, seed=1)
    path = tmp_path / "weights.h5"
    model.save_pretrained(path, image_processor=IMAGE_PROCESSOR, provenance=PROVENANCE)
    np_class = ARCHITECTURES[architecture][1]
    for loaded in (mobilenet_np.load(path), np_class.from_pretrained(path)):
        assert type(loaded) is np_class and loaded.config == model.config
        assert list(loaded.state_dict()) == list(model.state_dict())
        for key, value in model.state_dict().items():
            assert loaded.params[key].dtype == value.dtype and np.array_equal(loaded.params[key], value), key
        assert loaded.metadata["image_processor"] == IMAGE_PROCESSOR and loaded.metadata["provenance"] == PROVENANCE
        ours, theirs = loaded(pixels()), model(pixels())
        assert all(np.array_equal(a, b) for a, b in zip(ours.to_tuple(), theirs.to_tuple()))
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == FORMAT_NAME.encode() and f.attrs["format_version"] == FORMAT_VERSION
        assert f.attrs["architecture"] == architecture.encode()  # fixed-length UTF-8 strings read as bytes
        assert h5py.check_string_dtype(f.attrs.get_id("config").dtype).length is not None  # fixed, not vlen
        assert sorted(f[TENSORS_GROUP]) == sorted(model.parameter_shapes())
        counters = [k for k in f[TENSORS_GROUP] if k.endswith("num_batches_tracked")]
        assert counters and all(f[TENSORS_GROUP][k].dtype == np.int64 and f[TENSORS_GROUP][k].shape == ()
                                for k in counters)
    assert read_weights(path).id2label == model.config.id2label


def test_float64_weights_stay_float64(tmp_path):
    model = small_model("MobileNetV1ForImageClassification").astype(np.float64)
    model.save_pretrained(tmp_path / "w64.h5")
    loaded = mobilenet_np.load(tmp_path / "w64.h5")
    assert loaded.params["classifier.weight"].dtype == np.float64
    assert loaded(pixels()).logits.dtype == np.float64
    assert np.array_equal(loaded(pixels(dtype=np.float64)).logits, model(pixels(dtype=np.float64)).logits)


def test_a_head_file_loads_into_its_base_model_as_in_transformers(weights_file):
    head = mobilenet_np.load(weights_file)
    base = mobilenet_np.MobileNetV2Model.from_pretrained(weights_file)
    assert sorted(base.params) == sorted(k[len("mobilenet_v2."):] for k in head.params if k.startswith("mobilenet_v2."))
    x = pixels()
    assert np.array_equal(base(x).pooler_output, head.mobilenet_v2(x).pooler_output)


@pytest.mark.parametrize("stored, requested", [
    ("MobileNetV2Model", mobilenet_np.MobileNetV2ForImageClassification),
    ("MobileNetV2ForImageClassification", mobilenet_np.MobileNetV2ForSemanticSegmentation),
    ("MobileNetV1ForImageClassification", mobilenet_np.MobileNetV2Model),
])
def test_a_file_of_another_architecture_is_refused(stored, requested, tmp_path):
    small_model(stored).save_pretrained(tmp_path / "w.h5")
    with pytest.raises(WeightsError, match=f"holds a {stored}, which cannot be loaded as a {requested.__name__}"):
        requested.from_pretrained(tmp_path / "w.h5")


def test_an_existing_file_is_replaced_only_with_overwrite(weights_file):
    before = weights_file.read_bytes()
    model = small_model("MobileNetV1Model")
    with pytest.raises(OutputExistsError, match="exists already"):
        model.save_pretrained(weights_file)
    assert weights_file.read_bytes() == before
    model.save_pretrained(weights_file, overwrite=True)
    assert type(mobilenet_np.load(weights_file)) is mobilenet_np.MobileNetV1Model
    assert [p.name for p in weights_file.parent.iterdir()] == [weights_file.name]


# --------------------------------------------------------------------------------------------------
# every way a file can be wrong
# --------------------------------------------------------------------------------------------------

def _tensors(edit):
    def change(path):
        with h5py.File(path, "r+") as f:
            edit(f[TENSORS_GROUP])
    return change


def _attribute(name, value):
    def change(path):
        with h5py.File(path, "r+") as f:
            if value is None:
                del f.attrs[name]
            else:
                f.attrs[name] = value
    return change


def _replace(group, key, value):
    del group[key]
    group[key] = value


def _config_value(**changes):
    def change(path):
        with h5py.File(path, "r+") as f:
            f.attrs["config"] = json.dumps({**json.loads(f.attrs["config"]), **changes})
    return change


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


STEM = "mobilenet_v2.conv_stem.first_conv"
BROKEN_FILES = {
    "missing tensor": (_tensors(lambda g: g.__delitem__(f"{STEM}.convolution.weight")),
                       rf"missing 1 tensors \({STEM}.convolution.weight\)"),
    "unexpected tensor": (_tensors(lambda g: g.create_dataset("extra.weight", data=np.zeros(2, np.float32))),
                          r"unexpected 1 tensors \(extra.weight\)"),
    "mis-shaped tensor": (_tensors(lambda g: _replace(g, "classifier.bias", np.zeros(5, np.float32))),
                          r"classifier.bias has shape \(5,\), expected \(3,\)"),
    "transposed conv weight": (_tensors(lambda g: _replace(g, f"{STEM}.convolution.weight",
                                                           g[f"{STEM}.convolution.weight"][()].transpose(2, 3, 1, 0))),
                               rf"{STEM}.convolution.weight has shape \(3, 3, 3, 8\), expected \(8, 3, 3, 3\)"),
    "NaN weight": (_tensors(lambda g: g["classifier.weight"].__setitem__((0, 0), np.nan)),
                   r"classifier.weight contains NaN or Inf"),
    "Inf statistic": (_tensors(lambda g: g[f"{STEM}.normalization.running_var"].__setitem__(0, np.inf)),
                      rf"{STEM}.normalization.running_var contains NaN or Inf"),
    "integer weight": (_tensors(lambda g: _replace(g, "classifier.bias", np.zeros(3, np.int32))),
                       r"classifier.bias has dtype int32"),
    "wrong architecture (other family)": (_attribute("architecture", "MobileNetV1ForImageClassification"),
                                          r"config field 'model_type' is 'mobilenet_v2', expected 'mobilenet_v1'"),
    "wrong architecture (same family)": (_attribute("architecture", "MobileNetV2ForSemanticSegmentation"),
                                         r"missing 20 tensors \(segmentation_head.*unexpected 2 tensors \(classifier"),
    "unknown architecture": (_attribute("architecture", "ResNetForImageClassification"),
                             r"root attribute 'architecture' is 'ResNetForImageClassification'"),
    "unknown format version": (_attribute("format_version", 3), r"format_version 3 is not supported"),
    "version 2 without numerics": (_attribute("format_version", 2), r"root attribute .numerics. is None"),
    "no format version": (_attribute("format_version", None), r"format_version None is not supported"),
    "format version as text": (_attribute("format_version", "1"), r"format_version '1' is not supported"),
    "another format": (_attribute("format", "keras"), r"root attribute 'format' is 'keras'"),
    "config not JSON": (_attribute("config", "{depth_multiplier: 1"), r"root attribute 'config' is not valid JSON"),
    "config value invalid": (_config_value(depth_multiplier=-1), r"config field 'depth_multiplier'"),
    "config does not match the tensors": (_config_value(depth_multiplier=0.5), r"has shape .* expected"),
    "no tensors group": (lambda p: _delete_group(p), r"no group /tensors"),
    "truncated file": (_truncate, r"not a readable HDF5 file|damaged weights file"),
    "not HDF5": (lambda p: p.write_text("config = {}\n"), r"not a readable HDF5 file"),
}


def _delete_group(path):
    with h5py.File(path, "r+") as f:
        del f[TENSORS_GROUP]


@pytest.mark.parametrize("broken", list(BROKEN_FILES))
def test_a_broken_file_raises_one_clear_error(broken, weights_file):
    break_it, message = BROKEN_FILES[broken]
    break_it(weights_file)
    with pytest.raises(WeightsError, match=message) as error:
        mobilenet_np.load(weights_file)
    assert str(error.value).startswith(str(weights_file)) and "\n" not in str(error.value)
    with pytest.raises(WeightsError) as error:  # the class the file was written from refuses it too
        mobilenet_np.MobileNetV2ForImageClassification.from_pretrained(weights_file)
    assert str(error.value).startswith(str(weights_file)) and "\n" not in str(error.value)


def test_every_problem_is_listed_in_the_one_error(weights_file):
    with h5py.File(weights_file, "r+") as f:
        g = f[TENSORS_GROUP]
        del g["classifier.weight"]
        g["extra"] = np.zeros(1, np.float32)
        _replace(g, "classifier.bias", np.zeros(5, np.float32))
        g[f"{STEM}.normalization.weight"][1] = np.nan
    with pytest.raises(WeightsError) as error:
        mobilenet_np.load(weights_file)
    for part in ["missing 1 tensors (classifier.weight)", "unexpected 1 tensors (extra)",
                 "classifier.bias has shape (5,)", f"{STEM}.normalization.weight contains NaN or Inf"]:
        assert part in str(error.value)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(WeightsError, match="no such weights file"):
        mobilenet_np.load(tmp_path / "absent.h5")
    with pytest.raises(WeightsError, match=r"no such weights file \(it is a folder\)"):
        mobilenet_np.load(tmp_path)


def test_a_failed_load_changes_nothing(weights_file):
    """load_state_dict checks everything before it replaces anything: no half-loaded model."""
    model = small_model("MobileNetV2ForImageClassification", seed=5)
    before = {k: v.copy() for k, v in model.params.items()}
    tensors = read_weights(weights_file).tensors
    tensors["classifier.bias"] = np.full(3, np.nan, np.float32)
    with pytest.raises(WeightsError, match="classifier.bias contains NaN"):
        model.load_state_dict(tensors)
    assert all(np.array_equal(model.params[k], v) for k, v in before.items())


# --------------------------------------------------------------------------------------------------
# the specification
# --------------------------------------------------------------------------------------------------

def test_the_documentation_lists_every_root_attribute(weights_file):
    doc = DOC.read_text()
    with h5py.File(weights_file, "r") as f:
        for name in f.attrs:
            assert f"| `{name}` |" in doc, name
    assert f"always `{FORMAT_NAME}`" in doc and f"`{FORMAT_VERSION}`" in doc and f"`/{TENSORS_GROUP}`" in doc


def _doc_literal(pattern: str):
    return ast.literal_eval(re.search(pattern, DOC.read_text()).group(1))


def _make_divisible(v, d, m):
    """The documented rounding rule, written from the documentation."""
    new = max(m, math.floor((v + d / 2) / d) * d)
    return new + d if new < 0.9 * v else new


@pytest.mark.parametrize("config", [
    dict(), dict(depth_multiplier=0.35, min_depth=16), dict(depth_multiplier=1.4, depth_divisible_by=1),
    dict(depth_multiplier=0.75, expand_ratio=4.0, first_layer_is_expansion=False, finegrained_output=False),
    dict(depth_multiplier=0.5, output_stride=8), dict(depth_multiplier=0.3, output_stride=16, tf_padding=False),
])
def test_the_documented_v2_rules_rebuild_the_network(config):
    """Channels, strides, dilations and residuals from docs/weights_format.md equal the network's."""
    c = mobilenet_np.MobileNetV2Config(**config)
    model = mobilenet_np.MobileNetV2Model(c, seed=None)
    ch = lambda n: _make_divisible(round(n * c.depth_multiplier), c.depth_divisible_by, c.min_depth)  # noqa: E731
    channels = [ch(n) for n in _doc_literal(r"`c = (\[[\d, ]+\])`")]
    nominal_strides = _doc_literal(r"nominal strides\s+`(\[[\d, ]+\])`")
    shapes = model.parameter_shapes()
    assert shapes["conv_stem.first_conv.convolution.weight"] == (ch(32), 3, 3, 3)
    assert ("conv_stem.expand_1x1.convolution.weight" in shapes) == (not c.first_layer_is_expansion)
    assert shapes["conv_stem.reduce_1x1.convolution.weight"] == (channels[0], ch(32), 1, 1)
    current, dilation = 2, 1
    for i, block in enumerate(model.layer):
        if current == c.output_stride:
            stride, block_dilation, dilation = 1, dilation, dilation * nominal_strides[i]
        else:
            stride, block_dilation, current = nominal_strides[i], 1, current * nominal_strides[i]
        expanded = _make_divisible(round(channels[i] * c.expand_ratio), c.depth_divisible_by, c.min_depth)
        assert shapes[f"layer.{i}.expand_1x1.convolution.weight"] == (expanded, channels[i], 1, 1)
        assert shapes[f"layer.{i}.conv_3x3.convolution.weight"] == (expanded, 1, 3, 3)
        assert shapes[f"layer.{i}.reduce_1x1.convolution.weight"] == (channels[i + 1], expanded, 1, 1)
        assert (block.conv_3x3.stride, block.conv_3x3.dilation) == (stride, block_dilation)
        assert block.use_residual == (stride == 1 and channels[i] == channels[i + 1])
    last = 1280 if c.finegrained_output and c.depth_multiplier < 1 else ch(1280)
    assert shapes["conv_1x1.convolution.weight"] == (last, channels[-1], 1, 1)


@pytest.mark.parametrize("depth_multiplier, min_depth", [(1.0, 8), (0.75, 8), (0.25, 16), (0.1, 3)])
def test_the_documented_v1_rules_rebuild_the_network(depth_multiplier, min_depth):
    c = mobilenet_np.MobileNetV1Config(depth_multiplier=depth_multiplier, min_depth=min_depth)
    model = mobilenet_np.MobileNetV1Model(c, seed=None)
    ch = lambda n: max(int(n * depth_multiplier), min_depth)  # noqa: E731
    shapes = model.parameter_shapes()
    assert shapes["conv_stem.convolution.weight"] == (ch(32), 3, 3, 3)
    channels = ch(32)
    for j, (stride, out) in enumerate(_doc_literal(r"for j = 0..12:\s+`(\[[\d, ()]+\])`")):
        assert shapes[f"layer.{2 * j}.convolution.weight"] == (channels, 1, 3, 3)
        assert model.layer[2 * j].stride == stride
        assert shapes[f"layer.{2 * j + 1}.convolution.weight"] == (ch(out), channels, 1, 1)
        channels = ch(out)
    assert len(model.layer) == 26


def test_the_c_reader_in_the_documentation(tmp_path):
    """Compile the documented C program against the HDF5 library and check what it reads."""
    compiler, pkg_config = shutil.which("gcc") or shutil.which("cc"), shutil.which("pkg-config")
    flags = subprocess.run([pkg_config, "--cflags", "--libs", "hdf5"], capture_output=True, text=True) \
        if pkg_config else None
    if not compiler or not flags or flags.returncode != 0:
        pytest.skip("no C compiler or HDF5 development files (libhdf5-dev) to build the documented reader")
    source = tmp_path / "read_weights.c"
    source.write_text(re.search(r"```c\n(.*?)```", DOC.read_text(), re.S).group(1))
    build = subprocess.run([compiler, "-Wall", "-Werror", str(source), *flags.stdout.split(), "-o",
                            str(tmp_path / "read_weights")], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    for dtype in (np.float32, np.float64):
        model = small_model("MobileNetV2ForSemanticSegmentation").astype(dtype)
        path = tmp_path / f"{np.dtype(dtype).name}.h5"
        model.save_pretrained(path)
        key = "mobilenet_v2.conv_stem.first_conv.convolution.weight"
        run = subprocess.run([str(tmp_path / "read_weights"), str(path), key], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        lines = run.stdout.splitlines()
        assert lines[0] == "architecture: MobileNetV2ForSemanticSegmentation"
        assert mobilenet_np.MobileNetV2Config.from_dict(json.loads(lines[1][len("config: "):])) == model.config
        assert lines[2] == "numerics: float"
        assert lines[3] == f"{key} shape: " + " ".join(map(str, model.params[key].shape))
        values = np.array([float(v) for v in lines[4:]], np.float64)
        assert np.array_equal(values.astype(np.float32), model.params[key].astype(np.float32).ravel())
    run = subprocess.run([str(tmp_path / "read_weights"), str(path), "no.such.tensor"], capture_output=True, text=True)
    assert run.returncode == 1
    # an integer network (format version 2): codes, and the per-channel scales and zero points
    fixture = Path(__file__).resolve().parent / "fixtures" / "tflite" / "keras_mobilenet_v1_0.25_96_int8_int8io.tflite"
    path = import_tflite(fixture, tmp_path / "integer.h5", quantized=True)
    weights = read_weights(path)
    key = "mobilenet_v1.conv_stem.convolution.weight"
    run = subprocess.run([str(tmp_path / "read_weights"), str(path), key], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    q, codes = weights.quantization[key], weights.tensors[key]
    assert lines[2] == "numerics: integer" and lines[3] == "quantization: axis 0"
    assert [line.split() for line in lines[4: 4 + q.scale.size]] == [[f"{float(s):.9g}", str(z)]
                                                                      for s, z in zip(q.scale, q.zero_point)]
    assert lines[4 + q.scale.size] == f"{key} shape: " + " ".join(map(str, codes.shape))
    assert np.array_equal(np.array([float(v) for v in lines[5 + q.scale.size:]]), codes.ravel())
