"""`python -m weights_tools convert SRC OUT.h5`: a transformers checkpoint -> mobilenet-np HDF5 weights.

SRC is a local checkpoint folder (config.json + model.safetensors or pytorch_model.bin, optionally
preprocessor_config.json) or a Hugging Face Hub model id such as google/mobilenet_v2_1.0_224.

The conversion is a renaming-free copy: mobilenet-np keys its weights exactly like the transformers
state_dict, in PyTorch layout. What it adds is checking. The checkpoint is loaded into the
mobilenet_np network its config describes before anything is written, so a missing, extra,
mis-shaped or non-finite tensor, or an invalid config, stops the conversion with one error
listing every problem.

Python API (for other tools and notebooks):

    from weights_tools.convert import convert_checkpoint
    path = convert_checkpoint("google/mobilenet_v2_1.0_224", "mobilenet_v2.h5")
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

import mobilenet_np
from mobilenet_np import networks
from mobilenet_np.errors import ConfigError, ConversionError, WeightsError
from mobilenet_np.fileio import file_sha256
from mobilenet_np.formats.transformers_checkpoint import checkpoint_architecture
from mobilenet_np.formats.weights import save_weights

from . import __version__
from .checkpoints import CONFIG_NAME, Checkpoint, read_checkpoint, resolve_source

# transformers model_type -> the prefix of its class names


def architecture_of(checkpoint: Checkpoint) -> str:
    """The transformers class a checkpoint holds: from config.json's "architectures", else from its keys."""
    return checkpoint_architecture(checkpoint.config, checkpoint.tensors, checkpoint.folder / CONFIG_NAME)


def checked_model(checkpoint: Checkpoint, architecture: str):
    """The mobilenet_np model of `architecture` with the checkpoint's config and weights, every tensor checked."""
    model_class = networks.model_class(architecture)
    try:
        config = model_class.config_class.from_dict(checkpoint.config)
    except ConfigError as e:
        raise ConversionError(f"{checkpoint.folder / CONFIG_NAME}: {e}") from None
    tensors = {k: _as_stored_dtype(v) for k, v in checkpoint.tensors.items()}
    model = model_class(config, seed=None)
    try:
        model.load_state_dict(tensors, source=", ".join(str(p) for p in checkpoint.weight_files))
    except WeightsError as e:
        raise ConversionError(str(e)) from None
    return model


def _as_stored_dtype(value: np.ndarray) -> np.ndarray:
    """float16 is widened to float32 (exactly); float32/float64 and integer counters stay as they are."""
    return value.astype(np.float32) if value.dtype == np.float16 else value


def stored_config(checkpoint: Checkpoint, model) -> dict:
    """The config to store: config.json as it is, completed with the defaults of every missing field.

    Keeping the original entries (transformers_version, architectures, ...) makes the export back to
    transformers reproduce config.json; adding the defaults lets a reader in another language find
    every field in the file.
    """
    return {**model.config.to_dict(), **checkpoint.config}


def convert_checkpoint(source, out, overwrite: bool = False, progress: bool = True,
                       revision: str | None = None) -> Path:
    """Convert a transformers checkpoint (folder or Hub model id) to a mobilenet-np HDF5 file; return its path.

    `out` is written atomically and only replaced when overwrite=True. The file records its
    provenance: the source, the SHA-256 of every source file read, and the converter and version.
    """
    out = Path(out)
    if out.exists() and not overwrite:  # fail before a download; atomic_output checks again when writing
        raise mobilenet_np.OutputExistsError(f"{out}: exists already (pass --force / overwrite=True to replace it)")
    folder, provenance = resolve_source(source, revision)
    checkpoint = read_checkpoint(folder, progress)
    architecture = architecture_of(checkpoint)
    model = checked_model(checkpoint, architecture)
    provenance.update({
        "source_sha256": {p.name: file_sha256(p) for p in checkpoint.files},
        "converter": "weights_tools",
        "converter_version": __version__,
        "mobilenet_np_version": mobilenet_np.__version__,
    })
    return save_weights(out, model.state_dict(), architecture, stored_config(checkpoint, model),
                        image_processor=checkpoint.image_processor, provenance=provenance, overwrite=overwrite)


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------

def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert", help="transformers checkpoint (folder or Hub id) -> mobilenet-np HDF5 weights",
        description="Convert a transformers MobileNetV1/V2 or DeepLabV3 checkpoint to a mobilenet-np HDF5 weights "
                    "file. SRC is a folder with config.json and model.safetensors (or pytorch_model.bin), or a "
                    "Hugging Face Hub model id (downloaded; offline, only the Hub cache is used).")
    parser.add_argument("source", metavar="SRC",
                        help="checkpoint folder or Hub model id, e.g. google/mobilenet_v2_1.0_224")
    parser.add_argument("out", metavar="OUT.h5", help="weights file to write")
    parser.add_argument("--revision", help="Hub branch, tag or commit (default: main)")
    parser.add_argument("--force", action="store_true", help="replace OUT.h5 if it exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = convert_checkpoint(args.source, args.out, overwrite=args.force, progress=not args.no_progress,
                              revision=args.revision)
    model = mobilenet_np.load(path)
    print(f"wrote {path} ({model.metadata['architecture']}, {model.num_parameters():,} parameters, "
          f"{os.path.getsize(path) / 1e6:.1f} MB) from {args.source}")
    return 0
