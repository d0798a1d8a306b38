"""Evaluating a network on real data: accuracy, IoU, agreement with another network or a port.

    from mobilenet_np.evaluation import evaluate, merge_reports
    report = evaluate("mobilenet_v2_1.0_224.h5", "imagenet_sample/")         # labels from the file names
    report["classification"]["top1"]

    labels.py     the images of a data folder and their true classes (synset names, class folders, a CSV)
    metrics.py    top-k, per-class counts, confusion matrix and IoU (NumPy, with loop twins)
    evaluator.py  one image -> one record (the pipelines' steps), agreement with OTHER
    report.py     records -> report; the partial JSON-lines file; merging shard reports
    run.py        evaluate(): this process, local processes or a dask cluster; resume; shards

The command is `mobilenet-np evaluate` (mobilenet_np/cli/evaluate.py); docs/evaluate.md describes it
and the report, field by field.
"""

from .labels import Sample, imagenet_synsets, samples_from_folder, shard
from .metrics import (confusion_matrix, confusion_matrix_naive, segmentation_scores, segmentation_scores_naive,
                      top_k_classes, top_k_classes_naive)
from .report import build_report, merge_reports, read_report, report_json, write_report
from .run import evaluate, evaluate_chunk, plan

__all__ = ["evaluate", "evaluate_chunk", "plan", "merge_reports", "build_report", "read_report", "report_json",
           "write_report", "Sample", "imagenet_synsets", "samples_from_folder", "shard", "top_k_classes",
           "top_k_classes_naive", "confusion_matrix", "confusion_matrix_naive", "segmentation_scores",
           "segmentation_scores_naive"]
