"""Forward/backward pairs for every layer of MobileNet V1, V2 and DeepLabV3 (cs231n style).

Every layer comes as

    out, cache = layer_forward(x, ...)                 # the forward of `mobilenet_np.ops`, plus a cache
    dx, dw, ... = layer_backward(dout, cache)          # gradients of the loss w.r.t. the inputs
    dx, dw, ... = layer_backward_naive(dout, cache)    # the same with plain loops

where `dout` is d loss / d out (same shape as `out`). The fast backward is vectorised NumPy; the naive
twin walks over every element of the forward's loops and *scatters* each upstream gradient back to the
inputs that produced it (the backward of a gather is a scatter). The tests check fast == naive and
both against `torch.autograd`.

Conventions are those of `mobilenet_np.ops` (and PyTorch): NCHW activations, OIHW weights, float32 in
-> float32 out, float64 anywhere -> float64 out. Sums done with NumPy reductions (biases, BatchNorm,
depthwise weights) accumulate in float64 and are rounded back; matrix products (convolution, linear)
run in the working dtype, as BLAS (and PyTorch) do. The caches are dicts whose keys are documented in
each forward; callers read a few of them (BatchNorm's batch statistics) and pass the rest back unchanged.

Each backward's formula is written in its docstring. Notation: M = N * H * W (values per channel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import ops
from ..checks import conv_bias, float_dtype, numeric_array, pair, stride_and_dilation
from ..errors import ConfigError, ShapeError

__all__ = [
    "conv2d_forward", "conv2d_backward", "conv2d_backward_naive",
    "depthwise_conv2d_forward", "depthwise_conv2d_backward", "depthwise_conv2d_backward_naive",
    "pointwise_conv2d_forward", "pointwise_conv2d_backward", "pointwise_conv2d_backward_naive",
    "batch_norm_train_forward", "batch_norm_train_backward", "batch_norm_train_backward_naive",
    "batch_norm_eval_forward", "batch_norm_eval_backward", "batch_norm_eval_backward_naive",
    "batch_norm_update_running",
    "relu_forward", "relu_backward", "relu_backward_naive",
    "relu6_forward", "relu6_backward", "relu6_backward_naive",
    "global_avg_pool_forward", "global_avg_pool_backward", "global_avg_pool_backward_naive",
    "linear_forward", "linear_backward", "linear_backward_naive",
    "dropout_forward", "dropout_backward", "dropout_backward_naive",
    "dropout2d_forward", "dropout2d_backward", "dropout2d_backward_naive",
    "interpolate_bilinear_forward", "interpolate_bilinear_backward", "interpolate_bilinear_backward_naive",
    "concat_channels_forward", "concat_channels_backward", "concat_channels_backward_naive",
    "add_forward", "add_backward", "add_backward_naive",
]


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _upstream(dout, shape, dtype, op: str) -> np.ndarray:
    """dout as an array of the forward output's shape, in the forward's dtype."""
    dout = numeric_array(dout, op, "dout")
    if dout.shape != tuple(shape):
        raise ShapeError(f"{op}: dout has shape {dout.shape} but the forward output has shape {tuple(shape)}")
    return dout.astype(dtype, copy=False)


def _sum64(a, axis, dtype) -> np.ndarray:
    """Sum along `axis`, accumulated in float64, returned in `dtype`."""
    return a.sum(axis=axis, dtype=np.float64).astype(dtype, copy=False)


# --------------------------------------------------------------------------------------------------
# convolutions
# --------------------------------------------------------------------------------------------------
#
# All three share the geometry: pad (symmetric int/pair, "valid", or TF "SAME" = asymmetric, computed
# from the input size), then slide a kH x kW window with stride s and dilation d over the padded input.
# `_tap(a, i, j)` is the strided *view* of the padded array that kernel tap (i, j) reads for every
# output pixel at once:
#
#     _tap(xp, i, j)[n, c, y, x] = xp[n, c, y * sh + i * dh, x * sw + j * dw]        (N, C, H_out, W_out)
#
# Within one tap these positions are distinct, so `_tap(dxp, i, j)[...] += g` scatters without
# collisions; summing over the kH * kW taps adds up the overlaps. The padding's gradient is thrown
# away at the end: dx = dxp cropped to the original H x W (for TF "SAME": top/left offsets of the
# asymmetric pad).

@dataclass(frozen=True)
class ConvGeometry:
    """Where a convolution's window goes. pads = (top, bottom, left, right); sizes are (h, w)."""
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pads: tuple[int, int, int, int]
    in_size: tuple[int, int]
    out_size: tuple[int, int]


