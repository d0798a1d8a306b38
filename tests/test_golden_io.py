"""Golden files porters can use: four formats, a layer subset, streaming, compare on real ports, the flat binary in C.

The CLIs run in-process through main(argv). Networks are small and random (MobileNetV1 0.25 at 33 x 33,
DeepLabV3 0.35 at 97 x 97 for the memory checks).
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import mobilenet_np
from mobilenet_np.cli import main as np_main
from mobilenet_np.formats import golden, golden_io
from weights_tools.__main__ import main as tools_main

FORMATS = golden_io.FORMATS
C_READER = Path(__file__).resolve().parent / "c" / "flat_read.c"


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "v1.h5"
    mobilenet_np.MobileNetV1ForImageClassification(mobilenet_np.MobileNetV1Config(
        depth_multiplier=0.25, image_size=33, num_labels=6), seed=0).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def goldens(weights, tmp_path_factory) -> dict[str, Path]:
    """format -> golden file of the same run (seed 0, float32), written by `mobilenet-np golden --format`."""
    folder = tmp_path_factory.mktemp("goldens")
    files = {}
    for file_format in FORMATS:
        files[file_format] = out = folder / f"golden.{file_format}.out"
        assert np_main(["golden", "--weights", str(weights), "--seed", "0", "--out", str(out),
                        "--format", file_format]) == 0
    return files


def compare_json(capsys, reference, candidate, *options) -> tuple[int, dict, str]:
    capsys.readouterr()
    status = np_main(["compare", str(reference), str(candidate), "--json", *options])
    captured = capsys.readouterr()
    return status, json.loads(captured.out), captured.err


def fnv_free_checksum(data: bytes) -> int:
    """The C reader's checksum: sum of (i + 1) * byte[i] modulo 2^64."""
    b = np.frombuffer(data, np.uint8).astype(np.uint64)
    return int(np.sum(b * np.arange(1, len(b) + 1, dtype=np.uint64), dtype=np.uint64))


# --------------------------------------------------------------------------------------------------
# four formats, same content, any pairing
# --------------------------------------------------------------------------------------------------

def test_every_format_holds_the_same_tensors_and_attributes(goldens):
    reference = golden.read_golden(goldens["h5"])
    assert list(reference.tensors)[0] == "pixel_values" and len(reference.tensors) == 111
    for file_format, path in goldens.items():
        assert golden_io.sniff(path) == file_format
        read = golden.read_golden(path)
        assert list(read.tensors) == list(reference.tensors)                  # network order kept
        for name, tensor in reference.tensors.items():
            assert read.tensors[name].dtype == tensor.dtype
            np.testing.assert_array_equal(read.tensors[name], tensor)
        assert read.attrs == reference.attrs                                   # JSON attributes decoded alike


def test_other_libraries_read_the_files(goldens):
    reference = golden.read_golden(goldens["h5"])
    with np.load(goldens["npz"]) as npz:                                       # plain NumPy, no pickle
        assert [k for k in npz.files if k != "__metadata__"] == list(reference.tensors)
        np.testing.assert_array_equal(npz["classifier"], reference.tensors["classifier"])
        assert json.loads(str(npz["__metadata__"][()]))["format"] == golden.FORMAT_NAME
    safetensors = pytest.importorskip("safetensors")
    with safetensors.safe_open(str(goldens["safetensors"]), framework="np") as f:
        assert set(f.keys()) == set(reference.tensors)
        assert f.metadata()["format"] == golden.FORMAT_NAME and json.loads(f.metadata()["config"])["num_labels"] == 6
        for name in reference.tensors:
            np.testing.assert_array_equal(f.get_tensor(name), reference.tensors[name])


@pytest.mark.parametrize("reference, candidate", list(itertools.product(FORMATS, FORMATS)))
def test_compare_reads_any_pairing(reference, candidate, goldens):
    with golden.open_golden(goldens[reference]) as ref, golden.open_golden(goldens[candidate]) as cand:
        comparison = golden.compare_goldens(ref, cand, rtol=0, atol=0)
    assert comparison.passed and len(comparison.rows) == 111 and comparison.warnings == []


