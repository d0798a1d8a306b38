"""`mobilenet-np compare REF.h5 CANDIDATE.h5`: two golden files side by side, tensor by tensor.

    mobilenet-np compare torch.h5 numpy.h5                  # table, first divergence, verdict
    mobilenet-np compare ref64.h5 port.h5 --atol 1e-3 --json

For every tensor of the reference, in network order: max absolute error, max relative error
(max|cand - ref| / max|ref|), the share of elements out of tolerance (|cand - ref| > atol + rtol * |ref|)
and the cosine similarity. Exit status: 0 when every tensor is within tolerance, 1 when some are not
(the first one in network order is named), 2 when tensors are missing on one side or have different
shapes (listed in the table too). The --json schema is in docs/golden_format.md.
"""

from __future__ import annotations

import argparse

from ..formats import golden
from ..commandline import print_json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare", help="compare two golden files tensor by tensor; name the first divergence",
        description="Compare a candidate golden file (a port, another runtime, float32) with a reference one "
                    "(PyTorch, mobilenet-np float64), tensor by tensor in network order. Exit status 0: all "
                    "within tolerance; 1: some tensors out of tolerance; 2: tensors missing or shapes differ.")
    parser.add_argument("reference", metavar="REF.h5", help="the reference golden file")
    parser.add_argument("candidate", metavar="CANDIDATE.h5", help="the golden file to check")
    parser.add_argument("--rtol", type=float, default=golden.DEFAULT_RTOL,
                        help=f"relative tolerance (default {golden.DEFAULT_RTOL:g})")
    parser.add_argument("--atol", type=float, default=golden.DEFAULT_ATOL,
                        help=f"absolute tolerance (default {golden.DEFAULT_ATOL:g})")
    parser.add_argument("--json", action="store_true", help="print one JSON document (schema in docs/golden_format.md)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    reference = golden.read_golden(args.reference)
    candidate = golden.read_golden(args.candidate)
    comparison = golden.compare_goldens(reference, candidate, rtol=args.rtol, atol=args.atol)
    if args.json:
        print_json(golden.comparison_to_json(comparison))
    else:
        print(golden.format_table(comparison))  # summary last: it is what stays on the screen
        print()
        print("\n".join(golden.summary_lines(comparison)))
    if comparison.problems:  # the table above lists them; the error line says what is wrong, exit status 2
        raise golden.GoldenError(f"{reference.label} vs {candidate.label}: {comparison.problem_message()}")
    return 0 if comparison.passed else 1