def conv_arguments(x, weight, bias, stride, padding, dilation, op, kind):
    """Validate a convolution's arguments; return x, weight, bias in the working dtype and the geometry.

    kind: "general" (weight (C_out, C_in, kH, kW)), "depthwise" (weight (C, 1, kH, kW)) or
    "pointwise" (weight (C_out, C_in, 1, 1)).
    """
    x = numeric_array(x, op, "x", ndim=4)
    weight = numeric_array(weight, op, "weight", ndim=4)
    n, c_in, h, w = x.shape
    c_out, c_w, kh, kw = weight.shape
    if kind == "depthwise":
        if c_w != 1 or c_out != c_in:
            raise ShapeError(f"{op}: weight must have shape (C, 1, kH, kW) with C = {c_in} channels of x {x.shape} "
                             f"(depth multiplier 1), got {weight.shape}")
    elif c_w != c_in:
        raise ShapeError(f"{op}: weight {weight.shape} expects {c_w} input channels but x {x.shape} has {c_in}")
    if kind == "pointwise" and (kh, kw) != (1, 1):
        raise ShapeError(f"{op}: weight must be 1x1 (C_out, C_in, 1, 1), got {weight.shape}")
    if min(kh, kw) < 1:
        raise ShapeError(f"{op}: weight {weight.shape} has an empty kernel")
    bias = conv_bias(bias, op, c_out, weight.shape)
    (sh, sw), (dh, dw) = stride_and_dilation(stride, dilation, op)
    if isinstance(padding, str):
        if padding == "valid":
            pads = (0, 0, 0, 0)
        elif padding == "tf_same":
            pads = (ops.tf_same_padding_amounts(h, kh, sh, dh) + ops.tf_same_padding_amounts(w, kw, sw, dw))
        else:
            raise ShapeError(f"{op}: padding must be an int, a pair, 'valid' or 'tf_same', got {padding!r}")
    else:
        ph, pw = pair(padding, op, "padding")
        if min(ph, pw) < 0:
            raise ShapeError(f"{op}: padding must be non-negative, got {padding!r}")
        pads = (ph, ph, pw, pw)
    top, bottom, left, right = pads
    h_out = ops.conv_output_size(h, kh, sh, top + bottom, dh)
    w_out = ops.conv_output_size(w, kw, sw, left + right, dw)
    if h_out < 1 or w_out < 1:
        raise ShapeError(f"{op}: output would be empty: x {x.shape}, weight {weight.shape}, stride={stride}, "
                         f"padding={padding!r}, dilation={dilation} give {h_out}x{w_out}")
    dtype = float_dtype(x, weight, bias)
    geometry = ConvGeometry((sh, sw), (dh, dw), pads, (h, w), (h_out, w_out))
    return (x.astype(dtype, copy=False), weight.astype(dtype, copy=False),
            None if bias is None else bias.astype(dtype, copy=False), geometry)


def spatial_size(x: np.ndarray) -> tuple[int, int]:
    """(H, W) of an (N, C, H, W) tensor."""
    return x.shape[-2:]


def _pad(x, pads):
    top, bottom, left, right = pads
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right))) if any(pads) else x


def _crop(dxp, geometry):
    """The gradient of the unpadded input: drop the rows/columns that were padding."""
    top, _, left, _ = geometry.pads
    h, w = geometry.in_size
    return np.ascontiguousarray(dxp[:, :, top: top + h, left: left + w])


def _tap(a, i, j, geometry):
    """View of the padded array `a` at kernel tap (i, j) for every output pixel: (N, C, H_out, W_out)."""
    (sh, sw), (dh, dw), (h_out, w_out) = geometry.stride, geometry.dilation, geometry.out_size
    return a[:, :, i * dh: i * dh + sh * (h_out - 1) + 1: sh, j * dw: j * dw + sw * (w_out - 1) + 1: sw]


def _conv_forward(x, weight, bias, stride, padding, dilation, op, kind):
    x, weight, bias, geometry = conv_arguments(x, weight, bias, stride, padding, dilation, op, kind)
    x_padded = _pad(x, geometry.pads)
    groups = x.shape[1] if kind == "depthwise" else 1
    out = ops.conv2d(x_padded, weight, bias, geometry.stride, 0, geometry.dilation, groups)
    cache = {"x_padded": x_padded, "weight": weight, "has_bias": bias is not None, "geometry": geometry}
    return out, cache


def _conv_cache(dout, cache, op):
    xp, weight, geometry = cache["x_padded"], cache["weight"], cache["geometry"]
    shape = (xp.shape[0], weight.shape[0]) + geometry.out_size
    return _upstream(dout, shape, xp.dtype, op), xp, weight, geometry


def conv2d_forward(x, weight, bias=None, stride=1, padding=0, dilation=1):
    """Convolution with groups=1 (`F.conv2d`), keeping what the backward needs.

    Shapes: x (N, C_in, H, W), weight (C_out, C_in, kH, kW), bias (C_out,) or None
            -> out (N, C_out, H_out, W_out).
    padding: an int or (h, w) pair (symmetric), "valid", or "tf_same" (TensorFlow "SAME": the
    asymmetric pad of `ops.pad_tf_same`, scaled by the dilation as transformers does).

        out[n, o, y, x] = b[o] + sum_{c, i, j} xp[n, c, y*sh + i*dh, x*sw + j*dw] * w[o, c, i, j]

    cache: x_padded (N, C_in, H + pad, W + pad), weight, has_bias, geometry (ConvGeometry).
    """
    return _conv_forward(x, weight, bias, stride, padding, dilation, "conv2d_forward", "general")


def conv2d_backward(dout, cache):
    """Gradients of `conv2d_forward`: (dx, dw, db), db None without bias.

    Tap by tap (the forward sums K = kH * kW shifted products):
        dw[:, :, i, j] = sum_{n, y, x} dout[n, :, y, x] (outer) tap(xp, i, j)[n, :, y, x]    (C_out, C_in)
        tap(dxp, i, j) += w[:, :, i, j]^T @ dout                                          (scatter)
        db = sum_{n, y, x} dout;    dx = dxp without the padding
    """
    dout, xp, weight, geometry = _conv_cache(dout, cache, "conv2d_backward")
    n, c_in = xp.shape[:2]
    c_out, _, kh, kw = weight.shape
    h_out, w_out = geometry.out_size
    dout_rows = dout.reshape(n, c_out, h_out * w_out)
    dxp = np.zeros_like(xp)
    dw = np.empty_like(weight)
    for i in range(kh):
        for j in range(kw):
            dw[:, :, i, j] = np.tensordot(dout, _tap(xp, i, j, geometry), axes=([0, 2, 3], [0, 2, 3]))
            _tap(dxp, i, j, geometry)[...] += np.matmul(weight[:, :, i, j].T, dout_rows).reshape(n, c_in, h_out, w_out)
    db = _sum64(dout, (0, 2, 3), dout.dtype) if cache["has_bias"] else None
    return _crop(dxp, geometry), dw, db


