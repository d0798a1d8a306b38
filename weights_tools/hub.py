"""Hub ids for `mobilenet-np --model`: the converted HDF5 file in mobilenet-np's cache, converted on first use.

    path = resolve("google/mobilenet_v2_1.0_224")   # ~/.cache/mobilenet-np/google--mobilenet_v2_1.0_224.h5
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import constants, try_to_load_from_cache

from mobilenet_np.errors import ConversionError, WeightsError
from mobilenet_np.hub import cached_weights_path

from .convert import convert_checkpoint


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
    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
    return offline and not isinstance(try_to_load_from_cache(model_id, "config.json"), str)
