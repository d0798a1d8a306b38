"""Accuracy of the integer networks against their float imports and the ground truth, on the shared data.

    python benchmarks/integer_accuracy.py

* MobileNetV2 1.0-224 (uint8 file): every photo of ../shared/data/images/imagenet_sample (100 ImageNet
  photos named by WordNet synset; sorted synsets = class order, +1 for the file's "background" class 0):
  top-1 / top-5 of the float import (same weights dequantized, float32 fast path) and of the
  `--quantized` import (TFLite's reference integer kernels), and their top-1 agreement.
* DeepLabV3 (uint8 file) on images/bird_segmentation.bmp with its ground-truth mask: the bird's IoU
  (VOC class 3) and the pixel agreement of the two label maps, each taken the way its network computes
  it (float: the pipeline's post-processing; integer: the graph's own resize + ARG_MAX at 513x513).

Prints a summary and writes benchmarks/results/<machine>_integer_accuracy.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import mobilenet_np  # noqa: E402
from mobilenet_np.evaluation import imagenet_synsets  # noqa: E402
from mobilenet_np.fileio import atomic_output  # noqa: E402
from mobilenet_np.image_processing import load_image  # noqa: E402
from mobilenet_np.pipelines import image_processor_for  # noqa: E402
from weights_tools.import_tflite import import_tflite  # noqa: E402

from bench import machine_info, results_path  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
V2 = SHARED / "weights/tflite/mobilenet_v2_1.0_224_quant.tflite"
DEEPLAB = SHARED / "weights/tflite/deeplabv3_mnv2_pascal_quant.tflite"
BIRD = 3                 # Pascal VOC class id of "bird"


def imported(path: Path, labels: Path, workdir: Path):
    import_tflite(path, workdir / f"{path.stem}_integer.h5", labels=labels, quantized=True)
    import_tflite(path, workdir / f"{path.stem}_float.h5", labels=labels)
    return mobilenet_np.load(workdir / f"{path.stem}_integer.h5"), mobilenet_np.load(workdir / f"{path.stem}_float.h5")


def classification(workdir: Path) -> dict:
    integer, floating = imported(V2, SHARED / "labels" / "imagenet_labels.txt", workdir)
    processor = image_processor_for(integer)
    synsets = imagenet_synsets()
    offset = integer.config.num_labels - len(synsets)
    photos = sorted((SHARED / "images" / "imagenet_sample").glob("*.JPEG"))
    rows = []
    for photo in photos:
        x = processor(load_image(photo))["pixel_values"]
        truth = synsets.index(photo.name.split("_")[0]) + offset
        f = floating(x).logits[0]
        q = integer(x).quantized_logits[0].astype(np.int64)
        # top-5 of the codes: ties broken by the lower class index (a stable sort of -codes)
        rows.append({"photo": photo.name, "truth": truth, "float_top5": np.argsort(-f, kind="stable")[:5].tolist(),
                     "integer_top5": np.argsort(-q, kind="stable")[:5].tolist()})
    n = len(rows)
    summary = {"photos": n,
               "float_top1": sum(r["float_top5"][0] == r["truth"] for r in rows) / n,
               "integer_top1": sum(r["integer_top5"][0] == r["truth"] for r in rows) / n,
               "float_top5": sum(r["truth"] in r["float_top5"] for r in rows) / n,
               "integer_top5": sum(r["truth"] in r["integer_top5"] for r in rows) / n,
               "top1_agreement": sum(r["float_top5"][0] == r["integer_top5"][0] for r in rows) / n}
    labels = floating.config.id2label
    summary["disagreements"] = [f"{r['photo']}: truth {labels[r['truth']]}, float {labels[r['float_top5'][0]]}, "
                                f"integer {labels[r['integer_top5'][0]]}"
                                for r in rows if r["float_top5"][0] != r["integer_top5"][0]]
    return {"file": V2.name, **summary, "rows": rows}


def segmentation(workdir: Path) -> dict:
    integer, floating = imported(DEEPLAB, SHARED / "labels" / "pascal_voc_segmentation_labels.txt", workdir)
    image = load_image(SHARED / "images" / "bird_segmentation.bmp")
    truth = np.asarray(Image.open(SHARED / "images" / "bird_segmentation_mask.bmp").convert("L")) > 0
    x = image_processor_for(integer)(image)["pixel_values"]
    integer_labels = integer(x).labels[0]
    processor = image_processor_for(floating)
    float_labels = processor.post_process_semantic_segmentation(floating(x), [(image.height, image.width)])[0]

    def iou(labels):
        bird = labels == BIRD
        return float((bird & truth).sum() / (bird | truth).sum())
    return {"file": DEEPLAB.name, "image": "bird_segmentation.bmp", "size": list(truth.shape),
            "float_bird_iou": iou(float_labels), "integer_bird_iou": iou(integer_labels),
            "label_agreement": float(np.mean(float_labels == integer_labels))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    info = machine_info()
    output = results_path(args.output, info, "_integer_accuracy", args.force)
    if output is None:
        return 2
    with tempfile.TemporaryDirectory(prefix="integer_accuracy_") as workdir:
        report = {"classification": classification(Path(workdir)), "segmentation": segmentation(Path(workdir))}
    c, s = report["classification"], report["segmentation"]
    print(f"{c['file']} on {c['photos']} ImageNet sample photos: top-1 float {100 * c['float_top1']:.0f} %, "
          f"integer {100 * c['integer_top1']:.0f} %; top-5 float {100 * c['float_top5']:.0f} %, integer "
          f"{100 * c['integer_top5']:.0f} %; top-1 agreement {100 * c['top1_agreement']:.0f} %")
    for line in c["disagreements"]:
        print("   ", line)
    print(f"{s['file']} on {s['image']}: bird IoU float {s['float_bird_iou']:.4f}, integer {s['integer_bird_iou']:.4f}; "
          f"label maps agree on {100 * s['label_agreement']:.2f} % of the pixels")
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(output, overwrite=True) as temporary:
        temporary.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
