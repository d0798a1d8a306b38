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

from .checks import conv_bias, float_dtype, numeric_array, pair, stride_and_dilation
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
    "resize_image", "resize_image_naive", "resize_weights", "nearest_indices",
]


# --------------------------------------------------------------------------------------------------
# helpers shared by the ops (the argument checks are in mobilenet_np/checks.py)
# --------------------------------------------------------------------------------------------------

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


def _pad_arguments(x, kernel_size, stride, dilation, op):
    x = numeric_array(x, op, "x", ndim=4)
    (kh, kw), (sh, sw), (dh, dw) = (pair(v, op, n) for v, n in
                                    ((kernel_size, "kernel_size"), (stride, "stride"), (dilation, "dilation")))
    if min(kh, kw) < 1 or min(sh, sw) < 1 or min(dh, dw) < 1:
        raise ShapeError(f"{op}: kernel_size, stride and dilation must be positive, "
                         f"got kernel_size={kernel_size}, stride={stride}, dilation={dilation}")
    return x, (kh, kw), (sh, sw), (dh, dw)


def pad_tf_same(x, kernel_size, stride, dilation=1) -> np.ndarray:
    """Zero-pad an (N, C, H, W) array the way TensorFlow "SAME" (transformers `apply_tf_padding`) does.

    Shapes: (N, C, H, W) -> (N, C, H + top + bottom, W + left + right), with the amounts of
    `tf_same_padding_amounts` per axis (asymmetric: the extra row/column goes at the bottom/right).
    """
    x, (kh, kw), (sh, sw), (dh, dw) = _pad_arguments(x, kernel_size, stride, dilation, "pad_tf_same")
    top, bottom = tf_same_padding_amounts(x.shape[2], kh, sh, dh)
    left, right = tf_same_padding_amounts(x.shape[3], kw, sw, dw)
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))


def pad_tf_same_naive(x, kernel_size, stride, dilation=1) -> np.ndarray:
    """Loop version of `pad_tf_same`: allocate the padded array and copy every pixel into place."""
    x, (kh, kw), (sh, sw), (dh, dw) = _pad_arguments(x, kernel_size, stride, dilation, "pad_tf_same_naive")
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
    x = numeric_array(x, op, "x", ndim=4)
    weight = numeric_array(weight, op, "weight", ndim=4)
    n, c_in, h, w = x.shape
    c_out, c_per_group, kh, kw = weight.shape
    groups = int(groups)
    if groups < 1 or c_in % groups or c_out % groups:
        raise ShapeError(f"{op}: groups={groups} must divide both in_channels={c_in} (x {x.shape}) "
                         f"and out_channels={c_out} (weight {weight.shape})")
    if c_per_group * groups != c_in:
        raise ShapeError(f"{op}: channel mismatch: x {x.shape} has {c_in} channels but weight {weight.shape} "
                         f"expects {c_per_group} x groups={groups} = {c_per_group * groups}")
    bias = conv_bias(bias, op, c_out, weight.shape)
    (sh, sw), (dh, dw) = stride_and_dilation(stride, dilation, op)

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
        ph, pw = pair(padding, op, "padding")
        if min(ph, pw) < 0:
            raise ShapeError(f"{op}: padding must be non-negative, got {padding!r}")
        pads = (ph, ph, pw, pw)
    top, bottom, left, right = pads
    h_out = conv_output_size(h, kh, sh, top + bottom, dh)
    w_out = conv_output_size(w, kw, sw, left + right, dw)
    if h_out < 1 or w_out < 1:
        raise ShapeError(f"{op}: output would be empty: x {x.shape}, weight {weight.shape}, stride={stride}, "
                         f"padding={padding!r}, dilation={dilation} give {h_out}x{w_out}")
    dtype = float_dtype(x, weight, bias)
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
    x = numeric_array(x, op, "x", ndim=4)
    c = x.shape[1]
    arrays = {"running_mean": running_mean, "running_var": running_var, "weight": weight, "bias": bias}
    for name, value in arrays.items():
        value = numeric_array(value, op, name, ndim=1)
        if value.shape[0] != c:
            raise ShapeError(f"{op}: {name} has shape {value.shape} but x {x.shape} has {c} channels")
        arrays[name] = value
    dtype = float_dtype(x, *arrays.values())
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


