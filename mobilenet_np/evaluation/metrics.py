"""The numbers of an evaluation, as pure NumPy functions over integer counts.

Every metric is computed from counts (how many images were right, how many pixels of class t were
predicted as p), never from averages of averages, so that the counts of several runs (shards of a
dataset) add up to exactly the counts of one run over everything.

Classification
    top_k_classes(logits, k)                the k best classes of each row, best first
    class_counts(labels, top1, num_classes) images per true class, and how many were right (top-1)

Segmentation (Pascal VOC conventions)
    confusion_matrix(target, prediction, C) C[t, p] = pixels of true class t predicted as p;
                                            target pixels equal to ignore_index (255) are left out
    segmentation_scores(confusion)          pixel accuracy, IoU per class, mean IoU

    IoU_c = C[c, c] / (sum_p C[c, p] + sum_t C[t, c] - C[c, c])   (intersection / union of class c)

A class that is neither in the targets nor in the predictions has no IoU (None) and is left out of
the mean, as in the VOC development kit. Each function has a `_naive` twin written as plain loops.
"""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError

VOC_IGNORE_INDEX = 255  # the "void" label of Pascal VOC masks (object borders, difficult regions)

__all__ = ["VOC_IGNORE_INDEX", "top_k_classes", "top_k_classes_naive", "class_counts", "class_counts_naive",
           "confusion_matrix", "confusion_matrix_naive", "segmentation_scores", "segmentation_scores_naive"]


def _check_logits(logits, op: str) -> np.ndarray:
    logits = np.asarray(logits)
    if logits.ndim != 2 or logits.shape[1] == 0 or logits.dtype.kind not in "fiu":
        raise ShapeError(f"{op}: logits must be a numeric (N, num_classes) array with num_classes >= 1, "
                         f"got shape {logits.shape} dtype {logits.dtype}")
    return logits


def _check_k(k, op: str) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ShapeError(f"{op}: k must be a positive int, got {k!r}")
    return int(k)


# --------------------------------------------------------------------------------------------------
# classification
# --------------------------------------------------------------------------------------------------

def top_k_classes(logits: np.ndarray, k: int) -> np.ndarray:
    """(N, C) scores -> (N, min(k, C)) int64 class ids by decreasing score (ties: lower id first).

    The tie rule is transformers' (a stable sort of -score), so top-1 is np.argmax.
    """
    logits = _check_logits(logits, "top_k_classes")
    k = _check_k(k, "top_k_classes")
    order = np.argsort(-logits, axis=1, kind="stable")                  # (N, C)
    return order[:, :k].astype(np.int64)                                 # (N, min(k, C))


def top_k_classes_naive(logits: np.ndarray, k: int) -> np.ndarray:
    """Loop twin of `top_k_classes`: for each row, sort the class ids by (-score, id)."""
    logits = _check_logits(logits, "top_k_classes_naive")
    k = _check_k(k, "top_k_classes_naive")
    n, c = logits.shape
    out = np.zeros((n, min(k, c)), dtype=np.int64)
    for i in range(n):
        ranked = sorted(range(c), key=lambda j: (-logits[i, j], j))
        for r in range(min(k, c)):
            out[i, r] = ranked[r]
    return out


