"""Reading transformers checkpoints (a folder, one weights file, or a Hugging Face Hub id) into NumPy.

A transformers checkpoint folder holds

    config.json                  the model config (architectures, model_type, depth_multiplier, ...)
    model.safetensors            the state_dict (or model.safetensors.index.json + model-0000x-of-0000y.safetensors)
    pytorch_model.bin            the same as a pickle, in older checkpoints (read with torch.load(weights_only=True))
    preprocessor_config.json     optional: resize / crop / normalisation of the image processor

safetensors files are read with `safetensors.numpy`, so reading them needs no torch; only the pickled
`pytorch_model.bin` needs torch. Both packages are optional (the `weights` extra, and torch): they are
imported when a checkpoint is read, and their absence is a one-line ConversionError saying what to install.

`read_pretrained(source)` is what every `from_pretrained` reads: a mobilenet-np HDF5 weights file
(formats/weights.py), a checkpoint folder, a `model.safetensors` / `pytorch_model.bin` path with its
config.json beside it, or a Hub id found in (or downloaded into) huggingface_hub's cache. Whatever
the source, the answer is a `WeightsFile`: architecture, config, tensors, labels, image processor,
provenance.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConversionError, WeightsError
from ..registry import ARCHITECTURES, FAMILIES
from .weights import WeightsFile, read_weights

CONFIG_NAME = "config.json"
PREPROCESSOR_NAME = "preprocessor_config.json"
SAFETENSORS_NAME = "model.safetensors"
PYTORCH_NAME = "pytorch_model.bin"
# (single file, index of a sharded checkpoint): the first one present is read. safetensors first: it
# needs no torch and cannot run code when loaded.
WEIGHT_FILES = [(SAFETENSORS_NAME, SAFETENSORS_NAME + ".index.json"), (PYTORCH_NAME, PYTORCH_NAME + ".index.json")]
CHECKPOINT_WEIGHT_SUFFIXES = (".safetensors", ".bin")
# Names that are surely meant as local files, never as Hub ids.
LOCAL_FILE_SUFFIXES = (".h5", ".hdf5", *CHECKPOINT_WEIGHT_SUFFIXES, ".json")

# A Hub model id: "name" or "owner/name" (letters, digits, "-", "_", ".").
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
OFFLINE_VALUES = {"1", "ON", "YES", "TRUE"}
WEIGHTS_EXTRA = 'pip install "mobilenet-np[weights]"'


@dataclass
class Checkpoint:
    """A transformers checkpoint read into memory."""

    folder: Path
    config: dict                         # config.json as it is
    tensors: dict[str, np.ndarray]       # state_dict key -> array
    weight_files: list[Path]             # the .safetensors / .bin file(s) the tensors came from
    image_processor: dict = field(default_factory=dict)  # preprocessor_config.json, {} when absent

    @property
    def files(self) -> list[Path]:
        """Every file read (hashed for provenance)."""
        extra = [self.folder / PREPROCESSOR_NAME] if self.image_processor else []
        return [self.folder / CONFIG_NAME, *self.weight_files, *extra]


def optional_module(name: str, purpose: str, install: str = WEIGHTS_EXTRA):
    """The optional package `name` (safetensors, huggingface_hub, torch, tqdm), or one line saying what to install."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ConversionError(f"{purpose} needs the package {name.split('.')[0]!r}, which is not installed: "
                              f"{install}") from None


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it, also when it was set after huggingface_hub was imported."""
    constants = optional_module("huggingface_hub.constants", "a Hugging Face Hub model id")
    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in OFFLINE_VALUES


# --------------------------------------------------------------------------------------------------
# where the checkpoint is: the Hugging Face Hub
# --------------------------------------------------------------------------------------------------

def download_from_hub(repo_id: str, revision: str | None, hint: str) -> Path:
    """Download (or find in the Hub cache) the files of a checkpoint; return the snapshot folder.

    Offline (HF_HUB_OFFLINE=1, or no network), only a cached snapshot can be used; otherwise a
    ConversionError says so, ending with `hint` (what the caller can do instead).
    """
    hub = optional_module("huggingface_hub", f"{repo_id}: a Hugging Face Hub model id")
    errors = optional_module("huggingface_hub.errors", f"{repo_id}: a Hugging Face Hub model id")
    light_files = [CONFIG_NAME, PREPROCESSOR_NAME]
    offline = hub_offline()
    try:
        # safetensors first; the pickle only if the repository has no safetensors (never both).
        folder = Path(hub.snapshot_download(repo_id, revision=revision, local_files_only=offline,
                                            allow_patterns=light_files + ["*.safetensors", "*.safetensors.index.json"]))
        if not any((folder / name).is_file() for name in WEIGHT_FILES[0]):
            folder = Path(hub.snapshot_download(repo_id, revision=revision, local_files_only=offline,
                                                allow_patterns=light_files + [PYTORCH_NAME, PYTORCH_NAME + ".index.json"]))
    except errors.LocalEntryNotFoundError:
        cache = hub.constants.HF_HUB_CACHE
        if offline:
            why = f"offline mode is on (HF_HUB_OFFLINE=1) and it is not in the Hub cache {cache}"
        else:
            why = f"the Hugging Face Hub cannot be reached (no network?) and it is not in the Hub cache {cache}"
        raise ConversionError(f"{repo_id}: not a local path; as a Hub model id: {why}; {hint}") from None
    except errors.RepositoryNotFoundError:
        raise ConversionError(f"{repo_id}: not a local path, and no such model on the Hugging Face Hub (or it is "
                              f"private or gated: log in with `hf auth login`); {hint}") from None
    except errors.HFValidationError as e:
        raise ConversionError(f"{repo_id}: neither a local folder nor a valid Hub model id ({e}); {hint}") from None
    except OSError as e:  # HTTP errors, disk full, ...
        raise ConversionError(f"{repo_id}: download from the Hugging Face Hub failed ({_first_line(e)}); "
                              f"{hint}") from None
    return folder


def hub_provenance(repo_id: str, folder: Path) -> dict:
    """Where a Hub snapshot came from: the id, and the commit (the Hub cache names snapshot folders by it)."""
    info = {"source": repo_id, "source_type": "huggingface_hub"}
    if folder.parent.name == "snapshots":
        info["source_revision"] = folder.name
    return info


# --------------------------------------------------------------------------------------------------
# reading the files
# --------------------------------------------------------------------------------------------------

def read_json(path: Path) -> dict:
    """A JSON object from a file, or a ConversionError naming the file."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConversionError(f"{path}: missing (a transformers checkpoint folder has a {path.name})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(value, dict):
        raise ConversionError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def find_weight_files(folder: Path) -> list[Path]:
    """The weight files of a checkpoint folder: one file, or the shards its index lists."""
    for single, index in WEIGHT_FILES:
        if (folder / single).is_file():
            return [folder / single]
        if (folder / index).is_file():
            weight_map = read_json(folder / index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ConversionError(f"{folder / index}: has no 'weight_map' object")
            shards = [folder / name for name in dict.fromkeys(weight_map.values())]
            missing = [p.name for p in shards if not p.is_file()]
            if missing:
                raise ConversionError(f"{folder / index}: lists shards that are missing: {', '.join(missing)}")
            return shards
    raise ConversionError(f"{folder}: no weights found (expected {SAFETENSORS_NAME} or {PYTORCH_NAME}, "
                          "or a sharded checkpoint's index)")


def tqdm_disable(progress: bool) -> bool | None:
    """tqdm's `disable`: None shows the bar only on a terminal; True hides it."""
    return None if progress else True


def _progress(items: list, path: Path, progress: bool) -> list:
    """`items`, behind a tqdm progress bar when `progress` (tqdm is imported only then)."""
    if not progress:
        return items
    tqdm = optional_module("tqdm.auto", "a progress bar").tqdm
    return tqdm(items, desc=f"reading {path.name}", unit="tensor", disable=tqdm_disable(progress))


def read_safetensors(path: Path, progress: bool = False) -> dict[str, np.ndarray]:
    """Every tensor of a .safetensors file as a NumPy array (no torch needed)."""
    safetensors = optional_module("safetensors", f"{path}: reading a safetensors file")
    tensors = {}
    try:
        with safetensors.safe_open(str(path), framework="np") as f:
            for key in _progress(list(f.keys()), path, progress):
                tensors[key] = f.get_tensor(key)
    except (safetensors.SafetensorError, OSError, TypeError, ValueError) as e:  # damaged, or bfloat16 (no NumPy dtype)
        raise ConversionError(f"{path}: cannot read safetensors file ({_first_line(e)})") from None
    return tensors


def read_pytorch_bin(path: Path, progress: bool = False) -> dict[str, np.ndarray]:
    """Every tensor of a pickled PyTorch state_dict, loaded with torch.load(weights_only=True).

    weights_only=True refuses pickles that would run code; only tensors and plain containers load.
    """
    torch = optional_module("torch", f"{path}: reading {PYTORCH_NAME}",
                            install=f"pip install torch, or use a checkpoint with {SAFETENSORS_NAME}")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds (UnpicklingError, RuntimeError, EOFError, ...)
        raise ConversionError(f"{path}: cannot load it with torch.load(weights_only=True) ({_first_line(e)})") from None
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ConversionError(f"{path}: expected a state_dict (a dict of tensors), got {type(state_dict).__name__}")
    tensors = {}
    for key, value in _progress(list(state_dict.items()), path, progress):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:  # NumPy has no bfloat16; float32 holds it exactly
            value = value.float()
        tensors[str(key)] = value.numpy()
    return tensors


def read_checkpoint(folder: Path, progress: bool = False, weight_files: list[Path] | None = None) -> Checkpoint:
    """config.json, the weights and the optional preprocessor_config.json of a checkpoint folder.

    `weight_files`: the .safetensors / .bin files to read; None reads the folder's (find_weight_files).
    """
    folder = Path(folder)
    config = read_json(folder / CONFIG_NAME)
    paths = find_weight_files(folder) if weight_files is None else [Path(p) for p in weight_files]
    tensors: dict[str, np.ndarray] = {}
    for path in paths:
        read = read_safetensors if path.suffix == ".safetensors" else read_pytorch_bin
        tensors.update(read(path, progress))
    image_processor = read_json(folder / PREPROCESSOR_NAME) if (folder / PREPROCESSOR_NAME).is_file() else {}
    return Checkpoint(folder, config, tensors, paths, image_processor)


def checkpoint_architecture(config: dict, tensor_keys, where) -> str:
    """The architecture (registry name) of a checkpoint: config.json's "architectures", else its
    "model_type" and the head its tensors have (segmentation_head.*, the backbone under a prefix, or none)."""
    named = config.get("architectures") or []
    named = [named] if isinstance(named, str) else list(named)
    for name in named:
        if name in ARCHITECTURES:
            return name
    if named:
        raise ConversionError(f"{where}: architectures {named} are not supported (expected one of {sorted(ARCHITECTURES)})")
    family = config.get("model_type")
    if family not in FAMILIES:
        raise ConversionError(f"{where}: model_type {family!r} is not supported (expected one of {list(FAMILIES)})")
    keys = list(tensor_keys)
    if any(k.startswith("segmentation_head.") for k in keys):
        task = "semantic-segmentation"
    elif any(k.startswith(family + ".") for k in keys):   # a head model keeps its backbone under `model_type.`
        task = "image-classification"
    else:
        task = "backbone"
    for architecture in ARCHITECTURES.values():
        if architecture.family == family and architecture.task == task:
            return architecture.name
    raise ConversionError(f"{where}: a {family} checkpoint with a {task} head is not supported")


# --------------------------------------------------------------------------------------------------
# from_pretrained's sources
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PretrainedSource:
    """Where `from_pretrained(source)` reads from."""

    kind: str                          # "weights_file" (mobilenet-np HDF5) or "checkpoint" (transformers)
    path: Path                         # the HDF5 file, or the checkpoint folder
    weight_files: list[Path] | None    # a checkpoint's weights named directly; None: the folder's own
    provenance: dict                   # for a checkpoint: source, source_type (, source_revision)


FROM_PRETRAINED_HINT = ("run once online to fill the Hub cache, or pass a local path: a mobilenet-np .h5 file, a "
                        f"checkpoint folder ({CONFIG_NAME} + {SAFETENSORS_NAME} or {PYTORCH_NAME}) or its "
                        f"{SAFETENSORS_NAME}")


def locate_pretrained(source, revision: str | None = None) -> PretrainedSource:
    """What `source` names: an existing HDF5 file, checkpoint folder or checkpoint weights file, else a Hub id."""
    if not isinstance(source, (str, os.PathLike)):
        raise ConversionError(f"from_pretrained needs a path or a Hub model id, got a {type(source).__name__}")
    path = Path(source)
    if path.is_dir():
        return PretrainedSource("checkpoint", path, None, {"source": str(path.resolve()), "source_type": "local_folder"})
    if path.is_file():
        if path.suffix in CHECKPOINT_WEIGHT_SUFFIXES:
            if not (path.parent / CONFIG_NAME).is_file():
                raise ConversionError(f"{path}: a transformers weights file needs its {CONFIG_NAME} beside it "
                                      f"(in {path.parent})")
            return PretrainedSource("checkpoint", path.parent, [path],
                                    {"source": str(path.resolve()), "source_type": "local_file"})
        return PretrainedSource("weights_file", path, None, {})
    name = str(source)
    if name.endswith(LOCAL_FILE_SUFFIXES) or not HUB_ID.fullmatch(name):
        raise WeightsError(f"{name}: no such file or folder (and not a Hugging Face Hub model id)")
    folder = download_from_hub(name, revision, FROM_PRETRAINED_HINT)
    return PretrainedSource("checkpoint", folder, None, hub_provenance(name, folder))


def read_pretrained(source, revision: str | None = None) -> WeightsFile:
    """Everything `from_pretrained(source)` needs, as a WeightsFile, whatever the source (module docstring).

    A checkpoint's float16 tensors are widened to float32 (exactly); its architecture comes from
    config.json (`checkpoint_architecture`), its labels from config.json's id2label.
    """
    located = locate_pretrained(source, revision)
    if located.kind == "weights_file":
        return read_weights(located.path)
    checkpoint = read_checkpoint(located.path, weight_files=located.weight_files)
    where = checkpoint.folder / CONFIG_NAME
    architecture = checkpoint_architecture(checkpoint.config, checkpoint.tensors, where)
    tensors = {k: (v.astype(np.float32) if v.dtype == np.float16 else v) for k, v in checkpoint.tensors.items()}
    labels = checkpoint.config.get("id2label") or {}
    try:
        id2label = {int(k): str(v) for k, v in dict(labels).items()}
    except (TypeError, ValueError):
        raise ConversionError(f"{where}: 'id2label' must map integer ids to names") from None
    source_path = located.weight_files[0] if located.weight_files else located.path
    return WeightsFile(source_path, architecture, checkpoint.config, tensors, id2label, checkpoint.image_processor,
                       located.provenance)


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0][:160] if str(error) else type(error).__name__
