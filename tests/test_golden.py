"""Golden references: `mobilenet-np golden`, `python -m weights_tools golden-torch`, `mobilenet-np compare`.

The CLIs run in-process through main(argv). Networks are small (depth multiplier 0.25 / 0.35, 33 x 33
inputs, odd so that TF "SAME" padding is uneven) with random weights and random BatchNorm statistics.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch_reference import numpy_twin, random_transformers_model, torch_outputs

from mobilenet_np.formats import golden
from mobilenet_np.cli import main as np_main
from weights_tools.__main__ import main as tools_main

SIZE = 33
# architecture -> (config of the small test network, name of the logits tensor, backbone prefix)
ARCHITECTURES = {
    "MobileNetV1ForImageClassification": (dict(depth_multiplier=0.25, num_labels=10, image_size=SIZE), "classifier",
                                          "mobilenet_v1"),
    "MobileNetV2ForImageClassification": (dict(depth_multiplier=0.35, num_labels=10, image_size=SIZE), "classifier",
                                          "mobilenet_v2"),
    "MobileNetV2ForSemanticSegmentation": (dict(depth_multiplier=0.35, num_labels=5, output_stride=8, image_size=SIZE),
                                           "segmentation_head", "mobilenet_v2"),
}
# Element-wise tolerance (|a - b| <= atol + rtol * |ref|) of the compare defaults, and the largest
# scale-relative error max|a - b| / max|ref| a float32 run may have against the float64 run.
FLOAT32_MAX_REL_ERROR = 1e-4


@pytest.fixture(scope="module")
def networks(tmp_path_factory):
    """architecture -> (transformers model, mobilenet_np twin, weights file of them)."""
    folder = tmp_path_factory.mktemp("weights")
    result = {}
    for seed, (architecture, (config, _, _)) in enumerate(ARCHITECTURES.items()):
        torch_model = random_transformers_model(architecture, seed, **config)
        model = numpy_twin(torch_model)
        path = folder / f"{architecture}.h5"
        model.save_pretrained(path)
        result[architecture] = (torch_model, model, path)
    return result


@pytest.fixture(scope="module")
def goldens(networks, tmp_path_factory):
    """architecture -> {run: golden file} for the runs numpy32, numpy64, torch32, torch64, all on seed 0."""
    folder = tmp_path_factory.mktemp("goldens")
    result = {}
    for architecture, (_, _, weights) in networks.items():
        files = {}
        for dtype in ("float32", "float64"):
            files[f"numpy{dtype[-2:]}"] = out = folder / f"{architecture}.numpy.{dtype}.h5"
            assert np_main(["golden", "--weights", str(weights), "--seed", "0", "--out", str(out),
                            "--dtype", dtype]) == 0
            files[f"torch{dtype[-2:]}"] = out = folder / f"{architecture}.torch.{dtype}.h5"
            assert tools_main(["golden-torch", "--weights", str(weights), "--seed", "0", "--out", str(out),
                               "--dtype", dtype]) == 0
        result[architecture] = files
    return result


def compare_json(capsys, reference, candidate, *options) -> tuple[int, dict]:
    capsys.readouterr()
    status = np_main(["compare", str(reference), str(candidate), "--json", *options])
    return status, json.loads(capsys.readouterr().out)


# --------------------------------------------------------------------------------------------------
# NumPy vs PyTorch through the CLIs
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_numpy_and_torch_goldens_agree_at_float32_tolerance(architecture, goldens, capsys):
    status, report = compare_json(capsys, goldens[architecture]["torch32"], goldens[architecture]["numpy32"])
    assert status == 0, report["first_divergence"]
    assert report["passed"] and report["first_divergence"] is None and report["problems"] == []
    assert report["rtol"] == golden.DEFAULT_RTOL and report["atol"] == golden.DEFAULT_ATOL
    # both recorders wrote the same tensors, in the same (network) order
    numpy_names = list(golden.read_golden(goldens[architecture]["numpy32"]).tensors)
    assert [t["name"] for t in report["tensors"]] == numpy_names
    assert all(t["status"] == "ok" and t["cosine_similarity"] > 0.999999 for t in report["tensors"])


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_golden_names_are_the_transformers_outputs(architecture, networks, goldens):
    """The hooked tensors are what transformers returns: hidden_states[i] is `layer.i`, logits the head's output."""
    torch_model, _, _ = networks[architecture]
    _, logits_name, prefix = ARCHITECTURES[architecture]
    recorded = golden.read_golden(goldens[architecture]["torch32"])
    x = golden.seeded_pixel_values(0, SIZE, SIZE)
    outputs = torch_outputs(torch_model, x)
    np.testing.assert_array_equal(recorded.tensors["pixel_values"], x)
    for i, hidden_state in enumerate(outputs.hidden_states):
        np.testing.assert_array_equal(recorded.tensors[f"{prefix}.layer.{i}"], hidden_state.numpy())
    np.testing.assert_array_equal(recorded.tensors[logits_name], outputs.logits.numpy())
    assert list(recorded.tensors)[-1] == logits_name
    names = set(recorded.tensors)
    assert not any("dropout" in name for name in names)
    # every conv layer of the network recorded its convolution, in execution order
    conv_layers = [layer.name for layer in networks[architecture][1].conv_layers()]
    positions = [list(recorded.tensors).index(f"{name}.convolution") for name in conv_layers]
    assert positions == sorted(positions)


