"""Integer-only ops of TensorFlow Lite's reference kernels (uint8 and int8), bit-exact, in NumPy.

Layout (the same as the float ops in `mobilenet_np.ops`, converted from TFLite's NHWC by one transpose):
    activations           (N, C, H, W)          TFLite (N, H, W, C):       x.transpose(0, 3, 1, 2)
    conv2d weights        (C_out, C_in, KH, KW) TFLite OHWI:               w.transpose(0, 3, 1, 2)
    depthwise weights     (C*dm, 1, KH, KW)     TFLite [1, KH, KW, C*dm]:  w.transpose(3, 0, 1, 2)
    fully_connected       x (N, in), weights (out, in)    (as TFLite)
Per-channel weight params therefore run along axis 0 (`QuantParams(scale, zero_point, axis=0)`).

Codes are uint8 or int8 arrays; every op returns the dtype of its input (or the dtype asked for).
Quantization parameters are passed explicitly as `QuantParams`: x_params, w_params, y_params, ...
A code q stands for the real value scale * (q - zero_point).

Integer arithmetic is exact: codes are cast to a wide type (int64, or a float that holds them exactly)
before any zero point is subtracted (NumPy would wrap uint8 - 128), and convolutions accumulate as float matrix products, which are exact while every
partial sum of products stays below 2^24 (float32: 3x3 depthwise, small 1x1 convs) or 2^53 (float64).
`accumulator_bound` proves that for the given weights and picks the type; beyond 2^53 the ops fall back
to int64 products. The bias is added afterwards in int64, then MBQM runs in cache-sized blocks.

Each op has a `_naive` twin written as loops over output elements in plain Python ints, following the
C++ reference kernel (out-of-image taps are skipped with an explicit test, not padded). The tests
check fast == naive and both == the LiteRT interpreter (BUILTIN_REF), with no tolerance.

Fused activations: "none", "relu", "relu6", "relu_n1_to_1" (see fixedpoint.activation_range).
Padding of convs and pools: "same" (TensorFlow's: out = ceil(in / stride), the odd pixel after),
"valid", or explicit: an int, an (h, w) pair, or (top, bottom, left, right).
conv2d / depthwise_conv2d take `rounding=` ("double", the reference, by default); the other values
("single", "ruy_upward", "float") are a teaching switch showing other builds' rounding, NOT the reference.
"""

from __future__ import annotations

import numpy as np

from ..checks import pair
from ..errors import ShapeError
from .fixedpoint import (
    QuantParams, activation_range, conv_real_multiplier, add_real_multipliers, dtype_range, exp_on_negative_values,
    exp_on_negative_values_naive, get_reciprocal, get_reciprocal_naive, mean_multiplier,
    multiply_by_quantized_multiplier, multiply_by_quantized_multiplier_naive, quantize_multiplier,
    quantize_value, quantize_value_naive, rescale_real_multiplier, round_half_away, round_half_away_naive,
    rounding_divide_by_pot, rounding_divide_by_pot_naive, saturating_rounding_doubling_high_mul,
    saturating_rounding_doubling_high_mul_naive, softmax_input_multiplier,
)

__all__ = [
    "accumulator_bound", "conv_geometry",
    "conv2d", "conv2d_naive", "depthwise_conv2d", "depthwise_conv2d_naive",
    "fully_connected", "fully_connected_naive",
    "add", "add_naive", "average_pool2d", "average_pool2d_naive", "mean", "mean_naive",
    "softmax", "softmax_naive", "resize_bilinear", "resize_bilinear_naive",
    "concatenation", "concatenation_naive",
    "quantize", "quantize_naive", "requantize", "requantize_naive", "dequantize", "dequantize_naive",
    "pad", "pad_naive", "arg_max", "arg_max_naive", "reshape",
]

EXACT_FLOAT64 = 2 ** 53   # float64 sums of integers are exact while every partial sum stays below this
EXACT_FLOAT32 = 2 ** 24   # the same for float32
REQUANTIZE_BLOCK = 2 ** 15   # elements per block of the requantization (int64 temporaries of 256 KiB)


# --------------------------------------------------------------------------------------------------
# argument checks shared by the ops
# --------------------------------------------------------------------------------------------------