def _elementwise_input(x, op: str) -> np.ndarray:
    """x as an array of the module's float dtype (float64 stays float64, anything else becomes float32)."""
    x = numeric_array(x, op, "x")
    return x.astype(float_dtype(x), copy=False)


def relu(x) -> np.ndarray:
    """max(x, 0), elementwise. Any shape in, the same shape out."""
    x = _elementwise_input(x, "relu")
    return np.maximum(x, x.dtype.type(0))


def relu6(x) -> np.ndarray:
    """min(max(x, 0), 6), elementwise: ReLU capped at 6 (keeps activations in a range that quantises well)."""
    x = _elementwise_input(x, "relu6")
    return np.clip(x, x.dtype.type(0), x.dtype.type(6))


def _elementwise_naive(x, function):
    x = _elementwise_input(x, "relu_naive")
    out = np.empty_like(x)
    flat_in, flat_out = x.reshape(-1), out.reshape(-1)
    for k in range(flat_in.size):
        flat_out[k] = function(flat_in[k])
    return out


def relu_naive(x) -> np.ndarray:
    """Loop version of `relu`."""
    return _elementwise_naive(x, lambda v: 0 if v < 0 else v)  # NaN stays NaN, as in relu


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
    x = numeric_array(x, "global_avg_pool2d", "x", ndim=4)
    return x.astype(float_dtype(x), copy=False).mean(axis=(2, 3), keepdims=True)


def global_avg_pool2d_naive(x) -> np.ndarray:
    """Loop version of `global_avg_pool2d`: add up each channel's pixels, divide by their count."""
    x = numeric_array(x, "global_avg_pool2d_naive", "x", ndim=4)
    n, c, h, w = x.shape
    out = np.zeros((n, c, 1, 1), dtype=float_dtype(x))
    for b in range(n):
        for ch in range(c):
            total = 0.0
            for i in range(h):
                for j in range(w):
                    total += float(x[b, ch, i, j])
            out[b, ch, 0, 0] = total / (h * w)
    return out


def _linear_arguments(x, weight, bias, op):
    x = numeric_array(x, op, "x", ndim=2)
    weight = numeric_array(weight, op, "weight", ndim=2)
    if x.shape[1] != weight.shape[1]:
        raise ShapeError(f"{op}: x {x.shape} has {x.shape[1]} features but weight {weight.shape} expects {weight.shape[1]}")
    if bias is not None:
        bias = numeric_array(bias, op, "bias", ndim=1)
        if bias.shape[0] != weight.shape[0]:
            raise ShapeError(f"{op}: bias {bias.shape} must have {weight.shape[0]} entries (weight {weight.shape})")
    dtype = float_dtype(x, weight, bias)
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
    x = x.astype(float_dtype(x), copy=False)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def softmax_naive(x) -> np.ndarray:
    """Loop version of `softmax` over the last axis of a 2-D array (N, K)."""
    x = numeric_array(x, "softmax_naive", "x", ndim=2)
    out = np.empty(x.shape, dtype=float_dtype(x))
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
    x = numeric_array(x, op, "x", ndim=4)
    out_h, out_w = pair(size, op, "size")
    if out_h < 1 or out_w < 1:
        raise ShapeError(f"{op}: size must be positive, got {size!r} for x {x.shape}")
    if x.shape[2] < 1 or x.shape[3] < 1:
        raise ShapeError(f"{op}: x {x.shape} has no pixels to interpolate")
    return x.astype(float_dtype(x), copy=False), out_h, out_w


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


# --------------------------------------------------------------------------------------------------
# image resizing (the image processors' resize: Pillow's algorithm, exactly)
# --------------------------------------------------------------------------------------------------
#
# transformers' PIL backend resizes 8-bit images with Pillow's `Image.resize`. Pillow does not
# sample 4 neighbours like `interpolate_bilinear`: when it shrinks an image it widens the filter
# by the shrink factor (antialiasing), so every input pixel contributes. It resizes the width
# first, then the height, each pass in fixed-point integers rounded back to uint8. We reproduce
# that bit for bit, so our pixel values equal transformers'.