def _check_labels(labels, num_classes: int, op: str, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
        raise ShapeError(f"{op}: {name} must be a 1-D array of class ids, got shape {labels.shape} dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ShapeError(f"{op}: {name} must be class ids in [0, {num_classes}), got values in "
                         f"[{labels.min()}, {labels.max()}]")
    return labels.astype(np.int64)


def class_counts(labels: np.ndarray, top1: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(count, correct): two (num_classes,) int64 arrays.

        count[c]   = #images whose true class is c
        correct[c] = #images whose true class is c and whose top-1 class is c
    """
    labels = _check_labels(labels, num_classes, "class_counts", "labels")
    top1 = _check_labels(top1, num_classes, "class_counts", "top1")
    if labels.shape != top1.shape:
        raise ShapeError(f"class_counts: labels {labels.shape} and top1 {top1.shape} must have the same shape")
    count = np.bincount(labels, minlength=num_classes).astype(np.int64)
    correct = np.bincount(labels[labels == top1], minlength=num_classes).astype(np.int64)
    return count, correct


def class_counts_naive(labels, top1, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Loop twin of `class_counts`."""
    count = np.zeros(num_classes, dtype=np.int64)
    correct = np.zeros(num_classes, dtype=np.int64)
    for label, predicted in zip(labels, top1):
        count[label] += 1
        if predicted == label:
            correct[label] += 1
    return count, correct


# --------------------------------------------------------------------------------------------------
# segmentation
# --------------------------------------------------------------------------------------------------

def _check_maps(target, prediction, num_classes: int, ignore_index: int | None, op: str):
    target, prediction = np.asarray(target), np.asarray(prediction)
    if target.shape != prediction.shape:
        raise ShapeError(f"{op}: target {target.shape} and prediction {prediction.shape} must have the same shape")
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ShapeError(f"{op}: num_classes must be a positive int, got {num_classes!r}")
    for name, values in (("target", target), ("prediction", prediction)):
        if values.size and values.dtype.kind not in "iu":
            raise ShapeError(f"{op}: {name} must hold integer class ids, got dtype {values.dtype}")
    kept = target != ignore_index if ignore_index is not None else np.ones(target.shape, dtype=bool)
    for name, values in (("target", target[kept]), ("prediction", prediction)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            allowed = f"[0, {num_classes})" + (f" or {ignore_index}" if name == "target" and ignore_index is not None else "")
            raise ShapeError(f"{op}: {name} must hold class ids in {allowed}, got values in "
                             f"[{values.min()}, {values.max()}]")
    return target.astype(np.int64), prediction.astype(np.int64), kept


def confusion_matrix(target: np.ndarray, prediction: np.ndarray, num_classes: int,
                     ignore_index: int | None = VOC_IGNORE_INDEX) -> np.ndarray:
    """(num_classes, num_classes) int64: [t, p] = #pixels with target t and prediction p.

    target, prediction: class-id maps of one shape (any shape). Target pixels equal to
    `ignore_index` are not counted (None counts every pixel).
    """
    target, prediction, kept = _check_maps(target, prediction, num_classes, ignore_index, "confusion_matrix")
    pairs = target[kept] * num_classes + prediction[kept]                 # one id per (t, p) pair
    return np.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes).astype(np.int64)


def confusion_matrix_naive(target, prediction, num_classes: int, ignore_index: int | None = VOC_IGNORE_INDEX):
    """Loop twin of `confusion_matrix`."""
    target, prediction, _ = _check_maps(target, prediction, num_classes, ignore_index, "confusion_matrix_naive")
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    for t, p in zip(target.ravel(), prediction.ravel()):
        if ignore_index is not None and t == ignore_index:
            continue
        matrix[t, p] += 1
    return matrix


def _check_confusion(confusion, op: str) -> np.ndarray:
    confusion = np.asarray(confusion)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1] or confusion.dtype.kind not in "iu":
        raise ShapeError(f"{op}: confusion must be a square integer (C, C) array, got shape {confusion.shape} "
                         f"dtype {confusion.dtype}")
    return confusion.astype(np.int64)


def segmentation_scores(confusion: np.ndarray) -> dict:
    """Pixel accuracy, per-class IoU and mean IoU of a (C, C) confusion matrix (rows: true class).

        pixel_accuracy = trace(C) / sum(C)               (None when no pixel was counted)
        iou[c]         = C[c, c] / (row_c + col_c - C[c, c]) (None when class c has an empty union)
        mean_iou       = mean of the iou values that are not None (None when all are)
    """
    confusion = _check_confusion(confusion, "segmentation_scores")
    total = int(confusion.sum())
    intersection = np.diag(confusion)                                     # (C,)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - intersection  # (C,)
    iou = [float(intersection[c] / union[c]) if union[c] else None for c in range(len(union))]
    present = [v for v in iou if v is not None]
    return {"pixel_accuracy": float(intersection.sum() / total) if total else None,
            "iou": iou, "mean_iou": float(np.mean(present)) if present else None}


def segmentation_scores_naive(confusion) -> dict:
    """Loop twin of `segmentation_scores`."""
    confusion = _check_confusion(confusion, "segmentation_scores_naive")
    c = confusion.shape[0]
    total = correct = 0
    iou = []
    for i in range(c):
        true_i = predicted_i = 0
        for j in range(c):
            total += int(confusion[i, j])
            true_i += int(confusion[i, j])
            predicted_i += int(confusion[j, i])
        correct += int(confusion[i, i])
        union = true_i + predicted_i - int(confusion[i, i])
        iou.append(int(confusion[i, i]) / union if union else None)
    present = [v for v in iou if v is not None]
    return {"pixel_accuracy": correct / total if total else None, "iou": iou,
            "mean_iou": sum(present) / len(present) if present else None}
