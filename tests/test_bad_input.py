"""Bad input and failures: the whole matrix, one row per test case.

Every row checks the behaviour a user expects: the library raises the project's own error
(a MobileNetError) with one line naming the file or field and what was expected; the CLI prints that
line and exits non-zero without a traceback (--debug shows it); nothing half-written is left behind
and nothing existing is replaced without --force. Images that are unusual but valid must work.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import mobilenet_np
from mobilenet_np import cli
from mobilenet_np.errors import ConfigError, ConversionError, ImageError, MobileNetError, WeightsError
from mobilenet_np.formats.weights import save_weights

SMALL = dict(depth_multiplier=0.35, image_size=32, num_labels=4)


def one_line(error: BaseException) -> str:
    message = str(error)
    assert "\n" not in message, f"error message is not one line: {message!r}"
    return message


# --------------------------------------------------------------------------------------------------
# fixtures: a small classifier, a small segmenter, images
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bad_input")


@pytest.fixture(scope="module")
def classifier_file(folder) -> Path:
    path = folder / "classifier.h5"
    mobilenet_np.MobileNetV2ForImageClassification(mobilenet_np.MobileNetV2Config(**SMALL), seed=0).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def segmenter_file(folder) -> Path:
    path = folder / "segmenter.h5"
    config = mobilenet_np.MobileNetV2Config(depth_multiplier=0.35, image_size=33, num_labels=3, output_stride=16)
    mobilenet_np.MobileNetV2ForSemanticSegmentation(config, seed=0).save_pretrained(path)
    return path


def image_bytes(mode: str, fmt: str, size=(40, 30)) -> bytes:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (size[1], size[0]), dtype=np.uint16))
    elif mode == "P":
        image = rgb.convert("P", palette=Image.Palette.ADAPTIVE)
    else:
        image = rgb.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def png_declaring_size(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header (with a correct checksum) claims width x height pixels."""
    data = bytearray(image_bytes("RGB", "PNG", size=(1, 1)))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4: ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17: ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr: ihdr + 17])))
    return bytes(data)


# --------------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------------

BAD_IMAGE_FILES = {
    "not an image": (b"hello, this is text\n", r"not an image"),
    "zero bytes": (b"", r"empty|not an image"),
    "truncated PNG": (image_bytes("RGB", "PNG")[:200], r"truncated|damaged|broken|cannot|not an image"),
    "truncated JPEG": (image_bytes("RGB", "JPEG")[:300], r"truncated|damaged|broken|cannot|not an image"),
    "decompression bomb": (png_declaring_size(100_000, 100_000), r"decompression bomb"),
}


@pytest.mark.parametrize("row", BAD_IMAGE_FILES)
def test_bad_image_files_raise_image_error(row, tmp_path):
    content, message = BAD_IMAGE_FILES[row]
    path = tmp_path / "image.png"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=message) as error:
        mobilenet_np.MobileNetV2ImageProcessor()(str(path))
    assert str(path) in one_line(error.value)


@pytest.mark.parametrize("mode, fmt", [("L", "PNG"), ("RGBA", "PNG"), ("CMYK", "JPEG"), ("P", "PNG"),
                                       ("I;16", "PNG"), ("RGB", "BMP"), ("LA", "PNG")])
def test_unusual_but_valid_images_work(mode, fmt, tmp_path):
    path = tmp_path / f"image.{fmt.lower()}"
    path.write_bytes(image_bytes(mode, fmt))
    pixels = mobilenet_np.MobileNetV2ImageProcessor()(str(path))["pixel_values"]
    assert pixels.shape == (1, 3, 224, 224) and pixels.dtype == np.float32 and np.isfinite(pixels).all()


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (7, 1)])
def test_tiny_images_work_through_the_network(size, classifier_file):
    image = np.random.default_rng(0).integers(0, 256, size + (3,), dtype=np.uint8)
    result = mobilenet_np.pipeline("image-classification", model=str(classifier_file))(image, top_k=2)
    assert len(result) == 2 and all(np.isfinite(r["score"]) for r in result)