def test_compare_cli_across_formats_names_the_first_divergence(goldens, tmp_path, capsys):
    tensors = golden.read_golden(goldens["h5"])
    changed = dict(tensors.tensors)
    changed["mobilenet_v1.layer.4.convolution"] = changed["mobilenet_v1.layer.4.convolution"] + 0.5
    candidate = golden.save_golden(tmp_path / "port.bin", changed, tensors.attrs)
    assert golden_io.sniff(candidate) == "bin"                                 # the format from the name
    status, report, _ = compare_json(capsys, goldens["safetensors"], candidate)
    assert status == 1 and report["first_divergence"] == "mobilenet_v1.layer.4.convolution"


# --------------------------------------------------------------------------------------------------
# --layers and --compression
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("patterns, expected", [
    (["*.layer.1?"], ["mobilenet_v1.layer.1" + str(i) for i in range(10)]),
    (["re:layer\\.2[0-1]\\.normalization$", "classifier"],
     ["mobilenet_v1.layer.20.normalization", "mobilenet_v1.layer.21.normalization", "classifier"]),
])
def test_layers_records_the_matching_tensors_and_the_input(patterns, expected, weights, tmp_path):
    out = tmp_path / "subset.npz"
    argv = ["golden", "--weights", str(weights), "--seed", "0", "--out", str(out)]
    for pattern in patterns:
        argv += ["--layers", pattern]
    assert np_main(argv) == 0
    recorded = golden.read_golden(out)
    assert list(recorded.tensors) == ["pixel_values", *expected]
    full = mobilenet_np.load(weights)
    everything = golden.record_model(full, golden.seeded_pixel_values(0, 33, 33))
    for name in expected:
        np.testing.assert_array_equal(recorded.tensors[name], everything[name])


def test_layers_matching_nothing_or_a_bad_regex_is_an_error_and_writes_nothing(weights, tmp_path, capsys):
    for pattern, message in (("*.no_such_layer", "matched none of the"), ("re:layer[", "not a regular expression")):
        out = tmp_path / "subset.h5"
        capsys.readouterr()
        assert np_main(["golden", "--weights", str(weights), "--seed", "0", "--out", str(out),
                        "--layers", pattern]) == 2
        error = capsys.readouterr().err
        assert message in error and len(error.strip().splitlines()) == 1
        assert list(tmp_path.iterdir()) == []                                  # no file, no temporary


@pytest.mark.parametrize("compression", golden_io.COMPRESSIONS)
def test_hdf5_compression(compression, weights, goldens, tmp_path, capsys):
    out = tmp_path / "compressed.h5"
    assert np_main(["golden", "--weights", str(weights), "--seed", "0", "--out", str(out),
                    "--compression", compression]) == 0
    with h5py.File(out, "r") as f:
        assert f["tensors/mobilenet_v1.layer.0.convolution"].compression == compression
    status, _, _ = compare_json(capsys, goldens["h5"], out, "--rtol", "0", "--atol", "0")
    assert status == 0
    capsys.readouterr()
    assert np_main(["golden", "--weights", str(weights), "--seed", "0", "--out", str(tmp_path / "x.npz"),
                    "--compression", compression]) == 2
    assert "for the h5 format only" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# streaming: memory bounded by the largest tensors, not the file
# --------------------------------------------------------------------------------------------------

