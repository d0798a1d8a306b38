"""`mobilenet-np summary`: per-layer output shapes, parameters and multiply-accumulates of a network.

    mobilenet-np summary --arch mobilenet_v2
    mobilenet-np summary --arch mobilenet_v1 --depth-multiplier 0.5 --image-size 160
    mobilenet-np summary --arch deeplabv3_mobilenet_v2 --image-size 513 --output-stride 16 --json
    mobilenet-np summary --weights mobilenet_v2_1.0_224.h5
    mobilenet-np summary --model google/mobilenet_v2_1.0_224

The counting convention and the --json schema are in docs/costs.md.
"""

from __future__ import annotations

import argparse

from ..commandline import add_output_arguments, print_json
from ..errors import ConfigError
from ..networks import model_class
from ..quantized.network import QuantizedModel
from ..summary import summarize
from .common import load_model

# --arch name -> (architecture, config defaults). ImageNet classifiers have 1001 labels (index 0 =
# background), as the published checkpoints; DeepLab has the 21 Pascal VOC labels and output stride
# 8, as google/deeplabv3_mobilenet_v2_1.0_513.
ARCHITECTURES = {
    "mobilenet_v1": ("MobileNetV1ForImageClassification", {"num_labels": 1001}),
    "mobilenet_v2": ("MobileNetV2ForImageClassification", {"num_labels": 1001}),
    "deeplabv3_mobilenet_v2": ("MobileNetV2ForSemanticSegmentation", {"num_labels": 21, "output_stride": 8}),
}

# Architecture options: (flag, config field, type).
ARCH_OPTIONS = [
    ("--depth-multiplier", "depth_multiplier", float, "A"),
    ("--output-stride", "output_stride", int, "S"),
    ("--num-labels", "num_labels", int, "K"),
]


def parse_image_size(text: str) -> tuple[int, int]:
    """'224' -> (224, 224); '513x257' -> (513, 257) (height x width)."""
    parts = text.lower().split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}") from None
    if len(sizes) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}")
    return (sizes[0], sizes[-1])


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "summary", help="per-layer shapes, parameters and multiply-accumulates",
        description="Per-layer table of a network: name (as in the state_dict), op, output shape, "
                    "parameters and multiply-accumulates (MACs), with totals. See docs/costs.md.")
    # The --weights / --model pair of the other commands (cli/common.py), plus a third choice, --arch:
    # a summary needs only the architecture, no weights.
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", metavar="FILE.h5", help="a mobilenet-np weights file (its stored architecture)")
    source.add_argument("--model", metavar="HUB_ID", help="a Hugging Face Hub id, converted once and cached "
                                                          "(as for the other commands)")
    source.add_argument("--arch", choices=sorted(ARCHITECTURES), help="an architecture built from its config")
    for flag, field, kind, metavar in ARCH_OPTIONS:
        parser.add_argument(flag, type=kind, dest=field, metavar=metavar, help=f"config.{field} (with --arch)")
    parser.add_argument("--image-size", type=parse_image_size, metavar="N|HxW",
                        help="input size (default: config.image_size)")
    add_output_arguments(parser)
    parser.set_defaults(func=run)


def build_model(args):
    """The model the arguments describe: from --weights / --model, or from --arch and its options."""
    overrides = {field: getattr(args, field) for _, field, _, _ in ARCH_OPTIONS if getattr(args, field) is not None}
    if args.arch is None:
        if overrides:
            flags = ", ".join(flag for flag, field, _, _ in ARCH_OPTIONS if field in overrides)
            raise ConfigError(f"{flags}: only with --arch (a weights file fixes the architecture)")
        model = load_model(args)
        # an integer network (import-tflite --quantized) runs its float architecture's layers: count those
        return model.structure if isinstance(model, QuantizedModel) and model.structure is not None else model
    architecture, defaults = ARCHITECTURES[args.arch]
    if "output_stride" in overrides and args.arch == "mobilenet_v1":
        raise ConfigError("--output-stride: mobilenet_v1 has no output stride option (mobilenet_v2 and deeplab have)")
    if args.image_size is not None:  # recorded in the config, as a checkpoint made for this size would be
        height, width = args.image_size
        overrides["image_size"] = height if height == width else [height, width]
    cls = model_class(architecture)
    return cls(cls.config_class(**{**defaults, **overrides}), seed=None)  # the structure is enough: no weights


def run(args) -> int:
    summary = summarize(build_model(args), args.image_size)
    if args.json:
        print_json(summary.to_dict())
    else:
        print(summary.format_table())
    return 0