def conv2d_backward_naive(dout, cache):
    """Loop version of `conv2d_backward`: every product x * w of the forward sends dout back to both."""
    dout, xp, weight, geometry = _conv_cache(dout, cache, "conv2d_backward_naive")
    n, c_in = xp.shape[:2]
    c_out, _, kh, kw = weight.shape
    (sh, sw), (dh, dw_), (h_out, w_out) = geometry.stride, geometry.dilation, geometry.out_size
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(weight)
    db = np.zeros(c_out, dtype=xp.dtype)
    for b in range(n):
        for o in range(c_out):
            for y in range(h_out):
                for x in range(w_out):
                    g = dout[b, o, y, x]
                    db[o] += g
                    for c in range(c_in):
                        for i in range(kh):
                            for j in range(kw):
                                row, col = y * sh + i * dh, x * sw + j * dw_
                                dw[o, c, i, j] += xp[b, c, row, col] * g
                                dxp[b, c, row, col] += weight[o, c, i, j] * g
    return _crop(dxp, geometry), dw, (db if cache["has_bias"] else None)


def depthwise_conv2d_forward(x, weight, bias=None, stride=1, padding=0, dilation=1):
    """Depthwise convolution (groups = C, depth multiplier 1): every channel has its own kH x kW filter.

    Shapes: x (N, C, H, W), weight (C, 1, kH, kW), bias (C,) or None -> out (N, C, H_out, W_out).
    padding as in `conv2d_forward`.

        out[n, c, y, x] = b[c] + sum_{i, j} xp[n, c, y*sh + i*dh, x*sw + j*dw] * w[c, 0, i, j]

    cache: x_padded, weight, has_bias, geometry.
    """
    return _conv_forward(x, weight, bias, stride, padding, dilation, "depthwise_conv2d_forward", "depthwise")


def depthwise_conv2d_backward(dout, cache):
    """Gradients of `depthwise_conv2d_forward`: (dx, dw, db), db None without bias.

        dw[c, 0, i, j] = sum_{n, y, x} tap(xp, i, j)[n, c, y, x] * dout[n, c, y, x]      (kH * kW reductions)
        tap(dxp, i, j) += dout * w[c, 0, i, j]                                           (kH * kW scatters)
        db[c] = sum_{n, y, x} dout[n, c, y, x];    dx = dxp without the padding
    """
    dout, xp, weight, geometry = _conv_cache(dout, cache, "depthwise_conv2d_backward")
    kh, kw = weight.shape[2:]
    dxp = np.zeros_like(xp)
    dw = np.empty_like(weight)
    for i in range(kh):
        for j in range(kw):
            dw[:, 0, i, j] = _sum64(_tap(xp, i, j, geometry) * dout, (0, 2, 3), dout.dtype)
            _tap(dxp, i, j, geometry)[...] += dout * weight[None, :, 0, i, j, None, None]
    db = _sum64(dout, (0, 2, 3), dout.dtype) if cache["has_bias"] else None
    return _crop(dxp, geometry), dw, db


def depthwise_conv2d_backward_naive(dout, cache):
    """Loop version of `depthwise_conv2d_backward`."""
    dout, xp, weight, geometry = _conv_cache(dout, cache, "depthwise_conv2d_backward_naive")
    n, c = xp.shape[:2]
    kh, kw = weight.shape[2:]
    (sh, sw), (dh, dw_), (h_out, w_out) = geometry.stride, geometry.dilation, geometry.out_size
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(weight)
    db = np.zeros(c, dtype=xp.dtype)
    for b in range(n):
        for ch in range(c):
            for y in range(h_out):
                for x in range(w_out):
                    g = dout[b, ch, y, x]
                    db[ch] += g
                    for i in range(kh):
                        for j in range(kw):
                            row, col = y * sh + i * dh, x * sw + j * dw_
                            dw[ch, 0, i, j] += xp[b, ch, row, col] * g
                            dxp[b, ch, row, col] += weight[ch, 0, i, j] * g
    return _crop(dxp, geometry), dw, (db if cache["has_bias"] else None)


def pointwise_conv2d_forward(x, weight, bias=None, stride=1, padding=0, dilation=1):
    """1x1 convolution (V1 pointwise, V2 expand/project, DeepLab heads): a matrix product per image.

    Shapes: x (N, C_in, H, W), weight (C_out, C_in, 1, 1), bias (C_out,) or None -> (N, C_out, H_out, W_out).
    stride and padding as in `conv2d_forward` (MobileNets use 1 and 0); dilation has no effect on a 1x1
    kernel and is accepted for a uniform signature.

        out[n] = W @ xs[n] + b,   W = weight[:, :, 0, 0] (C_out, C_in),  xs = the strided padded input (C_in, H_out*W_out)

    cache: x_padded, weight, has_bias, geometry.
    """
    return _conv_forward(x, weight, bias, stride, padding, dilation, "pointwise_conv2d_forward", "pointwise")


def pointwise_conv2d_backward(dout, cache):
    """Gradients of `pointwise_conv2d_forward`: (dx, dw, db), db None without bias.

        dW = sum_n dout[n] @ xs[n]^T    (C_out, C_in);    dxs[n] = W^T @ dout[n];    db = sum_{n, y, x} dout
    dxs is scattered into the strided positions of dxp, then the padding is cropped.
    """
    dout, xp, weight, geometry = _conv_cache(dout, cache, "pointwise_conv2d_backward")
    n, c_in = xp.shape[:2]
    c_out = weight.shape[0]
    h_out, w_out = geometry.out_size
    xs = _tap(xp, 0, 0, geometry)
    dw = np.tensordot(dout, xs, axes=([0, 2, 3], [0, 2, 3])).reshape(c_out, c_in, 1, 1)
    dxp = np.zeros_like(xp)
    dxs = np.matmul(weight[:, :, 0, 0].T, dout.reshape(n, c_out, h_out * w_out))
    _tap(dxp, 0, 0, geometry)[...] = dxs.reshape(n, c_in, h_out, w_out)
    db = _sum64(dout, (0, 2, 3), dout.dtype) if cache["has_bias"] else None
    return _crop(dxp, geometry), dw, db


