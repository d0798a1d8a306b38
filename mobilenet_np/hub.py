"""`--model google/mobilenet_v2_1.0_224`: Hugging Face Hub ids through a local cache of converted weights.

A Hub id names a transformers checkpoint. mobilenet-np converts it once to its HDF5 format and keeps
the result in a cache folder:

    $MOBILENET_NP_CACHE/<org>--<name>.h5            (default folder: $XDG_CACHE_HOME/mobilenet-np,
                                                     i.e. ~/.cache/mobilenet-np)

A cached file is used as it is, offline too. A missing one is converted by weights_tools.hub.resolve,
which downloads the checkpoint with huggingface_hub (honouring HF_HUB_OFFLINE and the Hub's own
cache); both need the `convert` extra (`pip install "mobilenet-np[convert]"`). This module only
knows where the cache is.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import WeightsError

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