def test_golden_file_metadata(networks, goldens):
    weights = networks["MobileNetV2ForImageClassification"][2]
    for run in ("numpy32", "torch64"):
        attrs = golden.read_golden(goldens["MobileNetV2ForImageClassification"][run]).attrs
        assert attrs["format"] == golden.FORMAT_NAME and attrs["format_version"] == golden.FORMAT_VERSION
        assert attrs["architecture"] == "MobileNetV2ForImageClassification"
        assert attrs["config"]["depth_multiplier"] == 0.35
        assert attrs["weights_sha256"] == golden.file_sha256(weights)
        assert attrs["dtype"] == ("float32" if run.endswith("32") else "float64")
        assert attrs["input"] == {"source": "seed", "seed": 0, "generator": golden.SEEDED_INPUT_GENERATOR,
                                  "shape": [1, 3, SIZE, SIZE]}
        assert attrs["layout"] == "NCHW"
        assert {"python", "numpy", "h5py"} <= set(attrs["library_versions"])
    assert golden.read_golden(goldens["MobileNetV2ForImageClassification"]["torch64"]).attrs["producer"] == "transformers"
    assert "torch" in golden.read_golden(goldens["MobileNetV2ForImageClassification"]["torch64"]).attrs["library_versions"]
    dtypes = {t.dtype for t in golden.read_golden(goldens["MobileNetV2ForImageClassification"]["numpy64"]).tensors.values()}
    assert dtypes == {np.dtype(np.float64)}


# --------------------------------------------------------------------------------------------------
# float64: the precise reference
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_float32_runs_are_close_to_the_float64_run(architecture, goldens):
    """PyTorch float32 and NumPy float32 against NumPy float64: both tiny, per layer (printed with -s)."""
    files = goldens[architecture]
    reference = golden.read_golden(files["numpy64"])
    torch32 = golden.compare_goldens(reference, golden.read_golden(files["torch32"]))
    numpy32 = golden.compare_goldens(reference, golden.read_golden(files["numpy32"]))
    print(f"\n{architecture}: max|x - x_float64| / max|x_float64| per tensor")
    print(f"{'tensor':50s} {'torch float32':>14s} {'numpy float32':>14s}")
    for t, n in zip(torch32.rows, numpy32.rows):
        print(f"{t.name:50s} {t.max_rel_error:14.2e} {n.max_rel_error:14.2e}")
    for comparison in (torch32, numpy32):
        assert comparison.passed, comparison.first_divergence.name
        worst = max(comparison.rows, key=lambda row: row.max_rel_error)
        assert worst.max_rel_error < FLOAT32_MAX_REL_ERROR, worst.name
        assert worst.max_rel_error > 0  # float32 really ran: it cannot equal float64 everywhere
    # PyTorch in float64 computes the same network: it agrees with NumPy float64 to ~1e-15 of the scale
    torch64 = golden.compare_goldens(reference, golden.read_golden(files["torch64"]), rtol=1e-12, atol=1e-12)
    assert torch64.passed, torch64.first_divergence.name
    assert max(row.max_rel_error for row in torch64.rows) < 1e-12


