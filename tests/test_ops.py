"""mobilenet_np.ops agrees with PyTorch, and every fast op agrees with its naive loop twin.

* `test_op_matches_torch`: hypothesis draws random valid calls of every op and compares the result
  with `torch.nn.functional` (and, for TF "SAME" padding, with transformers' own `apply_tf_padding`),
  in float32 and float64: same shape, same dtype, values within the tolerances below.
* `test_fast_matches_naive`: the same for each fast op against its `*_naive` twin, on small cases.
* explicit tests: each conv fast path is really taken, mixed dtypes promote to float64, bad
  arguments raise ShapeError naming the op and the shapes, and a few checks that these tests can fail.

The random arrays come from a NumPy generator seeded by hypothesis: hypothesis chooses (and shrinks)
the shapes and arguments, which is where the bugs hide, and prints a failing case as shapes, not numbers.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from transformers.models.mobilenet_v2.modeling_mobilenet_v2 import apply_tf_padding

from mobilenet_np import ops
from mobilenet_np.errors import ShapeError

# PyTorch warns that an asymmetric padding="same" (even kernel, odd dilation) copies the input: expected here.
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")

# --------------------------------------------------------------------------------------------------
# tolerances
# --------------------------------------------------------------------------------------------------
# NumPy and PyTorch add the same products in different orders (BLAS blocking, tap by tap, pairwise
# sums, fused multiply-adds), so results differ by rounding. Every comparison allows
#
#     max |ours - reference| <= RTOL * growth * max(1, max |reference|)
#
#   float32: eps = 1.2e-7; RTOL32 = 1e-5 (about 80 eps) is headroom for the order differences, while a
#            real bug (a wrong tap, a pad on the wrong side, a wrong weight) is off by 1e-3 or more.
#   float64: eps = 2.2e-16; RTOL64 = 1e-12 (about 4500 eps), the same reasoning.
#   growth:  how the rounding error grows with the case. A sum of K terms (conv, linear, pooling,
#            softmax) accumulates K roundings like a random walk: growth = sqrt(K). Bilinear resizing
#            blends with a weight taken from a source coordinate up to in_size, rounded to about
#            eps * in_size (both sides round it, PyTorch maybe with a fused multiply-add): growth =
#            in_size. (Measured over 300 random cases per op: float32 errors stay below 0.45 of the
#            bound for interpolation with growth 1, below 0.03 for the others.)
# Padding, ReLU and ReLU6 only copy or select values: they must agree exactly.
RTOL32 = 1e-5
RTOL64 = 1e-12
RTOL = {np.dtype(np.float32): RTOL32, np.dtype(np.float64): RTOL64}
DTYPES = (np.float32, np.float64)


def to_torch(a):
    return None if a is None else torch.from_numpy(np.ascontiguousarray(a))


def assert_close(actual, expected, growth: float = 1.0, exact: bool = False):
    """`actual` (NumPy) has the shape and dtype of `expected` (a tensor or an array) and its values,
    within RTOL * growth * max(1, max |expected|) (exactly when `exact`)."""
    expected = expected.detach().numpy() if isinstance(expected, torch.Tensor) else np.asarray(expected)
    assert isinstance(actual, np.ndarray), f"got a {type(actual).__name__}, not an ndarray"
    assert actual.shape == expected.shape, f"shape {actual.shape} != reference {expected.shape}"
    assert actual.dtype == expected.dtype, f"dtype {actual.dtype} != reference {expected.dtype}"
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    bound = 0.0 if exact else RTOL[expected.dtype] * growth * scale
    error = float(np.abs(actual.astype(np.float64) - expected.astype(np.float64)).max(initial=0.0))
    assert error <= bound, f"max |error| {error:.3g} > bound {bound:.3g} (scale {scale:.3g}, growth {growth:.3g})"


# --------------------------------------------------------------------------------------------------
# random cases
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Limits:
    batch: int
    channels: int
    size: int      # height and width
    features: int  # linear in/out features, softmax classes


FULL = Limits(batch=3, channels=48, size=40, features=1280)  # the ranges checked against PyTorch
SMALL = Limits(batch=2, channels=6, size=9, features=64)     # the naive twins are Python loops

# 1, 3, 5, 7 are MobileNet's; an even kernel is the only way to an odd padding='same' total d * (k - 1),
# which PyTorch splits asymmetrically (the extra pixel after).
KERNELS = (1, 2, 3, 4, 5, 7)


@dataclass
class Case:
    """One call of an op: its array arguments, its keyword arguments, and its tolerance growth."""
    args: tuple
    kwargs: dict = field(default_factory=dict)
    growth: float = 1.0

    def __repr__(self) -> str:  # shapes and dtypes, not thousands of numbers
        arrays = ", ".join("None" if a is None else f"{a.dtype}{list(a.shape)}" for a in self.args)
        return f"Case(({arrays}), {self.kwargs}, growth={self.growth:.3g})"


def as_pair(value) -> tuple[int, int]:
    return value if isinstance(value, tuple) else (value, value)


def draw_pair(draw, values_h, values_w=None):
    """An (h, w) argument, given as a single int half of the time when h == w (both forms must work).
    With one strategy h == w is made frequent; with two (one per axis) each axis keeps its own range."""
    h = draw(values_h)
    if values_w is None:
        w = h if draw(st.booleans()) else draw(values_h)
    else:
        w = draw(values_w)
    return h if h == w and draw(st.booleans()) else (h, w)


def draw_rng(draw) -> np.random.Generator:
    return np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="seed"))


def uniform(rng, shape, dtype, low=-1.0, high=1.0) -> np.ndarray:
    return rng.uniform(low, high, shape).astype(dtype)


def draw_nchw(draw, limits: Limits, min_size: tuple[int, int] = (1, 1)) -> tuple[int, int, int, int]:
    """(N, C, H, W) within the limits: odd, even, square and non-square sizes."""
    return (draw(st.integers(1, limits.batch)), draw(st.integers(1, limits.channels)),
            draw(st.integers(min_size[0], limits.size)), draw(st.integers(min_size[1], limits.size)))


@st.composite
def conv_cases(draw, limits: Limits) -> Case:
    dtype = draw(st.sampled_from(DTYPES))
    channels = st.integers(1, limits.channels)
    grouping = draw(st.sampled_from(["dense", "depthwise", "multiplier", "grouped"]))
    if grouping == "dense":
        groups, c_in, c_out = 1, draw(channels), draw(channels)
    elif grouping == "depthwise":  # MobileNet's 3x3 depthwise layers
        c_in = c_out = groups = draw(channels)
    elif grouping == "multiplier":  # depthwise with a channel multiplier: out = k * in
        k = draw(st.integers(2, 3))
        c_in = groups = draw(st.integers(1, limits.channels // k))
        c_out = k * c_in
    else:  # "grouped": 1 < groups < in_channels
        groups = draw(st.integers(2, limits.channels // 2))
        c_in = groups * draw(st.integers(2, limits.channels // groups))
        c_out = groups * draw(st.integers(1, limits.channels // groups))

    kh = draw(st.sampled_from(KERNELS))
    kw = kh if draw(st.booleans()) else draw(st.sampled_from(KERNELS))
    # The largest dilation whose kernel span d * (k - 1) + 1 still fits in the largest image.
    dilations = [st.integers(1, 4 if k == 1 else min(4, (limits.size - 1) // (k - 1))) for k in (kh, kw)]
    dilation = draw_pair(draw, *dilations)
    (dh, dw) = as_pair(dilation)

    form = draw(st.sampled_from(["int", "pair", "valid", "same"]))
    if form == "same":  # PyTorch's "same" only exists for stride 1
        stride = draw(st.sampled_from([1, (1, 1)]))
        padding, pad_totals = "same", (dh * (kh - 1), dw * (kw - 1))
    else:
        stride = draw_pair(draw, st.integers(1, 3))
        padding = {"int": st.integers(0, 3), "pair": st.tuples(st.integers(0, 3), st.integers(0, 3)),
                   "valid": st.just("valid")}[form]
        padding = draw(padding)
        pad_totals = (0, 0) if padding == "valid" else tuple(2 * p for p in as_pair(padding))
    # Only non-empty outputs: the padded image must hold the kernel span.
    min_size = tuple(max(1, d * (k - 1) + 1 - total) for d, k, total in zip((dh, dw), (kh, kw), pad_totals))
    n, _, h, w = draw_nchw(draw, limits, min_size)

    rng = draw_rng(draw)
    x = uniform(rng, (n, c_in, h, w), dtype)
    weight = uniform(rng, (c_out, c_in // groups, kh, kw), dtype)
    bias = uniform(rng, (c_out,), dtype) if draw(st.booleans()) else None
    return Case((x, weight, bias), dict(stride=stride, padding=padding, dilation=dilation, groups=groups),
                growth=math.sqrt(c_in // groups * kh * kw))


@st.composite
def pad_cases(draw, limits: Limits) -> Case:
    dtype, shape = draw(st.sampled_from(DTYPES)), draw_nchw(draw, limits)
    x = uniform(draw_rng(draw), shape, dtype)
    return Case((x,), dict(kernel_size=draw_pair(draw, st.integers(1, 7)), stride=draw_pair(draw, st.integers(1, 3)),
                           dilation=draw_pair(draw, st.integers(1, 4))))


@st.composite
def batch_norm_cases(draw, limits: Limits) -> Case:
    dtype, shape = draw(st.sampled_from(DTYPES)), draw_nchw(draw, limits)
    rng, c = draw_rng(draw), shape[1]
    x = uniform(rng, shape, dtype, -3, 3)
    mean, var = uniform(rng, (c,), dtype), uniform(rng, (c,), dtype, 0, 2)  # var near 0: eps matters
    weight, bias = uniform(rng, (c,), dtype), uniform(rng, (c,), dtype)
    return Case((x, mean, var, weight, bias), dict(eps=draw(st.sampled_from([1e-5, 1e-3]))))


@st.composite
def activation_cases(draw, limits: Limits) -> Case:
    """Values on both sides of 0 and 6, and exactly 0 and 6."""
    dtype, shape = draw(st.sampled_from(DTYPES)), draw_nchw(draw, limits)
    rng = draw_rng(draw)
    x = uniform(rng, shape, dtype, -8, 8)
    x[rng.random(shape) < 0.1] = 6
    x[rng.random(shape) < 0.1] = 0
    return Case((x,))


@st.composite
def pool_cases(draw, limits: Limits) -> Case:
    dtype, shape = draw(st.sampled_from(DTYPES)), draw_nchw(draw, limits)
    return Case((uniform(draw_rng(draw), shape, dtype),), growth=math.sqrt(shape[2] * shape[3]))


@st.composite
def linear_cases(draw, limits: Limits) -> Case:
    dtype, rng = draw(st.sampled_from(DTYPES)), draw_rng(draw)
    n, in_f, out_f = (draw(st.integers(1, m)) for m in (limits.batch, limits.features, limits.features))
    bias = uniform(rng, (out_f,), dtype) if draw(st.booleans()) else None
    return Case((uniform(rng, (n, in_f), dtype), uniform(rng, (out_f, in_f), dtype), bias), growth=math.sqrt(in_f))


@st.composite
def interpolate_cases(draw, limits: Limits) -> Case:
    """Up and down sampling by any (mostly non-integer) ratio, including to and from 1 pixel."""
    dtype, shape = draw(st.sampled_from(DTYPES)), draw_nchw(draw, limits)
    size = draw_pair(draw, st.integers(1, 2 * limits.size))
    return Case((uniform(draw_rng(draw), shape, dtype),), dict(size=size, align_corners=draw(st.booleans())),
                growth=max(shape[2:]))


@st.composite
def softmax_cases(draw, limits: Limits, only_2d: bool = False) -> Case:
    """(N, classes) over the last axis, or DeepLab's (N, C, H, W) logits over the channels.
    Logits up to +-100: exp overflows float32 above 88 unless the maximum is subtracted first."""
    dtype, rng = draw(st.sampled_from(DTYPES)), draw_rng(draw)
    if only_2d or draw(st.booleans()):
        shape = (draw(st.integers(1, limits.batch)), draw(st.integers(1, limits.features)))
        axis = draw(st.sampled_from([-1, 1]))
    else:
        shape, axis = draw_nchw(draw, limits), 1
    scale = draw(st.sampled_from([1.0, 100.0]))
    kwargs = {} if only_2d else dict(axis=axis)
    return Case((uniform(rng, shape, dtype, -scale, scale),), kwargs, growth=math.sqrt(shape[axis]))


# --------------------------------------------------------------------------------------------------
# the ops and their references
# --------------------------------------------------------------------------------------------------

def torch_pad_tf_same(x, kernel_size, stride, dilation):
    """transformers' own padding, applied for a real (depthwise, as in MobileNet) nn.Conv2d."""
    c = x.shape[1]
    layer = torch.nn.Conv2d(c, c, kernel_size, stride=stride, dilation=dilation, groups=c, bias=False)
    return apply_tf_padding(x, layer)


