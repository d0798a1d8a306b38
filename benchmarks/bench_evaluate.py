"""Throughput of `mobilenet-np evaluate`: images per second in one process and with 2 worker processes.

    python benchmarks/bench_evaluate.py [--weights W.h5] [--data FOLDER] [--repeat 2]

By default it evaluates the 100 photos of ../shared/data/images/imagenet_sample with Google's uint8
MobileNetV2 1.0-224 imported as float (weights_tools import-tflite into a temporary folder); without the
shared data, a random MobileNetV2 on 100 synthetic images. Each setting runs `--repeat` times, interleaved,
and the medians are printed (wall time of the whole `evaluate` call, worker start-up included).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mobilenet_np  # noqa: E402
from mobilenet_np.evaluation import evaluate  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"


def default_inputs(workdir: Path) -> tuple[Path, Path, str]:
    """(weights, data folder, labels option) for the default run."""
    sample = SHARED / "images" / "imagenet_sample"
    tflite = SHARED / "weights" / "tflite" / "mobilenet_v2_1.0_224_quant.tflite"
    if sample.is_dir() and tflite.is_file():
        from weights_tools.import_tflite import import_tflite
        weights = workdir / "mobilenet_v2.h5"
        import_tflite(tflite, weights, labels=SHARED / "labels" / "imagenet_labels.txt")
        return weights, sample, "synset"
    config = mobilenet_np.MobileNetV2Config(num_labels=10)
    weights = workdir / "random.h5"
    mobilenet_np.MobileNetV2ForImageClassification(config, seed=0).save_pretrained(weights)
    data = workdir / "images"
    for k in range(100):
        folder = data / f"class_{k % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(k).integers(0, 256, (256, 256, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{k}.png")
    return weights, data, "none"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--labels", default="auto")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.weights is None or args.data is None:
            weights, data, labels = default_inputs(Path(tmp))
        else:
            weights, data, labels = args.weights, args.data, args.labels
        times: dict[int, list[float]] = {1: [], 2: []}
        images = 0
        for _ in range(args.repeat):
            for workers in (1, 2):
                start = time.perf_counter()
                report = evaluate(weights, data, labels=labels, workers=workers, progress=False)
                times[workers].append(time.perf_counter() - start)
                images = report["evaluated"]
        result = {"weights": str(weights), "data": str(data), "images": images,
                  "images_per_second": {str(w): images / statistics.median(t) for w, t in times.items()},
                  "seconds": {str(w): t for w, t in times.items()}}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