def pointwise_conv2d_backward_naive(dout, cache):
    """Loop version of `pointwise_conv2d_backward`."""
    dout, xp, weight, geometry = _conv_cache(dout, cache, "pointwise_conv2d_backward_naive")
    n, c_in = xp.shape[:2]
    c_out = weight.shape[0]
    (sh, sw), (h_out, w_out) = geometry.stride, geometry.out_size
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(weight)
    db = np.zeros(c_out, dtype=xp.dtype)
    for b in range(n):
        for y in range(h_out):
            for x in range(w_out):
                for o in range(c_out):
                    g = dout[b, o, y, x]
                    db[o] += g
                    for c in range(c_in):
                        dw[o, c, 0, 0] += xp[b, c, y * sh, x * sw] * g
                        dxp[b, c, y * sh, x * sw] += weight[o, c, 0, 0] * g
    return _crop(dxp, geometry), dw, (db if cache["has_bias"] else None)


# --------------------------------------------------------------------------------------------------
# BatchNorm
# --------------------------------------------------------------------------------------------------

def _affine_arguments(x, arrays: dict, op):
    x = numeric_array(x, op, "x", ndim=4)
    c = x.shape[1]
    for name, value in arrays.items():
        value = numeric_array(value, op, name, ndim=1)
        if value.shape[0] != c:
            raise ShapeError(f"{op}: {name} has shape {value.shape} but x {x.shape} has {c} channels")
        arrays[name] = value
    dtype = float_dtype(x, *arrays.values())
    return x.astype(dtype, copy=False), {k: v.astype(dtype, copy=False) for k, v in arrays.items()}


def _channel(v):
    """A (C,) vector shaped (1, C, 1, 1) to broadcast over NCHW."""
    return v[None, :, None, None]


def batch_norm_train_forward(x, weight, bias, eps):
    """Train-mode BatchNorm (`nn.BatchNorm2d` in `.train()`): normalise with the batch's own statistics.

    Shapes: x (N, C, H, W), weight (gamma), bias (beta) (C,) -> out (N, C, H, W). Per channel, over the
    M = N * H * W values:

        mean = sum(x) / M,   var = sum((x - mean)^2) / M          (biased: this is what normalises)
        xhat = (x - mean) / sqrt(var + eps),   out = gamma * xhat + beta

    Statistics are computed in two passes, accumulated in float64. PyTorch raises when M == 1 (the
    unbiased variance var * M / (M - 1) would divide by zero); so do we.

    cache: x, xhat, mean, var (biased), var_unbiased (= var * M / (M - 1), what the running variance
    tracks: pass cache["mean"], cache["var_unbiased"] to `batch_norm_update_running`), rstd
    (1 / sqrt(var + eps)), weight, eps, count (M).
    """
    op = "batch_norm_train_forward"
    x, p = _affine_arguments(x, {"weight": weight, "bias": bias}, op)
    n, c, h, w = x.shape
    count = n * h * w
    if count <= 1:
        raise ShapeError(f"{op}: Expected more than 1 value per channel when training, got input of shape {x.shape}")
    dtype = x.dtype
    mean64 = x.mean(axis=(0, 2, 3), dtype=np.float64)
    centered64 = x.astype(np.float64) - _channel(mean64)
    var64 = (centered64 * centered64).mean(axis=(0, 2, 3))
    rstd64 = 1.0 / np.sqrt(var64 + eps)
    xhat = (centered64 * _channel(rstd64)).astype(dtype, copy=False)
    out = xhat * _channel(p["weight"]) + _channel(p["bias"])
    cache = {"x": x, "xhat": xhat, "mean": mean64.astype(dtype), "var": var64.astype(dtype),
             "var_unbiased": (var64 * count / (count - 1)).astype(dtype), "rstd": rstd64.astype(dtype),
             "weight": p["weight"], "eps": eps, "count": count}
    return out, cache


def batch_norm_train_backward(dout, cache):
    """Gradients of `batch_norm_train_forward`: (dx, dgamma, dbeta).

        dbeta  = sum dout,    dgamma = sum dout * xhat          (sums over N, H, W per channel)
        dx     = gamma * rstd / M * (M * dout - dbeta - xhat * dgamma)

    (The mean and variance depend on x too; their paths give the two subtracted terms. With dout all
    ones, dx is 0: test with random dout.)
    """
    xhat, rstd, weight, count = cache["xhat"], cache["rstd"], cache["weight"], cache["count"]
    dout = _upstream(dout, xhat.shape, xhat.dtype, "batch_norm_train_backward")
    dbeta = _sum64(dout, (0, 2, 3), dout.dtype)
    dgamma = _sum64(dout * xhat, (0, 2, 3), dout.dtype)
    dx = _channel(weight * rstd / count) * (count * dout - _channel(dbeta) - xhat * _channel(dgamma))
    return dx, dgamma, dbeta


