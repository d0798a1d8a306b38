"""Reading transformers checkpoint folders (local or from the Hugging Face Hub) into NumPy.

A transformers checkpoint folder holds

    config.json                  the model config (architectures, model_type, depth_multiplier, ...)
    model.safetensors            the state_dict (or model.safetensors.index.json + model-0000x-of-0000y.safetensors)
    pytorch_model.bin            the same as a pickle, in older checkpoints (read with torch.load(weights_only=True))
    preprocessor_config.json     optional: resize / crop / normalisation of the image processor

safetensors files are read with `safetensors.numpy`, so converting them needs no torch; only the
pickled `pytorch_model.bin` needs torch.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm.auto import tqdm

from mobilenet_np.errors import ConversionError, MobileNetError, OutputExistsError
from mobilenet_np.fileio import temporary_sibling

CONFIG_NAME = "config.json"
PREPROCESSOR_NAME = "preprocessor_config.json"
SAFETENSORS_NAME = "model.safetensors"
PYTORCH_NAME = "pytorch_model.bin"
# (single file, index of a sharded checkpoint): the first one present is read. safetensors first: it
# needs no torch and cannot run code when loaded.
WEIGHT_FILES = [(SAFETENSORS_NAME, SAFETENSORS_NAME + ".index.json"), (PYTORCH_NAME, PYTORCH_NAME + ".index.json")]

# A Hub model id: "name" or "owner/name" (letters, digits, "-", "_", ".").
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


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


# --------------------------------------------------------------------------------------------------
# where the checkpoint is: a local folder or a Hub model id
# --------------------------------------------------------------------------------------------------

def resolve_source(source: str | os.PathLike, revision: str | None = None) -> tuple[Path, dict]:
    """The local folder of `source` and a provenance dict describing where it came from.

    `source` is a local checkpoint folder, or a Hub model id ("google/mobilenet_v2_1.0_224") that is
    downloaded (or found in the Hub cache) with huggingface_hub.snapshot_download.
    """
    path = Path(source)
    if path.exists():
        if not path.is_dir():
            raise ConversionError(f"{path}: expected a transformers checkpoint folder (config.json + "
                                  f"{SAFETENSORS_NAME} or {PYTORCH_NAME}), got a file")
        return path.resolve(), {"source": str(path.resolve()), "source_type": "local_folder"}
    if not HUB_ID.fullmatch(str(source)):
        raise ConversionError(f"{source}: no such folder (and not a Hugging Face Hub model id)")
    folder = download_from_hub(str(source), revision)
    info = {"source": str(source), "source_type": "huggingface_hub"}
    if folder.parent.name == "snapshots":  # the Hub cache names snapshot folders by commit hash
        info["source_revision"] = folder.name
    return folder, info


def download_from_hub(repo_id: str, revision: str | None = None) -> Path:
    """Download (or find in the Hub cache) the files of a checkpoint; return the snapshot folder.

    Offline (HF_HUB_OFFLINE=1, or no network), only a cached snapshot can be used; otherwise a
    ConversionError says so and how to convert a folder you have on disk instead.
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    hint = (f"to convert a checkpoint you already have, pass its folder (with {CONFIG_NAME} and {SAFETENSORS_NAME} "
            f"or {PYTORCH_NAME}): python -m weights_tools convert path/to/folder OUT.h5")
    light_files = [CONFIG_NAME, PREPROCESSOR_NAME]
    try:
        # safetensors first; the pickle only if the repository has no safetensors (never both).
        folder = Path(snapshot_download(repo_id, revision=revision,
                                        allow_patterns=light_files + ["*.safetensors", "*.safetensors.index.json"]))
        if not any((folder / name).is_file() for name in WEIGHT_FILES[0]):
            folder = Path(snapshot_download(repo_id, revision=revision,
                                            allow_patterns=light_files + [PYTORCH_NAME, PYTORCH_NAME + ".index.json"]))
    except LocalEntryNotFoundError:
        if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}:
            why = f"offline mode is on (HF_HUB_OFFLINE=1) and it is not in the Hub cache {constants.HF_HUB_CACHE}"
        else:
            why = ("the Hugging Face Hub cannot be reached (no network?) and it is not in the Hub cache "
                   f"{constants.HF_HUB_CACHE}")
        raise ConversionError(f"{repo_id}: no such local folder; as a Hub model id: {why}; {hint}") from None
    except RepositoryNotFoundError:
        raise ConversionError(f"{repo_id}: no such local folder, and no such model on the Hugging Face Hub (or it is "
                              f"private or gated: log in with `hf auth login`); {hint}") from None
    except HFValidationError as e:
        raise ConversionError(f"{repo_id}: neither a local folder nor a valid Hub model id ({e}); {hint}") from None
    except OSError as e:  # HTTP errors, disk full, ...
        raise ConversionError(f"{repo_id}: download from the Hugging Face Hub failed "
                              f"({str(e).splitlines()[0][:160] if str(e) else type(e).__name__}); {hint}") from None
    return folder


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


