"""The training path's fast kernels: the forward/backward pairs of `backward.py`, channels-last.

`backward.py` is the readable truth (NCHW, as PyTorch; every backward beside its loop twin, reductions
accumulated in float64). This module computes the same functions, with the same names, signatures and
weight layouts (OIHW weights, (C,) vectors, gradients returned in the same layouts), on activations laid
out (N, H, W, C). `graph.py` runs a network through either module; the tests check these kernels against
`backward.py` (float64: 1e-12) and against torch.autograd.

Why channels-last is faster in NumPy: a depthwise tap `xp[:, i:i+H, j:j+W, :]` (stride 1) is one
contiguous run of W*C values per row, so each of the kH*kW multiply-adds streams long rows; in NCHW
the same view is H*N*C runs of W values (2 to 16 in a 32x32 MobileNet). A 1x1 convolution is one
(N*H*W, C_in) @ (C_in, C_out) product, and every per-channel sum (BatchNorm, bias and weight
gradients) is one (N*H*W, C) column sum, done here as the matrix-vector product `ones @ a` (BLAS: fast,
and more accurate in float32 than NumPy's row-by-row sum along axis 0; measured 1e-6 relative at
M = 16384).

Differences from `backward.py`, all about memory and speed, none in the formulas:
  * ReLU/ReLU6 overwrite their input (the BatchNorm's fresh output) and cache the output y, which the
    next layer keeps anyway: the gradient passes where 0 < y < 6, the same set as 0 < x < 6. A
    train-mode BatchNorm can apply its activation itself (`activation=`: graph.py fuses them).
    BatchNorm caches its input x, not xhat, and the backward recomputes xhat = (x - mean) * rstd.
    The depthwise convolution reads the unpadded input: each tap adds only where it reads real pixels.
  * The float32 sums run in float32 (BLAS), as PyTorch's do, not in float64.
  * Arguments are checked once by `backward.conv_arguments` on a transposed view; the kernels assume
    the tensors they get back from each other (no re-checking of upstream gradients).
  * Big tensors are walked in blocks of about BLOCK values (`_row_blocks`, `_image_blocks`): every pass
    a formula makes over a block (a product, a sum, a mask) then runs in the processor's cache instead
    of streaming the whole tensor from memory once per pass (a depthwise forward at 112x112x96, batch 8:
    196 ms -> 89 ms); the arithmetic is the same.
Their loop twins are backward.py's: tests/test_channels_last.py runs both on the same inputs.
"""

from __future__ import annotations

import functools

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..errors import ShapeError
from ..fast.plan import tap_ranges, tap_slice
from . import backward as B

__all__ = [
    "to_channels_last", "to_channels_first", "spatial_size",
    "conv2d_forward", "conv2d_backward", "depthwise_conv2d_forward", "depthwise_conv2d_backward",
    "pointwise_conv2d_forward", "pointwise_conv2d_backward",
    "batch_norm_train_forward", "batch_norm_train_backward", "batch_norm_eval_forward", "batch_norm_eval_backward",
    "batch_norm_update_running", "relu_forward", "relu_backward", "relu6_forward", "relu6_backward",
    "global_avg_pool_forward", "global_avg_pool_backward", "linear_forward", "linear_backward",
    "dropout_forward", "dropout_backward", "dropout2d_forward", "dropout2d_backward",
    "interpolate_bilinear_forward", "interpolate_bilinear_backward",
    "concat_channels_forward", "concat_channels_backward",
]

# layout-free layers: the same functions as the readable path
batch_norm_update_running = B.batch_norm_update_running
linear_forward, linear_backward = B.linear_forward, B.linear_backward
dropout_forward, dropout_backward = B.dropout_forward, B.dropout_backward


