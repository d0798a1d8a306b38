"""What the Keras and TFLite importers share: choosing a config, writing the file, the command line.

An importer turns a foreign file into a dict of tensors keyed by transformers state_dict keys (PyTorch
layouts). Which config builds exactly those shapes is then a search over the few config fields that
change channel counts (`fit_config`): the tensors' shapes decide, never the file name.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mobilenet_np.errors import ConfigError, ConversionError, WeightsError
from mobilenet_np.fileio import file_sha256
from mobilenet_np.formats.weights import TensorQuantization, read_weights, save_weights
from mobilenet_np.registry import ARCHITECTURES

from . import __version__
from .labels import id2label_from_file

# The preprocessing every TensorFlow MobileNet was trained with: RGB scaled to [-1, 1].
IMAGE_MEAN = IMAGE_STD = [0.5, 0.5, 0.5]


def image_processor_config(model_class: type, image_size: int | list[int]) -> dict[str, Any]:
    """A transformers preprocessor_config.json dict like the published checkpoints' (google/mobilenet_*).

    Resize the shortest edge to the crop size + 32 (256 for 224, 545 for 513), center-crop to the
    network's input size, scale to [0, 1], normalise with mean = std = 0.5, i.e. x / 127.5 - 1.
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    processor = ARCHITECTURES[model_class.__name__].image_processor_name
    return {"image_processor_type": processor, "do_resize": True, "size": {"shortest_edge": min(height, width) + 32},
            "resample": 2, "do_center_crop": True, "crop_size": {"height": height, "width": width},
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "image_mean": IMAGE_MEAN, "image_std": IMAGE_STD}


def depth_multiplier_candidates(found: list[tuple[int, int]]) -> list[float]:
    """Width multipliers suggested by (channels at multiplier 1.0, channels found) pairs, e.g. (1024, 256) -> 0.25."""
    candidates = []
    for full, actual in found:
        ratio = round(actual / full, 4)
        if ratio > 0 and ratio not in candidates:
            candidates.append(ratio)
    return candidates


def fit_config(model_class: type, shapes: dict[str, tuple[int, ...]], fixed: dict[str, Any],
               search: dict[str, list], source, ignore: tuple[str, ...] = ()):
    """The first config (in `search` order) whose `model_class` has exactly these tensor shapes.

    `fixed` holds the config fields known for sure; `search` lists the values to try for the others
    (e.g. depth_multiplier, depth_divisible_by). Keys in `ignore` are expected by the model but absent
    from the file. No fit raises a ConversionError that shows the closest candidate's first difference.
    """
    shapes = {k: tuple(s) for k, s in shapes.items()}
    best = None  # (number of differences, config, first difference)
    for values in itertools.product(*search.values()):
        try:
            config = model_class.config_class(**fixed, **dict(zip(search, values)))
        except ConfigError:
            continue
        expected = {k: tuple(s) for k, s in model_class(config, seed=None).parameter_shapes().items()
                    if k not in ignore}
        differences = [f"{k} is {shapes[k]}, expected {s}" for k, s in expected.items() if k in shapes and shapes[k] != s]
        differences += [f"{k} is missing" for k in expected if k not in shapes]
        differences += [f"{k} is unexpected" for k in shapes if k not in expected]
        if not differences:
            return config
        if best is None or len(differences) < best[0]:
            best = (len(differences), dict(zip(search, values)), differences[0])
    tried = ", ".join(f"{k} in {v}" for k, v in search.items())
    detail = f"; closest ({best[1]}): {best[2]}" if best else ""
    raise ConversionError(f"{source}: no {model_class.__name__} config builds the tensor shapes found in the file "
                          f"(tried {tried}){detail}")


