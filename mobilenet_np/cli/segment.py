"""`mobilenet-np segment`: the class of every pixel of an image, with a DeepLabV3 network.

    mobilenet-np segment bird.png --weights deeplabv3_mobilenet_v2_1.0_513.h5 --out mask.png --overlay overlay.png

Writes
  * MASK.png: a palette ("P") PNG at the image's size whose pixel values are the class ids (a viewer
    shows them in the Pascal VOC colours; `np.array(Image.open("mask.png"))` gives the ids);
  * OVERLAY.png (optional): the image with each class tinted in its palette colour, the class named
    "background" left untinted, and a legend of the classes present;
and prints the classes present with their share of the pixels (--json: see docs/cli.md).
Files are written atomically and are not replaced without --force.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..errors import ConfigError, OutputExistsError
from ..fileio import atomic_output
from ..image_processing import load_image
from ..pipelines import ImageSegmentationPipeline, architecture_name
from ..commandline import add_model_arguments, add_output_arguments, print_json
from ..tables import format_table
from .common import load_model

OVERLAY_OPACITY = 0.5   # how much of the class colour goes into a tinted pixel


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "segment", help="label every pixel of an image with a DeepLabV3 network",
        description="Write a class-id mask PNG (and optionally a colour overlay) of an image and print the "
                    "classes present with their share of the pixels.")
    parser.add_argument("image", metavar="IMAGE", help="the image file")
    add_model_arguments(parser)
    parser.add_argument("--out", required=True, metavar="MASK.png",
                        help="the mask to write: a palette PNG whose pixel values are the class ids")
    parser.add_argument("--overlay", metavar="OVERLAY.png", help="also write the image tinted with the class colours")
    add_output_arguments(parser, force=True)
    parser.set_defaults(func=run)


# --------------------------------------------------------------------------------------------------
# pure functions: palette, shares, pictures
# --------------------------------------------------------------------------------------------------

def voc_palette(num_colors: int = 256) -> np.ndarray:
    """The Pascal VOC colour map, (num_colors, 3) uint8: 0 black, 1 dark red, 2 dark green, ...

    The bits of the class id are dealt out to R, G, B in turn, from the most significant bit of each
    colour down, so that neighbouring ids get clearly different colours.
    """
    palette = np.zeros((num_colors, 3), dtype=np.uint8)
    for class_id in range(num_colors):
        bits, rgb = class_id, [0, 0, 0]
        for shift in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((bits >> channel) & 1) << shift
            bits >>= 3
        palette[class_id] = rgb
    return palette


def class_shares(class_map: np.ndarray, id2label: dict[int, str]) -> list[dict]:
    """The classes present: [{"class_id", "label", "pixels", "share"}], most pixels first (ties: lower id)."""
    ids, counts = np.unique(class_map, return_counts=True)
    order = sorted(range(len(ids)), key=lambda k: (-counts[k], ids[k]))
    return [{"class_id": int(ids[k]), "label": id2label[int(ids[k])], "pixels": int(counts[k]),
             "share": float(counts[k] / class_map.size)} for k in order]


def mask_image(class_map: np.ndarray):
    """(H, W) class ids -> a PIL "P" image: pixel values = class ids, colours = the VOC palette."""
    from PIL import Image
    if class_map.max(initial=0) > 255:
        raise ConfigError(f"a PNG palette mask holds class ids 0..255, got id {class_map.max()}")
    height, width = class_map.shape
    mask = Image.frombytes("P", (width, height), class_map.astype(np.uint8).tobytes())
    mask.putpalette(voc_palette().tobytes())
    return mask


def overlay_image(image, class_map: np.ndarray, shares: list[dict], background: set[int]):
    """The RGB image with every pixel of a class not in `background` tinted in its colour, plus a legend.

    The legend (top-left corner) is left out when it would cover more than a third of the image's
    height or half its width (small images): the tint matters more than the legend.
    """
    from PIL import Image
    palette = voc_palette()
    pixels = np.asarray(image, dtype=np.float32)                          # (H, W, 3)
    colours = palette[class_map].astype(np.float32)                        # (H, W, 3)
    tint = ~np.isin(class_map, list(background))[..., None]                # (H, W, 1)
    blended = np.where(tint, (1 - OVERLAY_OPACITY) * pixels + OVERLAY_OPACITY * colours, pixels)
    overlay = Image.fromarray(np.round(blended).astype(np.uint8))
    draw_legend(overlay, legend_entries(shares, background, palette))
    return overlay


def legend_entries(shares: list[dict], background: set[int], palette: np.ndarray) -> list[tuple[str, tuple | None]]:
    """[(label, colour)] of the classes present, each shown as it is drawn: a tinted class with its
    palette colour, an untinted (background) class with no colour (an empty swatch) and "(untinted)"."""
    return [(f"{s['label']} (untinted)", None) if s["class_id"] in background
            else (s["label"], tuple(int(c) for c in palette[s["class_id"]])) for s in shares]


def draw_legend(image, entries: list[tuple[str, tuple[int, int, int] | None]]) -> None:
    """Draw a box in the top-left corner of `image` (in place): one colour swatch and label per entry
    (colour None: an empty swatch, only its white outline, for a class drawn without tint).

    Nothing is drawn when the box would be taller than a third of the image or wider than half of it.
    """
    from PIL import ImageDraw, ImageFont
    font_size = max(10, min(image.size) // 32)
    font = ImageFont.load_default(size=font_size)
    draw = ImageDraw.Draw(image, "RGBA")
    line_height, margin = font_size + 4, 4
    text_width = max(draw.textlength(label, font=font) for label, _ in entries)
    box = (0, 0, int(3 * margin + line_height + text_width), 2 * margin + line_height * len(entries))
    if box[2] > image.width / 2 or box[3] > image.height / 3:
        return
    draw.rectangle(box, fill=(0, 0, 0, 160))
    for row, (label, colour) in enumerate(entries):
        top = margin + row * line_height
        draw.rectangle((margin, top + 1, margin + line_height - 3, top + line_height - 3), fill=colour,
                       outline=(255, 255, 255))
        draw.text((2 * margin + line_height, top), label, fill=(255, 255, 255), font=font)


# --------------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------------

def _check_outputs(outputs: list[Path], force: bool) -> None:
    """Refuse bad output paths before any work: not PNG, the same file twice, or existing without --force."""
    for path in outputs:
        if path.suffix.lower() != ".png":
            raise ConfigError(f"{path}: expected a .png output path")
        if path.exists() and not force:
            raise OutputExistsError(f"{path}: exists already (pass --force to replace it)")
    if len(outputs) == 2 and outputs[0].resolve() == outputs[1].resolve():
        raise ConfigError(f"{outputs[0]}: --out and --overlay must be different files")


def _save_png(picture, path: Path, force: bool) -> None:
    with atomic_output(path, overwrite=force) as tmp:
        picture.save(tmp, format="PNG")


def run(args: argparse.Namespace) -> int:
    mask_path = Path(args.out)
    overlay_path = Path(args.overlay) if args.overlay else None
    _check_outputs([mask_path] + ([overlay_path] if overlay_path else []), args.force)
    image = load_image(args.image)                                         # RGB PIL image
    segmenter = ImageSegmentationPipeline(load_model(args))
    weights = segmenter.model.metadata["path"]
    class_map = segmenter.class_map(image)                                 # (H, W) class ids
    shares = class_shares(class_map, segmenter.id2label)
    _save_png(mask_image(class_map), mask_path, args.force)
    if overlay_path:
        background = {i for i, label in segmenter.id2label.items() if label.lower() == "background"}
        _save_png(overlay_image(image, class_map, shares, background), overlay_path, args.force)

    if args.json:
        print_json({"command": "segment", "image": str(args.image), "weights": weights, "model": args.model,
                    "architecture": architecture_name(segmenter.model), "width": image.width, "height": image.height,
                    "mask": str(mask_path), "overlay": str(overlay_path) if overlay_path else None,
                    "classes": shares})
        return 0
    print(f"{args.image} ({image.width}x{image.height}): mask {mask_path}"
          + (f", overlay {overlay_path}" if overlay_path else ""))
    rows = [(s["class_id"], s["label"], s["pixels"], f"{100 * s['share']:.2f}%") for s in shares]
    print(format_table(["class", "label", "pixels", "share"], rows, align="rlrr"))
    return 0
