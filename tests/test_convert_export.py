"""weights_tools convert / export: transformers checkpoints in and out, checked, atomic, with provenance.

The transformers checkpoints are made here: random transformers models (random BatchNorm statistics
too) written with save_pretrained into tmp folders. The Hub is unreachable, so Hub ids are tested in
offline mode against a Hub cache folder laid out like huggingface_hub's.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

import mobilenet_np
from mobilenet_np.errors import ConversionError, OutputExistsError, WeightsError
from mobilenet_np.formats import golden_io
from mobilenet_np.formats.weights import read_weights
from weights_tools import __version__
from weights_tools.__main__ import main
from weights_tools.convert import convert_checkpoint
from weights_tools.export import export_checkpoint

from torch_reference import ARCHITECTURES, random_transformers_model, randomize_batch_norm, torch_outputs

PREPROCESSOR = {"crop_size": {"height": 96, "width": 96}, "do_center_crop": True, "do_normalize": True,
                "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
                "image_processor_type": "MobileNetV2ImageProcessor", "resample": 2,
                "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 110}}
REPO = Path(__file__).resolve().parents[1]


def numpy_state_dict(torch_model) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in torch_model.state_dict().items()}


def listing(folder: Path) -> list[str]:
    """Every name in a folder, hidden temporaries included."""
    return sorted(os.listdir(folder))


def assert_bitwise_equal(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> None:
    assert list(ours) == list(theirs) or sorted(ours) == sorted(theirs)
    for key, value in theirs.items():
        assert ours[key].dtype == value.dtype and ours[key].shape == value.shape, key
        assert ours[key].tobytes() == value.tobytes(), key


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(transformers model, its checkpoint folder with model.safetensors and preprocessor_config.json)."""
    torch_model = random_transformers_model("MobileNetV2ForImageClassification", 5, depth_multiplier=0.25,
                                            num_labels=3, output_stride=16, tf_padding=False)
    folder = tmp_path_factory.mktemp("checkpoint")
    torch_model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR))
    return torch_model, folder


# --------------------------------------------------------------------------------------------------
# convert
# --------------------------------------------------------------------------------------------------

