"""`python -m weights_tools export WEIGHTS.h5 OUT_DIR`: mobilenet-np HDF5 weights -> transformers checkpoint folder.

OUT_DIR receives

    config.json                 the stored config, with "architectures" and "dtype" set from the file
    model.safetensors           every tensor, same keys, same values (bit for bit), PyTorch layout
    preprocessor_config.json    only when the weights file stores an image processor

so that `transformers.AutoModel...from_pretrained(OUT_DIR)` loads it. The folder is written under a
temporary name and renamed when complete.

Python API:

    from weights_tools.export import export_checkpoint
    export_checkpoint("mobilenet_v2.h5", "mobilenet_v2_hf")
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from mobilenet_np.formats.weights import read_weights
from mobilenet_np.networks import load

from .checkpoints import CONFIG_NAME, PREPROCESSOR_NAME, SAFETENSORS_NAME, tqdm_disable, atomic_output_folder

# Keys transformers writes to config.json that export sets itself.
LEGACY_DTYPE_KEY = "torch_dtype"  # transformers < 5 wrote "torch_dtype"; 5.x writes "dtype"


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


def export_checkpoint(weights, out_dir, overwrite: bool = False, progress: bool = True) -> Path:
    """Write the weights file `weights` as a transformers checkpoint folder `out_dir`; return its path.

    The file is fully checked first (mobilenet_np.networks.load: every tensor present, shaped and finite), so an
    export never produces a checkpoint that transformers would fill with random weights.
    """
    from safetensors.numpy import save_file

    stored = read_weights(weights)
    model = load(weights)
    tensors = {}
    for key, value in tqdm(model.state_dict().items(), desc="preparing tensors", unit="tensor",
                           disable=tqdm_disable(progress)):
        tensors[key] = np.require(value, requirements="C")  # C-order bytes (ascontiguousarray would make scalars 1-d)
    config = transformers_config(stored.config, stored.architecture, tensors)
    with atomic_output_folder(out_dir, overwrite=overwrite) as tmp:
        write_json(tmp / CONFIG_NAME, config)
        save_file(tensors, tmp / SAFETENSORS_NAME, metadata={"format": "pt"})  # "pt": what transformers expects
        if stored.image_processor:
            write_json(tmp / PREPROCESSOR_NAME, stored.image_processor)
    return Path(out_dir)


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------

def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="mobilenet-np HDF5 weights -> transformers checkpoint folder",
        description="Write a mobilenet-np HDF5 weights file as a transformers checkpoint folder (config.json, "
                    "model.safetensors and, when stored, preprocessor_config.json) that "
                    "transformers' from_pretrained loads.")
    parser.add_argument("weights", metavar="WEIGHTS.h5", help="mobilenet-np weights file")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="checkpoint folder to write")
    parser.add_argument("--force", action="store_true", help="replace OUT_DIR if it exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = export_checkpoint(args.weights, args.out_dir, overwrite=args.force, progress=not args.no_progress)
    files = ", ".join(sorted(p.name for p in out.iterdir()))
    print(f"wrote {out}/ ({files}) from {args.weights}")
    return 0