# --------------------------------------------------------------------------------------------------
# naming the first divergence
# --------------------------------------------------------------------------------------------------

def perturbed(model, layer_name: str, input_tensor: np.ndarray, delta: float = 1.0):
    """A copy of `model` with one weight of conv layer `layer_name` changed by `delta`.

    The weight is the centre tap reading the input channel with the largest activations, so the
    change reaches the output whatever the padding and the ReLUs before it.
    """
    copy = model.astype(np.float32)
    key = f"{layer_name}.convolution.weight"
    weight = copy.params[key].copy()                                       # (C_out, C_in / groups, k, k)
    channel = int(np.abs(input_tensor).sum(axis=(0, 2, 3)).argmax())      # input channel with most signal
    out_channel, in_channel = (channel, 0) if weight.shape[1] == 1 and weight.shape[0] > 1 else (0, channel)
    k = weight.shape[-1] // 2
    weight[out_channel, in_channel, k, k] += delta
    copy.params[key] = weight
    return copy


def test_perturbed_weight_is_named_as_first_divergence_by_the_cli(networks, goldens, tmp_path, capsys):
    architecture = "MobileNetV2ForImageClassification"
    _, model, _ = networks[architecture]
    reference = golden.read_golden(goldens[architecture]["torch32"])
    layer = "mobilenet_v2.layer.5.conv_3x3"
    weights = tmp_path / "perturbed.h5"
    perturbed(model, layer, reference.tensors["mobilenet_v2.layer.5.expand_1x1"]).save_pretrained(weights)
    out = tmp_path / "perturbed.golden.h5"
    assert np_main(["golden", "--weights", str(weights), "--seed", "0", "--out", str(out)]) == 0

    status, report = compare_json(capsys, goldens[architecture]["torch32"], out)
    assert status == 1 and not report["passed"]
    assert report["first_divergence"] == f"{layer}.convolution"
    statuses = [t["status"] for t in report["tensors"]]
    first = statuses.index("out_of_tolerance")
    assert report["tensors"][first]["name"] == f"{layer}.convolution" and set(statuses[:first]) == {"ok"}

    capsys.readouterr()
    assert np_main(["compare", str(goldens[architecture]["torch32"]), str(out)]) == 1
    text = capsys.readouterr().out
    assert f"first divergence: {layer}.convolution" in text
    assert any(line.startswith(">>") and f"{layer}.convolution " in line for line in text.splitlines())


@settings(max_examples=12)
@given(data=st.data())
def test_any_perturbed_conv_layer_is_named_as_first_divergence(networks, data):
    """Property: whichever backbone conv layer gets a wrong weight, compare names its convolution first."""
    architecture = data.draw(st.sampled_from(["MobileNetV1ForImageClassification", "MobileNetV2ForImageClassification"]))
    _, model, _ = networks[architecture]
    x = golden.seeded_pixel_values(1, SIZE, SIZE)
    reference = golden.Golden(golden.record_model(model, x))
    layer = data.draw(st.sampled_from([layer.name for layer in model.conv_layers()]))
    names = list(reference.tensors)
    input_tensor = reference.tensors[names[names.index(f"{layer}.convolution") - 1]]  # what the layer reads
    candidate = golden.Golden(golden.record_model(perturbed(model, layer, input_tensor), x))
    comparison = golden.compare_goldens(reference, candidate)
    assert comparison.first_divergence is not None and comparison.first_divergence.name == f"{layer}.convolution"


# --------------------------------------------------------------------------------------------------
# problems: missing tensors, different shapes
# --------------------------------------------------------------------------------------------------

