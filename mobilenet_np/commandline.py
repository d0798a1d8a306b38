"""What `mobilenet-np` and `python -m weights_tools` share: argparse plumbing and the inputs of a run.

    build_parser / run_command      one subcommand per module; the project's errors as one line, exit 2
    add_model_arguments(parser)     --weights FILE.h5 | --model HUB_ID (one of them is required)
    add_output_arguments(parser)    --json and --force
    add_input_arguments(parser)     --image IMG | --seed N [--image-size H W] (the golden recorders)
    add_golden_output_arguments     --out --format --compression --layers --dtype --force (the same)
    pixel_values_from_args(...)     the pixel values those arguments choose
    image_paths(arguments)          image files, with folders expanded to the images they hold
    print_json(data) / with progress(items, ...) as items / warn(items, text)

Human output is a plain text table; `--json` output is one JSON document on stdout, documented in
docs/cli.md. Progress bars go to stderr, so they never mix with the JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from .configuration_utils import image_size_pair
from .errors import ImageError, MobileNetError, OutputExistsError
from .fileio import file_sha256
from .formats.golden import DTYPES, GoldenError, seeded_input
from .formats.golden_io import COMPRESSIONS, FORMATS
from .image_processing import image_processor_class


DEBUG_HELP = "show the full traceback on errors"


def build_parser(prog: str, description: str, package: str, modules: list[str]) -> argparse.ArgumentParser:
    """A parser with `--debug` and one subcommand per module of `package` that exists.

    `--debug` is accepted before the subcommand and after it (`prog --debug classify ...` and
    `prog classify ... --debug`): each subcommand's parser gets it too, with a suppressed default so
    that leaving it out there keeps what was given before the subcommand.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in modules:
        try:
            module = importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"{package}.{name}":  # not written yet
                continue
            raise
        module.register(subparsers)
    for subparser in subparsers.choices.values():
        subparser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
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


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--weights FILE.h5 or --model HUB_ID: exactly one of them."""
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--weights", metavar="FILE.h5", help="a mobilenet-np HDF5 weights file")
    group.add_argument("--model", metavar="HUB_ID",
                       help="a Hugging Face Hub id (e.g. google/mobilenet_v2_1.0_224), converted once and kept in "
                            "the cache folder ($MOBILENET_NP_CACHE, default ~/.cache/mobilenet-np)")


def add_output_arguments(parser: argparse.ArgumentParser, force: bool = False) -> None:
    """--json (machine-readable stdout) and, for commands that write files, --force."""
    parser.add_argument("--json", action="store_true", help="print one JSON document (see docs/cli.md)")
    if force:
        parser.add_argument("--force", action="store_true", help="replace output files that exist already")


def image_extensions() -> set[str]:
    """File name endings Pillow can open (lower case, with the dot), e.g. {'.png', '.jpg', '.bmp', ...}."""
    return {ext.lower() for ext in Image.registered_extensions()}


def image_paths(arguments: Sequence[str]) -> list[Path]:
    """The image files named on the command line; a folder stands for the image files directly in it (sorted).

    Files named explicitly are kept whatever their ending (the image reader says if they are not images);
    a folder contributes the files whose ending Pillow knows. A missing path or an empty folder is an ImageError.
    """
    extensions = image_extensions()
    paths: list[Path] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in extensions)
            if not found:
                raise ImageError(f"{path}: folder holds no image files (expected e.g. .png, .jpg, .bmp)")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise ImageError(f"{path}: no such image file or folder")
    return paths


@contextlib.contextmanager
def progress(items: Iterable, total: int, description: str, enabled: bool = True) -> Iterator[Iterable]:
    """`with progress(items, ...) as items:` a tqdm progress bar on stderr, closed (and erased) on exit.

    Without tqdm (it comes with the `convert` extra) or when not enabled, `items` come back unchanged.
    Closing the bar also when an error leaves the loop keeps the error message on a line of its own.
    """
    try:
        from tqdm import tqdm
    except ImportError:
        enabled = False
    if not enabled:
        yield items
        return
    bar = tqdm(items, total=total, desc=description, unit="image", file=sys.stderr, leave=False)
    try:
        yield bar
    finally:
        bar.close()


def warn(items, text: str) -> None:
    """Print `text` as a line of its own on stderr, above the progress bar `items` when it is one."""
    write = getattr(items, "write", None)      # tqdm.write clears the bar, prints, and redraws it
    if write is not None:
        write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr, flush=True)


def print_json(data: Any, file=None) -> None:
    """One JSON document, indented, keys in the order the command built them, ending with a newline."""
    print(json.dumps(data, indent=2, ensure_ascii=False), file=file or sys.stdout)


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """--image IMG | --seed N [--image-size H W]: the input of the run (shared with golden-torch)."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", metavar="IMG", help="an image file, preprocessed by the weights' image processor")
    source.add_argument("--seed", type=int, metavar="N",
                        help="random pixel values in [-1, 1) from this seed (the same on every recorder)")
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"),
                        help="size of the --seed input (default: config.image_size)")