BAD_ARRAYS = {
    "NaN": (np.full((8, 8, 3), np.nan, np.float32), r"NaN or Inf"),
    "Inf": (np.full((8, 8, 3), np.inf, np.float64), r"NaN or Inf"),
    "wrong dtype": (np.zeros((8, 8, 3), np.complex64), r"dtype complex64"),
    "wrong channel count": (np.zeros((8, 8, 5), np.uint8), r"channels"),
    "wrong rank": (np.zeros((8,), np.uint8), r"shape \(8,\)"),
    "empty": (np.zeros((0, 8, 3), np.uint8), r"empty"),
}


@pytest.mark.parametrize("row", BAD_ARRAYS)
def test_bad_arrays_raise_image_error(row):
    array, message = BAD_ARRAYS[row]
    with pytest.raises(ImageError, match=message) as error:
        mobilenet_np.MobileNetV2ImageProcessor()(array)
    one_line(error.value)


@pytest.mark.parametrize("pixel_values, message", [
    (np.zeros((1, 4, 32, 32), np.float32), r"shape \(N, 3, H, W\), got \(1, 4, 32, 32\)"),
    (np.zeros((3, 32, 32), np.float32), r"got \(3, 32, 32\)"),
    (np.zeros((1, 3, 32, 32), np.uint8), r"float32 or float64 array, got dtype uint8"),
])
def test_bad_pixel_values_raise_shape_error(pixel_values, message, classifier_file):
    with pytest.raises(mobilenet_np.ShapeError, match=message) as error:
        mobilenet_np.load(classifier_file)(pixel_values)
    one_line(error.value)


# --------------------------------------------------------------------------------------------------
# weights files
# --------------------------------------------------------------------------------------------------

def edited_copy(source: Path, target: Path, edit) -> Path:
    target.write_bytes(source.read_bytes())
    with h5py.File(target, "r+") as f:
        edit(f)
    return target


def rename_one(f):
    f.move("tensors/classifier.bias", "tensors/classifier.bias_renamed")


def reshape_one(f):
    del f["tensors/classifier.bias"]
    f["tensors/classifier.bias"] = np.zeros(5, np.float32)


def nan_one(f):
    f["tensors/classifier.weight"][0, 0] = np.nan


def drop_one(f):
    del f["tensors/classifier.weight"]


def extra_one(f):
    f["tensors/classifier.extra"] = np.zeros(3, np.float32)


def version_99(f):
    f.attrs["format_version"] = 99


def contradicting_config(f):
    config = json.loads(f.attrs["config"])
    config["depth_multiplier"] = 1.0  # the tensors were made for 0.35
    f.attrs["config"] = json.dumps(config)


def invalid_config(f):
    config = json.loads(f.attrs["config"])
    config["hidden_act"] = "swish"
    f.attrs["config"] = json.dumps(config)


BAD_WEIGHT_EDITS = {
    "missing tensor": (drop_one, r"missing 1 tensors \(classifier.weight\)"),
    "extra tensor": (extra_one, r"unexpected 1 tensors \(classifier.extra\)"),
    "renamed tensor": (rename_one, r"missing 1 tensors.*unexpected 1 tensors"),
    "mis-shaped tensor": (reshape_one, r"classifier.bias has shape \(5,\), expected \(4,\)"),
    "NaN weights": (nan_one, r"classifier.weight contains NaN or Inf"),
    "unknown format version": (version_99, r"format_version 99 is not supported"),
    "config contradicting the tensors": (contradicting_config, r"has shape .*expected"),
    "config with an invalid value": (invalid_config, r"hidden_act"),
}


@pytest.mark.parametrize("row", BAD_WEIGHT_EDITS)
def test_bad_weight_files_raise_one_weights_error(row, classifier_file, tmp_path):
    edit, message = BAD_WEIGHT_EDITS[row]
    path = edited_copy(classifier_file, tmp_path / "edited.h5", edit)
    with pytest.raises(WeightsError, match=message) as error:
        mobilenet_np.load(path)
    assert str(path) in one_line(error.value)


