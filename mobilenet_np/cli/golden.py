"""`mobilenet-np golden`: record every intermediate tensor of one run into a golden file.

    mobilenet-np golden --weights mobilenet_v2.h5 --seed 0 --out numpy.h5
    mobilenet-np golden --weights mobilenet_v2.h5 --image cat.png --out numpy64.h5 --dtype float64
    mobilenet-np compare numpy64.h5 numpy.h5

The file holds the input pixel values and the output of every convolution, normalization,
activation, conv layer, block, pooler and classifier, named by transformers module path, in network
order (layout in docs/golden_format.md). With --dtype float64 the whole network runs in float64: a
reference more precise than any float32 runtime, PyTorch included.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..commandline import add_input_arguments, add_model_arguments, check_output_path, pixel_values_from_args
from ..formats import golden
from ..networks import load
from .common import weights_path

PRODUCER = "mobilenet_np"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "golden", help="record every intermediate tensor of one run (a golden reference for ports)",
        description="Run the network on one input and write the input and every intermediate tensor, named by "
                    "transformers module path, to an HDF5 golden file (docs/golden_format.md). Compare two such "
                    "files with `mobilenet-np compare`.")
    add_model_arguments(parser)
    add_input_arguments(parser)
    parser.add_argument("--out", required=True, metavar="GOLDEN.h5", help="the golden file to write")
    parser.add_argument("--dtype", choices=sorted(golden.DTYPES), default="float32",
                        help="run the network in this precision (default float32; float64 is the precise reference)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = check_output_path(args.out, args.force)
    dtype = golden.DTYPES[args.dtype]
    path = weights_path(args)
    model = load(path)
    architecture, config = model.metadata["architecture"], model.config.to_dict()
    pixel_values, input_info = pixel_values_from_args(args, architecture, config, model.metadata["image_processor"],
                                                      dtype)
    tensors = golden.record_model(model.astype(dtype), pixel_values)
    attrs = golden.golden_attributes(PRODUCER, architecture, config, str(path), golden.file_sha256(path),
                                     args.dtype, input_info, golden.library_versions())
    golden.save_golden(out, tensors, attrs, overwrite=args.force)
    print(f"wrote {out}: {len(tensors)} tensors of {architecture} ({args.dtype}, input {tuple(pixel_values.shape)})")
    return 0
