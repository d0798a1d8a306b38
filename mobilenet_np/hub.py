"""`--model google/mobilenet_v2_1.0_224`: Hugging Face Hub ids through a local cache of converted weights.

A Hub id names a transformers checkpoint. mobilenet-np converts it once to its HDF5 format and keeps
the result in a cache folder:

    $MOBILENET_NP_CACHE/<org>--<name>.h5            (default folder: $XDG_CACHE_HOME/mobilenet-np,
                                                     i.e. ~/.cache/mobilenet-np)

A cached file is used as it is, offline too. A missing one is converted by weights_tools.convert,
which downloads the checkpoint with huggingface_hub (honouring HF_HUB_OFFLINE and the Hub's own
cache); both need the `convert` extra (`pip install "mobilenet-np[convert]"`), so they are imported
only here, on demand.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import ConversionError, WeightsError

CACHE_ENV = "MOBILENET_NP_CACHE"
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
    """The HDF5 weights of a Hub id: the cached file, else a fresh conversion written into the cache.

    The conversion is `weights_tools.convert.convert_checkpoint(model_id, ...)`: it downloads the
    checkpoint with huggingface_hub (or finds it in the Hub's own cache, e.g. offline) and records
    the Hub id and revision as the file's provenance.
    """
    path = cached_weights_path(model_id, cache)
    if path.is_file():
        return path
    how_to = f"pass --weights FILE.h5 instead, or put a converted file at {path}"
    try:
        from weights_tools.convert import convert_checkpoint
    except ImportError as e:
        raise WeightsError(f"{model_id}: not in the cache ({path}) and converting it needs weights_tools and the "
                           f"'convert' extra (pip install 'mobilenet-np[convert]'; missing {e.name}); {how_to}") from None
    if _offline_and_not_in_hub_cache(model_id):
        raise WeightsError(f"{model_id}: not in the cache ({path}), and the Hugging Face Hub is offline "
                           f"(HF_HUB_OFFLINE is set) with no copy of it in its own cache; {how_to} (convert a "
                           "checkpoint folder with `python -m weights_tools convert FOLDER OUT.h5`)")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return convert_checkpoint(model_id, path, overwrite=False)
    except ConversionError as e:
        raise WeightsError(f"{model_id}: not in the cache ({path}) and not converted: {e}; or {how_to}") from None


def _offline_and_not_in_hub_cache(model_id: str) -> bool:
    """HF_HUB_OFFLINE is set and huggingface_hub's cache has no config.json of `model_id`."""
    from huggingface_hub import constants, try_to_load_from_cache
    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
    return offline and not isinstance(try_to_load_from_cache(model_id, "config.json"), str)