def test_convert_command_writes_every_tensor_with_config_image_processor_and_provenance(checkpoint, tmp_path, capsys):
    torch_model, folder = checkpoint
    out = tmp_path / "weights.h5"
    assert main(["convert", str(folder), str(out), "--no-progress"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    stored = read_weights(out)
    assert stored.architecture == "MobileNetV2ForImageClassification"
    assert_bitwise_equal(stored.tensors, numpy_state_dict(torch_model))
    config_json = json.loads((folder / "config.json").read_text())
    assert {k: stored.config[k] for k in config_json} == config_json   # config.json kept as it is ...
    assert stored.config["min_depth"] == 8                              # ... and completed with defaults
    assert stored.image_processor == PREPROCESSOR
    assert stored.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    sha256 = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
              for name in ["config.json", "model.safetensors", "preprocessor_config.json"]}
    assert stored.provenance == {"source": str(folder.resolve()), "source_type": "local_folder",
                                 "source_sha256": sha256, "converter": "weights_tools",
                                 "converter_version": __version__, "mobilenet_np_version": mobilenet_np.__version__}
    model = mobilenet_np.MobileNetV2ForImageClassification.from_pretrained(out)
    x = np.random.default_rng(0).standard_normal((2, 3, 37, 50)).astype(np.float32)
    np.testing.assert_allclose(model(x).logits, torch_outputs(torch_model, x).logits.numpy(), rtol=0, atol=1e-4)


def test_python_api_returns_the_written_path(checkpoint, tmp_path):
    path = convert_checkpoint(checkpoint[1], tmp_path / "api.h5", progress=False)
    assert path == tmp_path / "api.h5" and isinstance(mobilenet_np.load(path), mobilenet_np.MobileNetV2ForImageClassification)
    assert listing(tmp_path) == ["api.h5"]


def test_pytorch_bin_checkpoint_is_read_with_weights_only(checkpoint, tmp_path):
    torch_model, folder = checkpoint
    shutil.copy(folder / "config.json", tmp_path / "config.json")
    torch.save(torch_model.state_dict(), tmp_path / "pytorch_model.bin")
    stored = read_weights(convert_checkpoint(tmp_path, tmp_path / "weights.h5", progress=False))
    assert_bitwise_equal(stored.tensors, numpy_state_dict(torch_model))
    assert sorted(stored.provenance["source_sha256"]) == ["config.json", "pytorch_model.bin"]
    assert stored.image_processor == {}


class RunsCodeWhenUnpickled:
    def __reduce__(self):
        return (print, ("code ran while unpickling",))


def test_a_pickle_that_would_run_code_is_refused(checkpoint, tmp_path, capsys):
    shutil.copy(checkpoint[1] / "config.json", tmp_path / "config.json")
    torch.save({"classifier.weight": RunsCodeWhenUnpickled()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ConversionError, match=r"pytorch_model.bin: cannot load it with torch.load\(weights_only=True\)"):
        convert_checkpoint(tmp_path, tmp_path / "weights.h5", progress=False)
    assert "code ran" not in capsys.readouterr().out
    assert not (tmp_path / "weights.h5").exists()


def test_safetensors_are_preferred_and_sharded_checkpoints_are_read(checkpoint, tmp_path):
    torch_model, _ = checkpoint
    torch_model.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    shards = sorted(p.name for p in (tmp_path / "sharded").glob("*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    (tmp_path / "sharded" / "pytorch_model.bin").write_bytes(b"not read: safetensors come first")
    stored = read_weights(convert_checkpoint(tmp_path / "sharded", tmp_path / "weights.h5", progress=False))
    assert_bitwise_equal(stored.tensors, numpy_state_dict(torch_model))
    assert sorted(stored.provenance["source_sha256"]) == sorted(["config.json", *shards])


def test_reading_safetensors_needs_no_torch(checkpoint, tmp_path):
    code = ("import sys; from weights_tools.convert import convert_checkpoint; "
            f"convert_checkpoint({str(checkpoint[1])!r}, {str(tmp_path / 'w.h5')!r}, progress=False); "
            "print('torch imported:', 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "torch imported: False"


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_architecture_comes_from_the_keys_when_config_json_does_not_name_it(architecture, tmp_path):
    torch_model = random_transformers_model(architecture, 6, depth_multiplier=0.25, num_labels=2)
    torch_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config.pop("architectures") == [architecture]
    (tmp_path / "config.json").write_text(json.dumps(config))
    model = mobilenet_np.load(convert_checkpoint(tmp_path, tmp_path / "weights.h5", progress=False))
    assert type(model).__name__ == architecture


def test_a_float64_checkpoint_stays_float64(tmp_path):
    torch_model = random_transformers_model("MobileNetV1ForImageClassification", 7, depth_multiplier=0.25,
                                            num_labels=4).double()
    torch_model.save_pretrained(tmp_path / "checkpoint")
    weights = convert_checkpoint(tmp_path / "checkpoint", tmp_path / "weights.h5", progress=False)
    assert read_weights(weights).tensors["classifier.weight"].dtype == np.float64
    x = np.random.default_rng(7).standard_normal((1, 3, 33, 30))
    logits = mobilenet_np.load(weights)(x).logits
    assert logits.dtype == np.float64
    np.testing.assert_allclose(logits, torch_outputs(torch_model, x).logits.numpy(), rtol=1e-10, atol=1e-12)
    export_checkpoint(weights, tmp_path / "exported", progress=False)
    assert json.loads((tmp_path / "exported" / "config.json").read_text())["dtype"] == "float64"
    reloaded = transformers.MobileNetV1ForImageClassification.from_pretrained(tmp_path / "exported")
    assert reloaded.classifier.weight.dtype == torch.float64


def _edit_config(**changes):
    def edit(folder: Path):
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, **changes}))
    return edit


def _edit_tensors(edit_dict):
    def edit(folder: Path):
        tensors = load_file(folder / "model.safetensors")
        edit_dict(tensors)
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return edit


def _set_nan(tensors):
    tensors["mobilenet_v2.layer.3.conv_3x3.normalization.running_var"][2] = np.nan


def _model_type_only(folder: Path):
    config = json.loads((folder / "config.json").read_text())
    del config["architectures"]
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "resnet"}))