def batch_norm_train_backward_naive(dout, cache):
    """Loop version of `batch_norm_train_backward`, following the forward's computation graph step by step
    (cs231n's staged derivation), one channel at a time:

        dxhat = dout * gamma
        dvar  = sum dxhat * (x - mean) * (-1/2) * (var + eps)^(-3/2)
        dmean = sum -dxhat / sqrt(var + eps)  +  dvar * sum -2 (x - mean) / M
        dx    = dxhat / sqrt(var + eps) + dvar * 2 (x - mean) / M + dmean / M
    """
    x, weight, eps = cache["x"], cache["weight"], cache["eps"]
    dout = _upstream(dout, x.shape, x.dtype, "batch_norm_train_backward_naive")
    n, c, h, w = x.shape
    m = n * h * w
    dx = np.zeros_like(x)
    dgamma = np.zeros(c, dtype=x.dtype)
    dbeta = np.zeros(c, dtype=x.dtype)
    for ch in range(c):
        values = [float(v) for v in x[:, ch].reshape(-1)]
        grads = [float(g) for g in dout[:, ch].reshape(-1)]
        mean = sum(values) / m
        var = sum((v - mean) ** 2 for v in values) / m
        std = math.sqrt(var + eps)
        gamma = float(weight[ch])
        dvar = dmean = 0.0
        for v, g in zip(values, grads):
            dgamma[ch] += g * (v - mean) / std
            dbeta[ch] += g
            dvar += g * gamma * (v - mean) * -0.5 * (var + eps) ** -1.5
        for v, g in zip(values, grads):
            dmean += -g * gamma / std + dvar * -2.0 * (v - mean) / m
        flat = dx[:, ch].reshape(-1).copy()
        for k, (v, g) in enumerate(zip(values, grads)):
            flat[k] = g * gamma / std + dvar * 2.0 * (v - mean) / m + dmean / m
        dx[:, ch] = flat.reshape(n, h, w)
    return dx, dgamma, dbeta


def batch_norm_update_running(running_mean, running_var, batch_mean, batch_var_unbiased, momentum):
    """PyTorch's running-statistics update (returns new arrays, the inputs are left alone):

        running_mean = (1 - momentum) * running_mean + momentum * batch_mean
        running_var  = (1 - momentum) * running_var  + momentum * batch_var_unbiased

    `momentum` is the weight of the *new* batch (PyTorch's convention, default 0.1). TensorFlow's
    `decay` is the weight of the *old* value: momentum = 1 - decay. transformers passes TF's decays as
    PyTorch momenta (0.9997 in V1, 0.997 in V2/DeepLab), so one train-mode step nearly overwrites the
    running statistics; pass those values to reproduce transformers, 1 - decay to reproduce TF-slim.
    Shapes: all (C,).
    """
    op = "batch_norm_update_running"
    arrays = {"running_mean": running_mean, "running_var": running_var, "batch_mean": batch_mean,
              "batch_var_unbiased": batch_var_unbiased}
    arrays = {k: numeric_array(v, op, k, ndim=1) for k, v in arrays.items()}
    shapes = {v.shape for v in arrays.values()}
    if len(shapes) != 1:
        raise ShapeError(f"{op}: all statistics must have the same (C,) shape, got "
                         + ", ".join(f"{k} {v.shape}" for k, v in arrays.items()))
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float, np.floating)) or not 0.0 <= momentum <= 1.0:
        raise ConfigError(f"{op}: momentum must be a number in [0, 1] (weight of the new batch), got {momentum!r}")
    dtype = float_dtype(*arrays.values())
    m = dtype.type(momentum)
    a = {k: v.astype(dtype, copy=False) for k, v in arrays.items()}
    new_mean = (1 - m) * a["running_mean"] + m * a["batch_mean"]
    new_var = (1 - m) * a["running_var"] + m * a["batch_var_unbiased"]
    return new_mean, new_var


def batch_norm_eval_forward(x, running_mean, running_var, weight, bias, eps):
    """Eval-mode BatchNorm (frozen statistics, e.g. for small-batch fine-tuning): `ops.batch_norm`.

        out = (x - running_mean) / sqrt(running_var + eps) * gamma + beta

    cache: x, running_mean, running_var, weight, eps.
    """
    x, p = _affine_arguments(x, {"running_mean": running_mean, "running_var": running_var,
                                 "weight": weight, "bias": bias}, "batch_norm_eval_forward")
    out = ops.batch_norm(x, p["running_mean"], p["running_var"], p["weight"], p["bias"], eps)
    cache = {"x": x, "running_mean": p["running_mean"], "running_var": p["running_var"],
             "weight": p["weight"], "eps": eps}
    return out, cache


def batch_norm_eval_backward(dout, cache):
    """Gradients of `batch_norm_eval_forward`: (dx, dgamma, dbeta). The statistics are constants, so

        rstd = 1 / sqrt(running_var + eps)
        dx = dout * gamma * rstd,   dgamma = sum dout * (x - running_mean) * rstd,   dbeta = sum dout
    """
    x = cache["x"]
    dout = _upstream(dout, x.shape, x.dtype, "batch_norm_eval_backward")
    rstd = 1 / np.sqrt(cache["running_var"] + x.dtype.type(cache["eps"]))
    dx = dout * _channel(cache["weight"] * rstd)
    dgamma = _sum64(dout * (x - _channel(cache["running_mean"])), (0, 2, 3), x.dtype) * rstd
    dbeta = _sum64(dout, (0, 2, 3), x.dtype)
    return dx, dgamma, dbeta


def batch_norm_eval_backward_naive(dout, cache):
    """Loop version of `batch_norm_eval_backward`."""
    x = cache["x"]
    dout = _upstream(dout, x.shape, x.dtype, "batch_norm_eval_backward_naive")
    n, c, h, w = x.shape
    dx = np.zeros_like(x)
    dgamma = np.zeros(c, dtype=x.dtype)
    dbeta = np.zeros(c, dtype=x.dtype)
    for ch in range(c):
        std = math.sqrt(float(cache["running_var"][ch]) + cache["eps"])
        for b in range(n):
            for i in range(h):
                for j in range(w):
                    g = dout[b, ch, i, j]
                    dx[b, ch, i, j] = g * cache["weight"][ch] / std
                    dgamma[ch] += g * (x[b, ch, i, j] - cache["running_mean"][ch]) / std
                    dbeta[ch] += g
    return dx, dgamma, dbeta


