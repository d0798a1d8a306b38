"""The losses transformers computes for MobileNet V1/V2 and DeepLabV3, each with its gradient.

Every loss returns `(loss, dlogits)`: the scalar loss and d loss / d logits (the shape of logits), ready
for the backward passes of `mobilenet_np.training.backward`. Each has a `*_naive` loop twin.

* `cross_entropy`: softmax cross-entropy over the class axis 1, mean over the labels that are not
  `ignore_index` (PyTorch's default -100). All labels ignored -> loss NaN (0 / 0) and a zero gradient,
  as PyTorch.
* `mse_loss`, `bce_with_logits`: means over every element (`nn.MSELoss()`, `nn.BCEWithLogitsLoss()`).
* `infer_problem_type` + `classification_loss`: transformers' `ForSequenceClassificationLoss` (what
  `MobileNetV1/V2ForImageClassification` use), with errors where torch raises.
* `segmentation_loss`: `MobileNetV2ForSemanticSegmentation`'s loss: logits upsampled bilinearly
  (align_corners=False) to the labels' size, then cross-entropy ignoring 255; the gradient goes back
  through the upsampling to the logits' size.

Dtypes: the loss is computed in float64 whatever the inputs (float32 inputs: every reduction
accumulates in float64), then returned in the working dtype: float64 if logits (or float labels) are
float64, else float32. dlogits has the working dtype.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError, ShapeError
from . import backward

__all__ = [
    "cross_entropy", "cross_entropy_naive",
    "mse_loss", "mse_loss_naive",
    "bce_with_logits", "bce_with_logits_naive",
    "PROBLEM_TYPES", "infer_problem_type", "classification_loss",
    "segmentation_loss", "segmentation_loss_naive",
]

PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------

def _floats(x, op: str, name: str, min_ndim: int = 0) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "fiub":
        raise ShapeError(f"{op}: {name} must be a numeric array, got dtype {x.dtype}")
    if x.ndim < min_ndim:
        raise ShapeError(f"{op}: {name} must have at least {min_ndim} dimensions, got shape {x.shape}")
    return x


def _working_dtype(*arrays) -> np.dtype:
    """float64 if any of the (float) inputs is float64, else float32."""
    return np.dtype(np.float64) if any(a.dtype == np.float64 for a in arrays) else np.dtype(np.float32)


def _class_ids(labels, op: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise ShapeError(f"{op}: labels must hold integer class ids, got dtype {labels.dtype}")
    return labels


def _check_ids(labels, num_classes, ignore_index, op):
    """Every label is a class in [0, C) or ignore_index (PyTorch: IndexError 'Target 7 is out of bounds')."""
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= num_classes))
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ShapeError(f"{op}: labels{list(where)} = {int(labels[where])} is outside [0, {num_classes}) "
                         f"and not ignore_index={ignore_index}")


def _cross_entropy_arguments(logits, labels, ignore_index, op):
    logits = _floats(logits, op, "logits", min_ndim=2)
    labels = _class_ids(labels, op)
    expected = logits.shape[:1] + logits.shape[2:]
    if labels.shape != expected:
        raise ShapeError(f"{op}: labels {labels.shape} must have shape {expected} for logits {logits.shape} "
                         f"(the class axis is 1)")
    _check_ids(labels, logits.shape[1], ignore_index, op)
    return logits, labels


# --------------------------------------------------------------------------------------------------
# cross-entropy, MSE, BCE
# --------------------------------------------------------------------------------------------------

def cross_entropy(logits, labels, ignore_index=-100):
    """Softmax cross-entropy (`F.cross_entropy(logits, labels, ignore_index=...)`, reduction "mean").

    Shapes: logits (N, C) or (N, C, d1, ...) (the class axis is 1), labels (N,) or (N, d1, ...) integers
    in [0, C) or equal to ignore_index. Returns (loss, dlogits), dlogits the shape of logits.

        log p[k] = z[k] - logsumexp(z)         (stable: the row maximum is subtracted first)
        loss     = -sum_{kept i} log p_i[y_i] / K,      K = number of labels != ignore_index
        dz_i     = (softmax(z_i) - onehot(y_i)) / K      for kept i, 0 for ignored i

    K == 0: loss NaN (0 / 0) and dlogits all zero, as PyTorch.
    """
    logits, labels = _cross_entropy_arguments(logits, labels, ignore_index, "cross_entropy")
    dtype = _working_dtype(logits)
    c = logits.shape[1]
    z = np.moveaxis(logits.astype(np.float64), 1, -1).reshape(-1, c)      # one row per label
    y = labels.reshape(-1)
    kept = y != ignore_index
    count = int(kept.sum())
    rows = np.arange(z.shape[0])
    safe_y = np.where(kept, y, 0)
    shifted = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1))
    log_p_y = shifted[rows, safe_y] - log_norm
    loss = -log_p_y[kept].sum() / count if count else math.nan
    grad = np.exp(shifted - log_norm[:, None])
    grad[rows, safe_y] -= 1.0
    grad *= (kept / count if count else np.zeros(kept.shape))[:, None]
    dlogits = np.moveaxis(grad.reshape(labels.shape + (c,)), -1, 1)
    return dtype.type(loss), np.ascontiguousarray(dlogits, dtype=dtype)


def cross_entropy_naive(logits, labels, ignore_index=-100):
    """Loop version of `cross_entropy`: one label (one row of C logits) at a time."""
    logits, labels = _cross_entropy_arguments(logits, labels, ignore_index, "cross_entropy_naive")
    dtype = _working_dtype(logits)
    c = logits.shape[1]
    dlogits = np.zeros(logits.shape, dtype=np.float64)
    total, count = 0.0, 0
    for index in np.ndindex(labels.shape):
        if labels[index] != ignore_index:
            count += 1
    for index in np.ndindex(labels.shape):
        label = int(labels[index])
        if label == ignore_index:
            continue
        row = [float(logits[(index[0], k) + index[1:]]) for k in range(c)]
        largest = max(row)
        norm = sum(math.exp(v - largest) for v in row)
        total += -(row[label] - largest - math.log(norm))
        for k in range(c):
            p = math.exp(row[k] - largest) / norm
            dlogits[(index[0], k) + index[1:]] = (p - (1.0 if k == label else 0.0)) / count
    loss = total / count if count else math.nan
    return dtype.type(loss), dlogits.astype(dtype)


def _same_shape(pred, target, op):
    pred = _floats(pred, op, "logits")
    target = _floats(target, op, "labels")
    if pred.shape != target.shape:
        raise ShapeError(f"{op}: labels {target.shape} must have the shape of logits {pred.shape}")
    if pred.size == 0:
        raise ShapeError(f"{op}: logits {pred.shape} are empty (the mean would be 0 / 0)")
    return pred, target


def mse_loss(logits, labels):
    """Mean squared error (`nn.MSELoss()`): loss = mean((z - y)^2), dz = 2 (z - y) / n. Same shapes, n = size.
    Integer labels are converted to floats (as torch's type promotion does)."""
    z, y = _same_shape(logits, labels, "mse_loss")
    dtype = _working_dtype(z, y)
    diff = z.astype(np.float64) - y.astype(np.float64)
    return dtype.type((diff * diff).mean()), (2.0 * diff / diff.size).astype(dtype)


def mse_loss_naive(logits, labels):
    """Loop version of `mse_loss`."""
    z, y = _same_shape(logits, labels, "mse_loss_naive")
    dtype = _working_dtype(z, y)
    total = 0.0
    grad = np.zeros(z.shape, dtype=np.float64)
    for index in np.ndindex(z.shape):
        d = float(z[index]) - float(y[index])
        total += d * d
        grad[index] = 2.0 * d / z.size
    return dtype.type(total / z.size), grad.astype(dtype)


def bce_with_logits(logits, labels):
    """Binary cross-entropy on logits (`nn.BCEWithLogitsLoss()`), mean over all N * C entries.

        loss = mean( max(z, 0) - z * y + log(1 + exp(-|z|)) )      (= -y log s(z) - (1 - y) log(1 - s(z)),
        dz   = (sigmoid(z) - y) / n                                  written so that exp never overflows)
    """
    z, y = _same_shape(logits, labels, "bce_with_logits")
    dtype = _working_dtype(z, y)
    z, y = z.astype(np.float64), y.astype(np.float64)
    e = np.exp(-np.abs(z))
    losses = np.maximum(z, 0.0) - z * y + np.log1p(e)
    sigmoid = np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return dtype.type(losses.mean()), ((sigmoid - y) / z.size).astype(dtype)


def bce_with_logits_naive(logits, labels):
    """Loop version of `bce_with_logits`."""
    z, y = _same_shape(logits, labels, "bce_with_logits_naive")
    dtype = _working_dtype(z, y)
    total = 0.0
    grad = np.zeros(z.shape, dtype=np.float64)
    for index in np.ndindex(z.shape):
        v, t = float(z[index]), float(y[index])
        total += max(v, 0.0) - v * t + math.log1p(math.exp(-abs(v)))
        s = 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))
        grad[index] = (s - t) / z.size
    return dtype.type(total / z.size), grad.astype(dtype)