def test_missing_and_reshaped_tensors_are_errors(goldens, tmp_path, capsys):
    source = golden.read_golden(goldens["MobileNetV1ForImageClassification"]["numpy32"])
    tensors = dict(source.tensors)
    del tensors["mobilenet_v1.layer.3.normalization"]
    tensors["mobilenet_v1.pooler"] = tensors["mobilenet_v1.pooler"].reshape(1, -1)    # (N, C) instead of (N, C, 1, 1)
    tensors["extra.tensor"] = np.zeros(3, np.float32)
    candidate = tmp_path / "broken.h5"
    golden.save_golden(candidate, tensors, source.attrs)

    status, report = compare_json(capsys, goldens["MobileNetV1ForImageClassification"]["numpy32"], candidate)
    assert status == 2
    assert report["problems"] == [
        {"name": "mobilenet_v1.layer.3.normalization", "status": "missing_in_candidate"},
        {"name": "mobilenet_v1.pooler", "status": "shape_mismatch"},
        {"name": "extra.tensor", "status": "missing_in_reference"},
    ]
    pooler = next(t for t in report["tensors"] if t["name"] == "mobilenet_v1.pooler")
    assert pooler["candidate_shape"] == [1, pooler["shape"][1]] and pooler["max_abs_error"] is None
    assert report["first_divergence"] is None  # the tensors that could be compared all agree

    capsys.readouterr()
    assert np_main(["compare", str(goldens["MobileNetV1ForImageClassification"]["numpy32"]), str(candidate)]) == 2
    captured = capsys.readouterr()
    assert "shape_mismatch" in captured.out and "missing_in_candidate" in captured.out
    error = captured.err.strip()
    assert len(error.splitlines()) == 1
    assert "mobilenet_v1.layer.3.normalization" in error and "mobilenet_v1.pooler" in error and "extra.tensor" in error


# --------------------------------------------------------------------------------------------------
# the file format, written by something else than mobilenet_np
# --------------------------------------------------------------------------------------------------

def test_a_port_writing_the_documented_format_is_read_in_network_order(goldens, tmp_path, capsys):
    """A minimal writer (no track_order, NHWC tensors transposed to NCHW, only the required attributes)."""
    reference_path = goldens["MobileNetV2ForSemanticSegmentation"]["numpy32"]
    reference = golden.read_golden(reference_path)
    nhwc = {name: (t.transpose(0, 2, 3, 1) if t.ndim == 4 else t) for name, t in reference.tensors.items()}
    port = tmp_path / "port.h5"
    with h5py.File(port, "w") as f:                     # what docs/golden_format.md asks of a writer
        f.attrs["format"] = "mobilenet-np-golden"
        f.attrs["format_version"] = 1
        group = f.create_group("tensors")               # no creation order: names come back sorted
        for index, name in reversed(list(enumerate(nhwc))):
            t = nhwc[name]
            group.create_dataset(name, data=t.transpose(0, 3, 1, 2) if t.ndim == 4 else t)  # NHWC -> NCHW
            group[name].attrs["index"] = index
    read = golden.read_golden(port)
    assert list(read.tensors) == list(reference.tensors)
    status, report = compare_json(capsys, reference_path, port, "--rtol", "0", "--atol", "0")
    assert status == 0 and report["reference"]["producer"] == "mobilenet_np" and report["candidate"]["producer"] is None


def test_bad_golden_files_are_one_line_errors(networks, goldens, tmp_path, capsys):
    good = goldens["MobileNetV1ForImageClassification"]["numpy32"]
    not_hdf5 = tmp_path / "notes.h5"
    not_hdf5.write_text("hello")
    no_index = tmp_path / "no_index.h5"
    with h5py.File(no_index, "w") as f:
        f.attrs["format"], f.attrs["format_version"] = golden.FORMAT_NAME, 1
        f.create_dataset("tensors/pixel_values", data=np.zeros((1, 3, 2, 2), np.float32))
    twice = tmp_path / "twice.h5"
    with h5py.File(twice, "w") as f:
        f.attrs["format"], f.attrs["format_version"] = golden.FORMAT_NAME, 1
        for name in ("a", "b"):
            f.create_dataset(f"tensors/{name}", data=np.zeros(2, np.float32)).attrs["index"] = 0
    cases = {
        tmp_path / "absent.h5": "no such golden file",
        not_hdf5: "not a readable HDF5 file",
        networks["MobileNetV1ForImageClassification"][2]: "root attribute 'format' is 'mobilenet-np-weights'",
        no_index: "/tensors/pixel_values has no integer attribute 'index'",
        twice: "must be 0 .. 1, each once",
    }
    for path, message in cases.items():
        with pytest.raises(golden.GoldenError, match=message):
            golden.read_golden(path)
        capsys.readouterr()
        assert np_main(["compare", str(good), str(path)]) == 2
        error = capsys.readouterr().err
        assert str(path) in error and message in error and len(error.strip().splitlines()) == 1


