"""`--model google/mobilenet_v2_1.0_224`: Hugging Face Hub ids through a local cache of converted weights.

A Hub id names a transformers checkpoint. mobilenet-np converts it once to its HDF5 format and keeps
the result in a cache folder:

    $MOBILENET_NP_CACHE/<org>--<name>.h5            (default folder: $XDG_CACHE_HOME/mobilenet-np,
                                                     i.e. ~/.cache/mobilenet-np)

A cached file is used as it is, offline too. A missing one is downloaded with huggingface_hub (which
honours HF_HUB_OFFLINE and its own cache) and converted with weights_tools.convert; both come with
the `convert` extra (`pip install "mobilenet-np[convert]"`), so they are imported only here, on demand.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import WeightsError

CACHE_ENV = "MOBILENET_NP_CACHE"
# The files a transformers checkpoint needs (weights in either format; the converter picks one).
CHECKPOINT_FILES = ["config.json", "preprocessor_config.json", "*.safetensors", "pytorch_model.bin"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def cache_dir() -> Path:
    """The folder of converted weights: $MOBILENET_NP_CACHE, else $XDG_CACHE_HOME/mobilenet-np (~/.cache/...)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "mobilenet-np"


def cached_weights_path(model_id: str, cache: Path | None = None) -> Path:
    """Where the converted weights of `model_id` ("org/name") live: <cache>/<org>--<name>.h5."""
    if not isinstance(model_id, str) or not _HUB_ID.match(model_id) or ".." in model_id:
        raise WeightsError(f"--model {model_id!r}: expected a Hugging Face Hub id like google/mobilenet_v2_1.0_224")
    org, name = model_id.split("/")
    return (cache or cache_dir()) / f"{org}--{name}.h5"


def resolve(model_id: str, cache: Path | None = None) -> Path:
    """The HDF5 weights of a Hub id: the cached file, or a fresh conversion of the downloaded checkpoint."""
    path = cached_weights_path(model_id, cache)
    if path.is_file():
        return path
    checkpoint = download_checkpoint(model_id, path)
    try:
        from weights_tools.convert import convert_checkpoint
    except ImportError as e:
        raise WeightsError(f"{model_id}: converting a transformers checkpoint needs weights_tools and the 'convert' "
                           f"extra (pip install 'mobilenet-np[convert]'; missing {e.name}); or pass --weights "
                           "FILE.h5") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    convert_checkpoint(checkpoint, path, overwrite=False)
    return path


def _offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it (also when set after huggingface_hub was imported)."""
    from huggingface_hub import constants
    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def download_checkpoint(model_id: str, cached_path: Path) -> Path:
    """The local folder of the transformers checkpoint `model_id` (huggingface_hub's cache, or a download)."""
    how_to = (f"pass --weights FILE.h5 instead (convert a checkpoint with `python -m weights_tools convert`), or put "
              f"the converted file at {cached_path}")
    try:
        import huggingface_hub
        from huggingface_hub import errors
    except ImportError:
        raise WeightsError(f"{model_id}: not in the cache ({cached_path}) and downloading needs huggingface_hub "
                           f"(pip install 'mobilenet-np[convert]'); {how_to}") from None
    offline = _offline()
    try:
        folder = huggingface_hub.snapshot_download(model_id, allow_patterns=CHECKPOINT_FILES, local_files_only=offline)
    except errors.LocalEntryNotFoundError:
        reason = "the Hugging Face Hub is offline (HF_HUB_OFFLINE is set)" if offline else "the Hugging Face Hub is unreachable"
        raise WeightsError(f"{model_id}: not in the cache ({cached_path}) and {reason}; {how_to}") from None
    except errors.RepositoryNotFoundError:
        raise WeightsError(f"{model_id}: no such model on the Hugging Face Hub (or it is private); {how_to}") from None
    except (errors.HfHubHTTPError, OSError, ValueError) as e:
        first_line = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise WeightsError(f"{model_id}: download failed ({first_line}); {how_to}") from None
    return Path(folder)