BROKEN_CHECKPOINTS = {
    "no config.json": (lambda f: (f / "config.json").unlink(), r"config.json: missing"),
    "config.json not JSON": (lambda f: (f / "config.json").write_text("{'depth_multiplier': 1"), r"not a readable JSON"),
    "no weights": (lambda f: (f / "model.safetensors").unlink(), r"no weights found"),
    "damaged safetensors": (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:5000]),
                            r"model.safetensors: cannot read safetensors file"),
    "invalid config value": (_edit_config(depth_multiplier=-1), r"config.json: config field 'depth_multiplier'"),
    "unknown activation": (_edit_config(hidden_act="gelu"), r"config field 'hidden_act'"),
    "another architecture": (_edit_config(architectures=["MobileViTForImageClassification"]),
                             r"architectures \['MobileViTForImageClassification'\] are not supported"),
    "another model_type": (_model_type_only, r"model_type 'resnet' is not supported"),
    "config does not match weights": (_edit_config(depth_multiplier=0.5), r"has shape .* expected"),
    "missing tensor": (_edit_tensors(lambda t: t.pop("mobilenet_v2.conv_1x1.convolution.weight")),
                       r"missing 1 tensors \(mobilenet_v2.conv_1x1.convolution.weight\)"),
    "unexpected tensor": (_edit_tensors(lambda t: t.update({"extra.weight": np.zeros(3, np.float32)})),
                          r"unexpected 1 tensors \(extra.weight\)"),
    "mis-shaped tensor": (_edit_tensors(lambda t: t.update({"classifier.bias": np.zeros(4, np.float32)})),
                          r"classifier.bias has shape \(4,\), expected \(3,\)"),
    "NaN weight": (_edit_tensors(_set_nan), r"layer.3.conv_3x3.normalization.running_var contains NaN or Inf"),
}


@pytest.mark.parametrize("broken", list(BROKEN_CHECKPOINTS))
def test_a_broken_checkpoint_stops_the_conversion_with_one_clear_error(broken, checkpoint, tmp_path):
    break_it, message = BROKEN_CHECKPOINTS[broken]
    source = tmp_path / "checkpoint"
    shutil.copytree(checkpoint[1], source)
    break_it(source)
    out_folder = tmp_path / "out"
    out_folder.mkdir()
    with pytest.raises(ConversionError, match=message) as error:
        convert_checkpoint(source, out_folder / "weights.h5", progress=False)
    assert "\n" not in str(error.value)
    assert listing(out_folder) == []  # nothing written, no temporary left behind


def test_every_problem_is_listed_in_the_one_error(checkpoint, tmp_path):
    source = tmp_path / "checkpoint"
    shutil.copytree(checkpoint[1], source)
    _edit_tensors(lambda t: (t.pop("classifier.weight"), t.update({"extra": np.zeros(1, np.float32)}), _set_nan(t),
                             t.update({"classifier.bias": np.zeros(4, np.float32)})))(source)
    with pytest.raises(ConversionError) as error:
        convert_checkpoint(source, tmp_path / "weights.h5", progress=False)
    for part in ["missing 1 tensors (classifier.weight)", "unexpected 1 tensors (extra)",
                 "classifier.bias has shape (4,)", "running_var contains NaN"]:
        assert part in str(error.value)


def test_an_existing_output_is_replaced_only_with_force(checkpoint, tmp_path, capsys):
    out = tmp_path / "weights.h5"
    out.write_bytes(b"keep me")
    assert main(["convert", str(checkpoint[1]), str(out), "--no-progress"]) == 2
    assert "exists already" in capsys.readouterr().err and out.read_bytes() == b"keep me"
    with pytest.raises(OutputExistsError):
        convert_checkpoint(checkpoint[1], out, progress=False)
    assert main(["convert", str(checkpoint[1]), str(out), "--force", "--no-progress"]) == 0
    assert read_weights(out).architecture == "MobileNetV2ForImageClassification"
    assert listing(tmp_path) == ["weights.h5"]