def test_outputs_are_not_clobbered_without_force(networks, tmp_path, capsys):
    weights = networks["MobileNetV1ForImageClassification"][2]
    out = tmp_path / "golden.h5"
    out.write_bytes(b"precious")
    for main, command, source in ((np_main, "golden", "--weights"), (tools_main, "golden-torch", "--weights")):
        argv = [command, source, str(weights), "--seed", "3", "--image-size", "17", "21", "--out", str(out)]
        capsys.readouterr()
        assert main(argv) == 2
        assert "exists already" in capsys.readouterr().err and out.read_bytes() == b"precious"
        assert main([*argv, "--force"]) == 0
        recorded = golden.read_golden(out)
        assert recorded.tensors["pixel_values"].shape == (1, 3, 17, 21)
        out.write_bytes(b"precious")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["golden.h5"]  # no temporary files left behind


# --------------------------------------------------------------------------------------------------
# inputs: seed, image, Hub id, transformers checkpoint folder
# --------------------------------------------------------------------------------------------------

def test_seeded_pixel_values():
    x32 = golden.seeded_pixel_values(7, 5, 6)
    x64 = golden.seeded_pixel_values(7, 5, 6, dtype=np.float64)
    assert x32.shape == (1, 3, 5, 6) and x32.dtype == np.float32 and x64.dtype == np.float64
    np.testing.assert_array_equal(x64, x32)                 # exactly the same input in both precisions
    np.testing.assert_array_equal(golden.seeded_pixel_values(7, 5, 6), x32)
    assert not np.array_equal(golden.seeded_pixel_values(8, 5, 6), x32)
    assert x32.min() >= -1 and x32.max() < 1 and x32.std() > 0.4
    with pytest.raises(golden.GoldenError, match="positive sizes"):
        golden.seeded_pixel_values(0, 0, 5)


def test_image_input_is_the_same_on_both_sides(networks, tmp_path, capsys):
    from PIL import Image

    torch_model, model, _ = networks["MobileNetV2ForImageClassification"]
    weights = tmp_path / "with_processor.h5"
    processor = {"image_processor_type": "MobileNetV2ImageProcessor", "size": {"shortest_edge": 48},
                 "crop_size": {"height": 40, "width": 40}}
    model.save_pretrained(weights, image_processor=processor)
    image = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(image)
    numpy_out, torch_out = tmp_path / "numpy.h5", tmp_path / "torch.h5"
    assert np_main(["golden", "--weights", str(weights), "--image", str(image), "--out", str(numpy_out)]) == 0
    assert tools_main(["golden-torch", "--weights", str(weights), "--image", str(image), "--out", str(torch_out)]) == 0
    numpy_golden, torch_golden = golden.read_golden(numpy_out), golden.read_golden(torch_out)
    np.testing.assert_array_equal(numpy_golden.tensors["pixel_values"], torch_golden.tensors["pixel_values"])
    assert numpy_golden.tensors["pixel_values"].shape == (1, 3, 40, 40)
    assert numpy_golden.attrs["input"]["sha256"] == golden.file_sha256(image)
    assert numpy_golden.attrs["input"]["image_processor"]["crop_size"] == {"height": 40, "width": 40}
    status, report = compare_json(capsys, torch_out, numpy_out)
    assert status == 0, report["first_divergence"]
    capsys.readouterr()
    assert np_main(["golden", "--weights", str(weights), "--image", str(image), "--image-size", "8", "8",
                    "--out", str(tmp_path / "x.h5")]) == 2
    assert "--image-size goes with --seed" in capsys.readouterr().err