def add_golden_output_arguments(parser: argparse.ArgumentParser) -> None:
    """--out, --format, --compression, --layers, --dtype, --force: what a golden recorder writes (shared with
    golden-torch)."""
    parser.add_argument("--out", required=True, metavar="GOLDEN", help="the golden file to write")
    parser.add_argument("--format", choices=FORMATS, dest="file_format",
                        help="file format (default: from --out's ending .h5 .npz .safetensors .bin, else h5); "
                             "docs/golden_format.md")
    parser.add_argument("--compression", choices=COMPRESSIONS,
                        help="compress the tensors (h5 only; gzip is smaller, lzf faster)")
    parser.add_argument("--layers", action="append", metavar="PATTERN",
                        help="record only the tensors whose module path matches: a shell glob on the whole path "
                             "('mobilenet_v2.layer.*.conv_3x3', '*.normalization'), or re:REGEX, a Python regular "
                             "expression searched in the path ('re:layer\\.1[0-5]$'); repeat for more; "
                             "pixel_values is always recorded")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="run the network in this precision (default float32; float64 is the precise reference)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")


def pixel_values_from_args(args: argparse.Namespace, architecture: str, config: dict, image_processor: dict,
                           dtype) -> tuple[np.ndarray, dict]:
    """(pixel values (1, C, H, W) of `dtype`, the golden file's `input` attribute) chosen by the input arguments."""
    if args.image is not None:
        if args.image_size is not None:
            raise GoldenError("--image-size goes with --seed (an --image is sized by its image processor)")
        return image_input(args.image, image_processor, architecture, dtype)
    height, width = args.image_size or image_size_pair(config.get("image_size", 224))
    if height < 1 or width < 1:
        raise GoldenError(f"--image-size must be positive, got {height} {width}")
    return seeded_input(args.seed, height, width, config.get("num_channels", 3), dtype)


def check_output_path(out: str, force: bool) -> Path:
    """Refuse an existing --out before any work (the write itself is atomic and checks again)."""
    path = Path(out)
    if path.exists() and not force:
        raise OutputExistsError(f"{path}: exists already (pass --force to replace it)")
    return path


def image_input(path, image_processor: dict[str, Any], architecture: str, dtype=np.float32):
    """(pixel values (1, 3, H, W), the `input` attribute describing them) for `--image`.

    The image goes through mobilenet_np's image processor, configured by the weights file's
    preprocessor dict (transformers' defaults for the architecture when the file has none). Both
    recorders (`golden`, `golden-torch`) use this function, so both networks see the same pixels: a
    golden file compares networks, not image decoders.
    """
    processor_class = image_processor_class(image_processor.get("image_processor_type") or architecture)
    processor = processor_class.from_dict(image_processor)
    pixel_values = processor(str(path))["pixel_values"].astype(dtype)                # (1, 3, H, W)
    info = {"source": "image", "path": str(path), "sha256": file_sha256(path),
            "image_processor": processor.to_dict(), "shape": list(pixel_values.shape)}
    return pixel_values, info
