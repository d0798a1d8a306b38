"""The one thing the subcommands need beyond mobilenet_np.commandline: the weights chosen on the command line.

    weights_path(args)   the HDF5 file --weights names, or the cached conversion of the --model Hub id
    load_model(args)     the network stored in that file

Converting a Hub id needs `weights_tools` (and its `weights` extra): the one optional import of the
package, here at the top, so that `mobilenet-np` works without them on local files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import WeightsError
from ..hub import cached_weights_path
from ..networks import load

try:  # optional: only --model HUB_ID needs it
    from weights_tools.hub import resolve as resolve_hub_id
except ImportError as missing:  # the weights extra (huggingface_hub, safetensors, ...) is not installed
    resolve_hub_id, _missing_extra = None, missing


def weights_path(args: argparse.Namespace) -> Path:
    """The weights file chosen by --weights, or the cached conversion of --model (converted when missing)."""
    if getattr(args, "weights", None):
        return Path(args.weights)
    if resolve_hub_id is None:
        path = cached_weights_path(args.model)
        if path.is_file():
            return path
        raise WeightsError(f"{args.model}: not in the cache ({path}) and converting it needs weights_tools and the "
                           f"'weights' extra (pip install \"mobilenet-np[weights]\"; missing {_missing_extra.name}); "
                           f"pass --weights FILE.h5 instead, or put a converted file at {path}")
    return resolve_hub_id(args.model)


def load_model(args: argparse.Namespace):
    """The network stored in the weights file chosen by --weights / --model."""
    return load(weights_path(args))