# --------------------------------------------------------------------------------------------------
# activations
# --------------------------------------------------------------------------------------------------
#
# PyTorch's rule at the kinks: ReLU passes the gradient unless x <= 0 (threshold_backward); ReLU6
# (hardtanh(0, 6)) unless x <= 0 or x >= 6. So the gradient is 0 at x == 0 and at x == 6 exactly,
# and a NaN input passes its gradient through (NaN <= 0 is false). We write the rule the same way.
# (For ReLU6 at NaN torch 2.13 is not consistent: its vectorised loop gives 0, the scalar tail of the
# same tensor 1 -- measured. We keep the scalar rule, the same as ReLU's.)

def relu_forward(x):
    """out = max(x, 0). cache: x."""
    x = np.asarray(x)
    return ops.relu(x), {"x": x}


def relu_backward(dout, cache):
    """dx = dout where x > 0, else 0 (0 at the kink x == 0; NaN passes, as in PyTorch)."""
    x = cache["x"]
    dout = _upstream(dout, x.shape, float_dtype(x, np.asarray(dout)), "relu_backward")
    return np.where(x <= 0, dout.dtype.type(0), dout)


def relu_backward_naive(dout, cache):
    """Loop version of `relu_backward`."""
    x = cache["x"]
    dout = _upstream(dout, x.shape, float_dtype(x, np.asarray(dout)), "relu_backward_naive")
    dx = np.zeros_like(dout)
    for k in np.ndindex(x.shape):
        if not x[k] <= 0:
            dx[k] = dout[k]
    return dx


def relu6_forward(x):
    """out = min(max(x, 0), 6). cache: x."""
    x = np.asarray(x)
    return ops.relu6(x), {"x": x}


def relu6_backward(dout, cache):
    """dx = dout where 0 < x < 6 (open interval: 0 at x == 0 and x == 6, as PyTorch's hardtanh), else 0."""
    x = cache["x"]
    dout = _upstream(dout, x.shape, float_dtype(x, np.asarray(dout)), "relu6_backward")
    return np.where((x <= 0) | (x >= 6), dout.dtype.type(0), dout)


def relu6_backward_naive(dout, cache):
    """Loop version of `relu6_backward`."""
    x = cache["x"]
    dout = _upstream(dout, x.shape, float_dtype(x, np.asarray(dout)), "relu6_backward_naive")
    dx = np.zeros_like(dout)
    for k in np.ndindex(x.shape):
        if not (x[k] <= 0 or x[k] >= 6):
            dx[k] = dout[k]
    return dx


# --------------------------------------------------------------------------------------------------
# pooling, linear
# --------------------------------------------------------------------------------------------------

def global_avg_pool_forward(x):
    """Mean over each channel's pixels (`nn.AdaptiveAvgPool2d(1)`): (N, C, H, W) -> (N, C, 1, 1).
    cache: x_shape, dtype."""
    out = ops.global_avg_pool2d(x)
    return out, {"x_shape": np.shape(x), "dtype": out.dtype}


def global_avg_pool_backward(dout, cache):
    """Every pixel contributed 1 / (H * W) of the mean: dx[n, c, i, j] = dout[n, c, 0, 0] / (H * W)."""
    n, c, h, w = cache["x_shape"]
    dout = _upstream(dout, (n, c, 1, 1), cache["dtype"], "global_avg_pool_backward")
    return np.broadcast_to(dout / dout.dtype.type(h * w), (n, c, h, w)).copy()


def global_avg_pool_backward_naive(dout, cache):
    """Loop version of `global_avg_pool_backward`."""
    n, c, h, w = cache["x_shape"]
    dout = _upstream(dout, (n, c, 1, 1), cache["dtype"], "global_avg_pool_backward_naive")
    dx = np.zeros((n, c, h, w), dtype=cache["dtype"])
    for b in range(n):
        for ch in range(c):
            for i in range(h):
                for j in range(w):
                    dx[b, ch, i, j] = dout[b, ch, 0, 0] / dout.dtype.type(h * w)
    return dx


def linear_forward(x, weight, bias=None):
    """Fully connected layer (`nn.Linear`, weight (out, in)): out = x @ weight^T + bias.
    Shapes: x (N, in), weight (out, in), bias (out,) or None -> (N, out). cache: x, weight, has_bias."""
    out = ops.linear(x, weight, bias)
    dtype = out.dtype
    return out, {"x": np.asarray(x).astype(dtype, copy=False), "weight": np.asarray(weight).astype(dtype, copy=False),
                 "has_bias": bias is not None}


def linear_backward(dout, cache):
    """Gradients of `linear_forward`: (dx, dw, db), db None without bias.

        dx = dout @ weight  (N, in),   dw = dout^T @ x  (out, in),   db = sum_n dout  (out,)
    """
    x, weight = cache["x"], cache["weight"]
    dout = _upstream(dout, (x.shape[0], weight.shape[0]), x.dtype, "linear_backward")
    db = _sum64(dout, 0, x.dtype) if cache["has_bias"] else None
    return dout @ weight, dout.T @ x, db


def linear_backward_naive(dout, cache):
    """Loop version of `linear_backward`."""
    x, weight = cache["x"], cache["weight"]
    dout = _upstream(dout, (x.shape[0], weight.shape[0]), x.dtype, "linear_backward_naive")
    dx = np.zeros_like(x)
    dw = np.zeros_like(weight)
    db = np.zeros(weight.shape[0], dtype=x.dtype)
    for b in range(x.shape[0]):
        for o in range(weight.shape[0]):
            g = dout[b, o]
            db[o] += g
            for i in range(x.shape[1]):
                dx[b, i] += weight[o, i] * g
                dw[o, i] += x[b, i] * g
    return dx, dw, (db if cache["has_bias"] else None)