def read_safetensors(path: Path, progress: bool = False) -> dict[str, np.ndarray]:
    """Every tensor of a .safetensors file as a NumPy array (no torch needed)."""
    from safetensors import SafetensorError, safe_open

    tensors = {}
    try:
        with safe_open(str(path), framework="np") as f:
            for key in tqdm(list(f.keys()), desc=f"reading {path.name}", unit="tensor", disable=tqdm_disable(progress)):
                tensors[key] = f.get_tensor(key)
    except (SafetensorError, OSError, TypeError, ValueError) as e:  # damaged file, or a dtype NumPy lacks (bfloat16)
        raise ConversionError(f"{path}: cannot read safetensors file ({str(e).splitlines()[0][:160]})") from None
    return tensors


def read_pytorch_bin(path: Path, progress: bool = False) -> dict[str, np.ndarray]:
    """Every tensor of a pickled PyTorch state_dict, loaded with torch.load(weights_only=True).

    weights_only=True refuses pickles that would run code; only tensors and plain containers load.
    """
    try:
        import torch
    except ImportError:
        raise ConversionError(f"{path}: reading {PYTORCH_NAME} needs torch (pip install torch), "
                              f"or convert a checkpoint with {SAFETENSORS_NAME}") from None
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds (UnpicklingError, RuntimeError, EOFError, ...)
        raise ConversionError(f"{path}: cannot load it with torch.load(weights_only=True) "
                              f"({str(e).splitlines()[0][:160] if str(e) else type(e).__name__})") from None
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ConversionError(f"{path}: expected a state_dict (a dict of tensors), got {type(state_dict).__name__}")
    tensors = {}
    for key, value in tqdm(state_dict.items(), desc=f"reading {path.name}", unit="tensor",
                           disable=tqdm_disable(progress)):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:  # NumPy has no bfloat16; float32 holds it exactly
            value = value.float()
        tensors[str(key)] = value.numpy()
    return tensors


def read_checkpoint(folder: Path, progress: bool = False) -> Checkpoint:
    """config.json, the weights and the optional preprocessor_config.json of a checkpoint folder."""
    folder = Path(folder)
    config = read_json(folder / CONFIG_NAME)
    paths = find_weight_files(folder)
    tensors: dict[str, np.ndarray] = {}
    for path in paths:
        read = read_safetensors if path.suffix == ".safetensors" else read_pytorch_bin
        tensors.update(read(path, progress))
    image_processor = read_json(folder / PREPROCESSOR_NAME) if (folder / PREPROCESSOR_NAME).is_file() else {}
    return Checkpoint(folder, config, tensors, paths, image_processor)


def tqdm_disable(progress: bool) -> bool | None:
    """tqdm's `disable`: None shows the bar only on a terminal; True hides it."""
    return None if progress else True


# --------------------------------------------------------------------------------------------------
# writing a folder atomically
# --------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def atomic_output_folder(path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it is renamed to `path` (the folder version
    of mobilenet_np.fileio.atomic_output).

    Readers never see a half-written folder: the files are written into `.NAME.*.tmp`, which only
    takes the final name once complete. With overwrite=True an existing `path` is first renamed
    aside, then deleted once the new folder is in place (and put back if that rename fails).
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise MobileNetError(f"{path}: cannot write, folder {parent} does not exist")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise OutputExistsError(f"{path}: exists already (pass --force / overwrite=True to replace it)")
    tmp = temporary_sibling(path, suffix=".tmp", folder=True)   # permissions from the umask, not 0o700
    try:
        yield tmp
        old = None
        if path.exists() or path.is_symlink():
            old = parent / f".{path.name}.{uuid.uuid4().hex}.old"
            os.rename(path, old)
        try:
            os.rename(tmp, path)
        except BaseException:
            if old is not None:
                os.rename(old, path)
            raise
        if old is not None:
            shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