def traced_peak(function) -> int:
    """Peak bytes traced by tracemalloc (NumPy reports its arrays to it) while `function` runs."""
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("file_format", ["h5", "npz", "bin"])
def test_golden_and_compare_hold_a_tensor_or_two_not_the_file(file_format, tmp_path):
    """DeepLabV3 0.35 at 97 x 97 in float64: 50 MB of tensors, the largest 1.7 MB."""
    model = mobilenet_np.MobileNetV2ForSemanticSegmentation(mobilenet_np.MobileNetV2Config(
        depth_multiplier=0.35, image_size=97, output_stride=8, num_labels=5), seed=0)
    weights = tmp_path / "deeplab.h5"
    model.save_pretrained(weights)
    x = golden.seeded_pixel_values(0, 97, 97, dtype=np.float64)
    sizes = []
    forward_only = traced_peak(lambda: model.astype(np.float64)(x, record=lambda name, t: sizes.append(t.nbytes)))
    total, largest = sum(sizes), max(sizes)
    assert total > 25 * largest
    out = {name: tmp_path / f"{name}.{file_format}" for name in ("a", "b")}
    argv = ["golden", "--weights", str(weights), "--seed", "0", "--dtype", "float64", "--format", file_format]
    recording = traced_peak(lambda: np_main([*argv, "--out", str(out["a"])]))
    # what the network itself needs, plus its weights loaded and cast, plus a few tensors -- not the 50 MB
    assert recording < forward_only + total / 4, (recording, forward_only, total)
    shutil.copy(out["a"], out["b"])
    comparing = traced_peak(lambda: np_main(["compare", str(out["a"]), str(out["b"])]))
    pieces = 8 * golden.CHUNK_ELEMENTS * 8                                    # float64 temporaries of one piece
    assert comparing < 2 * largest + pieces + (4 << 20), (comparing, largest)


@given(st.lists(st.integers(1, 7), min_size=0, max_size=4), st.sampled_from([1, 5, 64, 10**6]),
       st.booleans(), st.integers(0, 2**31))
def test_compare_tensors_in_pieces_equals_the_whole(shape, chunk, transposed, seed):
    rng = np.random.default_rng(seed)
    ref = rng.normal(size=shape).astype(np.float32)
    cand = (ref + rng.normal(0, 1e-3, size=shape)).astype(np.float64)
    if transposed and ref.ndim >= 3:                         # a candidate that is a channels-last view
        cand = np.ascontiguousarray(np.moveaxis(cand, 1, -1))
        cand = np.moveaxis(cand, -1, 1)
    whole = golden.compare_tensors(ref, cand, 1e-3, 1e-4, chunk=10**9)
    pieces = golden.compare_tensors(ref, cand, 1e-3, 1e-4, chunk=chunk)
    for key in ("max_abs_error", "max_rel_error", "num_out_of_tolerance", "out_of_tolerance_fraction"):
        assert pieces[key] == whole[key]
    assert pieces["cosine_similarity"] == pytest.approx(whole["cosine_similarity"], abs=1e-12)


@given(specs=st.lists(st.tuples(st.sampled_from(golden_io.FLAT_DTYPES), st.lists(st.integers(0, 5), max_size=3)),
                      min_size=1, max_size=5),
       file_format=st.sampled_from(["npz", "safetensors", "bin", "h5"]), seed=st.integers(0, 2**31))
def test_tensor_files_round_trip_any_dtype_and_shape(specs, file_format, seed, tmp_path_factory):
    rng = np.random.default_rng(seed)
    tensors = {f"t.{i}": (rng.normal(size=shape) * 50).astype(dtype) for i, (dtype, shape) in enumerate(specs)}
    path = tmp_path_factory.mktemp("roundtrip") / "file"
    metadata = {"note": "x", "nested": {"a": [1, 2]}}
    with golden_io.open_writer(path, file_format, metadata) as writer:
        for name, tensor in tensors.items():
            writer.write(name, tensor)
    with golden_io.open_reader(path) as reader:
        assert reader.names == list(tensors) and reader.file_format == file_format
        for name, tensor in tensors.items():
            assert reader.shape(name) == tensor.shape
            read = reader.read(name)
            assert read.dtype == tensor.dtype and read.shape == tensor.shape
            np.testing.assert_array_equal(read, tensor)
        if file_format in ("npz", "bin"):
            assert reader.metadata == metadata