def to_channels_last(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> a contiguous (N, H, W, C) copy (always a copy); other ranks are returned as they are."""
    return x.transpose(0, 2, 3, 1).copy() if x.ndim == 4 else x


def to_channels_first(x: np.ndarray) -> np.ndarray:
    """(N, H, W, C) -> a contiguous (N, C, H, W) copy (always a copy: `record` keeps what it gets, and the
    activations overwrite their input); other ranks are returned as they are."""
    return x.transpose(0, 3, 1, 2).copy() if x.ndim == 4 else x


def spatial_size(x: np.ndarray) -> tuple[int, int]:
    """(H, W) of an (N, H, W, C) tensor."""
    return x.shape[1:3]


BLOCK = 1 << 15     # values per block (128 KB of float32): a block and its temporaries stay in cache


@functools.lru_cache(maxsize=64)
def _ones(n: int, dtype: np.dtype) -> np.ndarray:
    ones = np.ones(n, dtype=dtype)
    ones.flags.writeable = False
    return ones


def _column_sum(a: np.ndarray) -> np.ndarray:
    """Per-channel sum over every other axis: (..., C) -> (C,), as a BLAS matrix-vector product."""
    rows = a.reshape(-1, a.shape[-1])
    return _ones(rows.shape[0], rows.dtype) @ rows


def _row_blocks(rows: int, channels: int) -> list[slice]:
    """Slices of the rows of an (M, C) matrix, about BLOCK values each."""
    step = max(1, BLOCK // max(channels, 1))
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


def _image_blocks(n: int, h_out: int, row_values: int) -> list[tuple[slice, int, int]]:
    """(images, first output row, end output row) blocks of about BLOCK output values: several whole
    images when an image is small, else a few rows of one image."""
    if h_out * row_values <= BLOCK:
        k = max(1, BLOCK // (h_out * row_values))
        return [(slice(a, min(a + k, n)), 0, h_out) for a in range(0, n, k)]
    rows = max(1, BLOCK // row_values)
    return [(slice(a, a + 1), r, min(r + rows, h_out)) for a in range(n) for r in range(0, h_out, rows)]


# --------------------------------------------------------------------------------------------------
# convolutions
# --------------------------------------------------------------------------------------------------

def _arguments(x, weight, bias, stride, padding, dilation, op, kind):
    """backward.conv_arguments on the NCHW view of x; returns x (N, H, W, C), weight, bias, geometry."""
    if np.ndim(x) != 4:
        raise ShapeError(f"{op}: x must be 4-D (N, H, W, C), got shape {np.shape(x)}")
    xt, weight, bias, geometry = B.conv_arguments(np.asarray(x).transpose(0, 3, 1, 2), weight, bias, stride,
                                                  padding, dilation, op, kind)
    return xt.transpose(0, 2, 3, 1), weight, bias, geometry


def _pad(x, pads):
    """Zero padding of (N, H, W, C): top, bottom, left, right."""
    top, bottom, left, right = pads
    if not any(pads):
        return x
    n, h, w, c = x.shape
    xp = np.zeros((n, h + top + bottom, w + left + right, c), dtype=x.dtype)
    xp[:, top: top + h, left: left + w] = x
    return xp


def _crop(dxp, geometry):
    top, _, left, _ = geometry.pads
    if not any(geometry.pads):
        return dxp
    h, w = geometry.in_size
    return np.ascontiguousarray(dxp[:, top: top + h, left: left + w])


def _tap(a, i, j, geometry):
    """View of the padded (N, Hp, Wp, C) array at kernel tap (i, j): (N, H_out, W_out, C)."""
    (sh, sw), (dh, dw), (h_out, w_out) = geometry.stride, geometry.dilation, geometry.out_size
    return a[:, i * dh: i * dh + sh * (h_out - 1) + 1: sh, j * dw: j * dw + sw * (w_out - 1) + 1: sw]


def conv2d_forward(x, weight, bias=None, stride=1, padding=0, dilation=1):
    """Convolution with groups=1 as one matrix product: the kH*kW taps of every output pixel side by
    side (im2col: one copy of the padded input's sliding-window view), (N*H_out*W_out, kH*kW*C_in) @
    (kH*kW*C_in, C_out). Used by the 3x3 stems.
    cache: cols, weight, has_bias, geometry, x_shape (the padded input's)."""
    x, weight, bias, g = _arguments(x, weight, bias, stride, padding, dilation, "conv2d_forward", "general")
    xp = _pad(x, g.pads)
    c_out, c_in, kh, kw = weight.shape
    n, (h_out, w_out) = x.shape[0], g.out_size
    (sh, sw), (dh, dw) = g.stride, g.dilation
    windows = sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(1, 2))
    windows = windows[:, ::sh, ::sw, :, ::dh, ::dw][:, :h_out, :w_out]      # (N, H_out, W_out, C_in, kH, kW) view
    cols = np.ascontiguousarray(windows.transpose(0, 1, 2, 4, 5, 3))        # one copy: (..., kH, kW, C_in)
    cols = cols.reshape(n * h_out * w_out, kh * kw * c_in)
    out = cols @ weight.transpose(2, 3, 1, 0).reshape(kh * kw * c_in, c_out)
    if bias is not None:
        out += bias
    cache = {"cols": cols, "weight": weight, "has_bias": bias is not None, "geometry": g, "x_shape": xp.shape}
    return out.reshape(n, h_out, w_out, c_out), cache


def conv2d_backward(dout, cache):
    """dW = cols^T @ dout, dcols = dout @ W^T scattered back tap by tap (col2im); db = column sum."""
    cols, weight, g = cache["cols"], cache["weight"], cache["geometry"]
    c_out, c_in, kh, kw = weight.shape
    n, h_out, w_out = dout.shape[:3]
    d2 = dout.reshape(-1, c_out)
    dw = (cols.T @ d2).reshape(kh, kw, c_in, c_out).transpose(3, 2, 0, 1)
    dcols = (d2 @ weight.transpose(2, 3, 1, 0).reshape(kh * kw * c_in, c_out).T).reshape(n, h_out, w_out, kh, kw, c_in)
    dxp = np.zeros(cache["x_shape"], dtype=dout.dtype)
    for i in range(kh):
        for j in range(kw):
            _tap(dxp, i, j, g)[...] += dcols[:, :, :, i, j]
    db = _column_sum(d2) if cache["has_bias"] else None
    return _crop(dxp, g), np.ascontiguousarray(dw), db


def _depthwise_blocks(x, geometry, kh, kw):
    """For every block of output rows and every tap: (tap (i, j), output slices, input slices), the
    taps clipped to the unpadded input (no padded copy of x is made) by the fast engine's `tap_ranges`:
    per tap, the outputs [first, stop) that read a real pixel and the input index of `first`."""
    (h, w), (h_out, w_out), (sh, sw), (dh, dw) = geometry.in_size, geometry.out_size, geometry.stride, geometry.dilation
    rows = tap_ranges(h, h_out, kh, sh, dh, geometry.pads[0])
    columns = tap_ranges(w, w_out, kw, sw, dw, geometry.pads[2])
    for images, r0, r1 in _image_blocks(x.shape[0], h_out, w_out * x.shape[3]):
        block = []
        for i, (first_row, stop_row, first_input_row) in enumerate(rows):
            a, b = max(r0, first_row), min(r1, stop_row)
            if a >= b:
                continue
            input_rows = tap_slice(first_input_row + (a - first_row) * sh, b - a, sh)
            for j, (first, stop, first_input) in enumerate(columns):
                if first < stop:
                    block.append(((i, j), (images, slice(a, b), slice(first, stop)),
                                  (images, input_rows, tap_slice(first_input, stop - first, sw))))
        yield block


def _tap_rows(taps, geometry):
    """The (kH, kW, C) tap weights tiled W_out times along the last axis, for `_times_tap`: with column
    stride 1 the cols * C values of a tap's row are contiguous, and multiplying them by the tiled weights
    as one row lets NumPy's inner loop run over cols * C values instead of C (~1.5x faster at C = 16).
    None with a column stride (the weights then broadcast)."""
    return np.tile(taps, (1, 1, geometry.out_size[1])) if geometry.stride[1] == 1 else None


def _times_tap(a, taps, tap_rows, i, j, out):
    """out = a * w[:, 0, i, j]: an (n, r, cols, C) tap view times tap (i, j)'s (C,) weights. `out` is
    contiguous, so its reshape is a view; `a`'s rows hold their cols * C values contiguously (column
    stride 1 into contiguous arrays), so its reshape is a view too."""
    if tap_rows is None:
        return np.multiply(a, taps[i, j], out=out)
    rows = a.shape[:2] + (a.shape[2] * a.shape[3],)
    np.multiply(a.reshape(rows), tap_rows[i, j, :rows[2]], out=out.reshape(rows))
    return out


def depthwise_conv2d_forward(x, weight, bias=None, stride=1, padding=0, dilation=1):
    """out = sum over the kH*kW taps of tap(x, i, j) * w[:, 0, i, j] (a (C,) row broadcast over pixels).

    Block by block of output rows; each tap adds only where it reads the input (the padding's zeros
    add nothing), so no padded copy of x is made. cache: x, weight, has_bias, geometry."""
    x, weight, bias, g = _arguments(x, weight, bias, stride, padding, dilation, "depthwise_conv2d_forward",
                                    "depthwise")
    n, c, (kh, kw), (h_out, w_out) = x.shape[0], x.shape[3], weight.shape[2:], g.out_size
    taps = weight[:, 0].transpose(1, 2, 0)                     # (kH, kW, C)
    tap_rows = _tap_rows(taps, g)
    out = np.zeros((n, h_out, w_out, c), dtype=x.dtype)
    scratch = np.empty(BLOCK + w_out * c, dtype=x.dtype)
    for block in _depthwise_blocks(x, g, kh, kw):
        for (i, j), out_index, in_index in block:
            target = out[out_index]
            product = scratch[:target.size].reshape(target.shape)
            _times_tap(x[in_index], taps, tap_rows, i, j, product)
            target += product
    if bias is not None:
        out += bias
    return out, {"x": x, "weight": weight, "has_bias": bias is not None, "geometry": g}


def depthwise_conv2d_backward(dout, cache):
    """dw[c, 0, i, j] = column sum of tap(x, i, j) * dout;  tap(dx, i, j) += dout * w[c, 0, i, j], over
    the same blocks and clipped taps as the forward (the blocks' partial sums of dw add up in float64)."""
    x, weight, g = cache["x"], cache["weight"], cache["geometry"]
    kh, kw = weight.shape[2:]
    taps = weight[:, 0].transpose(1, 2, 0)
    tap_rows = _tap_rows(taps, g)
    dx = np.zeros_like(x)
    dw = np.zeros((kh, kw, x.shape[3]))
    scratch = np.empty(BLOCK + dout.shape[2] * dout.shape[3], dtype=dout.dtype)
    for block in _depthwise_blocks(x, g, kh, kw):
        for (i, j), out_index, in_index in block:
            d = dout[out_index]
            product = scratch[:d.size].reshape(d.shape)
            dw[i, j] += _column_sum(np.multiply(x[in_index], d, out=product))
            dx[in_index] += _times_tap(d, taps, tap_rows, i, j, product)
    db = _column_sum(dout) if cache["has_bias"] else None
    return dx, np.ascontiguousarray(dw.transpose(2, 0, 1)[:, None]).astype(dout.dtype), db


def pointwise_conv2d_forward(x, weight, bias=None, stride=1, padding=0, dilation=1):
    """1x1 convolution: (N*H*W, C_in) @ (C_in, C_out). cache: x (the strided input), weight, has_bias,
    geometry, x_shape."""
    x, weight, bias, g = _arguments(x, weight, bias, stride, padding, dilation, "pointwise_conv2d_forward",
                                    "pointwise")
    xs = np.ascontiguousarray(_tap(_pad(x, g.pads), 0, 0, g))
    w2 = weight[:, :, 0, 0]                                    # (C_out, C_in)
    out = xs.reshape(-1, w2.shape[1]) @ w2.T
    if bias is not None:
        out += bias
    cache = {"x": xs, "weight": weight, "has_bias": bias is not None, "geometry": g, "x_shape": x.shape}
    return out.reshape(xs.shape[:3] + (w2.shape[0],)), cache


def pointwise_conv2d_backward(dout, cache):
    """dW = dout2^T @ x2 (C_out, C_in);  dx = dout2 @ W, put back at the strided positions."""
    xs, weight, g = cache["x"], cache["weight"], cache["geometry"]
    w2 = weight[:, :, 0, 0]
    d2 = dout.reshape(-1, w2.shape[0])
    dw = (d2.T @ xs.reshape(-1, w2.shape[1]))[:, :, None, None]
    dxs = (d2 @ w2).reshape(xs.shape)
    db = _column_sum(d2) if cache["has_bias"] else None
    if g.stride == (1, 1) and not any(g.pads):
        return dxs, dw, db
    top, bottom, left, right = g.pads
    n, h, w, c = cache["x_shape"]
    dxp = np.zeros((n, h + top + bottom, w + left + right, c), dtype=dout.dtype)
    _tap(dxp, 0, 0, g)[...] = dxs
    return _crop(dxp, g), dw, db


# --------------------------------------------------------------------------------------------------
# BatchNorm
# --------------------------------------------------------------------------------------------------

ACTIVATION_UPPER = {None: None, "relu": np.inf, "relu6": 6.0}    # the activation a BatchNorm may fuse


def batch_norm_train_forward(x, weight, bias, eps, activation=None):
    """Train-mode BatchNorm over the M = N*H*W pixels of each channel (the last axis), in three passes
    over blocks of rows: the sum (mean), the sum of squared deviations (biased variance, two-pass as
    backward.py), then out = gamma * xhat + beta. The cache keys of `backward.batch_norm_train_forward`
    but xhat: the backward recomputes it block by block from x (x is alive anyway; xhat would be one
    more tensor to write and read back).

    activation: None, or "relu" / "relu6" applied in the last pass while the block is in cache (one
    pass less over memory each way than BatchNorm and activation one after the other); the backward
    then takes d loss / d (activation output) and applies the activation's mask itself."""
    if x.ndim != 4 or weight.shape != (x.shape[-1],) or bias.shape != (x.shape[-1],):
        raise ShapeError(f"batch_norm_train_forward: x (N, H, W, C) with (C,) weight and bias, got "
                         f"{x.shape}, {weight.shape}, {bias.shape}")
    dtype, c = x.dtype, x.shape[-1]
    count = x.size // c
    if count <= 1:
        raise ShapeError(f"batch_norm_train_forward: Expected more than 1 value per channel when training, "
                         f"got input of shape {x.shape}")
    upper = ACTIVATION_UPPER[activation]
    weight, bias = weight.astype(dtype, copy=False), bias.astype(dtype, copy=False)
    x2 = x.reshape(count, c)
    blocks = _row_blocks(count, c)
    scratch = np.empty((blocks[0].stop, c), dtype=dtype)
    mean = _column_sum(x2) / dtype.type(count)
    var = np.zeros(c, dtype=dtype)
    for rows in blocks:
        centred = np.subtract(x2[rows], mean, out=scratch[:rows.stop - rows.start])
        var += _column_sum(np.square(centred, out=centred))
    var /= dtype.type(count)
    rstd = (1.0 / np.sqrt(var.astype(np.float64) + eps)).astype(dtype)
    scale = rstd * weight
    out = np.empty_like(x2)
    for rows in blocks:                                        # out = (x - mean) * rstd * gamma + beta
        block = np.subtract(x2[rows], mean, out=out[rows])
        block *= scale
        block += bias
        if upper is not None:
            _clip_block(block, upper)
    out = out.reshape(x.shape)
    cache = {"x": x2, "mean": mean, "var": var, "var_unbiased": var * dtype.type(count / (count - 1)),
             "rstd": rstd, "weight": weight, "eps": eps, "count": count, "upper": upper,
             "y": out if upper is not None else None}
    return out, cache


def batch_norm_train_backward(dout, cache):
    """dbeta = sum dz, dgamma = sum dz * xhat, dx = gamma * rstd * (dz - dbeta/M - xhat * dgamma/M),
    xhat = (x - mean) * rstd, dz = dout (or, with a fused activation, dout where the output y is inside
    the activation's open interval): the sums in one pass over blocks of rows, dx in a second."""
    x2, mean, rstd, weight, count = cache["x"], cache["mean"], cache["rstd"], cache["weight"], cache["count"]
    upper = cache["upper"]
    c = x2.shape[-1]
    d2 = dout.reshape(count, c)
    y2 = None if upper is None else cache["y"].reshape(count, c)
    blocks = _row_blocks(count, c)
    scratch = np.empty((blocks[0].stop, c), dtype=dout.dtype)
    dbeta = np.zeros(c, dtype=dout.dtype)
    dgamma = np.zeros(c, dtype=dout.dtype)
    dx = np.empty_like(d2)                                     # holds dz (masked dout) until the second pass
    for rows in blocks:
        dz = d2[rows] if upper is None else _pass_inside_block(d2[rows], y2[rows], upper, dx[rows])
        dbeta += _column_sum(dz)
        xhat = np.subtract(x2[rows], mean, out=scratch[:rows.stop - rows.start])
        xhat *= rstd
        dgamma += _column_sum(np.multiply(xhat, dz, out=xhat))
    m = dout.dtype.type(count)
    mean_dz, scale = dbeta / m, weight * rstd
    xhat_scale = dgamma / m * rstd                             # xhat * dgamma / M = (x - mean) * this
    for rows in blocks:
        dz = d2[rows] if upper is None else dx[rows]
        term = np.subtract(x2[rows], mean, out=scratch[:rows.stop - rows.start])
        term *= xhat_scale
        term += mean_dz
        block = np.subtract(dz, term, out=dx[rows])
        block *= scale
    return dx.reshape(dout.shape), dgamma, dbeta


def batch_norm_eval_forward(x, running_mean, running_var, weight, bias, eps):
    """Eval-mode BatchNorm (running statistics): out = x * scale + shift. cache: x, running_mean,
    rstd, weight."""
    dtype = x.dtype
    rstd = (1.0 / np.sqrt(running_var.astype(np.float64) + eps)).astype(dtype)
    scale = weight.astype(dtype, copy=False) * rstd
    out = x * scale
    out += bias.astype(dtype, copy=False) - running_mean.astype(dtype, copy=False) * scale
    return out, {"x": x, "running_mean": running_mean.astype(dtype, copy=False), "rstd": rstd, "scale": scale}


def batch_norm_eval_backward(dout, cache):
    """dx = dout * gamma * rstd, dgamma = sum dout * (x - running_mean) * rstd, dbeta = sum dout."""
    dx = dout * cache["scale"]
    dgamma = _column_sum(dout * (cache["x"] - cache["running_mean"])) * cache["rstd"]
    return dx, dgamma, _column_sum(dout)


# --------------------------------------------------------------------------------------------------
# activations (cache the output: the gradient passes where the output is strictly inside the range)
# --------------------------------------------------------------------------------------------------

def _clip_block(block, upper):
    """block = min(max(block, 0), upper) in place (upper inf: ReLU)."""
    np.maximum(block, 0, out=block)
    if upper != np.inf:
        np.minimum(block, upper, out=block)
    return block


def _pass_inside_block(d, y, upper, scratch):
    """d where 0 < y < upper, else 0, into scratch (rows of it)."""
    inside = y > 0
    if upper != np.inf:
        inside &= y < upper
    return np.multiply(d, inside, out=scratch[:len(d)])


def _clip(x, upper):
    """max(x, 0), or min(max(x, 0), upper), block by block, *in place*: in the graph the activation's
    input is the BatchNorm's fresh output, which nothing else reads (record gets NCHW copies)."""
    x2 = x.reshape(-1, x.shape[-1])
    for rows in _row_blocks(*x2.shape):
        _clip_block(x2[rows], upper)
    return x


def _pass_inside(dout, y, upper):
    """dout where 0 < y (< upper), else 0, block by block."""
    d2, y2 = dout.reshape(-1, dout.shape[-1]), y.reshape(-1, y.shape[-1])
    dx = np.empty_like(d2)
    for rows in _row_blocks(*d2.shape):
        _pass_inside_block(d2[rows], y2[rows], upper, dx[rows])
    return dx.reshape(dout.shape)


def relu_forward(x):
    """y = max(x, 0), overwriting x (see _clip). cache: y."""
    y = _clip(x, np.inf)
    return y, {"y": y}


def relu_backward(dout, cache):
    return _pass_inside(dout, cache["y"], np.inf)


def relu6_forward(x):
    """y = min(max(x, 0), 6), overwriting x (see _clip). cache: y."""
    y = _clip(x, 6)
    return y, {"y": y}


def relu6_backward(dout, cache):
    return _pass_inside(dout, cache["y"], 6)


# --------------------------------------------------------------------------------------------------
# pooling, dropout over maps, resizing, concatenation
# --------------------------------------------------------------------------------------------------

def global_avg_pool_forward(x):
    """(N, H, W, C) -> (N, 1, 1, C). cache: x_shape."""
    n, h, w, c = x.shape
    pooled = _ones(h * w, x.dtype) @ x.reshape(n, h * w, c) / x.dtype.type(h * w)
    return pooled.reshape(n, 1, 1, c), {"x_shape": x.shape}


def global_avg_pool_backward(dout, cache):
    n, h, w, c = cache["x_shape"]
    dx = np.empty((n, h, w, c), dtype=dout.dtype)
    dx[...] = dout.reshape(n, 1, 1, c) / dout.dtype.type(h * w)
    return dx


def dropout2d_forward(x, p, training, rng):
    """Channel dropout on (N, H, W, C): the (N, C) draws of `backward.dropout2d_forward` (the same
    numbers from the same generator), broadcast over H, W."""
    out, cache = B.dropout2d_forward(x.transpose(0, 3, 1, 2), p, training, rng)
    mask = cache["mask"]
    cache = {"mask": None if mask is None else mask.reshape(mask.shape[0], 1, 1, mask.shape[1])}
    return out.transpose(0, 2, 3, 1), cache


def dropout2d_backward(dout, cache):
    return dout.copy() if cache["mask"] is None else dout * cache["mask"]


def interpolate_bilinear_forward(x, size, align_corners):
    """`backward.interpolate_bilinear_forward` on the channels-first view (DeepLab's pooled branch)."""
    out, cache = B.interpolate_bilinear_forward(x.transpose(0, 3, 1, 2), size, align_corners)
    return to_channels_last(out), cache


def interpolate_bilinear_backward(dout, cache):
    return to_channels_last(B.interpolate_bilinear_backward(dout.transpose(0, 3, 1, 2), cache))


def concat_channels_forward(arrays):
    out = np.concatenate(arrays, axis=-1)
    return out, {"channels": [a.shape[-1] for a in arrays]}


def concat_channels_backward(dout, cache):
    bounds = np.cumsum([0] + cache["channels"])
    return [np.ascontiguousarray(dout[..., bounds[k]: bounds[k + 1]]) for k in range(len(bounds) - 1)]
