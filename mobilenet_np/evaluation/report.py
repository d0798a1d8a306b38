"""Records -> the evaluation report; the partial (JSON-lines) file; merging shard reports.

A report is computed from its per-image records only (see evaluator.py), sorted by image name,
with integer counts and float sums taken with math.fsum (exactly rounded, so independent of the
order): the report of shards merged is the report of the whole run, equal field for field except
"timing". The fields are documented in docs/evaluate.md.

The partial file holds one JSON document per line: first {"format": PARTIAL_FORMAT, "header": ...},
then one record per evaluated image, written (and flushed) as each image finishes. A run resumed
from it must have the same header; a last line cut short by a crash is dropped.
"""

from __future__ import annotations

import json
import math
import secrets
from pathlib import Path

import numpy as np

from ..errors import ConfigError, OutputExistsError
from ..fileio import atomic_output
from .metrics import class_counts, segmentation_scores

FORMAT = "mobilenet-np-evaluation"
FORMAT_VERSION = 1
PARTIAL_FORMAT = "mobilenet-np-evaluation-partial"
# What identifies a run: a partial file is resumed and reports are merged only when these agree.
HEADER_FIELDS = ("weights", "weights_sha256", "architecture", "task", "num_labels", "labels", "data", "label_source",
                 "masks", "against", "against_kind", "shard")


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def classification_summary(records: list[dict], labels: list[str]) -> dict:
    """Top-1 / top-5 accuracy and per-class accuracy of the labelled, readable images."""
    labelled = [r for r in records if r["label"] is not None]
    truth = np.array([r["label"] for r in labelled], dtype=np.int64)
    top1 = np.array([r["top"][0] for r in labelled], dtype=np.int64)
    count, correct = class_counts(truth, top1, len(labels))
    correct_top5 = sum(r["label"] in r["top"] for r in labelled)
    per_class = [{"class_id": c, "label": labels[c], "count": int(count[c]), "correct_top1": int(correct[c]),
                  "accuracy": int(correct[c]) / int(count[c])} for c in np.flatnonzero(count).tolist()]
    return {"labelled": len(labelled), "correct_top1": int(correct.sum()), "correct_top5": int(correct_top5),
            "top1": _ratio(int(correct.sum()), len(labelled)), "top5": _ratio(int(correct_top5), len(labelled)),
            "mean_class_accuracy": math.fsum(c["accuracy"] for c in per_class) / len(per_class) if per_class else None,
            "per_class": per_class}


def segmentation_summary(records: list[dict], labels: list[str]) -> dict:
    """Pixel accuracy and IoU from the confusion matrix summed over the readable images."""
    confusion = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for r in records:
        for t, p, pixels in r["confusion"]:
            confusion[t, p] += pixels
    scores = segmentation_scores(confusion)
    per_class = [{"class_id": c, "label": labels[c], "iou": scores["iou"][c], "true_pixels": int(confusion[c].sum()),
                  "predicted_pixels": int(confusion[:, c].sum()), "intersection": int(confusion[c, c])}
                 for c in range(len(labels))]
    return {"pixels": int(confusion.sum()), "correct_pixels": int(np.trace(confusion)),
            "ignored_pixels": sum(r["ignored"] for r in records), "pixel_accuracy": scores["pixel_accuracy"],
            "mean_iou": scores["mean_iou"], "per_class": per_class, "confusion_matrix": confusion.tolist()}


def agreement_summary(records: list[dict], against: str, kind: str) -> dict:
    """Top-1 agreement and logit differences against the other network / the port, worst images first."""
    positions = sum(r["positions"] for r in records)
    agreeing = sum(r["agreeing"] for r in records)
    values = sum(r["values"] for r in records)
    worst = sorted((r for r in records if r["agreeing"] < r["positions"]),
                   key=lambda r: (r["agreeing"] / r["positions"], -r["max_abs_diff"], r["image"]))
    return {"against": against, "kind": kind, "compared": len(records), "positions": positions, "agreeing": agreeing,
            "top1_agreement": _ratio(agreeing, positions),
            "max_abs_logit_difference": max((r["max_abs_diff"] for r in records), default=None),
            "mean_abs_logit_difference": math.fsum(r["sum_abs_diff"] for r in records) / values if values else None,
            "disagreements": [{"image": r["image"], "agreement": r["agreeing"] / r["positions"], "top1": r["top1"],
                               "other_top1": r["other_top1"], "max_abs_diff": r["max_abs_diff"]} for r in worst]}


def build_report(header: dict, records: list[dict], timing: dict) -> dict:
    """The report of a run: its header, the summaries of its records, timing, and the records (sorted)."""
    records = sorted(records, key=lambda r: r["image"])
    names = [r["image"] for r in records]
    if len(set(names)) != len(names):
        duplicate = next(n for n, m in zip(names, names[1:]) if n == m)
        raise ConfigError(f"image {duplicate} has two records; expected one per image")
    good = [r for r in records if "error" not in r]
    report = {"format": FORMAT, "format_version": FORMAT_VERSION, **{k: header[k] for k in HEADER_FIELDS},
              "images": len(records), "evaluated": len(good),
              "unreadable": [{"image": r["image"], "error": r["error"]} for r in records if "error" in r]}
    labels = header["labels"]
    report["classification"] = classification_summary(good, labels) if header["task"] == "classification" else None
    report["segmentation"] = segmentation_summary(good, labels) if header["task"] == "segmentation" and \
        header["masks"] else None
    report["agreement"] = agreement_summary(good, header["against"], header["against_kind"]) if header["against"] \
        else None
    report["timing"] = timing
    report["records"] = records
    return report