def torch_relu6(x):
    out = F.relu6(x)
    assert torch.equal(out, F.hardtanh(x, 0.0, 6.0))  # the two PyTorch spellings of ReLU6
    return out


@dataclass(frozen=True)
class Op:
    fast: Callable
    naive: Callable
    torch: Callable  # the reference, called with the case's arguments as tensors
    cases: Callable  # Limits -> strategy of Case
    naive_cases: Callable | None = None  # when the naive twin takes fewer forms than the fast op
    exact: bool = False


OPS = {
    "conv2d": Op(ops.conv2d, ops.conv2d_naive, F.conv2d, conv_cases),
    "pad_tf_same": Op(ops.pad_tf_same, ops.pad_tf_same_naive, torch_pad_tf_same, pad_cases, exact=True),
    "batch_norm": Op(ops.batch_norm, ops.batch_norm_naive,
                     lambda *args, eps: F.batch_norm(*args, training=False, eps=eps), batch_norm_cases),
    "relu": Op(ops.relu, ops.relu_naive, F.relu, activation_cases, exact=True),
    "relu6": Op(ops.relu6, ops.relu6_naive, torch_relu6, activation_cases, exact=True),
    "global_avg_pool2d": Op(ops.global_avg_pool2d, ops.global_avg_pool2d_naive,
                            lambda x: F.adaptive_avg_pool2d(x, (1, 1)), pool_cases),
    "linear": Op(ops.linear, ops.linear_naive, F.linear, linear_cases),
    "interpolate_bilinear": Op(ops.interpolate_bilinear, ops.interpolate_bilinear_naive,
                               lambda x, size, align_corners: F.interpolate(
                                   x, size=size, mode="bilinear", align_corners=align_corners),
                               interpolate_cases),
    "softmax": Op(ops.softmax, ops.softmax_naive, lambda x, axis: F.softmax(x, dim=axis), softmax_cases,
                  naive_cases=lambda limits: softmax_cases(limits, only_2d=True)),
}


