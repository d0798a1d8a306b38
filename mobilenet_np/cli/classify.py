"""`mobilenet-np classify`: the top-k labels of images, with an image-classification network.

    mobilenet-np classify cat.png --weights mobilenet_v2_1.0_224.h5
    mobilenet-np classify photos/ --model google/mobilenet_v2_1.0_224 --top-k 3 --json

A folder stands for the images in it. Each image goes through the pipeline of
mobilenet_np.pipelines (image processor stored with the weights -> network -> softmax), and its
result is printed as soon as it is known (a table per image, or one line of the streamed --json
document described in docs/cli.md). An image that cannot be read is reported on stderr and
skipped; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import ImageError
from ..pipelines import ImageClassificationPipeline, architecture_name, ranked_classes
from ..commandline import add_model_arguments, add_output_arguments, image_paths, progress, warn
from ..tables import format_table
from .common import load_model


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "classify", help="label images with an image-classification network",
        description="Print the top-k labels and scores of each image (a folder stands for the images in it).")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or folders of images")
    add_model_arguments(parser)
    parser.add_argument("--top-k", type=positive_int, default=5, metavar="K",
                        help="how many labels to show per image (default: 5)")
    add_output_arguments(parser)
    parser.set_defaults(func=run)


def classify(classifier: ImageClassificationPipeline, path, top_k: int) -> dict:
    """{"image", "predictions": [{"rank", "class_id", "label", "score"}, ...]} of one image file."""
    scores = classifier.scores(path)                                    # (num_labels,)
    predictions = [{"rank": rank, "class_id": i, "label": classifier.id2label[i], "score": float(scores[i])}
                   for rank, i in enumerate(ranked_classes(scores, top_k), start=1)]
    return {"image": str(path), "predictions": predictions}


class JsonStream:
    """The --json document, printed piece by piece: the header, one line per result, the failures at the end.

    The whole output is one JSON document (the schema of docs/cli.md); each result is a complete JSON
    object on a line of its own (followed by a comma except the last), flushed as soon as it is known.
    """

    def __init__(self, header: dict, file=None) -> None:
        self.file = file or sys.stdout
        self.count = 0
        opening = json.dumps(header, ensure_ascii=False)[:-1]            # '{"command": ..., "top_k": 5'
        self._write(opening + (", " if header else "") + '"results": [')

    def _write(self, text: str) -> None:
        self.file.write(text)
        self.file.flush()

    def result(self, result: dict) -> None:
        self._write(("," if self.count else "") + "\n  " + json.dumps(result, ensure_ascii=False))
        self.count += 1

    def close(self, failed: list[dict]) -> None:
        self._write("\n],\n\"failed\": " + json.dumps(failed, ensure_ascii=False) + "}\n")


def print_table(result: dict, first: bool) -> None:
    rows = [(p["rank"], p["class_id"], p["score"], p["label"]) for p in result["predictions"]]
    print(("" if first else "\n") + result["image"])
    print(format_table(["rank", "class", "score", "label"], rows, align="rrrl"), flush=True)


def run(args: argparse.Namespace) -> int:
    paths = image_paths(args.images)            # missing paths stop here, before any work (exit 2)
    classifier = ImageClassificationPipeline(load_model(args))
    weights = classifier.model.metadata["path"]
    stream = JsonStream({"command": "classify", "weights": weights, "model": args.model,
                         "architecture": architecture_name(classifier.model), "top_k": args.top_k}) if args.json else None
    failed, printed = [], 0
    # The results themselves show the progress on a terminal; the bar is for output going to a file or a pipe.
    show_bar = len(paths) > 1 and not sys.stdout.isatty()
    with progress(paths, len(paths), "classify", enabled=show_bar) as items:
        for path in items:
            try:
                result = classify(classifier, path, args.top_k)
            except ImageError as e:             # this image only: say so, go on with the others
                warn(items, f"mobilenet-np classify: error: {e} (skipped)")
                failed.append({"image": str(path), "error": str(e)})
                continue
            if stream:
                stream.result(result)
            else:
                print_table(result, first=printed == 0)
            printed += 1
    if stream:
        stream.close(failed)
    return 1 if failed else 0