# --------------------------------------------------------------------------------------------------
# merging shards
# --------------------------------------------------------------------------------------------------

def merge_reports(reports: list[dict]) -> dict:
    """One report from the reports of shards K/N of one run (distinct K, the same N and the same header).

    All N shards together give the report of the whole run (shard null), exactly, except "timing":
    wall seconds and images add up, images_per_second is images / wall seconds (one machine's rate).
    """
    if not reports:
        raise ConfigError("merge needs at least one report")
    for n, report in enumerate(reports):
        if not isinstance(report, dict) or report.get("format") != FORMAT or report.get("format_version") != FORMAT_VERSION:
            raise ConfigError(f"report {n + 1}: not a {FORMAT} version {FORMAT_VERSION} report")
        if report["shard"] is None:
            raise ConfigError(f"report {n + 1}: is a whole run (no shard), there is nothing to merge it with")
    first = reports[0]
    for n, report in enumerate(reports[1:], start=2):
        differing = [k for k in HEADER_FIELDS if k != "shard" and report[k] != first[k]]
        if differing:
            raise ConfigError(f"report {n}: differs from report 1 in {', '.join(differing)}; expected shards of one run")
        if report["shard"]["count"] != first["shard"]["count"]:
            raise ConfigError(f"report {n}: is a shard of {report['shard']['count']}, report 1 of "
                              f"{first['shard']['count']}")
    count = first["shard"]["count"]
    indices = [i for r in reports for i in r["shard"]["indices"]]
    if len(set(indices)) != len(indices):
        raise ConfigError(f"shards {sorted(indices)} given: each shard must be given once")
    header = {k: first[k] for k in HEADER_FIELDS}
    header["shard"] = None if sorted(indices) == list(range(count)) else {"indices": sorted(indices), "count": count}
    timings = [r["timing"] for r in reports]
    wall = math.fsum(t["wall_seconds"] for t in timings)
    images = sum(t["images"] for t in timings)
    timing = {"wall_seconds": wall, "images": images, "images_per_second": _ratio(images, wall),
              "workers": max(t["workers"] for t in timings), "backend": "merged", "shards": timings}
    return build_report(header, [r for report in reports for r in report["records"]], timing)


# --------------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------------

def report_json(report: dict) -> str:
    """The report as indented JSON text, with long lists kept short: the labels on one line, one line per
    record and per row of the confusion matrix (so that reports of big runs stay readable)."""
    compact: dict[str, str] = {}
    nonce = secrets.token_hex(8)                                     # no image name can hold it by chance

    def placeholder(value, name: str) -> str:
        name = f"{nonce} {name}"
        compact[name] = json.dumps(value, ensure_ascii=False)
        return name

    body = {k: v for k, v in report.items() if k != "records"}
    body["labels"] = placeholder(report["labels"], "labels")
    if report.get("segmentation"):
        rows = [placeholder(row, f"row {i}") for i, row in enumerate(report["segmentation"]["confusion_matrix"])]
        body["segmentation"] = {**report["segmentation"], "confusion_matrix": rows}
    body["records"] = [placeholder(r, f"record {i}") for i, r in enumerate(report["records"])]
    text = json.dumps(body, indent=2, ensure_ascii=False)
    for name, value in compact.items():
        text = text.replace(json.dumps(name), value, 1)
    return text + "\n"


def write_report(report: dict, path, overwrite: bool) -> None:
    """Write the report atomically (a crash leaves the old file or none, never half a report)."""
    with atomic_output(path, overwrite=overwrite) as tmp:
        tmp.write_text(report_json(report), encoding="utf-8")


def read_report(path) -> dict:
    path = Path(path)
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such report") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not a JSON report ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(report, dict) or report.get("format") != FORMAT:
        raise ConfigError(f"{path}: not a {FORMAT} report")
    return report


def read_partial(path, header: dict) -> list[dict]:
    """The records of a partial file written by a run with this header; a cut-short last line is removed."""
    path = Path(path)
    data = path.read_bytes()
    complete = data[:data.rfind(b"\n") + 1]                         # up to the last full line
    lines = complete.decode("utf-8").splitlines()
    try:
        first = json.loads(lines[0]) if lines else None
        records = [json.loads(line) for line in lines[1:]]
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: damaged partial file ({e}); remove it or pass --force to start over") from None
    if not isinstance(first, dict) or first.get("format") != PARTIAL_FORMAT:
        raise ConfigError(f"{path}: not a {PARTIAL_FORMAT} file")
    differing = [k for k in HEADER_FIELDS if first["header"].get(k) != header[k]]
    if differing:
        raise ConfigError(f"{path}: was written by a different run (differs in {', '.join(differing)}); pass --force "
                          "to start over")
    if len(complete) != len(data):
        with open(path, "r+b") as f:                                 # drop the half-written last line
            f.truncate(len(complete))
    return records


class PartialWriter:
    """Appends records to the partial file, one line each, flushed at once (a crash keeps every finished image)."""

    def __init__(self, path, header: dict, resume: bool, overwrite: bool):
        self.path = Path(path)
        if self.path.exists() and not resume and not overwrite:
            raise OutputExistsError(f"{self.path}: partial results of an earlier run exist (pass --resume to continue "
                                    "it, or --force to start over)")
        fresh = not (resume and self.path.exists())
        self.file = open(self.path, "w" if fresh else "a", encoding="utf-8")
        if fresh:
            self.write({"format": PARTIAL_FORMAT, "header": header})

    def write(self, document: dict) -> None:
        self.file.write(json.dumps(document, ensure_ascii=False) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()