def _box_filter(x):
    return ((x > -0.5) & (x <= 0.5)).astype(np.float64)


def _triangle_filter(x):  # "bilinear"
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


_F32_054, _F32_046 = float(np.float32(0.54)), float(np.float32(0.46))  # Pillow writes them as C floats


def _hamming_filter(x):
    x = np.abs(x)
    with np.errstate(invalid="ignore", divide="ignore"):
        px = x * math.pi
        value = np.sin(px) / px * (_F32_054 + _F32_046 * np.cos(px))
    return np.where(x == 0.0, 1.0, np.where(x >= 1.0, 0.0, value))


def _cubic_filter(x, a=-0.5):  # "bicubic" (Keys, a = -0.5)
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _lanczos_filter(x):  # Lanczos-3
    return np.where((-3.0 <= x) & (x < 3.0), np.sinc(x) * np.sinc(x / 3), 0.0)


# Pillow's resample codes -> (filter, support radius in input pixels at scale 1)
RESAMPLE_FILTERS = {1: (_lanczos_filter, 3.0), 2: (_triangle_filter, 1.0), 3: (_cubic_filter, 2.0),
                    4: (_box_filter, 0.5), 5: (_hamming_filter, 1.0)}
_PRECISION_BITS = 32 - 8 - 2  # fixed-point fraction bits Pillow uses for 8-bit images
NEAREST = 0


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Input index of each output pixel for Pillow's "nearest": the pixel under the output pixel's centre,
    (x + 0.5) * in_size / out_size, truncated. Pillow adds the step x times, so we add it the same way."""
    step = in_size / out_size
    steps = np.full(out_size, step)
    steps[0] = 0.5 * step
    return np.minimum(np.trunc(np.cumsum(steps)).astype(np.int64), in_size - 1)


def resize_weights(in_size: int, out_size: int, resample: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Which input pixels each output pixel reads, and with what fixed-point weights (Pillow's rule).

    Returns (first, weights): first (out_size,) is the first input index of each output pixel's
    window and weights (out_size, taps) the int64 weights, in units of 2**-22, of input pixels
    first .. first + taps - 1 (zero past the window). For output pixel x:

        scale  = in_size / out_size;  widen = max(scale, 1)        (antialias only when shrinking)
        center = (x + 0.5) * scale                                 (in input pixel units)
        window = input pixels i with |i + 0.5 - center| < support * widen
        weight = filter((i + 0.5 - center) / widen), normalised to sum 1, then rounded to 2**-22
    """
    filter_function, radius = RESAMPLE_FILTERS[resample]
    scale = in_size / out_size
    widen = max(scale, 1.0)
    support = radius * widen
    taps = int(math.ceil(support)) * 2 + 1
    center = (np.arange(out_size) + 0.5) * scale
    first = np.maximum(np.trunc(center - support + 0.5).astype(np.int64), 0)
    last = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size)
    count = last - first
    offsets = np.arange(taps)
    weights = filter_function((offsets[None, :] + first[:, None] - center[:, None] + 0.5) * (1.0 / widen))
    weights = np.where(offsets[None, :] < count[:, None], weights, 0.0)
    total = np.zeros(out_size)
    for t in range(taps):  # summed tap by tap, in Pillow's order, so the rounding matches exactly
        total += weights[:, t]
    weights = np.where(total[:, None] != 0.0, weights / np.where(total == 0.0, 1.0, total)[:, None], weights)
    fixed = np.trunc(weights * (1 << _PRECISION_BITS) + np.where(weights < 0, -0.5, 0.5)).astype(np.int64)
    return first, fixed


def _resize_axis(image: np.ndarray, out_size: int, axis: int, resample: int) -> np.ndarray:
    """One pass of `resize_image` along `axis` of a uint8 array."""
    in_size = image.shape[axis]
    first, weights = resize_weights(in_size, out_size, resample)
    pixels = np.moveaxis(image, axis, 0).astype(np.int64)           # (in_size, ...)
    total = np.full((out_size,) + pixels.shape[1:], 1 << (_PRECISION_BITS - 1), dtype=np.int64)  # +0.5: round
    extra_dims = (1,) * (pixels.ndim - 1)
    for t in range(weights.shape[1]):
        index = np.minimum(first + t, in_size - 1)                   # past the window the weight is 0
        total += pixels[index] * weights[:, t].reshape((out_size,) + extra_dims)
    out = np.clip(total >> _PRECISION_BITS, 0, 255).astype(np.uint8)
    return np.moveaxis(out, 0, axis)