# --------------------------------------------------------------------------------------------------
# dropout
# --------------------------------------------------------------------------------------------------
#
# PyTorch semantics: p is the probability to DROP a value. Training: out = x * mask with
# mask = keep / (1 - p) ("inverted" dropout: the survivors are scaled up, so eval needs no change);
# eval (or p == 0): out = x; p == 1: out = 0 (PyTorch multiplies by zeros). keep ~ Bernoulli(1 - p) is
# drawn here as rng.random(shape) >= p from the numpy.random.Generator the caller passes.
# Dropout2d (channel dropout, DeepLab's head) draws one keep per (n, c): whole channels vanish.

def _dropout_forward(x, p, training, rng, op, per_channel):
    x = numeric_array(x, op, "x", ndim=4 if per_channel else None)
    x = x.astype(float_dtype(x), copy=False)
    if isinstance(p, bool) or not isinstance(p, (int, float, np.floating)) or not 0.0 <= p <= 1.0:
        raise ConfigError(f"{op}: p (drop probability) must be a number in [0, 1], got {p!r}")
    if not training or p == 0:
        return x.copy(), {"mask": None, "shape": x.shape, "dtype": x.dtype}
    shape = x.shape[:2] + (1, 1) if per_channel else x.shape
    dtype = x.dtype
    if p == 1:
        mask = np.zeros(shape, dtype=dtype)
    else:
        if not isinstance(rng, np.random.Generator):
            raise ConfigError(f"{op}: rng must be a numpy.random.Generator in training mode, got {type(rng).__name__}")
        keep = rng.random(shape) >= p
        mask = keep.astype(dtype) * (dtype.type(1) / dtype.type(1 - p))
    return x * mask, {"mask": mask, "shape": x.shape, "dtype": x.dtype}


def _dropout_backward(dout, cache, op):
    mask = cache["mask"]
    dout = _upstream(dout, cache["shape"], cache["dtype"], op)
    return dout.copy() if mask is None else dout * mask


def _dropout_backward_naive(dout, cache, op):
    mask = cache["mask"]
    dout = _upstream(dout, cache["shape"], cache["dtype"], op)
    dx = dout.copy()
    if mask is None:
        return dx
    for k in np.ndindex(dout.shape):
        m = mask[k] if mask.shape == dout.shape else mask[k[0], k[1], 0, 0]
        dx[k] = dout[k] * m
    return dx


def dropout_forward(x, p, training, rng):
    """Element-wise dropout (`F.dropout(x, p, training)`): out = x * mask, mask = (u >= p) / (1 - p),
    u ~ U[0, 1) from `rng` (a numpy.random.Generator; unused when not training or p in {0, 1}).
    Any shape. cache: mask (x's shape, or None when out = x), shape, dtype."""
    return _dropout_forward(x, p, training, rng, "dropout_forward", per_channel=False)


def dropout_backward(dout, cache):
    """dx = dout * mask (the same mask: a dropped value gets no gradient, a kept one 1 / (1 - p))."""
    return _dropout_backward(dout, cache, "dropout_backward")


def dropout_backward_naive(dout, cache):
    """Loop version of `dropout_backward`."""
    return _dropout_backward_naive(dout, cache, "dropout_backward_naive")


def dropout2d_forward(x, p, training, rng):
    """Channel dropout (`nn.Dropout2d`): one mask value per (n, c), shape (N, C, 1, 1), broadcast over H, W.
    x (N, C, H, W). cache: mask (N, C, 1, 1) or None, shape, dtype."""
    return _dropout_forward(x, p, training, rng, "dropout2d_forward", per_channel=True)


def dropout2d_backward(dout, cache):
    """dx = dout * mask, the (N, C, 1, 1) mask broadcast over H, W."""
    return _dropout_backward(dout, cache, "dropout2d_backward")


def dropout2d_backward_naive(dout, cache):
    """Loop version of `dropout2d_backward`."""
    return _dropout_backward_naive(dout, cache, "dropout2d_backward_naive")


# --------------------------------------------------------------------------------------------------
# bilinear resizing
# --------------------------------------------------------------------------------------------------
#
# The forward (ops.interpolate_bilinear) is linear in x and separable: out = A_h @ x @ A_w^T per image
# and channel, where row y of A_h (out_h, H) holds the two weights (1 - t, t) at the two input rows
# output row y blends (the same for A_w). The backward is the transpose: dx = A_h^T @ dout @ A_w.
# Where both taps are the same pixel (at the border) their weights add up.

def _source_coordinates(out_size: int, in_size: int, align_corners: bool, dtype) -> np.ndarray:
    """PyTorch's source coordinate of each output pixel (the rule `ops.interpolate_bilinear` uses):
    align_corners=True: dst * (in - 1) / (out - 1) (0 when out == 1); False: (dst + 0.5) * in / out - 0.5, >= 0."""
    dst = np.arange(out_size, dtype=dtype)
    if align_corners:
        return dst * dtype.type((in_size - 1) / (out_size - 1) if out_size > 1 else 0.0)
    return np.maximum((dst + dtype.type(0.5)) * dtype.type(in_size / out_size) - dtype.type(0.5), dtype.type(0))


def _bilinear_taps(out_size, in_size, align_corners, dtype):
    """(lower, upper, t): the two input indices each output index blends, and the weight t of `upper`."""
    src = _source_coordinates(out_size, in_size, align_corners, dtype)
    lower = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    upper = np.minimum(lower + 1, in_size - 1)
    return lower, upper, src - lower.astype(dtype)


def _interpolation_matrix(out_size, in_size, align_corners, dtype) -> np.ndarray:
    """A (out_size, in_size): out = A @ x along one axis; two non-zeros per row."""
    lower, upper, t = _bilinear_taps(out_size, in_size, align_corners, dtype)
    a = np.zeros((out_size, in_size), dtype=dtype)
    rows = np.arange(out_size)
    np.add.at(a, (rows, lower), 1 - t)
    np.add.at(a, (rows, upper), t)
    return a


