"""`mobilenet-np classify`: the top-k labels of images, with an image-classification network.

    mobilenet-np classify cat.png --weights mobilenet_v2_1.0_224.h5
    mobilenet-np classify photos/ --model google/mobilenet_v2_1.0_224 --top-k 3 --json

A folder stands for the images in it. Each image goes through the pipeline of
mobilenet_np.pipelines (image processor stored with the weights -> network -> softmax). The
--json document is described in docs/cli.md.
"""

from __future__ import annotations

import argparse

from ..pipelines import ImageClassificationPipeline, architecture_name, ranked_classes
from ..commandline import add_model_arguments, add_output_arguments, image_paths, print_json, progress
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


def run(args: argparse.Namespace) -> int:
    paths = image_paths(args.images)
    classifier = ImageClassificationPipeline(load_model(args))
    weights = classifier.model.metadata["path"]
    with progress(paths, len(paths), "classify", enabled=len(paths) > 1) as items:
        results = [classify(classifier, path, args.top_k) for path in items]
    if args.json:
        print_json({"command": "classify", "weights": weights, "model": args.model,
                    "architecture": architecture_name(classifier.model), "top_k": args.top_k, "results": results})
        return 0
    for n, result in enumerate(results):
        rows = [(p["rank"], p["class_id"], p["score"], p["label"]) for p in result["predictions"]]
        print(("\n" if n else "") + result["image"])
        print(format_table(["rank", "class", "score", "label"], rows, align="rrrl"))
    return 0