@pytest.mark.parametrize("row, content, message", [
    ("missing file", None, r"no such weights file"),
    ("not HDF5", b"not an hdf5 file at all", r"not a readable HDF5 file"),
    ("truncated HDF5", "truncate", r"not a readable HDF5 file|damaged"),
])
def test_unreadable_weight_files(row, content, message, classifier_file, tmp_path):
    path = tmp_path / "weights.h5"
    if content == "truncate":
        path.write_bytes(classifier_file.read_bytes()[: classifier_file.stat().st_size // 2])
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(WeightsError, match=message) as error:
        mobilenet_np.load(path)
    assert str(path) in one_line(error.value)


def test_a_file_for_another_architecture(classifier_file):
    with pytest.raises(WeightsError, match="holds a MobileNetV2ForImageClassification, which cannot be loaded as a "
                                           "MobileNetV1ForImageClassification"):
        mobilenet_np.MobileNetV1ForImageClassification.from_pretrained(classifier_file)
    with pytest.raises(WeightsError, match="cannot be loaded as a MobileNetV2ForSemanticSegmentation"):
        mobilenet_np.MobileNetV2ForSemanticSegmentation.from_pretrained(classifier_file)


# --------------------------------------------------------------------------------------------------
# transformers checkpoints
# --------------------------------------------------------------------------------------------------

class _RunsCode:
    """A pickle payload that would create a marker file if unpickled with weights_only=False."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def checkpoint_folder(folder: Path, config: dict | None = None) -> Path:
    folder.mkdir()
    config = config or {"model_type": "mobilenet_v2", "architectures": ["MobileNetV2ForImageClassification"], **SMALL}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_a_pickle_that_would_run_code_is_refused_and_not_run(tmp_path):
    from weights_tools.convert import convert_checkpoint

    marker = tmp_path / "code_was_run"
    source = checkpoint_folder(tmp_path / "checkpoint")
    with open(source / "pytorch_model.bin", "wb") as f:
        pickle.dump({"classifier.weight": _RunsCode(marker)}, f)
    with pytest.raises(ConversionError) as error:
        convert_checkpoint(source, tmp_path / "out.h5")
    assert "pytorch_model.bin" in one_line(error.value)
    assert not marker.exists(), "unpickling ran code"
    assert not (tmp_path / "out.h5").exists()


def test_a_corrupted_safetensors_header(tmp_path):
    from weights_tools.convert import convert_checkpoint

    source = checkpoint_folder(tmp_path / "checkpoint")
    (source / "model.safetensors").write_bytes(struct.pack("<Q", 10_000) + b"{not json")
    with pytest.raises(ConversionError, match="model.safetensors") as error:
        convert_checkpoint(source, tmp_path / "out.h5")
    one_line(error.value)


@pytest.fixture(scope="module")
def real_checkpoint(folder) -> Path:
    from torch_reference import random_transformers_model

    path = folder / "transformers_checkpoint"
    random_transformers_model("MobileNetV2ForImageClassification", **SMALL).save_pretrained(path)
    return path


@pytest.mark.parametrize("field, value", [("depth_multiplier", -1.0), ("output_stride", 12), ("hidden_act", "swish"),
                                          ("tf_padding", "yes"), ("num_channels", 0)])
def test_a_config_json_with_an_invalid_value_names_the_field(field, value, real_checkpoint, tmp_path):
    import shutil

    from weights_tools.convert import convert_checkpoint

    source = Path(shutil.copytree(real_checkpoint, tmp_path / "checkpoint"))
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, field: value}))
    with pytest.raises(ConversionError, match=f"config.json: config field '{field}'") as error:
        convert_checkpoint(source, tmp_path / "out.h5")
    one_line(error.value)
    assert not (tmp_path / "out.h5").exists()


def test_a_folder_without_weights(tmp_path):
    from weights_tools.convert import convert_checkpoint

    source = checkpoint_folder(tmp_path / "checkpoint")
    with pytest.raises(ConversionError, match="model.safetensors|pytorch_model.bin|no weights") as error:
        convert_checkpoint(source, tmp_path / "out.h5")
    one_line(error.value)


# --------------------------------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------------------------------

def run_cli(argv, capsys) -> tuple[int, str, str]:
    try:
        status = cli.main(argv)
    except SystemExit as exit_:  # argparse's usage errors
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err


def assert_clean_failure(status, err, *expected):
    assert status != 0
    assert "Traceback" not in err
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert len(error_lines) == 1, err
    for text in expected:
        assert text in error_lines[0], err


def test_cli_unknown_flag(capsys, classifier_file):
    status, _, err = run_cli(["classify", "x.png", "--weights", str(classifier_file), "--no-such-flag"], capsys)
    assert_clean_failure(status, err, "unrecognized arguments: --no-such-flag")


@pytest.mark.parametrize("which", ["image", "weights"])
def test_cli_missing_files(which, capsys, classifier_file, folder):
    image = folder / "present.png"
    image.write_bytes(image_bytes("RGB", "PNG"))
    argv = ["classify", str(folder / "absent.png") if which == "image" else str(image),
            "--weights", str(folder / "absent.h5") if which == "weights" else str(classifier_file)]
    status, _, err = run_cli(argv, capsys)
    assert_clean_failure(status, err, "absent.")


@pytest.mark.parametrize("out", ["missing_folder/mask.png", "/sys/mobilenet-np-read-only/mask.png", "/sys/mask.png"])
def test_cli_output_in_a_missing_or_read_only_folder(out, capsys, segmenter_file, folder):
    image = folder / "scene.png"
    image.write_bytes(image_bytes("RGB", "PNG"))
    target = out if out.startswith("/") else str(folder / out)
    status, _, err = run_cli(["segment", str(image), "--weights", str(segmenter_file), "--out", target], capsys)
    assert_clean_failure(status, err, target)
    assert not Path(target).exists()


def test_cli_existing_output_is_not_replaced_without_force(capsys, segmenter_file, folder):
    image = folder / "scene2.png"
    image.write_bytes(image_bytes("RGB", "PNG"))
    target = folder / "existing.png"
    target.write_bytes(b"precious")
    argv = ["segment", str(image), "--weights", str(segmenter_file), "--out", str(target)]
    status, _, err = run_cli(argv, capsys)
    assert_clean_failure(status, err, "exists")
    assert target.read_bytes() == b"precious"
    status, _, _ = run_cli(argv + ["--force"], capsys)
    assert status == 0 and Image.open(target).size == (40, 30)


def test_cli_debug_shows_the_traceback(capsys, folder):
    with pytest.raises(WeightsError):
        cli.main(["--debug", "summary", "--weights", str(folder / "absent.h5")])


def test_cli_error_in_a_real_process_has_no_traceback(folder):
    """The console script itself, as a user runs it: one line on stderr, exit 2."""
    result = subprocess.run([sys.executable, "-m", "mobilenet_np", "summary", "--weights", str(folder / "absent.h5")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert "absent.h5" in result.stderr


# --------------------------------------------------------------------------------------------------
# interrupted writes: the old output stays, no temporary file stays
# --------------------------------------------------------------------------------------------------

def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".tmp" in p.name]


def test_an_interrupted_save_leaves_the_old_file_intact(classifier_file, tmp_path, monkeypatch):
    target = tmp_path / "weights.h5"
    target.write_bytes(classifier_file.read_bytes())
    before = target.read_bytes()
    model = mobilenet_np.MobileNetV2ForImageClassification(mobilenet_np.MobileNetV2Config(**SMALL), seed=1)

    written = []
    real_create = h5py.Group.create_dataset

    def create_then_die(self, name, *args, **kwargs):
        written.append(name)
        if len(written) == 20:  # the process is killed in the middle of writing the tensors
            raise KeyboardInterrupt
        return real_create(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", create_then_die)
    with pytest.raises(KeyboardInterrupt):
        save_weights(target, model.state_dict(), "MobileNetV2ForImageClassification", model.config.to_dict(),
                     overwrite=True)
    assert len(written) == 20
    assert target.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_a_process_killed_while_writing_leaves_no_partial_output(classifier_file, tmp_path):
    """A real `mobilenet-np golden` process, stopped with SIGTERM part-way through writing its output."""
    target = tmp_path / "golden.h5"
    target.write_bytes(b"the previous golden file")
    weights = tmp_path / "deeplab.h5"
    config = mobilenet_np.MobileNetV2Config(depth_multiplier=0.5, image_size=321, num_labels=21, output_stride=8)
    mobilenet_np.MobileNetV2ForSemanticSegmentation(config, seed=0).save_pretrained(weights)
    command = [sys.executable, "-m", "mobilenet_np", "golden", "--weights", str(weights), "--seed", "0",
               "--dtype", "float64", "--out", str(target), "--force"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not leftovers(tmp_path) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)  # wait until the temporary output exists: the write has started
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    if process.returncode == 0:  # it finished before the signal (or Python swallowed it in a finaliser,
        assert read_golden_ok(target)  # printing "Exception ignored in ..."): the new file is complete
    else:
        assert process.returncode == 130 and err.strip().splitlines()[-1].endswith("interrupted"), err
        assert target.read_bytes() == b"the previous golden file"
    assert leftovers(tmp_path) == []


def read_golden_ok(path: Path) -> bool:
    with h5py.File(path, "r") as f:
        return len(f["tensors"]) > 10


# --------------------------------------------------------------------------------------------------
# fuzzing: nothing escapes the loaders but the project's own errors
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def weights_bytes(classifier_file) -> bytes:
    return classifier_file.read_bytes()


@settings(max_examples=40)
@given(data=st.data())
def test_fuzzed_weight_files(data, weights_bytes, tmp_path_factory):
    content = bytearray(weights_bytes)
    how = data.draw(st.sampled_from(["flip", "truncate", "splice"]))
    if how == "flip":
        for _ in range(data.draw(st.integers(1, 30))):
            content[data.draw(st.integers(0, len(content) - 1))] = data.draw(st.integers(0, 255))
    elif how == "truncate":
        content = content[: data.draw(st.integers(0, len(content) - 1))]
    else:
        start = data.draw(st.integers(0, len(content) - 1))
        content[start: start + 64] = data.draw(st.binary(min_size=1, max_size=64))
    path = tmp_path_factory.mktemp("fuzz") / "weights.h5"
    path.write_bytes(bytes(content))
    try:
        model = mobilenet_np.load(path)
        model(np.zeros((1, 3, 16, 16), np.float32))
    except MobileNetError as error:
        one_line(error)


@settings(max_examples=40)
@given(data=st.data())
def test_fuzzed_images(data, tmp_path_factory):
    fmt = data.draw(st.sampled_from(["PNG", "JPEG", "BMP"]))
    content = bytearray(image_bytes("RGB", fmt))
    for _ in range(data.draw(st.integers(1, 20))):
        content[data.draw(st.integers(0, len(content) - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        content = content[: data.draw(st.integers(0, len(content)))]
    path = tmp_path_factory.mktemp("fuzz") / f"image.{fmt.lower()}"
    path.write_bytes(bytes(content))
    try:
        pixels = mobilenet_np.MobileNetV2ImageProcessor()(str(path))["pixel_values"]
        assert np.isfinite(pixels).all()
    except ImageError as error:
        one_line(error)


JUNK = st.one_of(st.none(), st.booleans(), st.integers(-10, 10), st.floats(allow_nan=True),
                 st.text(max_size=8), st.lists(st.integers(0, 4), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
FIELDS = ["num_channels", "image_size", "depth_multiplier", "depth_divisible_by", "min_depth", "expand_ratio",
          "output_stride", "first_layer_is_expansion", "finegrained_output", "hidden_act", "tf_padding",
          "classifier_dropout_prob", "layer_norm_eps", "num_labels", "id2label", "model_type"]


@given(changes=st.dictionaries(st.sampled_from(FIELDS), JUNK, min_size=1, max_size=4),
       model_class=st.sampled_from([mobilenet_np.MobileNetV2ForSemanticSegmentation, mobilenet_np.MobileNetV1Model]))
def test_fuzzed_config_dicts(changes, model_class):
    config_dict = {**model_class.config_class().to_dict(), **changes}
    try:
        config = model_class.config_class.from_dict(config_dict)
    except ConfigError as error:
        assert any(field in one_line(error) for field in changes) or "model_type" in str(error), str(error)
        return
    model = model_class(config, seed=None)  # a valid config always builds (no weights drawn)
    assert model.parameter_shapes()