def test_hub_id_from_the_cache_and_transformers_checkpoint_folder(networks, goldens, tmp_path, monkeypatch, capsys):
    """--model reads the converted cache; golden-torch --checkpoint reads a save_pretrained folder."""
    torch_model, model, weights = networks["MobileNetV2ForSemanticSegmentation"]
    monkeypatch.setenv("MOBILENET_NP_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "someone--deeplab_tiny.h5").write_bytes(weights.read_bytes())
    from_hub = tmp_path / "hub.h5"
    assert np_main(["golden", "--model", "someone/deeplab_tiny", "--seed", "0", "--out", str(from_hub)]) == 0
    assert golden.read_golden(from_hub).attrs["weights_sha256"] == golden.file_sha256(weights)

    checkpoint = tmp_path / "checkpoint"
    torch_model.save_pretrained(checkpoint)
    from_checkpoint = tmp_path / "checkpoint.golden.h5"
    assert tools_main(["golden-torch", "--checkpoint", str(checkpoint), "--seed", "0", "--out", str(from_checkpoint)]) == 0
    attrs = golden.read_golden(from_checkpoint).attrs
    assert attrs["weights_sha256"] == golden.file_sha256(checkpoint / "model.safetensors")
    assert attrs["architecture"] == "MobileNetV2ForSemanticSegmentation"
    status, report = compare_json(capsys, from_checkpoint, from_hub)
    assert status == 0, report["first_divergence"]

    capsys.readouterr()
    assert tools_main(["golden-torch", "--checkpoint", str(tmp_path), "--seed", "0", "--out", str(tmp_path / "y.h5")]) == 2
    assert "not a transformers checkpoint folder (no config.json)" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# the metrics
# --------------------------------------------------------------------------------------------------

arrays = st.integers(1, 40).flatmap(lambda n: st.tuples(
    st.lists(st.floats(-100, 100, width=32), min_size=n, max_size=n),
    st.lists(st.floats(-1, 1, width=32), min_size=n, max_size=n)))


@given(arrays, st.sampled_from([0.0, 1e-4, 1e-2]), st.sampled_from([0.0, 1e-5, 1e-1]))
def test_metrics_match_numpy_definitions(values, rtol, atol):
    reference = np.array(values[0], np.float32)
    candidate = reference + np.array(values[1], np.float32) * 1e-3
    metrics = golden.compare_tensors(reference, candidate, rtol, atol)
    error = np.abs(candidate.astype(np.float64) - reference)
    assert metrics["max_abs_error"] == error.max()
    scale = np.abs(reference).max()
    if scale > 0:
        assert metrics["max_rel_error"] == pytest.approx(error.max() / scale)
    # np.isclose(a, b) tests |a - b| <= atol + rtol * |b|: the same rule with b the reference
    expected_out = int((~np.isclose(candidate.astype(np.float64), reference.astype(np.float64), rtol, atol)).sum())
    assert metrics["num_out_of_tolerance"] == expected_out
    assert metrics["out_of_tolerance_fraction"] == expected_out / reference.size
    a, b = reference.astype(np.float64), candidate.astype(np.float64)
    if np.linalg.norm(a) > 0 and np.linalg.norm(b) > 0:
        angle_cosine = np.cos(np.arccos(np.clip(a @ b / np.sqrt((a @ a) * (b @ b)), -1, 1)))
        assert metrics["cosine_similarity"] == pytest.approx(angle_cosine, abs=1e-9)


def test_metrics_of_special_cases():
    x = np.array([0.0, 1.0, -2.0], np.float32)
    same = golden.compare_tensors(x, x, 0, 0)
    assert same == {"max_abs_error": 0.0, "max_rel_error": 0.0, "num_out_of_tolerance": 0,
                    "out_of_tolerance_fraction": 0.0, "cosine_similarity": 1.0}
    doubled = golden.compare_tensors(x, 2 * x, 1e-4, 1e-4)
    assert doubled["cosine_similarity"] == pytest.approx(1.0) and doubled["max_rel_error"] == 1.0
    assert doubled["num_out_of_tolerance"] == 2                  # the zero stays zero
    zeros = golden.compare_tensors(np.zeros(4), np.zeros(4), 0, 0)
    assert zeros["cosine_similarity"] == 1.0 and zeros["max_rel_error"] == 0.0
    with_nan = golden.compare_tensors(x, np.array([0.0, np.nan, -2.0]), 1, 1)
    assert with_nan["num_out_of_tolerance"] == 1 and np.isnan(with_nan["max_abs_error"])
    assert np.isnan(with_nan["cosine_similarity"])
    assert golden.compare_tensors(x, np.zeros(3), 0, 0)["cosine_similarity"] == 0.0
    infinite = golden.compare_tensors(np.array([np.inf, 1.0]), np.array([np.inf, 1.0]), 0, 0)
    assert infinite["num_out_of_tolerance"] == 1          # inf - inf is NaN: not a match
    with pytest.raises(golden.GoldenError, match="tolerances must be >= 0"):
        golden.compare_goldens(golden.Golden({"a": x}), golden.Golden({"a": x}), rtol=-1)


def test_nan_in_a_candidate_is_out_of_tolerance_and_null_in_json(goldens, tmp_path, capsys):
    source = golden.read_golden(goldens["MobileNetV1ForImageClassification"]["numpy32"])
    tensors = dict(source.tensors)
    tensors["classifier"] = np.full_like(tensors["classifier"], np.nan)
    candidate = tmp_path / "nan.h5"
    golden.save_golden(candidate, tensors, {"producer": "a broken port"})
    status, report = compare_json(capsys, goldens["MobileNetV1ForImageClassification"]["numpy32"], candidate)
    assert status == 1 and report["first_divergence"] == "classifier"
    last = report["tensors"][-1]
    assert last["max_abs_error"] is None and last["out_of_tolerance_fraction"] == 1.0
    assert report["candidate"]["producer"] == "a broken port"


def test_default_tolerance_catches_a_wrong_batch_norm_epsilon(networks):
    """The defaults are loose enough for float32 noise but not for a subtle bug: eps 1e-5 instead of 1e-3."""
    _, model, _ = networks["MobileNetV2ForImageClassification"]
    config = type(model.config).from_dict({**model.config.to_dict(), "layer_norm_eps": 1e-5})
    wrong = type(model)(config, seed=None)
    wrong.load_state_dict(model.state_dict())
    x = golden.seeded_pixel_values(2, SIZE, SIZE)
    comparison = golden.compare_goldens(golden.Golden(golden.record_model(model, x)),
                                        golden.Golden(golden.record_model(wrong, x)))
    first = comparison.first_divergence
    assert first is not None and first.name.startswith("mobilenet_v2.conv_stem.") and first.name.endswith(".normalization")


def test_real_keras_weights_agree_with_pytorch_and_float64(shared_data, tmp_path, capsys):
    """Trained weights (Keras MobileNet V1 0.25, a real image): both float32 runs pass against float64."""
    weights = tmp_path / "keras.h5"
    assert tools_main(["import-keras", str(shared_data / "weights/keras/mobilenet_v1_0.25_224.h5"), str(weights)]) == 0
    image = shared_data / "images/cat.bmp"
    files = {}
    for main, command, dtype in ((np_main, "golden", "float64"), (np_main, "golden", "float32"),
                                 (tools_main, "golden-torch", "float32")):
        files[command, dtype] = out = tmp_path / f"{command}.{dtype}.h5"
        assert main([command, "--weights", str(weights), "--image", str(image), "--out", str(out), "--dtype", dtype]) == 0
    for candidate in (files["golden", "float32"], files["golden-torch", "float32"]):
        status, report = compare_json(capsys, files["golden", "float64"], candidate)
        assert status == 0, report["first_divergence"]
        assert max(t["max_rel_error"] for t in report["tensors"]) < FLOAT32_MAX_REL_ERROR


def test_float64_weights_keep_their_precision_on_both_sides(networks, tmp_path, capsys):
    """A float64 weights file run in float64: NumPy and PyTorch agree to 1e-12 (no float32 rounding anywhere)."""
    _, model, _ = networks["MobileNetV1ForImageClassification"]
    precise = model.astype(np.float64)
    rng = np.random.default_rng(0)
    for key, value in precise.params.items():   # digits that float32 cannot hold
        if value.dtype == np.float64 and not key.endswith("running_var"):
            precise.params[key] = value + rng.normal(0, 1e-9, value.shape)
    weights = tmp_path / "float64.h5"
    precise.save_pretrained(weights)
    numpy_out, torch_out = tmp_path / "numpy.h5", tmp_path / "torch.h5"
    assert np_main(["golden", "--weights", str(weights), "--seed", "0", "--out", str(numpy_out), "--dtype", "float64"]) == 0
    assert tools_main(["golden-torch", "--weights", str(weights), "--seed", "0", "--out", str(torch_out),
                       "--dtype", "float64"]) == 0
    status, report = compare_json(capsys, numpy_out, torch_out, "--rtol", "1e-12", "--atol", "1e-12")
    assert status == 0, report["first_divergence"]