# --------------------------------------------------------------------------------------------------
# transformers' classification loss (ForSequenceClassificationLoss)
# --------------------------------------------------------------------------------------------------

def infer_problem_type(num_labels, labels_dtype, problem_type):
    """transformers' choice of loss for `...ForImageClassification` (a pure function).

    problem_type: the config's current value. When it is None, transformers infers
        num_labels == 1                                  -> "regression"          (even for int labels)
        num_labels > 1 and labels int64 or int32         -> "single_label_classification"
        otherwise (float, uint8, bool, int16, ...)       -> "multi_label_classification"
    and stores the result in `config.problem_type`: it is sticky, so pass the returned value back on
    later calls (a float-label call followed by int labels stays multi-label).

    Errors where torch would raise later (the message names the field):
      * single_label_classification with labels that are not int64/uint8 (int32 included, although
        transformers picks single-label for it): torch's cross_entropy raises "expected target dtype to
        be Long or Byte" -> ShapeError on `labels`;
      * problem_type not one of PROBLEM_TYPES, num_labels not an int >= 0 -> ConfigError.
    uint8 class ids become multi-label (as in transformers); `classification_loss` then rejects their
    shape, as BCE does ("Target size ([3]) must be the same as input size ([3, 4])").
    """
    op = "infer_problem_type"
    if isinstance(num_labels, bool) or not isinstance(num_labels, (int, np.integer)) or num_labels < 0:
        raise ConfigError(f"{op}: num_labels must be an int >= 0, got {num_labels!r}")
    if problem_type is not None and problem_type not in PROBLEM_TYPES:
        raise ConfigError(f"{op}: problem_type must be None or one of {PROBLEM_TYPES}, got {problem_type!r}")
    try:
        dtype = np.dtype(labels_dtype)
    except TypeError:
        raise ShapeError(f"{op}: labels_dtype must be a NumPy dtype, got {labels_dtype!r}") from None
    if problem_type is None:
        if num_labels == 1:
            problem_type = "regression"
        elif num_labels > 1 and dtype in (np.dtype(np.int64), np.dtype(np.int32)):
            problem_type = "single_label_classification"
        else:
            problem_type = "multi_label_classification"
    if problem_type == "single_label_classification" and dtype not in (np.dtype(np.int64), np.dtype(np.uint8)):
        raise ShapeError(f"{op}: labels of dtype {dtype} cannot be class ids for single_label_classification: "
                         f"torch's cross_entropy accepts int64 (or uint8) only (it raises 'expected target dtype "
                         f"to be Long or Byte'); cast the labels to int64")
    return problem_type


