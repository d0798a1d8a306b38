"""Helpers the `mobilenet-np` subcommands share: choosing the weights, reading images, printing results.

    add_model_arguments(parser)     --weights FILE.h5 | --model HUB_ID (one of them is required)
    weights_path(args)              the HDF5 file those arguments point to (the Hub id through the cache)
    load_model(args)                the network stored in that file
    add_output_arguments(parser)    --json and --force
    image_paths(arguments)          image files, with folders expanded to the images they hold
    print_json(data) / format_table(headers, rows) / with progress(items, ...) as items

Human output is a plain text table; `--json` output is one JSON document on stdout, documented in
docs/cli.md. Progress bars go to stderr, so they never mix with the JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from ..errors import ImageError


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--weights FILE.h5 or --model HUB_ID: exactly one of them."""
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--weights", metavar="FILE.h5", help="a mobilenet-np HDF5 weights file")
    group.add_argument("--model", metavar="HUB_ID",
                       help="a Hugging Face Hub id (e.g. google/mobilenet_v2_1.0_224), converted once and kept in "
                            "the cache folder ($MOBILENET_NP_CACHE, default ~/.cache/mobilenet-np)")


def weights_path(args: argparse.Namespace) -> Path:
    """The weights file chosen by --weights, or the cached conversion of --model (converted when missing)."""
    if getattr(args, "weights", None):
        return Path(args.weights)
    from ..hub import resolve
    return resolve(args.model)


def load_model(args: argparse.Namespace):
    """The network stored in the weights file chosen by --weights / --model."""
    from ..weights import load
    return load(weights_path(args))


def add_output_arguments(parser: argparse.ArgumentParser, force: bool = False) -> None:
    """--json (machine-readable stdout) and, for commands that write files, --force."""
    parser.add_argument("--json", action="store_true", help="print one JSON document (see docs/cli.md)")
    if force:
        parser.add_argument("--force", action="store_true", help="replace output files that exist already")


def image_extensions() -> set[str]:
    """File name endings Pillow can open (lower case, with the dot), e.g. {'.png', '.jpg', '.bmp', ...}."""
    from PIL import Image
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


def print_json(data: Any, file=None) -> None:
    """One JSON document, indented, keys in the order the command built them, ending with a newline."""
    print(json.dumps(data, indent=2, ensure_ascii=False), file=file or sys.stdout)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A plain text table: a header line, a rule, one line per row; columns padded to their widest cell.

    `align` has one letter per column, "l" or "r" (default: numbers right, text left, judged from row 0).
    """
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    if align is None:
        first = rows[0] if rows else headers
        align = "".join("r" if isinstance(v, (int, float)) and not isinstance(v, bool) else "l" for v in first)

    def line(row):
        return "  ".join(c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(row, widths, align)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