def resize_image(image, size, resample: int = 2) -> np.ndarray:
    """Resize an 8-bit image exactly as Pillow's `Image.resize(size, resample)` does.

    Shapes: (H, W) or (H, W, C) uint8 -> (size[0], size[1]) or (size[0], size[1], C) uint8.
    resample: Pillow's codes 0 nearest, 1 lanczos, 2 bilinear (the MobileNet processors'), 3 bicubic, 4 box,
    5 hamming.
    The width is resized first, then the height; each pass rounds to uint8 (see `resize_weights`).
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ShapeError(f"resize_image: image must be a (H, W) or (H, W, C) uint8 array, got {image.dtype} {image.shape}")
    out_h, out_w = pair(size, "resize_image", "size")
    if min(out_h, out_w) < 1 or 0 in image.shape:
        raise ShapeError(f"resize_image: cannot resize an image of shape {image.shape} to {size!r}")
    if resample not in RESAMPLE_FILTERS and resample != NEAREST:
        raise ShapeError(f"resize_image: resample must be one of {sorted([NEAREST, *RESAMPLE_FILTERS])} "
                         f"(Pillow's codes), got {resample!r}")
    if resample == NEAREST:
        return image[nearest_indices(image.shape[0], out_h)][:, nearest_indices(image.shape[1], out_w)]
    for axis, size in _pass_order(image.shape[0], image.shape[1], out_h, out_w):
        if image.shape[axis] != size:
            image = _resize_axis(image, size, axis, resample)
    return np.array(image)


def _pass_order(in_h: int, in_w: int, out_h: int, out_w: int) -> list[tuple[int, int]]:
    """The order of Pillow's two passes, as (axis, size): width first, unless the height shrinks
    by more than twice as many pixels as the width does (then height first, which is cheaper).
    The order matters because each pass rounds to uint8."""
    if in_h - out_h > 0 and in_h - out_h > 2 * (in_w - out_w):
        return [(0, out_h), (1, out_w)]
    return [(1, out_w), (0, out_h)]


def resize_image_naive(image, size, resample: int = 2) -> np.ndarray:
    """Loop version of `resize_image`: every output value is a weighted sum over its input window."""
    image = np.asarray(image)
    out_h, out_w = pair(size, "resize_image_naive", "size")
    if resample == NEAREST:
        rows, cols = nearest_indices(image.shape[0], out_h), nearest_indices(image.shape[1], out_w)
        out = np.empty((out_h, out_w) + image.shape[2:], dtype=image.dtype)
        for y in range(out_h):
            for x in range(out_w):
                out[y, x] = image[rows[y], cols[x]]
        return out
    squeeze = image.ndim == 2
    pixels = image[:, :, None] if squeeze else image
    half = 1 << (_PRECISION_BITS - 1)

    def one_pass(src, out_size, along_width):
        in_size = src.shape[1] if along_width else src.shape[0]
        first, weights = resize_weights(in_size, out_size, resample)
        h, w, c = src.shape
        dst = np.zeros((h, out_size, c) if along_width else (out_size, w, c), dtype=np.uint8)
        for y in range(dst.shape[0]):
            for x in range(dst.shape[1]):
                for ch in range(c):
                    o = x if along_width else y
                    total = half
                    for t in range(weights.shape[1]):
                        i = first[o] + t
                        if i < in_size and weights[o, t] != 0:
                            total += int(src[y, i, ch] if along_width else src[i, x, ch]) * int(weights[o, t])
                    dst[y, x, ch] = min(max(total >> _PRECISION_BITS, 0), 255)
        return dst

    for axis, size in _pass_order(pixels.shape[0], pixels.shape[1], out_h, out_w):
        if pixels.shape[axis] != size:
            pixels = one_pass(pixels, size, along_width=axis == 1)
    return pixels[:, :, 0] if squeeze else pixels