def classification_loss(logits, labels, problem_type):
    """transformers' `ForSequenceClassificationLoss` for a resolved problem_type (see `infer_problem_type`).

    Shapes: logits (N, num_labels). Returns (loss, dlogits).
      * "regression": num_labels == 1: `mse_loss(logits.squeeze(), labels.squeeze())`; else MSE on the full
        arrays (which must have the same shape: torch would broadcast with a warning, we refuse).
      * "single_label_classification": `cross_entropy(logits.reshape(-1, C), labels.reshape(-1), -100)`;
        labels int64 or uint8.
      * "multi_label_classification": `bce_with_logits(logits, labels)`; labels float, the shape of logits.
    """
    op = "classification_loss"
    logits = _floats(logits, op, "logits", min_ndim=1)
    labels = np.asarray(labels)
    if problem_type not in PROBLEM_TYPES:
        raise ConfigError(f"{op}: problem_type must be one of {PROBLEM_TYPES} (resolve None with "
                          f"infer_problem_type first), got {problem_type!r}")
    num_labels = logits.shape[-1]
    if problem_type == "regression":
        if num_labels == 1:
            loss, dz = mse_loss(logits.squeeze(), labels.squeeze())
            return loss, dz.reshape(logits.shape)
        return mse_loss(logits, labels)
    if problem_type == "single_label_classification":
        if labels.dtype not in (np.dtype(np.int64), np.dtype(np.uint8)):
            raise ShapeError(f"{op}: single_label_classification needs int64 (or uint8) class ids, got labels of "
                             f"dtype {labels.dtype} (torch: 'expected target dtype to be Long or Byte')")
        if labels.size * num_labels != logits.size:
            raise ShapeError(f"{op}: labels {labels.shape} must hold one class id per row of logits {logits.shape}")
        loss, dz = cross_entropy(logits.reshape(-1, num_labels), labels.reshape(-1), -100)
        return loss, dz.reshape(logits.shape)
    if labels.shape != logits.shape:
        raise ShapeError(f"{op}: multi_label_classification needs labels of the logits' shape {logits.shape}, got "
                         f"{labels.shape} (torch: 'Target size must be the same as input size'; labels of dtype "
                         f"{labels.dtype} make transformers infer multi-label: class ids must be int64)")
    if labels.dtype.kind != "f":
        raise ShapeError(f"{op}: multi_label_classification needs float (multi-hot) labels, got dtype {labels.dtype} "
                         f"(torch: \"result type Float can't be cast to the desired output type\")")
    return bce_with_logits(logits, labels)