def test_every_op_is_covered():
    """Each op of ops.__all__ (but the helpers, and resize_image, tested against Pillow below) is in OPS."""
    tested = {f.__name__ for op in OPS.values() for f in (op.fast, op.naive)}
    checked_elsewhere = {"conv_output_size", "tf_same_padding_amounts", "resize_image", "resize_image_naive",
                         "resize_weights", "nearest_indices"}
    assert set(ops.__all__) - checked_elsewhere == tested


@pytest.mark.parametrize("name", OPS)
@given(data=st.data())
def test_op_matches_torch(name, data):
    op = OPS[name]
    case = data.draw(op.cases(FULL), label="case")
    expected = op.torch(*map(to_torch, case.args), **case.kwargs)
    assert_close(op.fast(*case.args, **case.kwargs), expected, case.growth, op.exact)


@pytest.mark.parametrize("name", OPS)
@given(data=st.data())
def test_fast_matches_naive(name, data):
    op = OPS[name]
    case = data.draw((op.naive_cases or op.cases)(SMALL), label="case")
    assert_close(op.fast(*case.args, **case.kwargs), op.naive(*case.args, **case.kwargs), case.growth, op.exact)


# --------------------------------------------------------------------------------------------------
# convolution fast paths
# --------------------------------------------------------------------------------------------------

