"""`python -m weights_tools export WEIGHTS.h5 OUT`: mobilenet-np HDF5 weights -> transformers folder or one file.

With the default `--format transformers`, OUT is a folder that receives

    config.json                 the stored config, with "architectures" and "dtype" set from the file
    model.safetensors           every tensor, same keys, same values (bit for bit), PyTorch layout
    preprocessor_config.json    only when the weights file stores an image processor

so that `transformers.AutoModel...from_pretrained(OUT_DIR)` loads it. With `--format safetensors|npz|bin`,
OUT is one file holding every tensor under its state_dict key, bit for bit, and the metadata
(architecture, config, image_processor); `bin` is the flat little-endian format with a JSON index
that C reads without libraries (layouts in docs/weights_format.md). Folder and file are written
under a temporary name and renamed when complete.

Python API:

    from weights_tools.export import export_checkpoint
    export_checkpoint("mobilenet_v2.h5", "mobilenet_v2_hf")
    export_file("mobilenet_v2.h5", "mobilenet_v2.bin", "bin")
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from mobilenet_np.formats import golden_io
from mobilenet_np.formats.weights import read_weights
from mobilenet_np.errors import ConversionError
from mobilenet_np.networks import load

from .checkpoints import CONFIG_NAME, PREPROCESSOR_NAME, SAFETENSORS_NAME, tqdm_disable, atomic_output_folder

# Keys transformers writes to config.json that export sets itself.
LEGACY_DTYPE_KEY = "torch_dtype"  # transformers < 5 wrote "torch_dtype"; 5.x writes "dtype"
FILE_FORMATS = ("safetensors", "npz", "bin")           # one file; "transformers" (the default) is a folder
EXPORT_PRODUCER = "mobilenet-np export"


def transformers_config(stored_config: dict, architecture: str, tensors: dict[str, np.ndarray]) -> dict:
    """The config.json dict for transformers: the stored config, naming the class and the weights' dtype."""
    config = dict(stored_config)
    config.pop(LEGACY_DTYPE_KEY, None)
    if "id2label" in config:  # transformers derives num_labels from id2label and does not write it
        config.pop("num_labels", None)
    float_dtypes = {v.dtype for v in tensors.values() if v.dtype.kind == "f"}
    config["architectures"] = [architecture]
    config["dtype"] = "float64" if np.dtype(np.float64) in float_dtypes else "float32"
    return config


def write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def checked_tensors(weights, progress: bool = True):
    """({state_dict key: C-ordered array}, transformers config dict, the stored file) of a weights file.

    The file is fully checked first (mobilenet_np.networks.load: every tensor present, shaped and finite),
    so an export never produces a file that transformers would fill with random weights.
    """
    stored = read_weights(weights)
    model = load(weights)
    tensors = {}
    for key, value in tqdm(model.state_dict().items(), desc="preparing tensors", unit="tensor",
                           disable=tqdm_disable(progress)):
        tensors[key] = np.require(value, requirements="C")  # C-order bytes (ascontiguousarray would make scalars 1-d)
    return tensors, transformers_config(stored.config, stored.architecture, tensors), stored


def export_checkpoint(weights, out_dir, overwrite: bool = False, progress: bool = True) -> Path:
    """Write the weights file `weights` as a transformers checkpoint folder `out_dir`; return its path."""
    tensors, config, stored = checked_tensors(weights, progress)
    with atomic_output_folder(out_dir, overwrite=overwrite) as tmp:
        write_json(tmp / CONFIG_NAME, config)
        # golden_io's safetensors writer rather than safetensors.numpy.save_file, which makes the file
        # mode 0o600: this one leaves the permissions to the umask. "pt": what transformers expects.
        with golden_io.open_writer(tmp / SAFETENSORS_NAME, "safetensors", {"format": "pt"}) as writer:
            for key, value in tensors.items():
                writer.write(key, value)
        if stored.image_processor:
            write_json(tmp / PREPROCESSOR_NAME, stored.image_processor)
    return Path(out_dir)


def export_file(weights, out, file_format: str, overwrite: bool = False, progress: bool = True) -> Path:
    """Write the weights file `weights` as one safetensors, npz or flat bin file `out`; return its path.

    Tensors keep their state_dict keys, order, dtype and bits. The metadata: "producer", "architecture",
    "config" (the transformers config.json dict), "image_processor" ({} when none is stored), and for
    safetensors also "format": "pt" (what transformers and safetensors.torch expect); in safetensors every
    value is a string (dicts as JSON), in npz and bin they are JSON values.
    """
    if file_format not in FILE_FORMATS:
        raise ConversionError(f"{out}: export format {file_format!r}, expected transformers or one of "
                              f"{', '.join(FILE_FORMATS)}")
    tensors, config, stored = checked_tensors(weights, progress)
    metadata = {"producer": EXPORT_PRODUCER, "architecture": stored.architecture, "config": config,
                "image_processor": stored.image_processor or {}}
    if file_format == "safetensors":
        metadata = {"format": "pt", **metadata}
    with golden_io.open_writer(out, file_format, metadata, overwrite=overwrite) as writer:
        for key, value in tensors.items():
            writer.write(key, value)
    return Path(out)


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------

def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="mobilenet-np HDF5 weights -> transformers checkpoint folder, or a safetensors/npz/bin file",
        description="Write a mobilenet-np HDF5 weights file as a transformers checkpoint folder (config.json, "
                    "model.safetensors and, when stored, preprocessor_config.json) that transformers' "
                    "from_pretrained loads, or with --format as one safetensors, npz or flat little-endian bin "
                    "file (docs/weights_format.md).")
    parser.add_argument("weights", metavar="WEIGHTS.h5", help="mobilenet-np weights file")
    parser.add_argument("out", metavar="OUT", help="checkpoint folder (transformers) or file to write")
    parser.add_argument("--format", choices=("transformers", *FILE_FORMATS), default="transformers",
                        dest="file_format", help="transformers: a checkpoint folder (default); safetensors, npz, "
                                                 "bin: one file")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    progress = not args.no_progress
    if args.file_format == "transformers":
        out = export_checkpoint(args.weights, args.out, overwrite=args.force, progress=progress)
        files = ", ".join(sorted(p.name for p in out.iterdir()))
        print(f"wrote {out}/ ({files}) from {args.weights}")
        return 0
    out = export_file(args.weights, args.out, args.file_format, overwrite=args.force, progress=progress)
    print(f"wrote {out} ({args.file_format}, {out.stat().st_size / 1e6:.1f} MB) from {args.weights}")
    return 0
