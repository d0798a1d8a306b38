"""The layers of MobileNet V1, V2 and DeepLabV3, as pure NumPy functions.

Conventions are PyTorch's, so that every function can be checked against `torch.nn.functional`:
activations are NCHW (batch, channels, height, width) and convolution weights are OIHW
(out_channels, in_channels // groups, kernel_height, kernel_width).

Each op comes twice:
  * the fast version (`conv2d`, `batch_norm`, ...) used by the networks, vectorised with NumPy;
  * a naive version (`conv2d_naive`, `batch_norm_naive`, ...) written as plain loops that a student
    can read line by line. The tests check fast against naive and both against PyTorch.

Dtypes: the result has the dtype of the inputs promoted together with float32, so float32 in gives
float32 out, and float64 anywhere gives float64 out (never a silent down-cast). float64 end to end is
what makes this a golden reference.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import ShapeError

__all__ = [
    "conv2d", "conv2d_naive", "conv_output_size",
    "pad_tf_same", "pad_tf_same_naive", "tf_same_padding_amounts",
    "batch_norm", "batch_norm_naive",
    "relu", "relu_naive", "relu6", "relu6_naive",
    "global_avg_pool2d", "global_avg_pool2d_naive",
    "linear", "linear_naive",
    "interpolate_bilinear", "interpolate_bilinear_naive",
    "softmax", "softmax_naive",
]


# --------------------------------------------------------------------------------------------------
# helpers shared by the ops
# --------------------------------------------------------------------------------------------------

def _pair(value, op: str, name: str) -> tuple[int, int]:
    """An int or an (h, w) pair as a pair of Python ints."""
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    try:
        h, w = value
        return int(h), int(w)
    except (TypeError, ValueError):
        raise ShapeError(f"{op}: {name} must be an int or a pair of ints, got {value!r}") from None


def _float_dtype(*arrays) -> np.dtype:
    """float32 unless an input is float64 (ints and float16 are computed in float32)."""
    return np.result_type(np.float32, *[a.dtype for a in arrays if a is not None])


def _as_array(x, op: str, name: str, ndim: int | None = None) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "fiub":
        raise ShapeError(f"{op}: {name} must be a numeric array, got dtype {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        raise ShapeError(f"{op}: {name} must have {ndim} dimensions, got shape {x.shape}")
    return x


def conv_output_size(size: int, kernel: int, stride: int = 1, padding_total: int = 0, dilation: int = 1) -> int:
    """Output length of a convolution along one axis (PyTorch and TensorFlow agree on it).

        out = floor((size + padding_total - dilation * (kernel - 1) - 1) / stride) + 1
    """
    return (size + padding_total - dilation * (kernel - 1) - 1) // stride + 1


# --------------------------------------------------------------------------------------------------
# padding
# --------------------------------------------------------------------------------------------------

def tf_same_padding_amounts(in_size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """(before, after) zero padding of TensorFlow "SAME" along one axis, as transformers computes it.

    TensorFlow pads so that out = ceil(in / stride). The total is

        total = max(kernel - stride, 0)            if in % stride == 0
                max(kernel - in % stride, 0)       otherwise

    It depends on the input size (not only on the kernel), and when it is odd the extra row/column
    goes after (bottom/right): before = total // 2, after = total - before. transformers'
    `apply_tf_padding` then multiplies both by the dilation (exact TF for dilation 1; for dilated
    layers this is what the published PyTorch port does, and what we must reproduce).
    """
    if in_size % stride == 0:
        total = max(kernel - stride, 0)
    else:
        total = max(kernel - in_size % stride, 0)
    before = total // 2
    after = total - before
    return before * dilation, after * dilation


def pad_tf_same(x, kernel_size, stride, dilation=1) -> np.ndarray:
    """Zero-pad an (N, C, H, W) array the way TensorFlow "SAME" (transformers `apply_tf_padding`) does.

    Shapes: (N, C, H, W) -> (N, C, H + top + bottom, W + left + right), with the amounts of
    `tf_same_padding_amounts` per axis (asymmetric: the extra row/column goes at the bottom/right).
    """
    x = _as_array(x, "pad_tf_same", "x", ndim=4)
    (kh, kw), (sh, sw), (dh, dw) = (_pair(v, "pad_tf_same", n) for v, n in
                                    ((kernel_size, "kernel_size"), (stride, "stride"), (dilation, "dilation")))
    if min(kh, kw) < 1 or min(sh, sw) < 1 or min(dh, dw) < 1:
        raise ShapeError(f"pad_tf_same: kernel_size, stride and dilation must be positive, "
                         f"got kernel_size={kernel_size}, stride={stride}, dilation={dilation}")
    top, bottom = tf_same_padding_amounts(x.shape[2], kh, sh, dh)
    left, right = tf_same_padding_amounts(x.shape[3], kw, sw, dw)
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))


def pad_tf_same_naive(x, kernel_size, stride, dilation=1) -> np.ndarray:
    """Loop version of `pad_tf_same`: allocate the padded array and copy every pixel into place."""
    x = np.asarray(x)
    kh, kw = _pair(kernel_size, "pad_tf_same_naive", "kernel_size")
    sh, sw = _pair(stride, "pad_tf_same_naive", "stride")
    dh, dw = _pair(dilation, "pad_tf_same_naive", "dilation")
    n, c, h, w = x.shape
    top, bottom = tf_same_padding_amounts(h, kh, sh, dh)
    left, right = tf_same_padding_amounts(w, kw, sw, dw)
    out = np.zeros((n, c, top + h + bottom, left + w + right), dtype=x.dtype)
    for b in range(n):
        for ch in range(c):
            for i in range(h):
                for j in range(w):
                    out[b, ch, top + i, left + j] = x[b, ch, i, j]
    return out


# --------------------------------------------------------------------------------------------------
# convolution
# --------------------------------------------------------------------------------------------------

def _conv_arguments(x, weight, bias, stride, padding, dilation, groups, op):
    """Validate conv2d's arguments; return them normalised, with x already zero-padded."""
    x = _as_array(x, op, "x", ndim=4)
    weight = _as_array(weight, op, "weight", ndim=4)
    n, c_in, h, w = x.shape
    c_out, c_per_group, kh, kw = weight.shape
    groups = int(groups)
    if groups < 1 or c_in % groups or c_out % groups:
        raise ShapeError(f"{op}: groups={groups} must divide both in_channels={c_in} (x {x.shape}) "
                         f"and out_channels={c_out} (weight {weight.shape})")
    if c_per_group * groups != c_in:
        raise ShapeError(f"{op}: channel mismatch: x {x.shape} has {c_in} channels but weight {weight.shape} "
                         f"expects {c_per_group} x groups={groups} = {c_per_group * groups}")
    if bias is not None:
        bias = _as_array(bias, op, "bias", ndim=1)
        if bias.shape[0] != c_out:
            raise ShapeError(f"{op}: bias {bias.shape} must have out_channels={c_out} entries (weight {weight.shape})")
    sh, sw = _pair(stride, op, "stride")
    dh, dw = _pair(dilation, op, "dilation")
    if min(sh, sw) < 1 or min(dh, dw) < 1:
        raise ShapeError(f"{op}: stride and dilation must be positive, got stride={stride}, dilation={dilation}")

    if isinstance(padding, str):
        if padding == "valid":
            pads = (0, 0, 0, 0)
        elif padding == "same":
            # PyTorch's "same": only for stride 1; total d*(k-1), the odd pixel after (bottom/right).
            if (sh, sw) != (1, 1):
                raise ShapeError(f"{op}: padding='same' needs stride 1, got stride={stride}")
            th, tw = dh * (kh - 1), dw * (kw - 1)
            pads = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
        else:
            raise ShapeError(f"{op}: padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
    else:
        ph, pw = _pair(padding, op, "padding")
        if min(ph, pw) < 0:
            raise ShapeError(f"{op}: padding must be non-negative, got {padding!r}")
        pads = (ph, ph, pw, pw)
    top, bottom, left, right = pads
    h_out = conv_output_size(h, kh, sh, top + bottom, dh)
    w_out = conv_output_size(w, kw, sw, left + right, dw)
    if h_out < 1 or w_out < 1:
        raise ShapeError(f"{op}: output would be empty: x {x.shape}, weight {weight.shape}, stride={stride}, "
                         f"padding={padding!r}, dilation={dilation} give {h_out}x{w_out}")
    dtype = _float_dtype(x, weight, bias)
    x = x.astype(dtype, copy=False)
    if any(pads):
        x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    return x, weight.astype(dtype, copy=False), (None if bias is None else bias.astype(dtype, copy=False)), \
        (sh, sw), (dh, dw), groups, (h_out, w_out)


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> np.ndarray:
    """2-D convolution (cross-correlation) with `torch.nn.functional.conv2d` semantics.

    Shapes:
        x       (N, C_in, H, W)
        weight  (C_out, C_in // groups, kH, kW)
        bias    (C_out,) or None
        out     (N, C_out, H_out, W_out)

        H_out = floor((H + pad_top + pad_bottom - dilation * (kH - 1) - 1) / stride) + 1   (same for W)

    stride, padding and dilation are ints or (h, w) pairs; padding may also be "valid" or "same".
    Input channels are split into `groups` groups, each convolved with its own C_out / groups filters.

    Two fast paths cover almost all the work of a MobileNet:
      * depthwise (groups == C_in): one kH x kW filter per channel; the sum over kernel taps is done
        as kH * kW shifted multiply-adds over the whole image;
      * pointwise (1x1, groups == 1): a matrix product (C_out, C_in) @ (C_in, H*W).
    Everything else goes through im2col: gather each output pixel's receptive field into a row,
    then one matrix product per group.
    """
    x, weight, bias, (sh, sw), (dh, dw), groups, (h_out, w_out) = _conv_arguments(
        x, weight, bias, stride, padding, dilation, groups, "conv2d")
    n, c_in = x.shape[:2]
    c_out, c_per_group, kh, kw = weight.shape

    if groups == 1 and kh == kw == 1:
        out = _pointwise(x[:, :, : sh * (h_out - 1) + 1: sh, : sw * (w_out - 1) + 1: sw], weight)
    elif groups == c_in:
        out = _depthwise(x, weight, (sh, sw), (dh, dw), (h_out, w_out))
    else:
        out = _im2col_conv(x, weight, (sh, sw), (dh, dw), groups, (h_out, w_out))
    if bias is not None:
        out += bias[None, :, None, None]
    return out


def _pointwise(x, weight):
    """1x1 convolution as a matrix product: (C_out, C_in) @ (N, C_in, H*W) -> (N, C_out, H, W)."""
    n, c_in, h, w = x.shape
    out = np.matmul(weight[:, :, 0, 0], x.reshape(n, c_in, h * w))  # (N, C_out, H*W)
    return out.reshape(n, -1, h, w)


def _depthwise(x, weight, stride, dilation, out_size):
    """Depthwise convolution: every channel is filtered by its own kH x kW kernel(s).

    With C_out = multiplier * C_in, output channel o reads input channel o // multiplier.
    """
    (sh, sw), (dh, dw), (h_out, w_out) = stride, dilation, out_size
    c_in = x.shape[1]
    c_out, _, kh, kw = weight.shape
    if c_out != c_in:
        x = np.repeat(x, c_out // c_in, axis=1)
    out = np.zeros((x.shape[0], c_out, h_out, w_out), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            # The input pixels that kernel tap (i, j) sees, for every output pixel at once.
            window = x[:, :, i * dh: i * dh + sh * (h_out - 1) + 1: sh, j * dw: j * dw + sw * (w_out - 1) + 1: sw]
            out += window * weight[None, :, 0, i, j, None, None]
    return out


def _im2col_conv(x, weight, stride, dilation, groups, out_size):
    """General grouped convolution through im2col and one matrix product per group."""
    (sh, sw), (dh, dw), (h_out, w_out) = stride, dilation, out_size
    n, c_in = x.shape[:2]
    c_out, c_per_group, kh, kw = weight.shape
    # windows[n, c, y, x, i, j] = x_padded[n, c, y*sh + i*dh, x*sw + j*dw]
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    windows = np.lib.stride_tricks.sliding_window_view(x, (span_h, span_w), axis=(2, 3))
    windows = windows[:, :, : sh * (h_out - 1) + 1: sh, : sw * (w_out - 1) + 1: sw, ::dh, ::dw]
    windows = windows.reshape(n, groups, c_per_group, h_out, w_out, kh, kw)
    cols = windows.transpose(1, 0, 3, 4, 2, 5, 6).reshape(groups, n * h_out * w_out, c_per_group * kh * kw)
    filters = weight.reshape(groups, c_out // groups, c_per_group * kh * kw)
    out = np.matmul(cols, filters.transpose(0, 2, 1))  # (groups, N*H_out*W_out, C_out/groups)
    out = out.reshape(groups, n, h_out, w_out, c_out // groups).transpose(1, 0, 4, 2, 3)
    return np.ascontiguousarray(out.reshape(n, c_out, h_out, w_out))


def conv2d_naive(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> np.ndarray:
    """Loop version of `conv2d`: one output value at a time, summing input * weight over its window.

    out[b, o, y, x] = bias[o] + sum over c, i, j of
                      x_padded[b, g * C_in/groups + c, y * sh + i * dh, x * sw + j * dw] * weight[o, c, i, j]
    where g = o // (C_out / groups) is the group of output channel o.
    """
    x, weight, bias, (sh, sw), (dh, dw), groups, (h_out, w_out) = _conv_arguments(
        x, weight, bias, stride, padding, dilation, groups, "conv2d_naive")
    n = x.shape[0]
    c_out, c_per_group, kh, kw = weight.shape
    out_per_group = c_out // groups
    out = np.zeros((n, c_out, h_out, w_out), dtype=x.dtype)
    for b in range(n):
        for o in range(c_out):
            first_in_channel = (o // out_per_group) * c_per_group
            for y in range(h_out):
                for x_ in range(w_out):
                    total = 0.0 if bias is None else bias[o]
                    for c in range(c_per_group):
                        for i in range(kh):
                            for j in range(kw):
                                total += x[b, first_in_channel + c, y * sh + i * dh, x_ * sw + j * dw] * weight[o, c, i, j]
                    out[b, o, y, x_] = total
    return out


# --------------------------------------------------------------------------------------------------
# normalisation and activations
# --------------------------------------------------------------------------------------------------

def _batch_norm_arguments(x, running_mean, running_var, weight, bias, op):
    x = _as_array(x, op, "x", ndim=4)
    c = x.shape[1]
    arrays = {"running_mean": running_mean, "running_var": running_var, "weight": weight, "bias": bias}
    for name, value in arrays.items():
        value = _as_array(value, op, name, ndim=1)
        if value.shape[0] != c:
            raise ShapeError(f"{op}: {name} has shape {value.shape} but x {x.shape} has {c} channels")
        arrays[name] = value
    dtype = _float_dtype(x, *arrays.values())
    return x.astype(dtype, copy=False), {k: v.astype(dtype, copy=False) for k, v in arrays.items()}


def batch_norm(x, running_mean, running_var, weight, bias, eps) -> np.ndarray:
    """Inference BatchNorm (`torch.nn.functional.batch_norm(..., training=False)`).

    Shapes: x (N, C, H, W); running_mean, running_var, weight, bias (C,); out (N, C, H, W).

        out = (x - running_mean) / sqrt(running_var + eps) * weight + bias      (per channel)

    computed as one multiply-add per element: scale = weight / sqrt(var + eps), shift = bias - mean * scale.
    """
    x, p = _batch_norm_arguments(x, running_mean, running_var, weight, bias, "batch_norm")
    scale = p["weight"] / np.sqrt(p["running_var"] + x.dtype.type(eps))
    shift = p["bias"] - p["running_mean"] * scale
    return x * scale[None, :, None, None] + shift[None, :, None, None]


def batch_norm_naive(x, running_mean, running_var, weight, bias, eps) -> np.ndarray:
    """Loop version of `batch_norm`: normalise each channel with its own statistics, the formula as written."""
    x, p = _batch_norm_arguments(x, running_mean, running_var, weight, bias, "batch_norm_naive")
    out = np.empty_like(x)
    for c in range(x.shape[1]):
        std = math.sqrt(float(p["running_var"][c]) + eps)
        out[:, c] = (x[:, c] - p["running_mean"][c]) / x.dtype.type(std) * p["weight"][c] + p["bias"][c]
    return out


def relu(x) -> np.ndarray:
    """max(x, 0), elementwise. Any shape in, the same shape out."""
    x = np.asarray(x)
    return np.maximum(x, x.dtype.type(0))


def relu6(x) -> np.ndarray:
    """min(max(x, 0), 6), elementwise: ReLU capped at 6 (keeps activations in a range that quantises well)."""
    x = np.asarray(x)
    return np.clip(x, x.dtype.type(0), x.dtype.type(6))


def _elementwise_naive(x, function):
    x = np.asarray(x)
    out = np.empty_like(x)
    flat_in, flat_out = x.reshape(-1), out.reshape(-1)
    for k in range(flat_in.size):
        flat_out[k] = function(flat_in[k])
    return out


def relu_naive(x) -> np.ndarray:
    """Loop version of `relu`."""
    return _elementwise_naive(x, lambda v: v if v > 0 else 0)


def relu6_naive(x) -> np.ndarray:
    """Loop version of `relu6`."""
    return _elementwise_naive(x, lambda v: 0 if v < 0 else (6 if v > 6 else v))


# --------------------------------------------------------------------------------------------------
# pooling, linear, softmax
# --------------------------------------------------------------------------------------------------

def global_avg_pool2d(x) -> np.ndarray:
    """Mean over all pixels of each channel (= `nn.AdaptiveAvgPool2d((1, 1))`).

    Shapes: (N, C, H, W) -> (N, C, 1, 1).
    """
    x = _as_array(x, "global_avg_pool2d", "x", ndim=4)
    return x.astype(_float_dtype(x), copy=False).mean(axis=(2, 3), keepdims=True)


def global_avg_pool2d_naive(x) -> np.ndarray:
    """Loop version of `global_avg_pool2d`: add up each channel's pixels, divide by their count."""
    x = _as_array(x, "global_avg_pool2d_naive", "x", ndim=4)
    n, c, h, w = x.shape
    out = np.zeros((n, c, 1, 1), dtype=_float_dtype(x))
    for b in range(n):
        for ch in range(c):
            total = 0.0
            for i in range(h):
                for j in range(w):
                    total += float(x[b, ch, i, j])
            out[b, ch, 0, 0] = total / (h * w)
    return out


def _linear_arguments(x, weight, bias, op):
    x = _as_array(x, op, "x", ndim=2)
    weight = _as_array(weight, op, "weight", ndim=2)
    if x.shape[1] != weight.shape[1]:
        raise ShapeError(f"{op}: x {x.shape} has {x.shape[1]} features but weight {weight.shape} expects {weight.shape[1]}")
    if bias is not None:
        bias = _as_array(bias, op, "bias", ndim=1)
        if bias.shape[0] != weight.shape[0]:
            raise ShapeError(f"{op}: bias {bias.shape} must have {weight.shape[0]} entries (weight {weight.shape})")
    dtype = _float_dtype(x, weight, bias)
    return x.astype(dtype, copy=False), weight.astype(dtype, copy=False), \
        (None if bias is None else bias.astype(dtype, copy=False))


def linear(x, weight, bias=None) -> np.ndarray:
    """Fully connected layer (`torch.nn.functional.linear`): out = x @ weight.T + bias.

    Shapes: x (N, in_features), weight (out_features, in_features), bias (out_features,) -> (N, out_features).
    """
    x, weight, bias = _linear_arguments(x, weight, bias, "linear")
    out = x @ weight.T
    if bias is not None:
        out += bias
    return out


def linear_naive(x, weight, bias=None) -> np.ndarray:
    """Loop version of `linear`: each output is a dot product of the input row with one weight row."""
    x, weight, bias = _linear_arguments(x, weight, bias, "linear_naive")
    out = np.zeros((x.shape[0], weight.shape[0]), dtype=x.dtype)
    for b in range(x.shape[0]):
        for o in range(weight.shape[0]):
            total = 0.0 if bias is None else bias[o]
            for i in range(x.shape[1]):
                total += x[b, i] * weight[o, i]
            out[b, o] = total
    return out


def softmax(x, axis=-1) -> np.ndarray:
    """exp(x) / sum(exp(x)) along `axis`, computed stably (the maximum is subtracted first). Shape kept."""
    x = np.asarray(x)
    x = x.astype(_float_dtype(x), copy=False)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def softmax_naive(x) -> np.ndarray:
    """Loop version of `softmax` over the last axis of a 2-D array (N, K)."""
    x = _as_array(x, "softmax_naive", "x", ndim=2)
    out = np.empty(x.shape, dtype=_float_dtype(x))
    for b in range(x.shape[0]):
        largest = max(x[b])
        exps = [math.exp(float(v - largest)) for v in x[b]]
        total = sum(exps)
        for k in range(x.shape[1]):
            out[b, k] = exps[k] / total
    return out


# --------------------------------------------------------------------------------------------------
# bilinear resizing
# --------------------------------------------------------------------------------------------------

def _source_coordinates(out_size: int, in_size: int, align_corners: bool, dtype) -> np.ndarray:
    """Where each output pixel samples the input, in input pixel units (PyTorch's rule).

    align_corners=True:  src = dst * (in - 1) / (out - 1)    (corners map onto corners; 0 when out == 1)
    align_corners=False: src = (dst + 0.5) * in / out - 0.5, clamped at 0   (pixel centres line up)
    """
    dst = np.arange(out_size, dtype=dtype)
    if align_corners:
        scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
        return dst * dtype.type(scale)
    scale = dtype.type(in_size / out_size)
    return np.maximum((dst + dtype.type(0.5)) * scale - dtype.type(0.5), dtype.type(0))


def _interpolation_arguments(x, size, op):
    x = _as_array(x, op, "x", ndim=4)
    out_h, out_w = _pair(size, op, "size")
    if out_h < 1 or out_w < 1:
        raise ShapeError(f"{op}: size must be positive, got {size!r} for x {x.shape}")
    if x.shape[2] < 1 or x.shape[3] < 1:
        raise ShapeError(f"{op}: x {x.shape} has no pixels to interpolate")
    return x.astype(_float_dtype(x), copy=False), out_h, out_w


def _bilinear_taps(out_size, in_size, align_corners, dtype):
    """For each output index: the two input indices it blends and the weight of the second one."""
    src = _source_coordinates(out_size, in_size, align_corners, dtype)
    lower = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    upper = np.minimum(lower + 1, in_size - 1)
    return lower, upper, src - lower.astype(dtype)


def interpolate_bilinear(x, size, align_corners: bool) -> np.ndarray:
    """Bilinear resize (`F.interpolate(x, size, mode="bilinear", align_corners=...)`).

    Shapes: (N, C, H, W) -> (N, C, size[0], size[1]); size is an int or an (h, w) pair.

    Each output pixel is a weighted mean of the 4 input pixels around its source coordinate
    (see `_source_coordinates`): first blend along the width, then along the height.
    """
    x, out_h, out_w = _interpolation_arguments(x, size, "interpolate_bilinear")
    dtype = x.dtype
    top, bottom, wy = _bilinear_taps(out_h, x.shape[2], align_corners, dtype)
    left, right, wx = _bilinear_taps(out_w, x.shape[3], align_corners, dtype)
    rows = x[:, :, top, :] * (1 - wy)[:, None] + x[:, :, bottom, :] * wy[:, None]  # (N, C, out_h, W)
    return rows[:, :, :, left] * (1 - wx) + rows[:, :, :, right] * wx               # (N, C, out_h, out_w)


def interpolate_bilinear_naive(x, size, align_corners: bool) -> np.ndarray:
    """Loop version of `interpolate_bilinear`: one output pixel at a time from its 4 neighbours."""
    x, out_h, out_w = _interpolation_arguments(x, size, "interpolate_bilinear_naive")
    n, c, in_h, in_w = x.shape
    ys = _source_coordinates(out_h, in_h, align_corners, x.dtype)
    xs = _source_coordinates(out_w, in_w, align_corners, x.dtype)
    out = np.zeros((n, c, out_h, out_w), dtype=x.dtype)
    for i in range(out_h):
        y0 = min(int(math.floor(ys[i])), in_h - 1)
        y1 = min(y0 + 1, in_h - 1)
        wy = ys[i] - y0
        for j in range(out_w):
            x0 = min(int(math.floor(xs[j])), in_w - 1)
            x1 = min(x0 + 1, in_w - 1)
            wx = xs[j] - x0
            top = x[:, :, y0, x0] * (1 - wx) + x[:, :, y0, x1] * wx
            bottom = x[:, :, y1, x0] * (1 - wx) + x[:, :, y1, x1] * wx
            out[:, :, i, j] = top * (1 - wy) + bottom * wy
    return out