CONV_PATHS = ("_pointwise", "_depthwise", "_im2col_conv")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path, x_shape, weight_shape, stride, padding, groups", [
    ("_depthwise", (2, 8, 11, 11), (8, 1, 3, 3), 2, 1, 8),         # MobileNet's 3x3 depthwise, stride 2
    ("_depthwise", (1, 4, 9, 10), (12, 1, 5, 5), 1, 2, 4),         # channel multiplier 3
    ("_pointwise", (2, 16, 9, 9), (24, 16, 1, 1), 2, 0, 1),        # 1x1 with stride 2 (ResNet-style shortcut)
    ("_pointwise", (1, 8, 7, 6), (5, 8, 1, 1), 1, 0, 1),           # MobileNet's 1x1 expand / project
    ("_im2col_conv", (2, 3, 13, 13), (16, 3, 3, 3), 2, 1, 1),      # the stem conv
    ("_im2col_conv", (1, 12, 8, 8), (6, 4, 3, 3), 1, 1, 3),        # grouped, 1 < groups < in_channels
    ("_im2col_conv", (1, 8, 10, 10), (8, 4, 1, 1), (1, 2), 0, 2),  # grouped 1x1 is not the pointwise path
])
def test_conv_fast_path_is_taken_and_correct(monkeypatch, dtype, path, x_shape, weight_shape, stride, padding, groups):
    calls = []
    for name in CONV_PATHS:
        original = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *a, _name=name, _original=original: calls.append(_name) or _original(*a))
    rng = np.random.default_rng(0)
    x, weight, bias = uniform(rng, x_shape, dtype), uniform(rng, weight_shape, dtype), uniform(rng, weight_shape[:1], dtype)
    out = ops.conv2d(x, weight, bias, stride=stride, padding=padding, groups=groups)
    assert calls == [path]
    expected = F.conv2d(to_torch(x), to_torch(weight), to_torch(bias), stride=stride, padding=padding, groups=groups)
    assert_close(out, expected, growth=math.sqrt(np.prod(weight_shape[1:])))


