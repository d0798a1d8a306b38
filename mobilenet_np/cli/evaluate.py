"""`mobilenet-np evaluate`: accuracy, IoU or agreement of a network on a folder of real images.

    mobilenet-np evaluate imagenet_sample/ --weights mobilenet_v2_1.0_224.h5 --json report.json
    mobilenet-np evaluate photos/ --weights w.h5 --labels labels.csv --workers 2
    mobilenet-np evaluate voc/images --weights deeplabv3.h5 --masks voc/masks
    mobilenet-np evaluate photos/ --weights w.h5 --against port_logits/        # a folder of .npy logits
    mobilenet-np evaluate photos/ --weights w.h5 --shard 0/2 --json r0.json    # and 1/2 -> r1.json, then
    mobilenet-np evaluate --merge r0.json r1.json --json report.json

Prints a summary; --json OUT writes the full report (docs/evaluate.md), atomically. Records stream to
a partial file (--partial, default OUT.partial.jsonl) as images finish; --resume continues an
interrupted run from it; the partial file is removed once the report is written.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from ..errors import ConfigError, OutputExistsError
from ..evaluation import evaluate, merge_reports, read_report, write_report
from ..evaluation.labels import LABEL_SOURCES
from .common import weights_path

MAX_LISTED = 10   # unreadable images and disagreements printed (the --json report lists them all)


def positive_int(text: str) -> int:
    if not re.fullmatch(r"[0-9]+", text) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def shard_argument(text: str) -> tuple[int, int]:
    """"K/N" -> (K, N) with 0 <= K < N."""
    match = re.fullmatch(r"([0-9]+)/([0-9]+)", text)
    if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
        raise argparse.ArgumentTypeError(f"expected K/N with 0 <= K < N (e.g. 0/4), got {text!r}")
    return int(match.group(1)), int(match.group(2))


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="accuracy / IoU / agreement of a network on a folder of images",
        description="Evaluate a network on the images of a folder: top-1 / top-5 and per-class accuracy with labels "
                    "from the data (ImageNet synset file names, class folders or a CSV), pixel accuracy and IoU "
                    "against masks, or agreement with another network or a port's logits.")
    parser.add_argument("data", nargs="?", metavar="DATA", help="the folder of images (searched recursively)")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--weights", metavar="FILE.h5", help="a mobilenet-np HDF5 weights file")
    weights.add_argument("--model", metavar="HUB_ID", help="a Hugging Face Hub id, converted once into the cache")
    parser.add_argument("--labels", default="auto", metavar="SOURCE",
                        help=f"where true classes come from: {', '.join(LABEL_SOURCES)}, or a CSV/TSV file,label "
                             "table (default: auto)")
    parser.add_argument("--masks", metavar="MASKS_DIR", help="segmentation: class-id PNG masks, one per image "
                                                              "(same name, .png; 255 = ignored)")
    parser.add_argument("--against", metavar="OTHER", help="compare logits with a second weights file, an .npz or "
                                                            ".safetensors file, or a folder of .npy files")
    parser.add_argument("--json", metavar="OUT", help="write the full report (JSON) to OUT")
    parser.add_argument("--partial", metavar="FILE", help="stream per-image records to FILE (default: "
                                                          "OUT.partial.jsonl with --json)")
    parser.add_argument("--resume", action="store_true", help="continue the run recorded in the partial file")
    parser.add_argument("--force", action="store_true", help="replace OUT and start the partial file over")
    parser.add_argument("--workers", type=positive_int, default=1, metavar="N", help="local worker processes "
                                                                                      "(default: 1, this process)")
    parser.add_argument("--dask", metavar="ADDRESS", help="run the chunks on a dask.distributed scheduler "
                                                          "(e.g. tcp://10.0.0.5:8786)")
    parser.add_argument("--chunk-size", type=positive_int, default=8, metavar="N",
                        help="images per task sent to a worker (default: 8)")
    parser.add_argument("--shard", type=shard_argument, default=(0, 1), metavar="K/N",
                        help="evaluate only the images at sorted positions i with i %% N == K")
    parser.add_argument("--merge", nargs="+", metavar="REPORT", help="combine the --json reports of shards of one "
                                                                     "run (no DATA or weights then)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.set_defaults(func=run)


def _check_arguments(args: argparse.Namespace) -> None:
    if args.merge:
        extra = [name for name in ("data", "weights", "model", "masks", "against", "partial") if getattr(args, name)]
        if extra:
            raise ConfigError(f"--merge combines reports; it takes no {', '.join(extra)}")
        return
    if not args.data:
        raise ConfigError("expected a DATA folder of images (or --merge REPORT ...)")
    if not (args.weights or args.model):
        raise ConfigError("expected --weights FILE.h5 or --model HUB_ID")
    if args.dask and args.workers != 1:
        raise ConfigError("give either --workers (local processes) or --dask (a cluster), not both")
    if args.resume and args.force:
        raise ConfigError("--resume continues the partial file, --force starts it over: give one of them")


def run(args: argparse.Namespace) -> int:
    _check_arguments(args)
    out = Path(args.json) if args.json else None
    if out is not None and out.exists() and not args.force:
        raise OutputExistsError(f"{out}: exists already (pass --force to replace it)")
    if args.merge:
        report = merge_reports([read_report(path) for path in args.merge])
        partial = None
    else:
        partial = Path(args.partial) if args.partial else (out.with_name(out.name + ".partial.jsonl") if out else None)
        report = evaluate(weights_path(args), args.data, labels=args.labels, masks=args.masks, against=args.against,
                          shard_index=args.shard[0], shard_count=args.shard[1], workers=args.workers, dask=args.dask,
                          chunk_size=args.chunk_size, partial=partial, resume=args.resume, overwrite=args.force,
                          progress=not args.no_progress)
    if out is not None:
        write_report(report, out, overwrite=args.force)
        if partial is not None:
            partial.unlink(missing_ok=True)
    print(summary(report))
    return 0


def summary(report: dict) -> str:
    """The few lines printed after a run."""
    lines = [f"{report['weights']} ({report['architecture']}, {report['num_labels']} classes) on {report['data']}"
             + (f", shard {report['shard']['indices']} of {report['shard']['count']}" if report["shard"] else "")]
    lines.append(f"images: {report['images']}, evaluated: {report['evaluated']}, unreadable: "
                 f"{len(report['unreadable'])}")
    for item in report["unreadable"][:MAX_LISTED]:
        lines.append(f"  unreadable: {item['error']}")
    c = report["classification"]
    if c and c["labelled"]:
        lines.append(f"labels ({report['label_source']}): {c['labelled']} images; top-1 {c['top1']:.4f} "
                     f"({c['correct_top1']}/{c['labelled']}), top-5 {c['top5']:.4f} ({c['correct_top5']}/"
                     f"{c['labelled']}), mean per-class accuracy {c['mean_class_accuracy']:.4f}")
    s = report["segmentation"]
    if s and s["pixels"]:
        lines.append(f"segmentation: pixel accuracy {s['pixel_accuracy']:.4f}, mean IoU {s['mean_iou']:.4f} "
                     f"({s['pixels']} pixels, {s['ignored_pixels']} ignored)")
        for entry in s["per_class"]:
            if entry["iou"] is not None:
                lines.append(f"  {entry['class_id']:>4}  IoU {entry['iou']:.4f}  {entry['label']}")
    a = report["agreement"]
    if a and a["compared"]:
        lines.append(f"agreement with {a['against']}: top-1 {a['top1_agreement']:.4f} ({a['agreeing']}/"
                     f"{a['positions']}), max |logit difference| {a['max_abs_logit_difference']:.3g}, mean "
                     f"{a['mean_abs_logit_difference']:.3g}")
        for item in a["disagreements"][:MAX_LISTED]:
            lines.append(f"  disagrees: {item['image']} (agreement {item['agreement']:.4f}, max |diff| "
                         f"{item['max_abs_diff']:.3g})")
    t = report["timing"]
    if t["images_per_second"]:
        lines.append(f"throughput: {t['images_per_second']:.2f} images/s ({t['images']} images in "
                     f"{t['wall_seconds']:.1f} s, {t['backend']})")
    return "\n".join(lines)
