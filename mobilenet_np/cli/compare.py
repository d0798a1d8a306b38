"""`mobilenet-np compare REF CANDIDATE`: two golden files side by side, tensor by tensor.

    mobilenet-np compare torch.h5 numpy.h5                  # table, first divergence, verdict
    mobilenet-np compare ref64.h5 port.bin --atol 1e-3 --json
    mobilenet-np compare ref64.h5 port.npz --only-common --layout nhwc

Either file may be HDF5, npz, safetensors or the flat binary (docs/golden_format.md), in any pairing.
For every tensor of the reference, in network order: max absolute error, max relative error
(max|cand - ref| / max|ref|), the share of elements out of tolerance (|cand - ref| > atol + rtol * |ref|)
and the cosine similarity. The tensors are read one pair at a time. Exit status: 0 when every tensor
is within tolerance, 1 when some are not (the first one in network order is named), 2 when tensors
are missing on one side (unless --only-common) or have different shapes (listed in the table too).
Files made from different weights, inputs or architectures get a warning line before the table.
The --json schema is in docs/golden_format.md.
"""

from __future__ import annotations

import argparse

from ..formats import golden
from ..commandline import print_json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare", help="compare two golden files tensor by tensor; name the first divergence",
        description="Compare a candidate golden file (a port, another runtime, float32) with a reference one "
                    "(PyTorch, mobilenet-np float64), tensor by tensor in network order. Either file may be h5, "
                    "npz, safetensors or the flat bin format. Exit status 0: all within tolerance; 1: some tensors "
                    "out of tolerance; 2: tensors missing (without --only-common) or shapes differ.")
    parser.add_argument("reference", metavar="REF", help="the reference golden file")
    parser.add_argument("candidate", metavar="CANDIDATE", help="the golden file to check")
    parser.add_argument("--rtol", type=float, default=golden.DEFAULT_RTOL,
                        help=f"relative tolerance (default {golden.DEFAULT_RTOL:g})")
    parser.add_argument("--lsb", type=int, default=0, metavar="N",
                        help="integer tensors (an integer-only network's codes): allow |difference| <= N code steps "
                             "(default 0: bit-exact)")
    parser.add_argument("--atol", type=float, default=golden.DEFAULT_ATOL,
                        help=f"absolute tolerance (default {golden.DEFAULT_ATOL:g})")
    parser.add_argument("--only-common", action="store_true",
                        help="compare only the tensors both files have (a port that records a few layers); the "
                             "others are listed, not errors")
    parser.add_argument("--layout", choices=golden.LAYOUTS, default="nchw",
                        help="layout of the candidate's tensors of rank >= 3: nhwc ones are transposed to NCHW "
                             "before comparing (default nchw)")
    parser.add_argument("--json", action="store_true", help="print one JSON document (schema in docs/golden_format.md)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with golden.open_golden(args.reference) as reference, golden.open_golden(args.candidate) as candidate:
        comparison = golden.compare_goldens(reference, candidate, rtol=args.rtol, atol=args.atol, lsb=args.lsb,
                                            only_common=args.only_common, layout=args.layout)
    if args.json:
        print_json(golden.comparison_to_json(comparison))
    else:
        for warning in comparison.warnings:       # before the table: it changes how to read it
            print(warning)
        print(golden.format_table(comparison))    # summary last: it is what stays on the screen
        print()
        print("\n".join(golden.summary_lines(comparison)))
    if comparison.problems:  # the table above lists them; the error line says what is wrong, exit status 2
        raise golden.GoldenError(f"{reference.label} vs {candidate.label}: {comparison.problem_message()}")
    return 0 if comparison.passed else 1