def batch_norm_identity(channels: int, eps: float, bias: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """BatchNorm parameters that compute x + bias: the transformers layout for a conv with BatchNorm folded in.

    out = (x - running_mean) / sqrt(running_var + eps) * weight + bias with weight 1, running_mean 0
    and running_var = 1 - eps, so that running_var + eps == 1 exactly in float32 (for eps 1e-3 and
    1e-5; float64 is off by about 1e-8 relative, far below float32 precision).
    """
    one_minus_eps = np.float32(1) - np.float32(eps)
    if one_minus_eps + np.float32(eps) != np.float32(1):
        raise ConversionError(f"BatchNorm eps {eps}: 1 - eps + eps is not exactly 1 in float32")
    return {"weight": np.ones(channels, np.float32),
            "bias": np.zeros(channels, np.float32) if bias is None else np.asarray(bias, np.float32),
            "running_mean": np.zeros(channels, np.float32),
            "running_var": np.full(channels, one_minus_eps, np.float32),
            "num_batches_tracked": np.array(0, np.int64)}


def id2label_or_default(labels, num_classes: int) -> dict[int, str] | None:
    """id2label from a labels file fitted to the model's class count, or None (LABEL_0, LABEL_1, ...)."""
    return None if labels is None else id2label_from_file(labels, num_classes)


def save_imported(out, model_class: type, config, tensors: dict[str, np.ndarray], *, source: Path,
                  converter: str, notes: dict[str, Any], overwrite: bool,
                  quantization: dict[str, TensorQuantization] | None = None) -> Path:
    """Load `tensors` into a `model_class` (strict: every tensor, exact shapes), then write it atomically.

    With `quantization` the tensors are an integer network's (codes and int32 biases, see
    weights_tools/tflite/quantized_import.py): each weight must have the float network's shape, and
    the file is written as format version 2."""
    model = model_class(config, seed=None)
    provenance = {"source": source.name, "source_sha256": {source.name: file_sha256(source)},
                  "converter": converter, "converter_version": __version__, **notes}
    image_processor = image_processor_config(model_class, config.image_size)
    if quantization:
        expected = model.parameter_shapes()
        for key, value in tensors.items():
            if key.endswith(".weight") and tuple(value.shape) != tuple(expected.get(key, ())):
                raise ConversionError(f"{source}: integer tensor {key} has shape {value.shape}, the "
                                      f"{model_class.__name__} expects {expected.get(key)}")
        try:
            save_weights(out, tensors, model_class.__name__, config.to_dict(), image_processor=image_processor,
                         provenance=provenance, overwrite=overwrite, quantization=quantization)
        except WeightsError as e:
            raise ConversionError(str(e)) from None
        return Path(out)
    try:
        model.load_state_dict(tensors, source=str(source))
    except WeightsError as e:
        raise ConversionError(str(e)) from None
    model.save_pretrained(out, overwrite=overwrite, provenance=provenance, image_processor=image_processor)
    return Path(out)


def describe(path) -> str:
    """One line about a weights file: architecture, width, input size, classes."""
    weights = read_weights(path)
    c = weights.config
    return (f"{path}: {weights.architecture}, depth_multiplier {c.get('depth_multiplier')}, "
            f"image_size {c.get('image_size')}, {len(weights.id2label)} labels, {len(weights.tensors)} tensors"
            + (f", {weights.numerics} ({len(weights.quantization)} quantized tensors)" if weights.quantization else ""))


def register_import_command(subparsers, name: str, import_function: Callable, what: str, file_help: str,
                            quantized_flag: bool = False) -> None:
    """Add `name FILE OUT [--labels FILE] [--force] [--quantized]`, running
    `import_function(file, out, labels, overwrite[, quantized])`."""
    parser = subparsers.add_parser(name, help=f"{what} -> mobilenet-np HDF5 weights",
                                   description=f"Convert {what} into a mobilenet-np HDF5 weights file.")
    parser.add_argument("file", type=Path, help=file_help)
    parser.add_argument("out", type=Path, help="the HDF5 weights file to write")
    parser.add_argument("--labels", type=Path, default=None,
                        help="text file with one class name per line (ImageNet with or without the background "
                             "line, Pascal VOC); becomes the config's id2label")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    if quantized_flag:
        parser.add_argument("--quantized", action="store_true",
                            help="keep the integer network (uint8/int8 weights, int32 biases, scales and zero "
                                 "points; format version 2) instead of its float emulation")

    def run(args) -> int:
        extra = {"quantized": True} if getattr(args, "quantized", False) else {}
        out = import_function(args.file, args.out, labels=args.labels, overwrite=args.force, **extra)
        print(describe(out))
        return 0

    parser.set_defaults(func=run)
