r"""`mobilenet-np golden`: record every intermediate tensor of one run into a golden file.

    mobilenet-np golden --weights mobilenet_v2.h5 --seed 0 --out numpy.h5
    mobilenet-np golden --weights mobilenet_v2.h5 --image cat.png --out numpy64.h5 --dtype float64
    mobilenet-np compare numpy64.h5 numpy.h5

    mobilenet-np golden --weights deeplab.h5 --seed 0 --out ref.bin --layers '*.conv_3x3' --layers 're:layer\.1$'

The file holds the input pixel values and the output of every convolution, normalization,
activation, conv layer, block, pooler and classifier, named by transformers module path, in network
order (formats and layout in docs/golden_format.md: h5, npz, safetensors or the flat bin). With
--dtype float64 the whole network runs in float64: a reference more precise than any float32 runtime,
PyTorch included. Each tensor goes to the file as the network computes it: memory stays bounded by
the network's own, whatever the file's size.
"""

from __future__ import annotations

import argparse
from ..commandline import (add_golden_output_arguments, add_input_arguments, add_model_arguments, check_output_path,
                           pixel_values_from_args)
from ..formats import golden
from ..networks import load
from ..quantized.network import QuantizedModel
from .common import weights_path

PRODUCER = "mobilenet_np"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "golden", help="record every intermediate tensor of one run (a golden reference for ports)",
        description="Run the network on one input and write the input and every intermediate tensor (or those "
                    "--layers selects), named by transformers module path, to a golden file: HDF5, npz, "
                    "safetensors or a flat binary (docs/golden_format.md). Compare two such files with "
                    "`mobilenet-np compare`.")
    add_model_arguments(parser)
    add_input_arguments(parser)
    add_golden_output_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = check_output_path(args.out, args.force)
    dtype = golden.DTYPES[args.dtype]
    path = weights_path(args)
    model = load(path)
    architecture, config = model.metadata["architecture"], model.config.to_dict()
    integer = isinstance(model, QuantizedModel)
    pixel_values, input_info = pixel_values_from_args(args, architecture, config, model.metadata["image_processor"],
                                                      dtype)
    attrs = golden.golden_attributes(PRODUCER, architecture, config, str(path), golden.file_sha256(path),
                                     "integer" if integer else args.dtype, input_info, golden.library_versions())
    if integer:     # the codes' scales and zero points, so that `compare` can dequantize them (docs/golden_format.md)
        attrs["quantization"] = {name: {"scale": q.scale.tolist(), "zero_point": q.zero_point.tolist(), "axis": q.axis}
                                 for name, q in model.recorded_quantization().items()}
    with golden.GoldenWriter(out, attrs, args.file_format, overwrite=args.force, compression=args.compression,
                             layers=args.layers) as record:
        runnable = model if integer else model.astype(dtype)  # an integer network computes in its own codes
        runnable(pixel_values, record=record)                  # each tensor is written as it is computed
    print(f"wrote {out}: {len(record.names)} tensors of {architecture} ({attrs['dtype']}, input "
          f"{tuple(pixel_values.shape)}, {record.file_format})")
    return 0