# --------------------------------------------------------------------------------------------------
# compare on real ports: a subset, NHWC tensors, other weights or inputs
# --------------------------------------------------------------------------------------------------

def test_only_common_compares_what_both_have_and_names_the_first_divergence(goldens, tmp_path, capsys):
    reference = golden.read_golden(goldens["h5"])
    subset = {n: t for n, t in reference.tensors.items() if n == "pixel_values" or n.endswith(".activation")}
    port = golden.save_golden(tmp_path / "port.npz", subset, {"producer": "my port"})
    status, report, err = compare_json(capsys, goldens["h5"], port)
    assert status == 2 and "missing in" in err                             # without the option: an error
    status, report, _ = compare_json(capsys, goldens["h5"], port, "--only-common")
    assert status == 0 and report["num_tensors"] == len(subset) and report["problems"] == []
    assert len(report["not_compared"]["only_in_reference"]) == len(reference.tensors) - len(subset)
    subset["mobilenet_v1.layer.7.activation"] = subset["mobilenet_v1.layer.7.activation"] * 1.01 + 0.01
    broken = golden.save_golden(tmp_path / "broken.npz", subset, {"producer": "my port"})
    status, report, _ = compare_json(capsys, goldens["h5"], broken, "--only-common")
    assert status == 1 and report["first_divergence"] == "mobilenet_v1.layer.7.activation"
    capsys.readouterr()
    assert np_main(["compare", str(goldens["h5"]), str(broken), "--only-common"]) == 1
    out = capsys.readouterr().out
    assert "first divergence: mobilenet_v1.layer.7.activation" in out and "not compared (--only-common)" in out


def test_a_channels_last_candidate_gets_the_hint_and_layout_nhwc_compares_it(goldens, tmp_path, capsys):
    reference = golden.read_golden(goldens["h5"])
    nhwc = {n: (np.ascontiguousarray(t.transpose(0, 2, 3, 1)) if t.ndim == 4 else t)
            for n, t in reference.tensors.items()}
    port = golden.save_golden(tmp_path / "nhwc.bin", nhwc, {"producer": "nhwc port"})
    status, report, err = compare_json(capsys, goldens["h5"], port)
    assert status == 2 and "looks NHWC: transpose to NCHW" in err
    rows = {t["name"]: t for t in report["tensors"]}
    assert rows["mobilenet_v1.layer.0.convolution"]["hint"] == "looks NHWC: transpose to NCHW"
    assert rows["classifier"]["status"] == "ok" and rows["classifier"]["hint"] is None     # 2-D: as it is
    capsys.readouterr()
    assert np_main(["compare", str(goldens["h5"]), str(port)]) == 2
    assert "shape_mismatch (looks NHWC: transpose to NCHW)" in capsys.readouterr().out
    status, report, _ = compare_json(capsys, goldens["h5"], port, "--layout", "nhwc", "--rtol", "0", "--atol", "0")
    assert status == 0 and report["layout"] == "nhwc"
    nhwc["mobilenet_v1.layer.3.convolution"][0, 1, 2, 3] += 1.0              # (n, y, x, c): channel 3 at (1, 2)
    bug = golden.save_golden(tmp_path / "nhwc_bug.bin", nhwc, {"producer": "nhwc port"})
    status, report, _ = compare_json(capsys, goldens["h5"], bug, "--layout", "nhwc")
    row = {t["name"]: t for t in report["tensors"]}["mobilenet_v1.layer.3.convolution"]
    assert status == 1 and report["first_divergence"] == "mobilenet_v1.layer.3.convolution"
    assert row["num_out_of_tolerance"] == 1 and row["max_abs_error"] == pytest.approx(1.0, abs=1e-5)