# --------------------------------------------------------------------------------------------------
# DeepLabV3 segmentation loss
# --------------------------------------------------------------------------------------------------

def _segmentation_arguments(logits, labels, ignore_index, op):
    logits = _floats(logits, op, "logits")
    if logits.ndim != 4:
        raise ShapeError(f"{op}: logits must be (N, C, h, w), got shape {logits.shape}")
    if logits.shape[1] == 1:
        raise ConfigError(f"{op}: num_labels (C of logits {logits.shape}) must be greater than one: transformers "
                          f"raises 'The number of labels should be greater than one'")
    labels = _class_ids(labels, op)
    if labels.ndim != 3 or labels.shape[0] != logits.shape[0]:
        raise ShapeError(f"{op}: labels must be (N, H, W) with N = {logits.shape[0]} (logits {logits.shape}), "
                         f"got shape {labels.shape}")
    _check_ids(labels, logits.shape[1], ignore_index, op)
    return logits, labels


def segmentation_loss(logits, labels, ignore_index=255):
    """`MobileNetV2ForSemanticSegmentation`'s loss and its gradient.

    Shapes: logits (N, C, h, w), labels (N, H, W) integers in [0, C) or ignore_index (the config's
    `semantic_loss_ignore_index`, 255 by default). Returns (loss, dlogits (N, C, h, w)).

        up   = interpolate_bilinear(logits, (H, W), align_corners=False)     (any H, W)
        loss = cross_entropy(up, labels, ignore_index)                        (mean over kept pixels)
        dlogits = interpolate_bilinear_backward(d loss / d up)                (back to h x w)

    C == 1 -> ConfigError (transformers refuses num_labels == 1); a label outside [0, C) that is not
    ignore_index -> ShapeError; every pixel ignored -> loss NaN, dlogits zero (as torch).
    The backward of the upsampling runs in float64 too (it sums many pixels per logit).
    """
    op = "segmentation_loss"
    logits, labels = _segmentation_arguments(logits, labels, ignore_index, op)
    dtype = _working_dtype(logits)
    up, cache = backward.interpolate_bilinear_forward(logits.astype(dtype, copy=False), labels.shape[1:], False)
    loss, dup = cross_entropy(up, labels, ignore_index)
    cache64 = {**cache, "dtype": np.dtype(np.float64)}  # accumulate the scatter in float64
    dlogits = backward.interpolate_bilinear_backward(dup.astype(np.float64), cache64)
    return loss, dlogits.astype(dtype)


def segmentation_loss_naive(logits, labels, ignore_index=255):
    """Loop version of `segmentation_loss`: the same upsampling, then the loop twins of the cross-entropy and
    of the upsampling's backward."""
    op = "segmentation_loss_naive"
    logits, labels = _segmentation_arguments(logits, labels, ignore_index, op)
    dtype = _working_dtype(logits)
    up, cache = backward.interpolate_bilinear_forward(logits.astype(dtype, copy=False), labels.shape[1:], False)
    loss, dup = cross_entropy_naive(up, labels, ignore_index)
    dlogits = backward.interpolate_bilinear_backward_naive(dup, cache)
    return loss, dlogits.astype(dtype)