def interpolate_bilinear_forward(x, size, align_corners):
    """Bilinear resize (`F.interpolate(x, size, mode="bilinear", align_corners=...)`), any in/out size.
    Shapes: (N, C, H, W) -> (N, C, size[0], size[1]). cache: x_shape, size, align_corners, dtype."""
    out = ops.interpolate_bilinear(x, size, align_corners)
    return out, {"x_shape": np.shape(x), "size": out.shape[2:], "align_corners": bool(align_corners),
                 "dtype": out.dtype}


def interpolate_bilinear_backward(dout, cache):
    """dx = A_h^T @ dout @ A_w (per image and channel), A the interpolation matrices (see above)."""
    n, c, h, w = cache["x_shape"]
    (out_h, out_w), dtype, corners = cache["size"], cache["dtype"], cache["align_corners"]
    dout = _upstream(dout, (n, c, out_h, out_w), dtype, "interpolate_bilinear_backward")
    a_h = _interpolation_matrix(out_h, h, corners, dtype)
    a_w = _interpolation_matrix(out_w, w, corners, dtype)
    return np.matmul(a_h.T, np.matmul(dout, a_w))


def interpolate_bilinear_backward_naive(dout, cache):
    """Loop version of `interpolate_bilinear_backward`: each output pixel sends its gradient back to the
    4 input pixels it was blended from, with the same weights."""
    n, c, h, w = cache["x_shape"]
    (out_h, out_w), dtype, corners = cache["size"], cache["dtype"], cache["align_corners"]
    dout = _upstream(dout, (n, c, out_h, out_w), dtype, "interpolate_bilinear_backward_naive")
    ys = _source_coordinates(out_h, h, corners, dtype)
    xs = _source_coordinates(out_w, w, corners, dtype)
    dx = np.zeros((n, c, h, w), dtype=dtype)
    for i in range(out_h):
        y0 = min(int(math.floor(ys[i])), h - 1)
        y1 = min(y0 + 1, h - 1)
        wy = ys[i] - y0
        for j in range(out_w):
            x0 = min(int(math.floor(xs[j])), w - 1)
            x1 = min(x0 + 1, w - 1)
            wx = xs[j] - x0
            g = dout[:, :, i, j]
            dx[:, :, y0, x0] += g * (1 - wy) * (1 - wx)
            dx[:, :, y0, x1] += g * (1 - wy) * wx
            dx[:, :, y1, x0] += g * wy * (1 - wx)
            dx[:, :, y1, x1] += g * wy * wx
    return dx


# --------------------------------------------------------------------------------------------------
# concatenation and residual add
# --------------------------------------------------------------------------------------------------

def concat_channels_forward(arrays):
    """torch.cat(arrays, dim=1) (DeepLab's ASPP branches): (N, C_k, H, W) each -> (N, sum C_k, H, W).
    cache: channels (the C_k), dtype."""
    op = "concat_channels_forward"
    arrays = [numeric_array(a, op, f"arrays[{k}]", ndim=4) for k, a in enumerate(arrays)]
    if not arrays:
        raise ShapeError(f"{op}: arrays must hold at least one array")
    first = arrays[0].shape
    for k, a in enumerate(arrays):
        if (a.shape[0],) + a.shape[2:] != (first[0],) + first[2:]:
            raise ShapeError(f"{op}: arrays[{k}] has shape {a.shape}, arrays[0] has {first}: N, H, W must match")
    dtype = float_dtype(*arrays)
    out = np.concatenate([a.astype(dtype, copy=False) for a in arrays], axis=1)
    return out, {"channels": [a.shape[1] for a in arrays], "dtype": dtype}


def concat_channels_backward(dout, cache):
    """The gradient of each input is its slice of dout along the channels: a list of arrays."""
    channels = cache["channels"]
    dout = np.asarray(dout)
    if dout.ndim != 4 or dout.shape[1] != sum(channels):
        raise ShapeError(f"concat_channels_backward: dout {dout.shape} must have {sum(channels)} channels")
    dout = dout.astype(cache["dtype"], copy=False)
    bounds = np.cumsum([0] + channels)
    return [dout[:, bounds[k]: bounds[k + 1]].copy() for k in range(len(channels))]


def concat_channels_backward_naive(dout, cache):
    """Loop version of `concat_channels_backward`: channel by channel, remember which input it came from."""
    channels = cache["channels"]
    dout = np.asarray(dout).astype(cache["dtype"], copy=False)
    grads = [np.zeros((dout.shape[0], c) + dout.shape[2:], dtype=dout.dtype) for c in channels]
    source, offset = 0, 0
    for ch in range(dout.shape[1]):
        while ch - offset >= channels[source]:
            offset += channels[source]
            source += 1
        grads[source][:, ch - offset] = dout[:, ch]
    return grads


def add_forward(a, b):
    """Residual connection: out = a + b (same shapes). cache: shape, dtype."""
    a, b = numeric_array(a, "add_forward", "a"), numeric_array(b, "add_forward", "b")
    if a.shape != b.shape:
        raise ShapeError(f"add_forward: a {a.shape} and b {b.shape} must have the same shape")
    dtype = float_dtype(a, b)
    out = a.astype(dtype, copy=False) + b.astype(dtype, copy=False)
    return out, {"shape": a.shape, "dtype": dtype}


def add_backward(dout, cache):
    """Both summands get the whole upstream gradient: (da, db) = (dout, dout). (Where a branch forks,
    e.g. the skip path, the caller adds the gradients that come back along both paths.)"""
    dout = _upstream(dout, cache["shape"], cache["dtype"], "add_backward")
    return dout.copy(), dout.copy()


def add_backward_naive(dout, cache):
    """Loop version of `add_backward`."""
    dout = _upstream(dout, cache["shape"], cache["dtype"], "add_backward_naive")
    da = np.zeros_like(dout)
    db = np.zeros_like(dout)
    for k in np.ndindex(dout.shape):
        da[k] = dout[k]
        db[k] = dout[k]
    return da, db