def _codes(x, op: str, name: str, ndim: int | None = None) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype not in (np.uint8, np.int8):
        raise ShapeError(f"{op}: {name} must be uint8 or int8 codes, got dtype {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        raise ShapeError(f"{op}: {name} must have {ndim} dimensions, got shape {x.shape}")
    return x


def _params(params, op: str, name: str, shape, allow_per_channel: bool = False) -> QuantParams:
    if not isinstance(params, QuantParams):
        raise ShapeError(f"{op}: {name} must be a QuantParams, got {type(params).__name__}")
    return params.check(op, name, shape, allow_per_channel)


def _bias(bias, op: str, channels: int) -> np.ndarray:
    if bias is None:
        return np.zeros(channels, np.int64)
    bias = np.asarray(bias)
    if bias.dtype.kind not in "iu" or bias.shape != (channels,):
        raise ShapeError(f"{op}: bias must be an integer array of shape ({channels},), got {bias.dtype} {bias.shape}")
    return bias.astype(np.int64)


def _c_divide(a, b) -> np.ndarray:
    """C integer division (truncation toward zero) of int64 arrays, b > 0."""
    q = np.abs(a) // b
    return np.where(a < 0, -q, q)


def _c_divide_int(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def conv_geometry(op: str, size: tuple[int, int], kernel: tuple[int, int], stride, padding, dilation):
    """Output size and (top, bottom, left, right) padding of a conv or pool (TFLite's padding.h).

        effective kernel  k' = (k - 1) * d + 1
        "same":   out = ceil(in / s), total = max((out - 1) * s + k' - in, 0), before = total // 2
        "valid":  out = (in - k') // s + 1, no padding
        explicit: out = (in + before + after - k') // s + 1
    """
    (h, w), (kh, kw) = size, kernel
    sh, sw = pair(stride, op, "stride")
    dh, dw = pair(dilation, op, "dilation")
    if min(sh, sw, dh, dw, kh, kw) < 1:
        raise ShapeError(f"{op}: kernel, stride and dilation must be positive, got kernel {kernel}, "
                         f"stride {stride}, dilation {dilation}")
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    if isinstance(padding, str):
        if padding == "same":
            oh, ow = -(-h // sh), -(-w // sw)
            th, tw = max((oh - 1) * sh + eh - h, 0), max((ow - 1) * sw + ew - w, 0)
            pads = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
        elif padding == "valid":
            pads = (0, 0, 0, 0)
        else:
            raise ShapeError(f"{op}: padding must be 'same', 'valid', an int, a pair or 4 ints, got {padding!r}")
    elif isinstance(padding, (int, np.integer)) or len(padding) == 2:
        ph, pw = pair(padding, op, "padding")
        pads = (ph, ph, pw, pw)
    elif len(padding) == 4:
        pads = tuple(int(p) for p in padding)
    else:
        raise ShapeError(f"{op}: padding must be 'same', 'valid', an int, a pair or 4 ints, got {padding!r}")
    if min(pads) < 0:
        raise ShapeError(f"{op}: padding must be non-negative, got {padding!r}")
    oh = (h + pads[0] + pads[1] - eh) // sh + 1
    ow = (w + pads[2] + pads[3] - ew) // sw + 1
    if oh < 1 or ow < 1:
        raise ShapeError(f"{op}: output would be empty: input {h}x{w}, kernel {kh}x{kw}, stride {stride}, "
                         f"dilation {dilation}, padding {padding!r}")
    return (oh, ow), pads, (sh, sw), (dh, dw)


def accumulator_bound(weight, weight_zero_point, x_dtype, x_zero_point, bias=None) -> int:
    """An upper bound of |accumulator| of a conv / depthwise / fully-connected layer, as a Python int.

        bound = max over output channels o of  sum_k |w[o, k] - z_w[o]| * max|x - z_x|  +  |bias[o]|

    where k runs over all weight entries of channel o (axis 0 of `weight`) and max|x - z_x| over all
    codes of x's dtype. Float matrix products are exact when bound < 2^24 (float32) or 2^53 (float64), the
    bias excluded when it is added afterwards in int64 (as the ops do). Pass weight_zero_point=0
    for int8 per-channel weights (their zero point is ignored by the kernels).
    """
    weight = np.asarray(weight).astype(np.int32)     # codes and zero points fit; sums are taken in int64
    channels = weight.shape[0]
    zw = np.broadcast_to(np.asarray(weight_zero_point, np.int32).reshape(-1), (channels,))
    qmin, qmax = dtype_range(x_dtype)
    x_span = max(int(x_zero_point) - qmin, qmax - int(x_zero_point))
    weight_sums = np.abs(weight - zw.reshape((-1,) + (1,) * (weight.ndim - 1))).reshape(channels, -1).sum(
        axis=1, dtype=np.int64)
    bias = np.zeros(channels, np.int64) if bias is None else np.abs(np.asarray(bias, np.int64))
    return int((weight_sums * x_span + bias).max())    # int64: exact for any layer below ~10^16 weights


def _requantize_accumulator(acc, bias, multiplier, exponent, y_params, act, dtype, rounding="double"):
    """out[n, o] = clamp(MBQM(acc[n, o] + bias[o], M[o], e[o]) + z_y, act_min, act_max) as `dtype`.

    acc (N, C_out, ...) holds the exact sums of products (float or int). The work is done in blocks of
    about REQUANTIZE_BLOCK elements, so the int64 temporaries stay in cache and are not freshly paged in.
    """
    n, c = acc.shape[:2]
    rows = acc.reshape(n * c, -1)
    bias = np.tile(bias, n)[:, None]
    uniform = np.all(multiplier == multiplier[0]) and np.all(exponent == exponent[0])
    if not uniform:
        multiplier, exponent = np.tile(multiplier, n)[:, None], np.tile(exponent, n)[:, None]
    zero_point, (lo, hi) = int(y_params.zero_point[0]), act
    out = np.empty(rows.shape, dtype)
    step = max(1, REQUANTIZE_BLOCK // max(rows.shape[1], 1))
    for start in range(0, n * c, step):
        block = slice(start, start + step)
        value = rows[block].astype(np.int64)
        value += bias[block]
        value = multiply_by_quantized_multiplier(value, multiplier[0] if uniform else multiplier[block],
                                                 exponent[0] if uniform else exponent[block], rounding)
        value += zero_point
        out[block] = np.clip(value, lo, hi, out=value)
    return out.reshape(acc.shape)


def _accumulation_dtype(weight, weight_zero_point, x_dtype, x_zero_point):
    """The cheapest exact accumulator for the sum of products (the bias is added afterwards, in int64):
    float32 below 2^24 (e.g. 3x3 depthwise), float64 below 2^53, else int64."""
    bound = accumulator_bound(weight, weight_zero_point, x_dtype, x_zero_point)
    if bound < EXACT_FLOAT32:
        return np.float32
    return np.float64 if bound < EXACT_FLOAT64 else np.int64


def _conv_multipliers(op, x, x_params, w_params, y_params, channels):
    """(M, e) per output channel, the weight zero points the kernel uses, and the activation clamp."""
    if x.dtype == np.uint8:
        if w_params.per_channel:
            raise ShapeError(f"{op}: w_params must be per-tensor for uint8 (TFLite's uint8 kernels), "
                             f"got per-channel params along axis {w_params.axis}")
        weight_zero_point = np.full(channels, int(w_params.zero_point[0]), np.int64)
    else:
        weight_zero_point = np.zeros(channels, np.int64)   # int8: symmetric weights, zero point ignored
    weight_scale = np.broadcast_to(w_params.scale, (channels,))
    real = conv_real_multiplier(x_params.scale[0], weight_scale, y_params.scale[0], x.dtype)
    multiplier, exponent = quantize_multiplier(real)
    return multiplier, exponent, weight_zero_point


def _conv_arguments(op, x, weight, bias, x_params, w_params, y_params, stride, padding, dilation, activation,
                    depthwise):
    x = _codes(x, op, "x", ndim=4)
    weight = _codes(weight, op, "weight", ndim=4)
    if weight.dtype != x.dtype:
        raise ShapeError(f"{op}: weight must have x's dtype {x.dtype}, got {weight.dtype}")
    n, c_in, h, w = x.shape
    c_out, c_per, kh, kw = weight.shape
    if depthwise:
        if c_per != 1 or c_out % c_in:
            raise ShapeError(f"{op}: weight must be (C*dm, 1, KH, KW) for x with C={c_in} channels, "
                             f"got {weight.shape}")
    elif c_per != c_in:
        raise ShapeError(f"{op}: weight {weight.shape} expects {c_per} input channels, x {x.shape} has {c_in}")
    x_params = _params(x_params, op, "x_params", x.shape)
    w_params = _params(w_params, op, "w_params", weight.shape, allow_per_channel=True)
    if w_params.per_channel and w_params.axis != 0:
        raise ShapeError(f"{op}: per-channel w_params must run along axis 0 (output channels), "
                         f"got axis {w_params.axis}")
    bias = _bias(bias, op, c_out)
    (oh, ow), pads, stride, dilation = conv_geometry(op, (h, w), (kh, kw), stride, padding, dilation)
    # y_params' shape is the output's; checked for being per-tensor.
    y_params = _params(y_params, op, "y_params", (n, c_out, oh, ow))
    multiplier, exponent, weight_zero_point = _conv_multipliers(op, x, x_params, w_params, y_params, c_out)
    act = activation_range(activation, y_params.scale[0], y_params.zero_point[0], x.dtype)
    return x, weight, bias, x_params, weight_zero_point, y_params, (oh, ow), pads, stride, dilation, \
        multiplier, exponent, act


def _centered_input(x, x_zero_point, pads, dtype):
    """x - z_x in `dtype` (float32, float64 or int64), padded with zeros: out-of-image taps contribute nothing
    (the same as padding the raw codes with z_x, or as the reference's skip of those taps)."""
    xz = x.astype(dtype)
    xz -= x_zero_point
    top, bottom, left, right = pads
    if any(pads):
        xz = np.pad(xz, ((0, 0), (0, 0), (top, bottom), (left, right)))
    return xz


# --------------------------------------------------------------------------------------------------
# CONV_2D
# --------------------------------------------------------------------------------------------------

def conv2d(x, weight, bias, x_params, w_params, y_params, stride=1, padding="valid", dilation=1,
           activation="none", rounding="double") -> np.ndarray:
    """Quantized CONV_2D (TFLite reference conv.h / integer_ops/conv.h).

    Shapes: x (N, C_in, H, W) uint8|int8; weight (C_out, C_in, KH, KW) same dtype; bias (C_out,) int32
    or None; out (N, C_out, H_out, W_out) x's dtype.

        acc[n, o, y, x] = bias[o] + sum_{c, i, j in image} (w[o, c, i, j] - z_w) * (x[n, c, y*sh - top + i*dh,
                                                                                      x*sw - left + j*dw] - z_x)
        out = clamp(MBQM(acc, M[o], e[o]) + z_y, act_min, act_max)

    uint8: per-tensor weights with zero point z_w; (M, e) from double(float32(s_x * s_w)) / s_y.
    int8:  per-tensor or per-channel (axis 0) weights, z_w ignored (= 0); (M[o], e[o]) from
           double(s_x) * double(s_w[o]) / double(s_y).
    `rounding` != "double" is a teaching switch, NOT the reference (see multiply_by_quantized_multiplier).

    Computed as im2col + one float32/float64 GEMM (a 1x1 conv is a single matmul), exact (accumulator_bound).
    """
    (x, weight, bias, x_params, zw, y_params, (oh, ow), pads, (sh, sw), (dh, dw), multiplier, exponent,
     act) = _conv_arguments("conv2d", x, weight, bias, x_params, w_params, y_params, stride, padding, dilation,
                            activation, depthwise=False)
    zx = int(x_params.zero_point[0])
    dtype = _accumulation_dtype(weight, zw, x.dtype, zx)
    xz = _centered_input(x, zx, pads, dtype)
    wz = weight.astype(dtype) - zw.astype(dtype)[:, None, None, None]
    n, c_in = x.shape[:2]
    c_out, _, kh, kw = weight.shape
    if kh == kw == 1:
        cols = xz[:, :, : sh * (oh - 1) + 1: sh, : sw * (ow - 1) + 1: sw].reshape(n, c_in, oh * ow)
        acc = np.matmul(wz[:, :, 0, 0], cols).reshape(n, c_out, oh, ow)
    else:
        windows = np.lib.stride_tricks.sliding_window_view(xz, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
        windows = windows[:, :, : sh * (oh - 1) + 1: sh, : sw * (ow - 1) + 1: sw, ::dh, ::dw]   # (N, C, oh, ow, kh, kw)
        cols = windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c_in * kh * kw)
        acc = np.matmul(cols, wz.reshape(c_out, c_in * kh * kw).T).reshape(n, oh, ow, c_out).transpose(0, 3, 1, 2)
    return _requantize_accumulator(acc, bias, multiplier, exponent, y_params, act, x.dtype, rounding)


def conv2d_naive(x, weight, bias, x_params, w_params, y_params, stride=1, padding="valid", dilation=1,
                 activation="none") -> np.ndarray:
    """Loop version of `conv2d`: one output code at a time, skipping taps outside the image."""
    (x, weight, bias, x_params, zw, y_params, (oh, ow), (top, _, left, _), (sh, sw), (dh, dw), multiplier, exponent,
     (lo, hi)) = _conv_arguments("conv2d_naive", x, weight, bias, x_params, w_params, y_params, stride, padding,
                                 dilation, activation, depthwise=False)
    n, c_in, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    zx, zy = int(x_params.zero_point[0]), int(y_params.zero_point[0])
    out = np.empty((n, c_out, oh, ow), x.dtype)
    for b in range(n):
        for o in range(c_out):
            for y in range(oh):
                for x_ in range(ow):
                    acc = int(bias[o])
                    for c in range(c_in):
                        for i in range(kh):
                            for j in range(kw):
                                iy, ix = y * sh - top + i * dh, x_ * sw - left + j * dw
                                if 0 <= iy < h and 0 <= ix < w:
                                    acc += (int(weight[o, c, i, j]) - int(zw[o])) * (int(x[b, c, iy, ix]) - zx)
                    value = int(multiply_by_quantized_multiplier_naive(acc, multiplier[o], exponent[o])) + zy
                    out[b, o, y, x_] = min(max(value, lo), hi)
    return out


# --------------------------------------------------------------------------------------------------
# DEPTHWISE_CONV_2D
# --------------------------------------------------------------------------------------------------

def depthwise_conv2d(x, weight, bias, x_params, w_params, y_params, stride=1, padding="valid", dilation=1,
                     activation="none", rounding="double") -> np.ndarray:
    """Quantized DEPTHWISE_CONV_2D (TFLite reference depthwiseconv_uint8.h / integer_ops/depthwise_conv.h).

    Shapes: x (N, C, H, W); weight (C*dm, 1, KH, KW) (PyTorch's groups=C layout); bias (C*dm,) or None;
    out (N, C*dm, H_out, W_out). The depth multiplier dm = C_out / C is read from the shapes (as TFLite
    does): output channel o = c*dm + m filters input channel c = o // dm.

        acc[n, o, y, x] = bias[o] + sum_{i, j in image} (w[o, 0, i, j] - z_w) * (x[n, o // dm, y*sh - top + i*dh,
                                                                                  x*sw - left + j*dw] - z_x)
        out = clamp(MBQM(acc, M[o], e[o]) + z_y, act_min, act_max)

    Multipliers and zero points as in `conv2d` (uint8 per-tensor with z_w; int8 per-channel, z_w ignored).
    Computed per block of channels as a loop over the KH*KW taps, each a broadcast multiply-add over the whole
    image (float32 when exact, which it is for 3x3 taps of 8-bit codes).
    """
    (x, weight, bias, x_params, zw, y_params, (oh, ow), pads, (sh, sw), (dh, dw), multiplier, exponent,
     act) = _conv_arguments("depthwise_conv2d", x, weight, bias, x_params, w_params, y_params, stride, padding,
                            dilation, activation, depthwise=True)
    zx = int(x_params.zero_point[0])
    dtype = _accumulation_dtype(weight, zw, x.dtype, zx)
    xz = _centered_input(x, zx, pads, dtype)
    c_out, _, kh, kw = weight.shape
    dm = c_out // x.shape[1]
    wz = weight[:, 0].astype(dtype) - zw.astype(dtype)[:, None, None]
    out = np.empty((x.shape[0], c_out, oh, ow), x.dtype)
    # Blocks of output channels (about REQUANTIZE_BLOCK outputs each): the block's accumulator stays in
    # cache while the KH*KW taps are added into it, and is requantized right away.
    step = dm * max(1, REQUANTIZE_BLOCK // (x.shape[0] * dm * oh * ow))
    for first in range(0, c_out, step):
        block = slice(first, min(first + step, c_out))
        source = xz[:, first // dm: block.stop // dm]
        if dm > 1:
            source = np.repeat(source, dm, axis=1)      # channel c*dm + m <- input channel c
        acc, product = None, None
        for i in range(kh):
            for j in range(kw):
                # the input pixels tap (i, j) sees, for every output pixel of the block at once
                window = source[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw]
                tap = wz[None, block, i, j, None, None]
                if acc is None:
                    acc, product = window * tap, np.empty(window.shape, dtype)
                else:
                    acc += np.multiply(window, tap, out=product)
        out[:, block] = _requantize_accumulator(acc, bias[block], multiplier[block], exponent[block], y_params, act,
                                                x.dtype, rounding)
    return out


def depthwise_conv2d_naive(x, weight, bias, x_params, w_params, y_params, stride=1, padding="valid", dilation=1,
                           activation="none") -> np.ndarray:
    """Loop version of `depthwise_conv2d`, over input channels c and multiplier index m (o = c*dm + m)."""
    (x, weight, bias, x_params, zw, y_params, (oh, ow), (top, _, left, _), (sh, sw), (dh, dw), multiplier, exponent,
     (lo, hi)) = _conv_arguments("depthwise_conv2d_naive", x, weight, bias, x_params, w_params, y_params, stride,
                                 padding, dilation, activation, depthwise=True)
    n, c_in, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    dm = c_out // c_in
    zx, zy = int(x_params.zero_point[0]), int(y_params.zero_point[0])
    out = np.empty((n, c_out, oh, ow), x.dtype)
    for b in range(n):
        for c in range(c_in):
            for m in range(dm):
                o = c * dm + m
                for y in range(oh):
                    for x_ in range(ow):
                        acc = int(bias[o])
                        for i in range(kh):
                            for j in range(kw):
                                iy, ix = y * sh - top + i * dh, x_ * sw - left + j * dw
                                if 0 <= iy < h and 0 <= ix < w:
                                    acc += (int(weight[o, 0, i, j]) - int(zw[o])) * (int(x[b, c, iy, ix]) - zx)
                        value = int(multiply_by_quantized_multiplier_naive(acc, multiplier[o], exponent[o])) + zy
                        out[b, o, y, x_] = min(max(value, lo), hi)
    return out


# --------------------------------------------------------------------------------------------------
# FULLY_CONNECTED
# --------------------------------------------------------------------------------------------------

def _fc_arguments(op, x, weight, bias, x_params, w_params, y_params, activation):
    x = _codes(x, op, "x", ndim=2)
    weight = _codes(weight, op, "weight", ndim=2)
    if weight.dtype != x.dtype or weight.shape[1] != x.shape[1]:
        raise ShapeError(f"{op}: weight must be (out, {x.shape[1]}) of dtype {x.dtype}, "
                         f"got {weight.dtype} {weight.shape}")
    x_params = _params(x_params, op, "x_params", x.shape)
    w_params = _params(w_params, op, "w_params", weight.shape, allow_per_channel=x.dtype == np.int8)
    if w_params.per_channel and w_params.axis != 0:
        raise ShapeError(f"{op}: per-channel w_params must run along axis 0 (output features), "
                         f"got axis {w_params.axis}")
    y_params = _params(y_params, op, "y_params", (x.shape[0], weight.shape[0]))
    c_out = weight.shape[0]
    zw = np.full(c_out, int(w_params.zero_point[0]) if x.dtype == np.uint8 else 0, np.int64)
    # The reference requantizes in double: scale = double(s_x) * double(s_w) / double(s_y).
    scale = (np.float64(x_params.scale[0]) * np.broadcast_to(w_params.scale, (c_out,)).astype(np.float64)
             / np.float64(y_params.scale[0]))
    act = activation_range(activation, y_params.scale[0], y_params.zero_point[0], x.dtype)
    return x, weight, _bias(bias, op, c_out), int(x_params.zero_point[0]), zw, y_params, scale, act


def fully_connected(x, weight, bias, x_params, w_params, y_params, activation="none") -> np.ndarray:
    """Quantized FULLY_CONNECTED as LiteRT 2.x's reference kernel computes it (requantization in double).

    Shapes: x (N, in), weight (out, in), bias (out,) int32 or None, out (N, out) x's dtype.

        acc[n, o] = bias[o] + sum_k (w[o, k] - z_w) * (x[n, k] - z_x)     (int8: z_w ignored, per-channel allowed)
        out       = clamp(round_half_away(double(acc) * double(s_x) * double(s_w[o]) / double(s_y)) + z_y, act)

    Unlike conv2d there is no (M, e) multiplier: LiteRT's REF FULLY_CONNECTED converts the accumulator
    to double (TFLite Micro and the optimized kernels still use MBQM and can differ by 1).
    """
    x, weight, bias, zx, zw, y_params, scale, (lo, hi) = _fc_arguments(
        "fully_connected", x, weight, bias, x_params, w_params, y_params, activation)
    exact = accumulator_bound(weight, zw, x.dtype, zx, bias) < EXACT_FLOAT64
    dtype = np.float64 if exact else np.int64
    acc = np.matmul(x.astype(dtype) - zx, (weight.astype(dtype) - zw[:, None].astype(dtype)).T)
    acc = acc.astype(np.int64) + bias
    out = round_half_away(acc.astype(np.float64) * scale).astype(np.int64) + int(y_params.zero_point[0])
    return np.clip(out, lo, hi).astype(x.dtype)


def fully_connected_naive(x, weight, bias, x_params, w_params, y_params, activation="none") -> np.ndarray:
    """Loop version of `fully_connected`."""
    x, weight, bias, zx, zw, y_params, scale, (lo, hi) = _fc_arguments(
        "fully_connected_naive", x, weight, bias, x_params, w_params, y_params, activation)
    out = np.empty((x.shape[0], weight.shape[0]), x.dtype)
    for b in range(x.shape[0]):
        for o in range(weight.shape[0]):
            acc = int(bias[o])
            for k in range(x.shape[1]):
                acc += (int(weight[o, k]) - int(zw[o])) * (int(x[b, k]) - zx)
            value = int(round_half_away_naive(float(acc) * float(scale[o]))) + int(y_params.zero_point[0])
            out[b, o] = min(max(value, lo), hi)
    return out


# --------------------------------------------------------------------------------------------------
# ADD
# --------------------------------------------------------------------------------------------------

LEFT_SHIFT = 20   # ADD's headroom for 8-bit inputs: |q - z| <= 255 and 255 * 2^20 < 2^31


def _add_arguments(op, a, b, a_params, b_params, y_params, activation):
    a, b = _codes(a, op, "a"), _codes(b, op, "b")
    if a.dtype != b.dtype:
        raise ShapeError(f"{op}: a and b must have the same dtype, got {a.dtype} and {b.dtype}")
    try:
        shape = np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ShapeError(f"{op}: shapes {a.shape} and {b.shape} do not broadcast") from None
    a_params, b_params = _params(a_params, op, "a_params", a.shape), _params(b_params, op, "b_params", b.shape)
    y_params = _params(y_params, op, "y_params", shape)
    reals = add_real_multipliers(a_params.scale[0], b_params.scale[0], y_params.scale[0], LEFT_SHIFT)
    (m1, m2, mo), (e1, e2, eo) = (tuple(int(v) for v in arr) for arr in quantize_multiplier(np.array(reals)))
    act = activation_range(activation, y_params.scale[0], y_params.zero_point[0], a.dtype)
    zeros = int(a_params.zero_point[0]), int(b_params.zero_point[0]), int(y_params.zero_point[0])
    return a, b, zeros, (m1, e1), (m2, e2), (mo, eo), act


def add(a, b, a_params, b_params, y_params, activation="none") -> np.ndarray:
    """Quantized ADD (TFLite reference add.h / integer_ops/add.h), with NumPy broadcasting.

        twice = 2 * max(s_a, s_b)
        a'    = MBQM((a - z_a) * 2^20, M(s_a / twice))          both inputs on the scale twice / 2^20
        b'    = MBQM((b - z_b) * 2^20, M(s_b / twice))
        out   = clamp(MBQM(a' + b', M(twice / (2^20 * s_y))) + z_y, act_min, act_max)
    """
    a, b, (za, zb, zy), (m1, e1), (m2, e2), (mo, eo), (lo, hi) = _add_arguments(
        "add", a, b, a_params, b_params, y_params, activation)
    a_scaled = multiply_by_quantized_multiplier((a.astype(np.int64) - za) << LEFT_SHIFT, m1, e1)
    b_scaled = multiply_by_quantized_multiplier((b.astype(np.int64) - zb) << LEFT_SHIFT, m2, e2)
    out = multiply_by_quantized_multiplier(a_scaled + b_scaled, mo, eo) + zy
    return np.clip(out, lo, hi).astype(a.dtype)


def add_naive(a, b, a_params, b_params, y_params, activation="none") -> np.ndarray:
    """Loop version of `add` over the broadcast output."""
    a, b, (za, zb, zy), (m1, e1), (m2, e2), (mo, eo), (lo, hi) = _add_arguments(
        "add_naive", a, b, a_params, b_params, y_params, activation)
    a_full, b_full = np.broadcast_arrays(a, b)
    out = np.empty(a_full.shape, a.dtype)
    for i in np.ndindex(out.shape):
        a_scaled = int(multiply_by_quantized_multiplier_naive((int(a_full[i]) - za) * 2 ** LEFT_SHIFT, m1, e1))
        b_scaled = int(multiply_by_quantized_multiplier_naive((int(b_full[i]) - zb) * 2 ** LEFT_SHIFT, m2, e2))
        value = int(multiply_by_quantized_multiplier_naive(a_scaled + b_scaled, mo, eo)) + zy
        out[i] = min(max(value, lo), hi)
    return out


# --------------------------------------------------------------------------------------------------
# AVERAGE_POOL_2D
# --------------------------------------------------------------------------------------------------

def _pool_arguments(op, x, params, kernel_size, stride, padding, activation):
    x = _codes(x, op, "x", ndim=4)
    params = _params(params, op, "params", x.shape)
    kh, kw = pair(kernel_size, op, "kernel_size")
    (oh, ow), pads, stride, _ = conv_geometry(op, x.shape[2:], (kh, kw), stride, padding, 1)
    act = activation_range(activation, params.scale[0], params.zero_point[0], x.dtype)
    return x, (kh, kw), (oh, ow), pads, stride, act


def _pool_divide(total, count, dtype):
    """The reference's rounded division of a window sum by its tap count.
    uint8: (sum + n/2) / n.   int8: ties away from zero, (sum +- n/2) / n with C truncation."""
    if dtype == np.uint8:
        return (total + count // 2) // count
    return _c_divide(np.where(total > 0, total + count // 2, total - count // 2), count)


def average_pool2d(x, params, kernel_size, stride, padding="valid", activation="none") -> np.ndarray:
    """Quantized AVERAGE_POOL_2D (TFLite reference pooling.h / integer_ops/pooling.h) on raw codes.

    Shapes: x (N, C, H, W) -> (N, C, H_out, W_out). Input and output share `params` (TFLite assumes it:
    the kernel averages codes and never rescales).

        count = number of window taps inside the image      (SAME padding is not averaged in)
        sum   = sum of those codes
        uint8: out = (sum + count // 2) // count
        int8:  out = (sum + count // 2) / count if sum > 0 else (sum - count // 2) / count   (C division)
        out   = clamp(out, act_min, act_max)
    """
    x, (kh, kw), (oh, ow), (top, bottom, left, right), (sh, sw), (lo, hi) = _pool_arguments(
        "average_pool2d", x, params, kernel_size, stride, padding, activation)
    h, w = x.shape[2:]
    padded = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (top, bottom), (left, right)))   # 0 adds nothing
    total = np.zeros(x.shape[:2] + (oh, ow), np.int64)
    for i in range(kh):
        for j in range(kw):
            total += padded[:, :, i: i + sh * (oh - 1) + 1: sh, j: j + sw * (ow - 1) + 1: sw]
    # In-image taps per output row (col): the window [y*sh - top, y*sh - top + kh) clipped to [0, h).
    starts_h, starts_w = np.arange(oh) * sh - top, np.arange(ow) * sw - left
    rows = np.minimum(starts_h + kh, h) - np.maximum(starts_h, 0)
    cols = np.minimum(starts_w + kw, w) - np.maximum(starts_w, 0)
    count = rows[:, None] * cols[None, :]
    return np.clip(_pool_divide(total, count, x.dtype), lo, hi).astype(x.dtype)


def average_pool2d_naive(x, params, kernel_size, stride, padding="valid", activation="none") -> np.ndarray:
    """Loop version of `average_pool2d`: sum and count the in-image taps of each window."""
    x, (kh, kw), (oh, ow), (top, _, left, _), (sh, sw), (lo, hi) = _pool_arguments(
        "average_pool2d_naive", x, params, kernel_size, stride, padding, activation)
    n, c, h, w = x.shape
    out = np.empty((n, c, oh, ow), x.dtype)
    for b in range(n):
        for ch in range(c):
            for y in range(oh):
                for x_ in range(ow):
                    total, count = 0, 0
                    for i in range(kh):
                        for j in range(kw):
                            iy, ix = y * sh - top + i, x_ * sw - left + j
                            if 0 <= iy < h and 0 <= ix < w:
                                total += int(x[b, ch, iy, ix])
                                count += 1
                    if x.dtype == np.uint8:
                        value = (total + count // 2) // count
                    elif total > 0:
                        value = _c_divide_int(total + count // 2, count)
                    else:
                        value = _c_divide_int(total - count // 2, count)
                    out[b, ch, y, x_] = min(max(value, lo), hi)
    return out


# --------------------------------------------------------------------------------------------------
# MEAN
# --------------------------------------------------------------------------------------------------

def _mean_arguments(op, x, x_params, y_params, axis, keepdims):
    x = _codes(x, op, "x")
    axes = tuple(sorted({int(a) % x.ndim for a in np.atleast_1d(axis)})) if x.ndim else ()
    if not axes:
        raise ShapeError(f"{op}: axis must name at least one axis of x {x.shape}, got {axis!r}")
    x_params = _params(x_params, op, "x_params", x.shape)
    out_shape = tuple(1 if d in axes else s for d, s in enumerate(x.shape) if keepdims or d not in axes)
    y_params = _params(y_params, op, "y_params", out_shape)
    count = int(np.prod([x.shape[a] for a in axes]))
    multiplier, exponent = mean_multiplier(x_params.scale[0], y_params.scale[0], count)
    return x, axes, count, int(x_params.zero_point[0]), int(y_params.zero_point[0]), multiplier, exponent, out_shape


def mean(x, x_params, y_params, axis=(2, 3), keepdims=True) -> np.ndarray:
    """Quantized MEAN (TFLite reference reduce.h QuantizedMeanOrSum), default over H and W of NCHW.

        n   = number of reduced elements
        (M', e') = quantize_multiplier(s_x / s_y) with 1/n folded in (fixedpoint.mean_multiplier)
        out = clamp(MBQM(sum(q) - z_x * n, M', e') + z_y, qmin, qmax)      (no fused activation)
    """
    x, axes, count, zx, zy, multiplier, exponent, out_shape = _mean_arguments(
        "mean", x, x_params, y_params, axis, keepdims)
    total = x.astype(np.int64).sum(axis=axes).reshape(out_shape)
    out = multiply_by_quantized_multiplier(total - zx * count, multiplier, exponent) + zy
    return np.clip(out, *dtype_range(x.dtype)).astype(x.dtype)


def mean_naive(x, x_params, y_params, axis=(2, 3), keepdims=True) -> np.ndarray:
    """Loop version of `mean`: add every input code into its output cell, then rescale each cell."""
    x, axes, count, zx, zy, multiplier, exponent, out_shape = _mean_arguments(
        "mean_naive", x, x_params, y_params, axis, keepdims)
    kept = [d for d in range(x.ndim) if d not in axes]
    totals = {}
    for index in np.ndindex(x.shape):
        key = tuple(index[d] for d in kept)
        totals[key] = totals.get(key, 0) + int(x[index])
    qmin, qmax = dtype_range(x.dtype)
    out = np.empty(out_shape, x.dtype).reshape([x.shape[d] for d in kept])
    for key, total in totals.items():
        value = int(multiply_by_quantized_multiplier_naive(total - zx * count, multiplier, exponent)) + zy
        out[key] = min(max(value, qmin), qmax)
    return out.reshape(out_shape)


# --------------------------------------------------------------------------------------------------
# SOFTMAX
# --------------------------------------------------------------------------------------------------

def _softmax_arguments(op, x, x_params, beta):
    x = _codes(x, op, "x")
    if x.ndim < 1:
        raise ShapeError(f"{op}: x must have at least 1 dimension, got a scalar")
    x_params = _params(x_params, op, "x_params", x.shape)
    return x, softmax_input_multiplier(beta, x_params.scale[0])


def softmax(x, x_params, beta=1.0) -> np.ndarray:
    """Quantized SOFTMAX over the last axis (TFLite reference softmax.h: gemmlowp fixed point, no table).

    Per row, with d = q - max(q) <= 0 and (M, ls, diff_min) = softmax_input_multiplier(beta, s_x):
        kept  = d >= diff_min                   (others output qmin and are left out of the sum)
        z     = SRDHM(d * 2^ls, M)              beta * s_x * d as Q5.26
        e     = exp_on_negative_values(z)       Q0.31
        sum   = sum over kept of RDBP(e, 12)    Q12.19
        (r, nbits) = get_reciprocal(sum, 12)    1/sum = r * 2^-nbits
        out   = clamp(RDBP(SRDHM(r, e), nbits + 31 - 8) + qmin, qmin, qmax)      = round(256 * p) + qmin
    The output scale and zero point are not read: they must be 1/256 and qmin (0 uint8, -128 int8).
    """
    x, (multiplier, left_shift, diff_min) = _softmax_arguments("softmax", x, x_params, beta)
    qmin, qmax = dtype_range(x.dtype)
    codes = x.astype(np.int64)
    diff = codes - codes.max(axis=-1, keepdims=True)
    kept = diff >= diff_min
    exps = exp_on_negative_values(saturating_rounding_doubling_high_mul(diff << left_shift, multiplier))
    total = np.where(kept, rounding_divide_by_pot(exps, 12), 0).sum(axis=-1, keepdims=True)
    reciprocal, nbits = get_reciprocal(total, 12)
    out = rounding_divide_by_pot(saturating_rounding_doubling_high_mul(reciprocal, exps), nbits + 31 - 8) + qmin
    return np.where(kept, np.clip(out, qmin, qmax), qmin).astype(x.dtype)


def softmax_naive(x, x_params, beta=1.0) -> np.ndarray:
    """Loop version of `softmax`: the two passes of the reference kernel over each row."""
    x, (multiplier, left_shift, diff_min) = _softmax_arguments("softmax_naive", x, x_params, beta)
    qmin, qmax = dtype_range(x.dtype)
    out = np.empty(x.shape, x.dtype)
    for row in np.ndindex(x.shape[:-1]):
        codes = [int(v) for v in x[row]]
        largest = max(codes)
        exps = []
        for q in codes:
            diff = q - largest
            if diff >= diff_min:
                scaled = int(saturating_rounding_doubling_high_mul_naive(diff * 2 ** left_shift, multiplier))
                exps.append(int(exp_on_negative_values_naive(scaled)))
            else:
                exps.append(None)
        total = sum(int(rounding_divide_by_pot_naive(e, 12)) for e in exps if e is not None)
        reciprocal, nbits = (int(v) for v in get_reciprocal_naive(total, 12))
        for k, e in enumerate(exps):
            if e is None:
                out[row + (k,)] = qmin
            else:
                high = int(saturating_rounding_doubling_high_mul_naive(reciprocal, e))
                value = int(rounding_divide_by_pot_naive(high, nbits + 31 - 8)) + qmin
                out[row + (k,)] = min(max(value, qmin), qmax)
    return out


# --------------------------------------------------------------------------------------------------
# RESIZE_BILINEAR
# --------------------------------------------------------------------------------------------------

def _resize_arguments(op, x, size, align_corners, half_pixel_centers):
    x = _codes(x, op, "x", ndim=4)
    out_h, out_w = pair(size, op, "size")
    if min(out_h, out_w) < 1:
        raise ShapeError(f"{op}: size must be positive, got {size!r}")
    if align_corners and half_pixel_centers:
        raise ShapeError(f"{op}: align_corners and half_pixel_centers cannot both be True")
    return x, out_h, out_w


def _float_source(out_size, in_size, align_corners, half_pixel_centers):
    """uint8 path (float32, ComputeInterpolationValues): source coordinate, lower and upper index per output."""
    scale = np.float32(in_size) / np.float32(out_size)
    if align_corners and out_size > 1:
        scale = np.float32(in_size - 1) / np.float32(out_size - 1)
    dst = np.arange(out_size, dtype=np.float32)
    src = (dst + np.float32(0.5)) * scale - np.float32(0.5) if half_pixel_centers else dst * scale
    lower = np.maximum(np.floor(src).astype(np.int64), 0)
    upper = np.minimum(np.ceil(src).astype(np.int64), in_size - 1)
    return src, lower, upper


def _integer_source(out_size, in_size, align_corners, half_pixel_centers):
    """int8 path (ComputeInterpolationValuesInteger): source coordinate * 1024, lower and upper index."""
    scale10 = (1024 * in_size + out_size // 2) // out_size
    if align_corners and out_size > 1:
        scale10 = (1024 * (in_size - 1) + (out_size - 1) // 2) // (out_size - 1)
    src10 = np.arange(out_size, dtype=np.int64) * scale10
    if half_pixel_centers:
        src10 = src10 + scale10 // 2 - 512
    lower = np.maximum(_c_divide(src10, 1024), 0)
    upper = np.minimum(_c_divide(src10 + 1023, 1024), in_size - 1)
    return src10, lower, upper


def resize_bilinear(x, size, align_corners=False, half_pixel_centers=False) -> np.ndarray:
    """Quantized RESIZE_BILINEAR (TFLite reference resize_bilinear.h) on raw codes, (N, C, H, W) -> (N, C, *size).

    No requantization: input and output share their parameters. The arithmetic depends on the dtype:

    uint8, float32 (ResizeBilinear<uint8_t>):
        scale = in / out   (align_corners: (in - 1) / (out - 1))            float32
        src   = dst * scale   (half_pixel_centers: (dst + 0.5) * scale - 0.5)
        y0 = max(floor(src), 0), y1 = min(ceil(src), in - 1), dy = src_y - y0 (may be < 0 at the border)
        out = (uint8) trunc(q00*(1-dy)*(1-dx) + q10*dy*(1-dx) + q01*(1-dy)*dx + q11*dy*dx + 0.5)
              every product and sum in float32, in this order
    int8, 10-bit fixed point (ResizeBilinearInteger):
        scale10 = (1024 * in + out // 2) // out  (align_corners: (1024 * (in - 1) + (out - 1) // 2) // (out - 1))
        src10 = dst * scale10   (half_pixel_centers: + scale10 // 2 - 512)
        y0 = max(src10 / 1024, 0), y1 = min((src10 + 1023) / 1024, in - 1)     (C division)
        sum = q00*(1024-fy)*(1024-fx) + q10*fy*(1024-fx) + q01*(1024-fy)*fx + q11*fy*fx,  fy = src10 - 1024*y0
        out = (sum + 2^19) / 2^20 if sum > 0 else (sum - 2^19) / 2^20                (C division)
    """
    x, out_h, out_w = _resize_arguments("resize_bilinear", x, size, align_corners, half_pixel_centers)
    h, w = x.shape[2:]
    if x.dtype == np.uint8:
        sy, y0, y1 = _float_source(out_h, h, align_corners, half_pixel_centers)
        sx, x0, x1 = _float_source(out_w, w, align_corners, half_pixel_centers)
        dy = (sy - y0.astype(np.float32))[:, None]
        dx = (sx - x0.astype(np.float32))[None, :]
        one = np.float32(1)
        q = x.astype(np.float32)
        q00, q10 = q[:, :, y0][:, :, :, x0], q[:, :, y1][:, :, :, x0]
        q01, q11 = q[:, :, y0][:, :, :, x1], q[:, :, y1][:, :, :, x1]
        value = (q00 * (one - dy) * (one - dx) + q10 * dy * (one - dx) + q01 * (one - dy) * dx + q11 * dy * dx
                 + np.float32(0.5))
        return np.trunc(value).astype(np.uint8)
    sy, y0, y1 = _integer_source(out_h, h, align_corners, half_pixel_centers)
    sx, x0, x1 = _integer_source(out_w, w, align_corners, half_pixel_centers)
    fy = (sy - 1024 * y0)[:, None]
    fx = (sx - 1024 * x0)[None, :]
    q = x.astype(np.int64)
    total = (q[:, :, y0][:, :, :, x0] * (1024 - fy) * (1024 - fx) + q[:, :, y1][:, :, :, x0] * fy * (1024 - fx)
             + q[:, :, y0][:, :, :, x1] * (1024 - fy) * fx + q[:, :, y1][:, :, :, x1] * fy * fx)
    return _c_divide(np.where(total > 0, total + 2 ** 19, total - 2 ** 19), 2 ** 20).astype(x.dtype)


def resize_bilinear_naive(x, size, align_corners=False, half_pixel_centers=False) -> np.ndarray:
    """Loop version of `resize_bilinear`, one output code at a time (float32 scalars for uint8)."""
    x, out_h, out_w = _resize_arguments("resize_bilinear_naive", x, size, align_corners, half_pixel_centers)
    n, c, h, w = x.shape
    out = np.empty((n, c, out_h, out_w), x.dtype)
    f32 = np.float32
    source = _float_source if x.dtype == np.uint8 else _integer_source
    src_y, lower_y, upper_y = source(out_h, h, align_corners, half_pixel_centers)
    src_x, lower_x, upper_x = source(out_w, w, align_corners, half_pixel_centers)
    for y in range(out_h):
        y0, y1 = int(lower_y[y]), int(upper_y[y])
        for x_ in range(out_w):
            x0, x1 = int(lower_x[x_]), int(upper_x[x_])
            for b in range(n):
                for ch in range(c):
                    q00, q10, q01, q11 = x[b, ch, y0, x0], x[b, ch, y1, x0], x[b, ch, y0, x1], x[b, ch, y1, x1]
                    if x.dtype == np.uint8:
                        dy, dx = f32(src_y[y]) - f32(y0), f32(src_x[x_]) - f32(x0)
                        value = f32(q00) * (f32(1) - dy) * (f32(1) - dx)
                        value = value + f32(q10) * dy * (f32(1) - dx)
                        value = value + f32(q01) * (f32(1) - dy) * dx
                        value = value + f32(q11) * dy * dx
                        out[b, ch, y, x_] = int(value + f32(0.5))      # int() truncates like the C cast
                    else:
                        fy, fx = int(src_y[y]) - 1024 * y0, int(src_x[x_]) - 1024 * x0
                        total = (int(q00) * (1024 - fy) * (1024 - fx) + int(q10) * fy * (1024 - fx)
                                 + int(q01) * (1024 - fy) * fx + int(q11) * fy * fx)
                        nudged = total + 2 ** 19 if total > 0 else total - 2 ** 19
                        out[b, ch, y, x_] = _c_divide_int(nudged, 2 ** 20)
    return out


# --------------------------------------------------------------------------------------------------
# CONCATENATION
# --------------------------------------------------------------------------------------------------

def _concat_arguments(op, inputs, params, y_params, axis):
    if len(inputs) == 0 or len(inputs) != len(params):
        raise ShapeError(f"{op}: need one QuantParams per input, got {len(inputs)} inputs and {len(params)} params")
    inputs = [_codes(x, op, f"inputs[{i}]") for i, x in enumerate(inputs)]
    first = inputs[0]
    axis = int(axis) % max(first.ndim, 1)
    for i, x in enumerate(inputs):
        if x.dtype != first.dtype or x.ndim != first.ndim or \
                any(s != t for d, (s, t) in enumerate(zip(x.shape, first.shape)) if d != axis):
            raise ShapeError(f"{op}: inputs[{i}] {x.dtype} {x.shape} does not fit inputs[0] {first.dtype} "
                             f"{first.shape} along axis {axis}")
    params = [_params(p, op, f"params[{i}]", x.shape) for i, (x, p) in enumerate(zip(inputs, params))]
    shape = list(first.shape)
    shape[axis] = sum(x.shape[axis] for x in inputs)
    y_params = _params(y_params, op, "y_params", tuple(shape))
    if first.dtype == np.int8:
        for i, p in enumerate(params):
            if not p.same_as(y_params):
                raise ShapeError(f"{op}: int8 inputs must share the output's scale and zero point "
                                 f"(TFLite requires it); params[{i}] differs")
    return inputs, params, y_params, axis


def _concat_rescale(p, y_params):
    """float32 (scale, bias) of ConcatenationWithScaling: q * scale + bias = (q - z_i) * s_i / s_o."""
    scale = np.float32(p.scale[0]) * (np.float32(1) / np.float32(y_params.scale[0]))
    return scale, np.float32(-int(p.zero_point[0])) * scale


def concatenation(inputs, params, y_params, axis=1) -> np.ndarray:
    """Quantized CONCATENATION (TFLite reference concatenation.h) along `axis` (1 = channels of NCHW).

    An input whose (scale, zero point) equal the output's is copied. Otherwise (uint8 only) each code
    is requantized in float32:
        scale = s_i * (1 / s_o),  bias = -z_i * scale
        out   = clamp(round_half_away(q * scale + bias) + z_o, 0, 255)
    int8 inputs must all share the output's parameters (TFLite refuses the model otherwise).
    """
    inputs, params, y_params, axis = _concat_arguments("concatenation", inputs, params, y_params, axis)
    parts = []
    for x, p in zip(inputs, params):
        if p.same_as(y_params):
            parts.append(x)
            continue
        scale, bias = _concat_rescale(p, y_params)
        value = round_half_away(x.astype(np.float32) * scale + bias).astype(np.int64) + int(y_params.zero_point[0])
        parts.append(np.clip(value, 0, 255).astype(np.uint8))
    return np.concatenate(parts, axis=axis)


def concatenation_naive(inputs, params, y_params, axis=1) -> np.ndarray:
    """Loop version of `concatenation`: write each input's codes into its slice of the output."""
    inputs, params, y_params, axis = _concat_arguments("concatenation_naive", inputs, params, y_params, axis)
    shape = list(inputs[0].shape)
    shape[axis] = sum(x.shape[axis] for x in inputs)
    out = np.empty(shape, inputs[0].dtype)
    offset = 0
    for x, p in zip(inputs, params):
        copy = p.same_as(y_params)
        scale, bias = _concat_rescale(p, y_params)
        for index in np.ndindex(x.shape):
            target = index[:axis] + (index[axis] + offset,) + index[axis + 1:]
            if copy:
                out[target] = x[index]
            else:
                value = int(round_half_away_naive(float(np.float32(x[index]) * scale + bias)))
                out[target] = min(max(value + int(y_params.zero_point[0]), 0), 255)
        offset += x.shape[axis]
    return out


# --------------------------------------------------------------------------------------------------
# QUANTIZE, requantize, DEQUANTIZE
# --------------------------------------------------------------------------------------------------

def _out_dtype(op, dtype):
    dtype = np.dtype(dtype)
    if dtype not in (np.uint8, np.int8):
        raise ShapeError(f"{op}: dtype must be uint8 or int8, got {dtype}")
    return dtype


def quantize(x, y_params, dtype) -> np.ndarray:
    """QUANTIZE float -> codes (TFLite reference AffineQuantize):

        out = clamp(round_half_away(float32(x) / float32(s)) + z, qmin, qmax)      (division in float32)
    """
    dtype = _out_dtype("quantize", dtype)
    x = np.asarray(x, dtype=np.float32)
    y_params = _params(y_params, "quantize", "y_params", x.shape)
    out = quantize_value(x, y_params.scale[0], y_params.zero_point[0])
    return np.clip(out, *dtype_range(dtype)).astype(dtype)


def quantize_naive(x, y_params, dtype) -> np.ndarray:
    """Loop version of `quantize`."""
    dtype = _out_dtype("quantize_naive", dtype)
    x = np.asarray(x, dtype=np.float32)
    y_params = _params(y_params, "quantize_naive", "y_params", x.shape)
    qmin, qmax = dtype_range(dtype)
    out = np.empty(x.shape, dtype)
    for i in np.ndindex(x.shape):
        out[i] = min(max(int(quantize_value_naive(x[i], y_params.scale[0], y_params.zero_point[0])), qmin), qmax)
    return out


def _requantize_arguments(op, x, x_params, y_params, dtype):
    x = _codes(x, op, "x")
    dtype = _out_dtype(op, dtype)
    x_params = _params(x_params, op, "x_params", x.shape)
    y_params = _params(y_params, op, "y_params", x.shape)
    multiplier, exponent = (int(v) for v in quantize_multiplier(
        rescale_real_multiplier(x_params.scale[0], y_params.scale[0])))
    zx, zy = int(x_params.zero_point[0]), int(y_params.zero_point[0])
    # Same scale (M = 2^30, e = 1), uint8 <-> int8 and zero points 128 apart: flip the top bit.
    flip = (multiplier, exponent) == (2 ** 30, 1) and x.dtype != dtype and \
        zx - zy == (128 if x.dtype == np.uint8 else -128)
    return x, dtype, multiplier, exponent, zx, zy, flip


def requantize(x, x_params, y_params, dtype) -> np.ndarray:
    """QUANTIZE codes -> codes (TFLite reference requantize.h), e.g. uint8 -> int8 or a new scale.

        (M, e) = quantize_multiplier(double(s_x) / double(s_y))
        out    = clamp(MBQM(q - z_x, M, e) + z_y, qmin, qmax)      of the output dtype
    Fast path of the reference: equal scales, uint8 <-> int8 and z_x - z_y = +-128 give q ^ 0x80
    (the same codes the general formula gives).
    """
    x, dtype, multiplier, exponent, zx, zy, flip = _requantize_arguments("requantize", x, x_params, y_params, dtype)
    if flip:
        return (x.view(np.uint8) ^ np.uint8(0x80)).view(dtype)
    out = multiply_by_quantized_multiplier(x.astype(np.int64) - zx, multiplier, exponent) + zy
    return np.clip(out, *dtype_range(dtype)).astype(dtype)


def requantize_naive(x, x_params, y_params, dtype) -> np.ndarray:
    """Loop version of `requantize` (always the general formula)."""
    x, dtype, multiplier, exponent, zx, zy, _ = _requantize_arguments("requantize_naive", x, x_params, y_params, dtype)
    qmin, qmax = dtype_range(dtype)
    out = np.empty(x.shape, dtype)
    for i in np.ndindex(x.shape):
        value = int(multiply_by_quantized_multiplier_naive(int(x[i]) - zx, multiplier, exponent)) + zy
        out[i] = min(max(value, qmin), qmax)
    return out


def _dequantize_arguments(op, x, x_params):
    x = _codes(x, op, "x")
    x_params = _params(x_params, op, "x_params", x.shape, allow_per_channel=True)
    shape = [1] * x.ndim
    if x_params.per_channel:
        shape[x_params.axis] = -1
    return x, x_params.scale.astype(np.float64).reshape(shape), x_params.zero_point.reshape(shape)


def dequantize(x, x_params) -> np.ndarray:
    """DEQUANTIZE codes -> float32:  float32(double(s) * (q - z))  (per-channel along x_params.axis allowed)."""
    x, scale, zero_point = _dequantize_arguments("dequantize", x, x_params)
    return (scale * (x.astype(np.int64) - zero_point)).astype(np.float32)


def dequantize_naive(x, x_params) -> np.ndarray:
    """Loop version of `dequantize`."""
    x, scale, zero_point = _dequantize_arguments("dequantize_naive", x, x_params)
    scale, zero_point = np.broadcast_to(scale, x.shape), np.broadcast_to(zero_point, x.shape)
    out = np.empty(x.shape, np.float32)
    for i in np.ndindex(x.shape):
        out[i] = float(scale[i]) * (int(x[i]) - int(zero_point[i]))
    return out


# --------------------------------------------------------------------------------------------------
# PAD, ARG_MAX, RESHAPE
# --------------------------------------------------------------------------------------------------

def _pad_arguments(op, x, paddings, y_params):
    x = _codes(x, op, "x")
    paddings = np.asarray(paddings, dtype=np.int64)
    if paddings.shape != (x.ndim, 2) or np.any(paddings < 0):
        raise ShapeError(f"{op}: paddings must be {x.ndim} non-negative (before, after) pairs, got {paddings.tolist()}")
    shape = tuple(int(s + p.sum()) for s, p in zip(x.shape, paddings))
    y_params = _params(y_params, op, "y_params", shape)
    return x, paddings, shape, int(y_params.zero_point[0])


def pad(x, paddings, y_params) -> np.ndarray:
    """Quantized PAD (TFLite reference pad.h): codes copied unchanged, new cells = the output zero point
    (the code of real 0). paddings: one (before, after) pair per axis of x, e.g. NCHW
    ((0, 0), (0, 0), (top, bottom), (left, right))."""
    x, paddings, _, zy = _pad_arguments("pad", x, paddings, y_params)
    return np.pad(x, [tuple(p) for p in paddings.tolist()], constant_values=zy)


def pad_naive(x, paddings, y_params) -> np.ndarray:
    """Loop version of `pad`: fill the output with z_y, then copy every input code to its shifted place."""
    x, paddings, shape, zy = _pad_arguments("pad_naive", x, paddings, y_params)
    out = np.empty(shape, x.dtype)
    for i in np.ndindex(shape):
        out[i] = zy
    for i in np.ndindex(x.shape):
        out[tuple(int(k + p[0]) for k, p in zip(i, paddings))] = x[i]
    return out


def arg_max(x, axis, output_dtype=np.int64) -> np.ndarray:
    """ARG_MAX over `axis` of the raw codes: the index of the first maximum (strict > comparison)."""
    x = _codes(x, "arg_max", "x")
    output_dtype = np.dtype(output_dtype)
    if output_dtype not in (np.int32, np.int64):
        raise ShapeError(f"arg_max: output_dtype must be int32 or int64, got {output_dtype}")
    return np.argmax(x, axis=axis).astype(output_dtype)


def arg_max_naive(x, axis, output_dtype=np.int64) -> np.ndarray:
    """Loop version of `arg_max`: scan each line along `axis`, keep the index of the first largest code."""
    x = _codes(x, "arg_max_naive", "x")
    moved = np.moveaxis(x, axis, -1)
    out = np.empty(moved.shape[:-1], np.dtype(output_dtype))
    for i in np.ndindex(out.shape):
        best = 0
        for k in range(1, moved.shape[-1]):
            if moved[i + (k,)] > moved[i + (best,)]:
                best = k
        out[i] = best
    return out


def reshape(x, shape) -> np.ndarray:
    """RESHAPE: no arithmetic; the output keeps the input's scale and zero point."""
    x = _codes(x, "reshape", "x")
    try:
        return x.reshape(shape)
    except ValueError:
        raise ShapeError(f"reshape: cannot reshape x {x.shape} to {shape}") from None
