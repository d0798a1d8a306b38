"""`python -m weights_tools golden-torch`: the golden reference of the transformers (PyTorch) model.

Records the same tensors, under the same names, as `mobilenet-np golden`, so that `mobilenet-np compare`
can put the two side by side. The tensors come from PyTorch forward hooks: each hooked module's output
is stored under the module's path in the model (`model.named_modules()`), which is the transformers
state_dict prefix, e.g. "mobilenet_v2.layer.3.conv_3x3.normalization".

Hooked: every submodule whose output is a tensor -- each ConvLayer and its convolution, normalization
and activation, the stem, the inverted residual blocks, the pooler, the classifier and the segmentation
head's modules. Not hooked: Dropout (the identity at inference, and in place in the classifier), the
backbone model itself (its output is a ModelOutput, not a tensor) and containers that are never called
(ModuleList). transformers' TF "SAME" padding is a function, not a module, so it has no tensor of its
own; mobilenet_np does not record it either.

    python -m weights_tools golden-torch --weights mobilenet_v2.h5 --seed 0 --out torch.h5
    mobilenet-np golden --weights mobilenet_v2.h5 --seed 0 --out numpy.h5
    mobilenet-np compare torch.h5 numpy.h5
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mobilenet_np.commandline import (add_golden_output_arguments, add_input_arguments, check_output_path,
                                     pixel_values_from_args)
from mobilenet_np.errors import ConversionError, WeightsError
from mobilenet_np.formats import golden
from mobilenet_np.formats.weights import read_weights
from mobilenet_np.registry import ARCHITECTURES

PRODUCER = "transformers"
# Weights files of a transformers checkpoint folder, in the order transformers looks for them.
CHECKPOINT_WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")


def hooked_module_names(model) -> list[str]:
    """The module paths whose outputs are recorded (in registration order; recording follows execution order)."""
    import torch
    from transformers import PreTrainedModel

    names = []
    for name, module in model.named_modules():
        # _DropoutNd: the base class of every torch Dropout module (Dropout, Dropout2d, AlphaDropout, ...)
        if not name or isinstance(module, (PreTrainedModel, torch.nn.ModuleList, torch.nn.ModuleDict,
                                           torch.nn.modules.dropout._DropoutNd)):
            continue
        names.append(name)
    return names


def record_transformers(model, pixel_values: np.ndarray, record=None) -> dict[str, np.ndarray]:
    """Run a transformers model once on (N, C, H, W) pixel values; {module path: output} in execution order.

    The model runs in the dtype of its parameters; `pixel_values` is cast to it. With `record` (a
    `record(name, tensor)` callback such as golden.GoldenWriter) each tensor goes there as it is
    computed instead, and the dict returned is empty.
    """
    import torch

    recording = golden.Recording() if record is None else None
    record = recording if record is None else record
    record("pixel_values", pixel_values)
    modules = dict(model.named_modules())

    def hook_for(name):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor):  # copy now: a later in-place op must not change the record
                record(name, output.detach().cpu().numpy())
        return hook

    handles = [modules[name].register_forward_hook(hook_for(name)) for name in hooked_module_names(model)]
    dtype = next(model.parameters()).dtype
    try:
        with torch.no_grad():
            model(torch.from_numpy(np.ascontiguousarray(pixel_values)).to(dtype))
    finally:
        for handle in handles:
            handle.remove()
    return recording.tensors if recording is not None else {}


# --------------------------------------------------------------------------------------------------
# building the transformers model
# --------------------------------------------------------------------------------------------------

@dataclass
class ModelSource:
    """Where a transformers model came from: what the golden file's attributes say about it."""

    architecture: str
    config: dict
    image_processor: dict
    weights_source: str
    weights_sha256: str     # of the HDF5 file, or of the checkpoint's model.safetensors / pytorch_model.bin