GROUPINGS = {  # name: (in_channels, out_channels, groups)
    "dense": (5, 7, 1), "depthwise": (6, 6, 6), "multiplier": (3, 6, 3), "grouped": (6, 4, 2)}


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("grouping", GROUPINGS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_conv2d_grid(kernel, grouping, stride):
    """Every kernel x grouping x stride x dilation x padding form x dtype at least once (hypothesis
    samples this space at random; the grid makes sure no corner is left out in the 25-example CI run)."""
    c_in, c_out, groups = GROUPINGS[grouping]
    rng = np.random.default_rng(kernel * 100 + stride)
    for dilation in [1, (2, 3), (3, 4), (4, 2)]:  # every dilation 1-4 along each axis
        span_h, span_w = (d * (kernel - 1) + 1 for d in as_pair(dilation))
        for padding in [1, (2, 0), "valid"] + (["same"] if stride == 1 else []):
            for dtype in DTYPES:
                x = uniform(rng, (2, c_in, span_h + 4, span_w + 1), dtype)  # even and odd, non-square
                weight = uniform(rng, (c_out, c_in // groups, kernel, kernel), dtype)
                bias = uniform(rng, (c_out,), dtype)
                kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
                expected = F.conv2d(to_torch(x), to_torch(weight), to_torch(bias), **kwargs)
                assert_close(ops.conv2d(x, weight, bias, **kwargs), expected, math.sqrt(c_in // groups * kernel**2))


# --------------------------------------------------------------------------------------------------
# dtypes: float32 in gives float32 out, float64 anywhere gives float64 out
# --------------------------------------------------------------------------------------------------

MIXED_DTYPE_CALLS = {
    # name: (op, shape of x, shapes of the parameter arrays, keyword arguments)
    "conv2d depthwise": ("conv2d", (1, 4, 7, 7), [(4, 1, 3, 3), (4,)], dict(padding=1, groups=4)),
    "conv2d pointwise": ("conv2d", (1, 4, 7, 7), [(6, 4, 1, 1), (6,)], dict(stride=2)),
    "conv2d im2col": ("conv2d", (1, 3, 7, 7), [(6, 3, 3, 3), (6,)], dict(stride=2, padding=1)),
    "batch_norm": ("batch_norm", (2, 3, 4, 4), [(3,)] * 4, dict(eps=1e-3)),
    "linear": ("linear", (2, 5), [(3, 5), (3,)], {}),
}


@pytest.mark.parametrize("twin", ["fast", "naive"])
@pytest.mark.parametrize("x_dtype, param_dtype, out_dtype", [
    (np.float32, np.float32, np.float32), (np.float64, np.float64, np.float64),
    (np.float64, np.float32, np.float64), (np.float32, np.float64, np.float64)])
@pytest.mark.parametrize("name", MIXED_DTYPE_CALLS)
def test_float64_anywhere_gives_float64(name, x_dtype, param_dtype, out_dtype, twin):
    op_name, x_shape, param_shapes, kwargs = MIXED_DTYPE_CALLS[name]
    rng = np.random.default_rng(0)
    x = uniform(rng, x_shape, x_dtype)
    params = [uniform(rng, shape, param_dtype, 0.5, 1.5) for shape in param_shapes]  # > 0: also a valid variance
    out = getattr(OPS[op_name], twin)(x, *params, **kwargs)
    expected = OPS[op_name].torch(*(to_torch(a.astype(out_dtype)) for a in (x, *params)), **kwargs)
    assert_close(out, expected, growth=math.sqrt(np.prod(param_shapes[0][1:])))


# --------------------------------------------------------------------------------------------------
# bad arguments
# --------------------------------------------------------------------------------------------------

def zeros(*shape):
    return np.zeros(shape, np.float32)


X = zeros(1, 3, 8, 8)
BN_STATS = [zeros(3)] * 4
BAD_CALLS = [
    # (op, positional arguments, keyword arguments, what the message must say, in this order)
    ("conv2d", (zeros(3, 8, 8), zeros(4, 3, 3, 3)), {}, ["x must have 4 dimensions", "(3, 8, 8)"]),
    ("conv2d", (X, zeros(4, 3, 3)), {}, ["weight must have 4 dimensions", "(4, 3, 3)"]),
    ("conv2d", (X, zeros(4, 2, 3, 3)), {}, ["channel mismatch", "(1, 3, 8, 8)", "(4, 2, 3, 3)"]),
    ("conv2d", (zeros(1, 6, 8, 8), zeros(4, 1, 3, 3)), dict(groups=4), ["groups=4", "(1, 6, 8, 8)", "(4, 1, 3, 3)"]),
    ("conv2d", (zeros(1, 4, 8, 8), zeros(6, 1, 3, 3)), dict(groups=4), ["groups=4", "(1, 4, 8, 8)", "(6, 1, 3, 3)"]),
    ("conv2d", (X, zeros(4, 3, 3, 3)), dict(groups=0), ["groups=0", "(1, 3, 8, 8)"]),
    ("conv2d", (X, zeros(4, 3, 3, 3)), dict(stride=0), ["must be positive", "stride=0"]),
    ("conv2d", (X, zeros(4, 3, 3, 3)), dict(stride=(1, -2)), ["must be positive", "stride=(1, -2)"]),
    ("conv2d", (X, zeros(4, 3, 3, 3)), dict(dilation=0), ["must be positive", "dilation=0"]),
    ("conv2d", (X, zeros(4, 3, 9, 9)), {}, ["output would be empty", "(1, 3, 8, 8)", "(4, 3, 9, 9)", "0x0"]),
    ("conv2d", (X, zeros(4, 3, 3, 3)), dict(dilation=(1, 4)), ["output would be empty", "(1, 3, 8, 8)", "6x0"]),
    ("conv2d", (X, zeros(4, 3, 3, 3), zeros(3)), {}, ["bias (3,)", "out_channels=4", "(4, 3, 3, 3)"]),
    ("conv2d", (X, zeros(4, 3, 3, 3)), dict(padding="same", stride=2), ["padding='same' needs stride 1"]),
    ("conv2d", (X, zeros(4, 3, 3, 3)), dict(padding=-1), ["padding must be non-negative", "-1"]),
    ("conv2d", (X, zeros(4, 3, 3, 3)), dict(padding="full"), ["padding must be", "'full'"]),
    ("pad_tf_same", (zeros(3, 8, 8), 3, 2), {}, ["x must have 4 dimensions", "(3, 8, 8)"]),
    ("pad_tf_same", (X, 3, 0), {}, ["must be positive", "stride=0"]),
    ("pad_tf_same", (X, 3, 1), dict(dilation=0), ["must be positive", "dilation=0"]),
    ("batch_norm", (zeros(3, 8), *BN_STATS, 1e-3), {}, ["x must have 4 dimensions", "(3, 8)"]),
    ("batch_norm", (X, zeros(4), *BN_STATS[1:], 1e-3), {}, ["running_mean", "(4,)", "(1, 3, 8, 8)"]),
    ("batch_norm", (X, zeros(3), zeros(2), zeros(3), zeros(3), 1e-3), {}, ["running_var", "(2,)", "(1, 3, 8, 8)"]),
    ("batch_norm", (X, *BN_STATS[:2], zeros(3, 1), zeros(3), 1e-3), {}, ["weight must have 1 dimensions", "(3, 1)"]),
    ("batch_norm", (X, *BN_STATS[:3], zeros(5), 1e-3), {}, ["bias", "(5,)", "(1, 3, 8, 8)"]),
    ("global_avg_pool2d", (zeros(3, 8),), {}, ["x must have 4 dimensions", "(3, 8)"]),
    ("linear", (zeros(2, 5), zeros(3, 4)), {}, ["x (2, 5)", "5 features", "weight (3, 4)"]),
    ("linear", (zeros(2, 5, 1), zeros(3, 5)), {}, ["x must have 2 dimensions", "(2, 5, 1)"]),
    ("linear", (zeros(2, 5), zeros(3, 5), zeros(4)), {}, ["bias (4,)", "(3, 5)"]),
    ("interpolate_bilinear", (X, (0, 4), True), {}, ["size must be positive", "(0, 4)", "(1, 3, 8, 8)"]),
    ("interpolate_bilinear", (X, -2, False), {}, ["size must be positive", "-2", "(1, 3, 8, 8)"]),
    ("interpolate_bilinear", (zeros(3, 8, 8), 4, False), {}, ["x must have 4 dimensions", "(3, 8, 8)"]),
    ("softmax_naive", (zeros(2, 3, 4),), {}, ["x must have 2 dimensions", "(2, 3, 4)"]),
]
# The naive twins that validate their arguments must raise the same errors, naming themselves.
VALIDATING_NAIVE = {"conv2d", "batch_norm", "global_avg_pool2d", "linear", "interpolate_bilinear"}
BAD_CALLS += [(op + "_naive", *rest) for op, *rest in BAD_CALLS if op in VALIDATING_NAIVE]


@pytest.mark.parametrize("op, args, kwargs, fragments", BAD_CALLS,
                         ids=[f"{op}-{fragments[0]}-{i}" for i, (op, _, _, fragments) in enumerate(BAD_CALLS)])
def test_bad_arguments_raise_shape_error(op, args, kwargs, fragments):
    pattern = "^" + re.escape(f"{op}:") + "".join(".*" + re.escape(fragment) for fragment in fragments)
    with pytest.raises(ValueError, match=pattern) as raised:
        getattr(ops, op)(*args, **kwargs)
    assert isinstance(raised.value, ShapeError)


# --------------------------------------------------------------------------------------------------
# named cases and "these tests can fail" checks
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("in_size, out_size", [
    ((33, 33), (513, 513)),  # DeepLabV3 logits back to the 513 x 513 input: ratio 15.5
    ((8, 8), (16, 16)),      # exactly x2
    ((10, 7), (7, 10)),      # down along H, up along W, non-integer ratios
    ((1, 5), (4, 1)),        # from and to a single pixel
])
def test_interpolate_named_cases(in_size, out_size, align_corners):
    x = uniform(np.random.default_rng(0), (1, 2, *in_size), np.float32)
    expected = F.interpolate(to_torch(x), size=out_size, mode="bilinear", align_corners=align_corners)
    assert_close(ops.interpolate_bilinear(x, out_size, align_corners), expected, growth=max(in_size))


def test_padding_on_the_wrong_side_does_not_match_transformers():
    """Stride 2, kernel 3, even input: TF pads 1 pixel in total, at the bottom/right, never top/left."""
    x = uniform(np.random.default_rng(0), (1, 2, 6, 6), np.float32)
    expected = torch_pad_tf_same(to_torch(x), 3, 2, 1)
    assert_close(ops.pad_tf_same(x, 3, 2), expected, exact=True)
    wrong_side = np.pad(x, ((0, 0), (0, 0), (1, 0), (1, 0)))
    with pytest.raises(AssertionError):
        assert_close(wrong_side, expected, exact=True)


def test_pytorch_symmetric_padding_is_not_tf_same():
    """The classic porting bug: Conv2d(padding=1, stride=2) instead of TF "SAME" shifts every output."""
    rng = np.random.default_rng(0)
    x, weight = uniform(rng, (1, 3, 8, 8), np.float32), uniform(rng, (4, 3, 3, 3), np.float32)
    ours = ops.conv2d(ops.pad_tf_same(x, 3, 2), weight, stride=2)
    layer = torch.nn.Conv2d(3, 4, 3, stride=2, bias=False)
    assert_close(ours, F.conv2d(apply_tf_padding(to_torch(x), layer), to_torch(weight), stride=2), growth=math.sqrt(27))
    with pytest.raises(AssertionError):
        assert_close(ours, F.conv2d(to_torch(x), to_torch(weight), stride=2, padding=1), growth=math.sqrt(27))


@pytest.mark.parametrize("break_result", [
    lambda out: out + np.float32(1e-4) * np.abs(out).max(),  # 10 x the float32 tolerance
    lambda out: out.astype(np.float64),                       # right values, wrong dtype
    lambda out: out[:, :, :-1],                               # a row short
], ids=["value", "dtype", "shape"])
def test_assert_close_rejects_a_broken_result(break_result):
    rng = np.random.default_rng(0)
    x, weight = uniform(rng, (2, 4, 9, 9), np.float32), uniform(rng, (4, 1, 3, 3), np.float32)
    out = ops.conv2d(x, weight, padding=1, groups=4)
    expected = F.conv2d(to_torch(x), to_torch(weight), padding=1, groups=4)
    assert_close(out, expected, growth=3)
    with pytest.raises(AssertionError):
        assert_close(break_result(out), expected, growth=3)


# --------------------------------------------------------------------------------------------------
# resize_image: the image processors' resize, which must equal Pillow's Image.resize bit for bit
# --------------------------------------------------------------------------------------------------

PIL_FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


@st.composite
def image_resize_cases(draw, max_size: int):
    rng = draw_rng(draw)
    h, w = draw(st.integers(1, max_size)), draw(st.integers(1, max_size))
    out_h, out_w = draw(st.integers(1, max_size)), draw(st.integers(1, max_size))
    channels = draw(st.sampled_from([None, 3]))  # mode "L" or "RGB"
    shape = (h, w) if channels is None else (h, w, channels)
    if draw(st.booleans()):  # smooth content (real photos) as well as noise
        image = np.clip(np.cumsum(rng.integers(-12, 13, shape), axis=1) + 128, 0, 255).astype(np.uint8)
    else:
        image = rng.integers(0, 256, shape, dtype=np.uint8)
    return image, (out_h, out_w), draw(st.sampled_from(sorted(PIL_FILTERS)))


@given(case=image_resize_cases(max_size=300))
def test_resize_image_equals_pillow_exactly(case):
    # Tolerance: none. The image processors' pixel values must equal transformers' PIL backend.
    from PIL import Image

    image, (out_h, out_w), resample = case
    expected = np.asarray(Image.fromarray(image).resize((out_w, out_h), resample=resample))
    np.testing.assert_array_equal(ops.resize_image(image, (out_h, out_w), resample), expected)


@pytest.mark.parametrize("in_size, out_size", [((224, 300), (160, 80)), ((300, 224), (80, 160)), ((10, 40), (30, 12))])
def test_resize_image_pass_order_matters_and_is_pillows(in_size, out_size):
    # Each pass rounds to uint8, so width-then-height differs from height-then-width; Pillow picks
    # the order from how much each axis shrinks. The other order must NOT match (the test can fail).
    from PIL import Image

    image = np.random.default_rng(0).integers(0, 256, in_size + (3,), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(image).resize(out_size[::-1], resample=2))
    ours = ops.resize_image(image, out_size, 2)
    np.testing.assert_array_equal(ours, expected)
    (first_axis, first_size), (second_axis, second_size) = ops._pass_order(*in_size, *out_size)
    other = ops._resize_axis(ops._resize_axis(image, second_size, second_axis, 2), first_size, first_axis, 2)
    assert not np.array_equal(other, expected)


@given(case=image_resize_cases(max_size=12))
def test_resize_image_fast_matches_naive(case):
    image, size, resample = case
    np.testing.assert_array_equal(ops.resize_image(image, size, resample), ops.resize_image_naive(image, size, resample))


@pytest.mark.parametrize("image, size, resample, message", [
    (np.zeros((4, 4, 3), np.float32), (2, 2), 2, r"resize_image: image must be .* uint8 array, got float32 \(4, 4, 3\)"),
    (np.zeros((4,), np.uint8), (2, 2), 2, r"resize_image: image must be .*got uint8 \(4,\)"),
    (np.zeros((4, 4, 3), np.uint8), (0, 2), 2, r"resize_image: cannot resize an image of shape \(4, 4, 3\) to \(0, 2\)"),
    (np.zeros((4, 4, 3), np.uint8), (2, 2), 7, r"resize_image: resample must be one of"),
])
def test_resize_image_bad_arguments(image, size, resample, message):
    with pytest.raises(ValueError, match=message):
        ops.resize_image(image, size, resample)
