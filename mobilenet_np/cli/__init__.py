"""The `mobilenet-np` command: one module per subcommand in this folder.

Each subcommand module defines `register(subparsers)`, which adds its parser and sets
`func=run` where `run(args) -> int` is the exit status. Errors the project raises on purpose
(`MobileNetError`) are printed as one line and exit with status 2; `--debug` shows the traceback.
`python -m weights_tools` is built the same way from `build_parser` and `run_command`.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading

from ..errors import MobileNetError

# Subcommand modules of mobilenet-np, in the order `--help` lists them.
SUBCOMMANDS = ["classify", "segment", "summary", "golden", "compare", "evaluate"]


def build_parser(prog: str, description: str, package: str, modules: list[str]) -> argparse.ArgumentParser:
    """A parser with `--debug` and one subcommand per module of `package` that exists."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in modules:
        try:
            module = importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"{package}.{name}":  # not written yet
                continue
            raise
        module.register(subparsers)
    return parser


def _interrupt_on_sigterm(signum, frame):
    # `kill` (SIGTERM) unwinds like Ctrl-C, so atomic_output removes its temporary file and the
    # old output stays as it was. (SIGKILL cannot be caught: it may leave a ".NAME.*.tmp" file,
    # but never a half-written NAME.)
    raise KeyboardInterrupt


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse, run the chosen subcommand, and turn the project's errors into one line and exit status 2."""
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGTERM, _interrupt_on_sigterm) if in_main_thread else None
    try:
        return int(args.func(args) or 0)
    except MobileNetError as e:
        if args.debug:
            raise
        print(f"{parser.prog} {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog} {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous_handler)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser("mobilenet-np", "MobileNet V1/V2 and DeepLabV3 in readable NumPy, equal to Hugging Face "
                          "transformers.", __name__, SUBCOMMANDS)
    return run_command(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