# --------------------------------------------------------------------------------------------------
# Hub model ids, offline (the Hub is unreachable here; the real snapshot_download code path runs)
# --------------------------------------------------------------------------------------------------

def run_cli_offline(args: list[str], hub_cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache),
           "HF_HOME": str(hub_cache.parent / "hf_home"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    return subprocess.run([sys.executable, "-m", "weights_tools", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120)


def test_hub_id_offline_and_not_cached_says_so_and_how_to_pass_a_folder(tmp_path):
    result = run_cli_offline(["convert", "test-org/tiny-mobilenet", str(tmp_path / "w.h5")], tmp_path / "hub")
    assert result.returncode == 2
    message = result.stderr.strip()
    assert message.startswith("python -m weights_tools convert: error: test-org/tiny-mobilenet:") and "\n" not in message
    assert "offline" in message and "HF_HUB_OFFLINE=1" in message
    assert "pass its folder" in message and "python -m weights_tools convert path/to/folder OUT.h5" in message
    assert not (tmp_path / "w.h5").exists()


def test_hub_id_offline_uses_the_cached_snapshot(checkpoint, tmp_path):
    """A snapshot in huggingface_hub's cache layout: models--ORG--NAME/{refs/main, snapshots/COMMIT/...}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--test-org--tiny-mobilenet"
    shutil.copytree(checkpoint[1], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    result = run_cli_offline(["convert", "test-org/tiny-mobilenet", str(tmp_path / "w.h5"), "--no-progress"],
                             tmp_path / "hub")
    assert result.returncode == 0, result.stderr
    stored = read_weights(tmp_path / "w.h5")
    assert stored.provenance["source"] == "test-org/tiny-mobilenet"
    assert stored.provenance["source_type"] == "huggingface_hub" and stored.provenance["source_revision"] == commit
    assert_bitwise_equal(stored.tensors, numpy_state_dict(checkpoint[0]))
    assert stored.image_processor == PREPROCESSOR


def test_a_path_that_is_neither_folder_nor_hub_id(tmp_path):
    with pytest.raises(ConversionError, match="no such folder"):
        convert_checkpoint(tmp_path / "missing" / "deeper" / "x", tmp_path / "w.h5", progress=False)
    (tmp_path / "file.bin").write_bytes(b"")
    with pytest.raises(ConversionError, match="expected a transformers checkpoint folder"):
        convert_checkpoint(tmp_path / "file.bin", tmp_path / "w.h5", progress=False)


# --------------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------------

def test_export_round_trip_is_lossless_and_transformers_loads_it(checkpoint, tmp_path, capsys):
    torch_model, folder = checkpoint
    weights = convert_checkpoint(folder, tmp_path / "weights.h5", progress=False)
    out = tmp_path / "exported"
    assert main(["export", str(weights), str(out), "--no-progress"]) == 0
    assert f"wrote {out}/" in capsys.readouterr().out
    assert listing(out) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    assert listing(tmp_path) == ["exported", "weights.h5"]  # no temporary folder left
    assert json.loads((out / "config.json").read_text()) == json.loads((folder / "config.json").read_text())
    assert json.loads((out / "preprocessor_config.json").read_text()) == PREPROCESSOR
    reloaded = transformers.AutoModelForImageClassification.from_pretrained(out)
    assert_bitwise_equal(numpy_state_dict(reloaded), numpy_state_dict(torch_model))
    assert {**reloaded.config.to_dict(), "_name_or_path": ""} == {**torch_model.config.to_dict(), "_name_or_path": ""}
    x = torch.randn(1, 3, 41, 41)
    with torch.no_grad():
        assert torch.equal(reloaded(x).logits, torch_model(x).logits)


def test_export_of_a_mobilenet_np_model_runs_in_transformers(tmp_path):
    """Weights written by mobilenet_np itself (save_pretrained, no preprocessor) export to transformers too."""
    config = mobilenet_np.MobileNetV2Config(depth_multiplier=0.35, output_stride=8, num_labels=5)
    model = mobilenet_np.MobileNetV2ForSemanticSegmentation(config, seed=3)
    model.save_pretrained(tmp_path / "weights.h5")
    export_checkpoint(tmp_path / "weights.h5", tmp_path / "exported", progress=False)
    assert listing(tmp_path / "exported") == ["config.json", "model.safetensors"]
    reloaded = transformers.MobileNetV2ForSemanticSegmentation.from_pretrained(tmp_path / "exported").eval()
    x = np.random.default_rng(3).standard_normal((2, 3, 50, 43)).astype(np.float32)
    np.testing.assert_allclose(model(x).logits, torch_outputs(reloaded, x).logits.numpy(), rtol=0, atol=1e-4)


def test_export_replaces_an_existing_folder_only_with_force(checkpoint, tmp_path, capsys):
    weights = convert_checkpoint(checkpoint[1], tmp_path / "weights.h5", progress=False)
    out = tmp_path / "exported"
    out.mkdir()
    (out / "keep.txt").write_text("keep me")
    assert main(["export", str(weights), str(out), "--no-progress"]) == 2
    assert "exists already" in capsys.readouterr().err and listing(out) == ["keep.txt"]
    with pytest.raises(OutputExistsError):
        export_checkpoint(weights, out, progress=False)
    assert main(["export", str(weights), str(out), "--force", "--no-progress"]) == 0
    assert listing(out) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    assert listing(tmp_path) == ["exported", "weights.h5"]


def test_a_failed_export_leaves_the_old_folder_and_no_temporary(checkpoint, tmp_path, monkeypatch):
    weights = convert_checkpoint(checkpoint[1], tmp_path / "weights.h5", progress=False)
    out = tmp_path / "exported"
    out.mkdir()
    (out / "keep.txt").write_text("keep me")

    def disk_full(self, name, array):           # the safetensors writer runs out of disk half-way
        self.spool.write(b"half a tensor")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(golden_io.SpooledWriter, "_write", disk_full)
    with pytest.raises(OSError, match="No space left"):
        export_checkpoint(weights, out, overwrite=True, progress=False)
    assert listing(tmp_path) == ["exported", "weights.h5"] and listing(out) == ["keep.txt"]


def test_export_checks_the_weights_file_first(checkpoint, tmp_path):
    weights = convert_checkpoint(checkpoint[1], tmp_path / "weights.h5", progress=False)
    with h5py.File(weights, "r+") as f:
        f["tensors/classifier.bias"][0] = np.inf
    with pytest.raises(WeightsError, match="classifier.bias contains NaN or Inf"):
        export_checkpoint(weights, tmp_path / "exported", progress=False)
    assert listing(tmp_path) == ["weights.h5"]


def test_published_checkpoints_round_trip_bitwise(shared_data, tmp_path):
    """The five published configs (random weights): convert, export, from_pretrained -> the same model."""
    for published in sorted((shared_data / "hf_configs").iterdir()):
        config = transformers.AutoConfig.from_pretrained(published)
        torch_class = ARCHITECTURES[config.architectures[0]][0]
        torch.manual_seed(0)
        torch_model = torch_class(config).eval()
        randomize_batch_norm(torch_model, 0)
        source, out = tmp_path / published.name, tmp_path / f"{published.name}_exported"
        torch_model.save_pretrained(source)
        shutil.copy(published / "preprocessor_config.json", source)
        weights = convert_checkpoint(source, tmp_path / f"{published.name}.h5", progress=False)
        preprocessor = json.loads((published / "preprocessor_config.json").read_text())
        assert read_weights(weights).image_processor == preprocessor
        export_checkpoint(weights, out, progress=False)
        reloaded = torch_class.from_pretrained(out)
        assert_bitwise_equal(numpy_state_dict(reloaded), numpy_state_dict(torch_model))
        assert list(reloaded.state_dict()) == list(torch_model.state_dict())
        assert {**reloaded.config.to_dict(), "_name_or_path": ""} == {**torch_model.config.to_dict(), "_name_or_path": ""}
        assert json.loads((out / "preprocessor_config.json").read_text()) == preprocessor