def test_different_weights_or_inputs_get_a_warning_before_the_table(weights, goldens, tmp_path, capsys):
    other_weights = tmp_path / "other.h5"
    mobilenet_np.MobileNetV1ForImageClassification(mobilenet_np.MobileNetV1Config(
        depth_multiplier=0.25, image_size=33, num_labels=6), seed=1).save_pretrained(other_weights)
    other_seed, other_model = tmp_path / "seed1.npz", tmp_path / "weights1.npz"
    assert np_main(["golden", "--weights", str(weights), "--seed", "1", "--out", str(other_seed)]) == 0
    assert np_main(["golden", "--weights", str(other_weights), "--seed", "0", "--out", str(other_model)]) == 0
    for candidate, what in ((other_seed, "different inputs"), (other_model, "different weights")):
        capsys.readouterr()
        np_main(["compare", str(goldens["h5"]), str(candidate)])
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].startswith("warning: the files were made from " + what)
        assert lines[1].split()[:3] == ["#", "tensor", "shape"]                   # the table comes after
        status, report, _ = compare_json(capsys, goldens["h5"], candidate)
        assert [w for w in report["warnings"] if what in w]
    status, report, _ = compare_json(capsys, goldens["npz"], goldens["bin"])
    assert report["warnings"] == []


# --------------------------------------------------------------------------------------------------
# bad files of the new formats
# --------------------------------------------------------------------------------------------------