def transformers_model_from_weights(path, dtype=np.float32):
    """(transformers model in eval mode, ModelSource) from a mobilenet-np HDF5 weights file (config + state_dict).

    The model's parameters have `dtype` before the weights are copied in, so a float64 file keeps its precision.
    """
    import torch
    import transformers

    weights = read_weights(path)
    model_class = getattr(transformers, weights.architecture)
    config = model_class.config_class.from_dict(weights.config)
    model = model_class(config).eval().to(_torch_dtype(dtype))
    state_dict = {k: torch.tensor(np.asarray(v)) for k, v in weights.tensors.items()}
    expected = model.state_dict()
    problems = [f"missing {k}" for k in expected if k not in state_dict]
    problems += [f"unexpected {k}" for k in state_dict if k not in expected]
    problems += [f"{k} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}"
                 for k, v in state_dict.items() if k in expected and v.shape != expected[k].shape]
    if problems:
        raise WeightsError(f"{path}: does not fit transformers {weights.architecture}: {'; '.join(problems[:3])}"
                           + (f" ... ({len(problems)} problems)" if len(problems) > 3 else ""))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state_dict.items()}, strict=True)
    return model, ModelSource(weights.architecture, weights.config, weights.image_processor, str(path),
                              golden.file_sha256(path))


def transformers_model_from_checkpoint(folder, dtype=np.float32):
    """(transformers model in eval mode, ModelSource) from a checkpoint folder (config.json + model.safetensors)."""
    import transformers

    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ConversionError(f"{folder}: not a transformers checkpoint folder (no config.json)")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"{config_path}: not a JSON config file ({e})") from None
    architectures = config.get("architectures") or []
    if len(architectures) != 1 or architectures[0] not in ARCHITECTURES:
        raise ConversionError(f"{config_path}: field 'architectures' is {architectures!r}, expected one of "
                              f"{sorted(ARCHITECTURES)}")
    weights_file = next((folder / n for n in CHECKPOINT_WEIGHTS_FILES if (folder / n).is_file()), None)
    if weights_file is None:
        raise ConversionError(f"{folder}: no weights file (expected one of {', '.join(CHECKPOINT_WEIGHTS_FILES)})")
    model_class = getattr(transformers, architectures[0])
    try:
        model = model_class.from_pretrained(folder, dtype=_torch_dtype(dtype)).eval()
    except (OSError, ValueError, RuntimeError) as e:
        raise ConversionError(f"{folder}: transformers cannot load it ({str(e).splitlines()[0][:160]})") from None
    return model, ModelSource(architectures[0], model.config.to_dict(), _image_processor_of_checkpoint(folder),
                              str(folder), golden.file_sha256(weights_file))


# --------------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------------

def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "golden-torch", help="record every intermediate tensor of the transformers (PyTorch) model",
        description="Run the transformers model on one input and write every intermediate tensor (forward "
                    "hooks, named by module path) to a golden file that `mobilenet-np compare` reads "
                    "(docs/golden_format.md).")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", metavar="FILE.h5", help="a mobilenet-np HDF5 weights file")
    source.add_argument("--checkpoint", metavar="DIR", help="a transformers checkpoint folder (config.json + "
                        "model.safetensors)")
    add_input_arguments(parser)
    add_golden_output_arguments(parser)
    parser.set_defaults(func=run)


def _torch_dtype(dtype):
    import torch
    return torch.float64 if np.dtype(dtype) == np.float64 else torch.float32


def run(args: argparse.Namespace) -> int:
    out = check_output_path(args.out, args.force)
    dtype = golden.DTYPES[args.dtype]
    if args.weights:
        model, source = transformers_model_from_weights(args.weights, dtype)
    else:
        model, source = transformers_model_from_checkpoint(args.checkpoint, dtype)
    pixel_values, input_info = pixel_values_from_args(args, source.architecture, source.config,
                                                      source.image_processor, dtype)
    attrs = golden.golden_attributes(PRODUCER, source.architecture, source.config, source.weights_source,
                                     source.weights_sha256, args.dtype, input_info,
                                     golden.library_versions("torch", "transformers"))
    with golden.GoldenWriter(out, attrs, args.file_format, overwrite=args.force, compression=args.compression,
                             layers=args.layers) as record:
        record_transformers(model, pixel_values, record)     # each tensor is written as the hook sees it
    print(f"wrote {out}: {len(record.names)} tensors of transformers {source.architecture} ({args.dtype}, "
          f"input {tuple(pixel_values.shape)}, {record.file_format})")
    return 0


def _image_processor_of_checkpoint(folder) -> dict:
    path = Path(folder) / "preprocessor_config.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"{path}: not a JSON file ({e})") from None
