"""Argument checks the layer modules share (float ops, their backward passes, the integer ops).

Each raises a ShapeError whose one-line message names the op and the argument and says what was expected.
"""

from __future__ import annotations

import numpy as np

from .errors import ShapeError


def pair(value, op: str, name: str) -> tuple[int, int]:
    """An int or an (h, w) pair as a pair of Python ints."""
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    try:
        h, w = value
        return int(h), int(w)
    except (TypeError, ValueError):
        raise ShapeError(f"{op}: {name} must be an int or a pair of ints, got {value!r}") from None


def float_dtype(*arrays) -> np.dtype:
    """The dtype rule of the float layers: float64 if any input is float64, else float32 (ints and
    float16 are computed in float32)."""
    if any(a is not None and a.dtype == np.float64 for a in arrays):
        return np.dtype(np.float64)
    return np.dtype(np.float32)


def numeric_array(x, op: str, name: str, ndim: int | None = None) -> np.ndarray:
    """x as a NumPy array of numbers (bool, int or float), of `ndim` dimensions when given."""
    x = np.asarray(x)
    if x.dtype.kind not in "fiub":
        raise ShapeError(f"{op}: {name} must be a numeric array, got dtype {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        raise ShapeError(f"{op}: {name} must have {ndim} dimensions, got shape {x.shape}")
    return x


def conv_bias(bias, op: str, c_out: int, weight_shape) -> np.ndarray | None:
    """A convolution's bias: None, or a (C_out,) numeric vector."""
    if bias is None:
        return None
    bias = numeric_array(bias, op, "bias", ndim=1)
    if bias.shape[0] != c_out:
        raise ShapeError(f"{op}: bias {bias.shape} must have out_channels={c_out} entries (weight {tuple(weight_shape)})")
    return bias


def stride_and_dilation(stride, dilation, op: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """((sh, sw), (dh, dw)) from ints or pairs, all positive."""
    sh, sw = pair(stride, op, "stride")
    dh, dw = pair(dilation, op, "dilation")
    if min(sh, sw) < 1 or min(dh, dw) < 1:
        raise ShapeError(f"{op}: stride and dilation must be positive, got stride={stride}, dilation={dilation}")
    return (sh, sw), (dh, dw)
