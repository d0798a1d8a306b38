"""The `mobilenet-np` command: one module per subcommand in this folder.

Each subcommand module defines `register(subparsers)`, which adds its parser and sets
`func=run` where `run(args) -> int` is the exit status. Errors the project raises on purpose
(`MobileNetError`) are printed as one line and exit with status 2; `--debug` shows the traceback.
`python -m weights_tools` is built the same way from mobilenet_np.commandline's `build_parser` and
`run_command`.
"""

from __future__ import annotations

import sys

from ..commandline import build_parser, run_command

# Subcommand modules of mobilenet-np, in the order `--help` lists them.
SUBCOMMANDS = ["classify", "segment", "summary", "golden", "compare", "evaluate", "train"]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser("mobilenet-np", "MobileNet V1/V2 and DeepLabV3 in readable NumPy, equal to Hugging Face "
                          "transformers.", __name__, SUBCOMMANDS)
    return run_command(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