def test_damaged_files_are_one_line_errors(goldens, tmp_path, capsys):
    data = goldens["bin"].read_bytes()
    cases = {
        "cut.bin": (data[: len(data) // 2], "do not hold"),
        "version.bin": (data[:8] + (9).to_bytes(4, "little") + data[12:], "version 9 is not supported"),
        "cut.safetensors": (goldens["safetensors"].read_bytes()[:5000], "does not fit"),
        "weights.npz": (None, "root attribute 'format' is None"),
        "junk.dat": (b"hello world, not tensors", "not a tensor file this reader knows"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        if content is None:
            np.savez(path, a=np.zeros(3))
        else:
            path.write_bytes(content)
        with pytest.raises(golden.GoldenError, match=message):
            golden.open_golden(path)
        capsys.readouterr()
        assert np_main(["compare", str(goldens["h5"]), str(path)]) == 2
        error = capsys.readouterr().err
        assert message in error and len(error.strip().splitlines()) == 1


# --------------------------------------------------------------------------------------------------
# weights export: safetensors, npz, bin
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("file_format", ["safetensors", "npz", "bin"])
def test_export_formats_hold_every_tensor_bit_for_bit(file_format, weights, tmp_path, capsys):
    out = tmp_path / f"weights.{file_format}"
    assert tools_main(["export", str(weights), str(out), "--format", file_format, "--no-progress"]) == 0
    state_dict = mobilenet_np.load(weights).state_dict()
    with golden_io.open_reader(out) as reader:
        assert reader.names == list(state_dict)
        for key, value in state_dict.items():
            read = reader.read(key)
            assert read.dtype == value.dtype and read.shape == value.shape
            assert read.tobytes() == np.ascontiguousarray(value).tobytes()
        metadata = reader.metadata
    config = json.loads(metadata["config"]) if file_format == "safetensors" else metadata["config"]
    assert metadata["architecture"] == "MobileNetV1ForImageClassification" and config["depth_multiplier"] == 0.25
    if file_format == "safetensors":
        safetensors_numpy = pytest.importorskip("safetensors.numpy")
        loaded = safetensors_numpy.load_file(out)
        assert set(loaded) == set(state_dict) and metadata["format"] == "pt"
    capsys.readouterr()
    assert tools_main(["export", str(weights), str(out), "--format", file_format]) == 2
    assert "exists already" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# the flat binary from C
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def flat_reader(tmp_path_factory) -> Path:
    compiler = shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler (cc)")
    program = tmp_path_factory.mktemp("c") / "flat_read"
    subprocess.run([compiler, "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(program), str(C_READER)],
                   check=True, capture_output=True, timeout=120)
    return program


def expected_lines(path: Path) -> list[list[str]]:
    with golden_io.open_reader(path) as reader:
        rows = []
        for name in reader.names:
            tensor = reader.read(name)
            shape = "x".join(map(str, tensor.shape)) or "scalar"
            rows.append([name, tensor.dtype.name, shape, str(tensor.nbytes),
                         f"{fnv_free_checksum(tensor.astype(tensor.dtype.newbyteorder('<')).tobytes()):016x}",
                         float(tensor.astype(np.float64).sum())])
    return rows


@pytest.mark.parametrize("what", ["golden", "weights"])
def test_the_c_reader_reads_every_tensor(what, flat_reader, weights, goldens, tmp_path):
    if what == "golden":
        path = goldens["bin"]
    else:
        path = tmp_path / "weights.bin"
        assert tools_main(["export", str(weights), str(path), "--format", "bin", "--no-progress"]) == 0
    result = subprocess.run([str(flat_reader), str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    got = [line.split() for line in result.stdout.splitlines()]
    expected = expected_lines(path)
    assert [row[:5] for row in got] == [row[:5] for row in expected]     # names, dtypes, shapes, sizes, bytes
    for row, want in zip(got, expected):
        assert float(row[5]) == pytest.approx(want[5], rel=1e-9, abs=1e-9)  # the values, as numbers


def test_the_c_reader_refuses_a_damaged_file(flat_reader, goldens, tmp_path):
    data = goldens["bin"].read_bytes()
    for name, content in (("magic.bin", b"XX" + data[2:]), ("cut.bin", data[: len(data) - 100])):
        (tmp_path / name).write_bytes(content)
        result = subprocess.run([str(flat_reader), str(tmp_path / name)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 1 and result.stderr.startswith("flat_read: ")


# --------------------------------------------------------------------------------------------------
# integer tensors: compared in LSB, or dequantized against float ones
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("file_format", ["h5", "npz", "safetensors", "bin"])
def test_integer_tensors_are_compared_in_lsb_and_dequantized_against_floats(file_format, tmp_path, capsys):
    rng = np.random.default_rng(0)
    codes = rng.integers(-128, 128, (1, 4, 5, 5)).astype(np.int8)
    off_by_one = codes.copy()
    off_by_one[0, 2, 3, 1] += 1 if off_by_one[0, 2, 3, 1] < 127 else -1
    scale, zero_point = [0.02, 0.05, 0.1, 0.2], [-3, 0, 5, -128]
    quantization = {"conv": {"scale": scale, "zero_point": zero_point, "axis": 1}}
    attrs = {"producer": "test", "quantization": quantization}
    ours = golden.save_golden(tmp_path / f"ours.{file_format}", {"conv": codes}, attrs)
    port = golden.save_golden(tmp_path / f"port.{file_format}", {"conv": off_by_one}, attrs)
    real = (np.array(scale)[None, :, None, None] * (codes.astype(np.float64) - np.array(zero_point)[None, :, None, None]))
    floats = golden.save_golden(tmp_path / f"float.{file_format}", {"conv": real.astype(np.float32)}, {"producer": "f"})

    exact = golden.compare_goldens(golden.read_golden(ours), golden.read_golden(port))
    row = exact.rows[0]
    assert (row.unit, row.max_abs_error, row.num_out_of_tolerance, row.status) == ("LSB", 1.0, 1, "out_of_tolerance")
    assert golden.compare_goldens(golden.read_golden(ours), golden.read_golden(port), lsb=1).passed
    assert golden.compare_goldens(golden.read_golden(floats), golden.read_golden(ours), rtol=1e-6, atol=1e-6).passed   # float32 rounding
    shifted = golden.compare_goldens(golden.read_golden(floats), golden.read_golden(port), rtol=1e-6, atol=1e-6)
    assert shifted.rows[0].num_out_of_tolerance == 1 and shifted.rows[0].unit == ""     # one scale step off
    assert np_main(["compare", str(ours), str(port)]) == 1
    assert "1 LSB" in capsys.readouterr().out
    assert np_main(["compare", str(ours), str(port), "--lsb", "1", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["lsb"] == 1 and document["tensors"][0]["unit"] == "LSB"
