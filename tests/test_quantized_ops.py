"""mobilenet_np.quantized against TFLite's reference kernels (LiteRT interpreter, BUILTIN_REF), bit for bit.

Every op runs on hypothesis-drawn shapes, options and quantization parameters, once in NumPy and once as a
single-op .tflite model (tests/tflite_single_op.py) on the interpreter's reference kernels; the codes must
be identical (np.array_equal: 0 LSB tolerance). The draws cover what the real MobileNet files lack: depth
multiplier 2, dilation, stride 2 SAME with odd sizes, even pooling windows, half-pixel centers,
align_corners, concatenation with different scales, softmax beta != 1, uint8 and int8.
Each fast op is also checked against its `_naive` loop twin, and the fixed-point helpers against their
twins and against hand-derivable edge cases (ties, INT32_MIN saturation, the M == 2^31 rollover).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

pytest.importorskip("ai_edge_litert")

from mobilenet_np.errors import ShapeError  # noqa: E402
from mobilenet_np.quantized import fixedpoint as fp  # noqa: E402
from mobilenet_np.quantized import ops as qops  # noqa: E402
from mobilenet_np.quantized.fixedpoint import QuantParams  # noqa: E402
from tflite_single_op import ACTIVATIONS, PADDINGS, Tensor, run_model, single_op_model  # noqa: E402

DTYPES = [np.uint8, np.int8]


# --------------------------------------------------------------------------------------------------
# drawing helpers
# --------------------------------------------------------------------------------------------------

def nhwc(x):
    return np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)))


def nchw(x):
    return np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)))


def draw_codes(data, shape, dtype):
    seed = data.draw(st.integers(0, 2 ** 32 - 1), label="seed")
    info = np.iinfo(dtype)
    return np.random.default_rng(seed).integers(info.min, info.max + 1, size=shape).astype(dtype)


def draw_scale(data, low=1e-3, high=0.2, label="scale"):
    """A float32 scale, log-uniform in [low, high]."""
    return float(np.float32(math.exp(data.draw(st.floats(math.log(low), math.log(high)), label=label))))


def draw_params(data, dtype, low=1e-3, high=0.2, label="x"):
    info = np.iinfo(dtype)
    zero_point = data.draw(st.integers(int(info.min), int(info.max)), label=label + " zero point")
    return QuantParams(draw_scale(data, low, high, label + " scale"), zero_point)


def tensor(shape, dtype, params=None, data=None, axis=0):
    if params is None:
        return Tensor(tuple(shape), dtype, data=data)
    scale = params.scale if params.per_channel else float(params.scale[0])
    zero_point = params.zero_point if params.per_channel else int(params.zero_point[0])
    return Tensor(tuple(shape), dtype, scale=scale, zero_point=zero_point, axis=axis, data=data)


# --------------------------------------------------------------------------------------------------
# fixed point: twins and hand-derivable cases
# --------------------------------------------------------------------------------------------------

int32s = st.integers(fp.INT32_MIN, fp.INT32_MAX)


@given(st.lists(st.tuples(int32s, int32s), min_size=1, max_size=50))
def test_srdhm_matches_naive(pairs):
    a, b = np.array(pairs).T
    assert np.array_equal(fp.saturating_rounding_doubling_high_mul(a, b),
                          fp.saturating_rounding_doubling_high_mul_naive(a, b))


def test_srdhm_edge_cases():
    half, quarter = 2 ** 30, 2 ** 29   # 0.5 and 0.25 in Q0.31: SRDHM(a, half) = a / 2, SRDHM(a, quarter) = a / 4
    cases = {  # (a, b): result derived by hand
        (fp.INT32_MIN, fp.INT32_MIN): fp.INT32_MAX,      # (-1) * (-1) = 1 does not fit: saturates
        (fp.INT32_MIN, fp.INT32_MAX): -fp.INT32_MAX,     # -2^31 * (2^31 - 1) / 2^31 = -(2^31 - 1), exact
        (1, half): 1, (-1, half): 0,                     # +-0.5 -> ties upward: 1 and 0
        (3, half): 2, (-3, half): -1,                    # +-1.5 -> 2 and -1
        (-5, quarter): -1,                               # -1.25 -> -1 (C truncation; a floor would give -2)
        (-7, quarter): -2, (7, quarter): 2,              # -+1.75
    }
    for (a, b), expected in cases.items():
        assert int(fp.saturating_rounding_doubling_high_mul(a, b)) == expected, (a, b)
        assert int(fp.saturating_rounding_doubling_high_mul_naive(a, b)) == expected, (a, b)


@given(st.lists(st.tuples(int32s, st.integers(0, 31)), min_size=1, max_size=50))
def test_rdbp_matches_naive(pairs):
    x, n = np.array(pairs).T
    assert np.array_equal(fp.rounding_divide_by_pot(x, n), fp.rounding_divide_by_pot_naive(x, n))


def test_rdbp_edge_cases():
    x = np.array([5, -5, 6, -6, 7, -7, 3, -3, 0, fp.INT32_MIN, fp.INT32_MAX])
    # x / 4 = 1.25, -1.25, 1.5, -1.5, 1.75, -1.75, 0.75, -0.75: nearest, ties away from zero
    expected = [1, -1, 2, -2, 2, -2, 1, -1, 0, -(2 ** 29), 2 ** 29]
    assert fp.rounding_divide_by_pot(x, 2).tolist() == expected
    assert fp.rounding_divide_by_pot_naive(x, 2).tolist() == expected
    assert fp.rounding_divide_by_pot(x, 0).tolist() == x.tolist()


@given(st.lists(st.floats(1e-12, 1e3), min_size=1, max_size=30))
def test_quantize_multiplier_matches_naive_and_value(reals):
    m, e = fp.quantize_multiplier(reals)
    m2, e2 = fp.quantize_multiplier_naive(reals)
    assert np.array_equal(m, m2) and np.array_equal(e, e2)
    ok = m > 0
    assert np.all((m[ok] >= 2 ** 30) & (m[ok] < 2 ** 31))
    # Relative error of M * 2^(e - 31) is at most half a unit of the 31-bit mantissa.
    approx = m[ok] * np.exp2(e[ok] - 31.0)
    assert np.all(np.abs(approx - np.array(reals)[ok]) <= np.array(reals)[ok] * 2.0 ** -31)


def test_quantize_multiplier_edge_cases():
    just_below_one = 1 - 2 ** -40               # q * 2^31 rounds to 2^31: the rollover to (2^30, e + 1)
    cases = {1.0: (2 ** 30, 1), 0.5: (2 ** 30, 0), 0.75: (3 * 2 ** 29, 0), just_below_one: (2 ** 30, 1),
             0.0: (0, 0), 2.0 ** -40: (0, 0),   # e = -39 < -31: flushed to zero
             2.0 ** -32: (2 ** 30, -31),         # smallest exponent kept
             # a tie: q * 2^31 = 2^30 + 0.5 exactly -> away from zero
             (2 ** 30 + 0.5) / 2 ** 31: (2 ** 30 + 1, 0)}
    for real, expected in cases.items():
        for fn in (fp.quantize_multiplier, fp.quantize_multiplier_naive):
            m, e = fn(real)
            assert (int(m), int(e)) == expected, (fn.__name__, real)


@given(st.data())
def test_mbqm_matches_naive(data):
    x = np.array(data.draw(st.lists(st.integers(-2 ** 24, 2 ** 24), min_size=1, max_size=20)))
    reals = data.draw(st.lists(st.floats(2.0 ** -20, 60.0), min_size=1, max_size=5))
    m, e = fp.quantize_multiplier(reals)
    got = fp.multiply_by_quantized_multiplier(x[:, None], m[None], e[None])
    assert np.array_equal(got, fp.multiply_by_quantized_multiplier_naive(x[:, None], m[None], e[None]))
    # and it is x * real to within one unit (two roundings of at most 1/2 each + the mantissa error)
    assert np.all(np.abs(got - x[:, None] * np.array(reals)[None]) <= 1 + np.abs(x[:, None]) * 2.0 ** -30)


def test_mbqm_rounding_switch_on_ties():
    """Real multiplier 1/4 (M = 2^30, e = -1): x / 4 for x = -6, -2, 2, 6, -5, 5 is -1.5, -0.5, 0.5, 1.5, -1.25, 1.25.

    double (reference): SRDHM gives x / 2 with ties up (5 -> 2.5 -> 3), then RDBP halves with ties away
    (3 -> 1.5 -> 2): 1.25 becomes 2, the double-rounding error, while -1.25 -> -2.5 -> -2 -> -1.
    single: one rounding, ties up.  ruy_upward: SRDHM, then ties up.  float: one rounding, ties away.
    """
    m, e = 2 ** 30, -1
    x = np.array([-6, -2, 2, 6, -5, 5])
    assert fp.multiply_by_quantized_multiplier(x, m, e).tolist() == [-2, -1, 1, 2, -1, 2]
    assert fp.multiply_by_quantized_multiplier_naive(x, m, e).tolist() == [-2, -1, 1, 2, -1, 2]
    assert fp.multiply_by_quantized_multiplier(x, m, e, rounding="single").tolist() == [-1, 0, 1, 2, -1, 1]
    assert fp.multiply_by_quantized_multiplier(x, m, e, rounding="ruy_upward").tolist() == [-1, 0, 1, 2, -1, 2]
    assert fp.multiply_by_quantized_multiplier(x, m, e, rounding="float").tolist() == [-2, -1, 1, 2, -1, 1]
    with pytest.raises(ShapeError, match="rounding"):
        fp.multiply_by_quantized_multiplier(x, m, e, rounding="nearest")


def test_round_half_away_and_quantize_value():
    x = np.array([2.5, -2.5, 0.5, -0.5, 1.4999999, 0.49999999999999994])
    assert fp.round_half_away(x).tolist() == [3, -3, 1, -1, 1, 0]
    assert fp.round_half_away_naive(x).tolist() == [3, -3, 1, -1, 1, 0]
    # 0.75 / 0.5 = 1.5 -> 2 and -1.5 -> -2 (half away from zero), plus the zero point 3
    assert fp.quantize_value([0.75, -0.75], 0.5, 3).tolist() == [5, 1]
    values = np.random.default_rng(0).normal(size=200).astype(np.float32) * 3
    assert np.array_equal(fp.quantize_value(values, 0.037, -5), fp.quantize_value_naive(values, 0.037, -5))


def test_activation_range():
    assert fp.activation_range("relu6", 6 / 255, 0, np.uint8) == (0, 255)
    assert fp.activation_range("relu6", 6 / 255, -128, np.int8) == (-128, 127)
    assert fp.activation_range("relu6", 0.05, 10, np.uint8) == (10, 130)
    assert fp.activation_range("relu", 0.05, -20, np.int8) == (-20, 127)
    assert fp.activation_range("none", 0.05, -20, np.int8) == (-128, 127)
    assert fp.activation_range("relu_n1_to_1", 0.05, 100, np.uint8) == (80, 120)


@given(st.lists(st.integers(-(2 ** 31) + 1, 0), min_size=1, max_size=40))
def test_exp_on_negative_values(values):
    a = np.array(values)
    got = fp.exp_on_negative_values(a)
    assert np.array_equal(got, fp.exp_on_negative_values_naive(a))
    assert np.all(np.abs(got / 2 ** 31 - np.exp(a / 2 ** 26)) < 1e-6)
    assert int(fp.exp_on_negative_values(0)) == fp.INT32_MAX


@given(st.lists(st.integers(1, fp.INT32_MAX), min_size=1, max_size=40))
def test_reciprocal(values):
    x = np.array(values)
    r, nbits = fp.get_reciprocal(x, 12)
    r2, nbits2 = fp.get_reciprocal_naive(x, 12)
    assert np.array_equal(r, r2) and np.array_equal(nbits, nbits2)
    # 1 / (x / 2^19) == r / 2^31 * 2^-nbits, to ~1e-8 relative
    assert np.allclose(r / 2 ** 31 * np.exp2(-nbits.astype(float)), 2 ** 19 / x, rtol=1e-8, atol=0)
    a = np.array(values) - 1
    assert np.array_equal(fp.one_over_one_plus_x_for_x_in_0_1(a), fp.one_over_one_plus_x_for_x_in_0_1_naive(a))


def test_quant_params_errors():
    with pytest.raises(ShapeError, match="axis"):
        QuantParams([0.1, 0.2], 0)
    with pytest.raises(ShapeError, match="positive"):
        QuantParams(-0.1, 0)
    p = QuantParams([0.1, 0.2], 0, axis=0)
    with pytest.raises(ShapeError, match="conv2d: w_params .* does not fit"):
        p.check("conv2d", "w_params", (3, 1, 3, 3), allow_per_channel=True)
    with pytest.raises(ShapeError, match="add: a_params must be per-tensor"):
        p.check("add", "a_params", (2, 2))


# --------------------------------------------------------------------------------------------------
# CONV_2D and DEPTHWISE_CONV_2D
# --------------------------------------------------------------------------------------------------

def draw_conv_case(data, depthwise):
    """A small conv / depthwise layer: shapes, options, codes and quantization (uint8 or int8 per-channel)."""
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    n = data.draw(st.integers(1, 2), label="batch")
    c_in = data.draw(st.integers(1, 4), label="c_in")
    dm = data.draw(st.integers(1, 2), label="depth multiplier") if depthwise else 1
    c_out = c_in * dm if depthwise else data.draw(st.integers(1, 5), label="c_out")
    kh, kw = data.draw(st.integers(1, 3), label="kh"), data.draw(st.integers(1, 3), label="kw")
    sh, sw = data.draw(st.integers(1, 2), label="sh"), data.draw(st.integers(1, 2), label="sw")
    dh, dw = data.draw(st.integers(1, 2), label="dh"), data.draw(st.integers(1, 2), label="dw")
    padding = data.draw(st.sampled_from(["same", "valid"]), label="padding")
    lo_h, lo_w = ((kh - 1) * dh + 1, (kw - 1) * dw + 1) if padding == "valid" else (1, 1)
    h, w = data.draw(st.integers(lo_h, lo_h + 7), label="h"), data.draw(st.integers(lo_w, lo_w + 7), label="w")
    activation = data.draw(st.sampled_from(sorted(ACTIVATIONS)), label="activation")
    x_params = draw_params(data, dtype, label="x")
    weight_shape = (c_out, 1 if depthwise else c_in, kh, kw)
    weight = draw_codes(data, weight_shape, dtype)
    if dtype == np.uint8:
        w_params = draw_params(data, dtype, 1e-3, 0.05, label="w")
    elif data.draw(st.booleans(), label="per-channel"):
        w_params = QuantParams([draw_scale(data, 1e-4, 0.05, f"w scale {o}") for o in range(c_out)], 0, axis=0)
    else:
        w_params = QuantParams(draw_scale(data, 1e-4, 0.05, "w scale"), 0)
    taps = (1 if depthwise else c_in) * kh * kw
    spread = draw_scale(data, 10.0, 1000.0, "output spread") * math.sqrt(taps)
    y_params = QuantParams(float(x_params.scale[0]) * float(w_params.scale.max()) * spread,
                           data.draw(st.integers(*fp.dtype_range(dtype)), label="y zero point"))
    bias = None
    if data.draw(st.booleans(), label="bias"):
        bias = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1))).integers(
            -2 ** 15, 2 ** 15, c_out).astype(np.int32)
    x = draw_codes(data, (n, c_in, h, w), dtype)
    options = dict(stride=(sh, sw), padding=padding, dilation=(dh, dw), activation=activation)
    return x, weight, bias, x_params, w_params, y_params, options, dm


def conv_model(x, weight, bias, x_params, w_params, y_params, options, dm, out_shape, depthwise):
    """The single-op .tflite model of a conv case (TFLite layouts: NHWC, OHWI, [1, KH, KW, C*dm])."""
    c_out = weight.shape[0]
    if depthwise:
        filter_data, axis = np.ascontiguousarray(np.transpose(weight, (1, 2, 3, 0))), 3
    else:
        filter_data, axis = np.ascontiguousarray(np.transpose(weight, (0, 2, 3, 1))), 0
    bias_scale = (np.float32(x_params.scale[0]) * w_params.scale).astype(np.float32)
    bias_data = np.zeros(c_out, np.int32) if bias is None else bias
    specs = [tensor(nhwc(x).shape, x.dtype, x_params),
             tensor(filter_data.shape, x.dtype, w_params, filter_data, axis=axis),
             Tensor((c_out,), np.int32, scale=bias_scale, zero_point=0, data=bias_data)]
    fields = dict(padding=PADDINGS[options["padding"]], strideH=options["stride"][0], strideW=options["stride"][1],
                  dilationHFactor=options["dilation"][0], dilationWFactor=options["dilation"][1],
                  fusedActivationFunction=ACTIVATIONS[options["activation"]])
    if depthwise:
        fields["depthMultiplier"] = dm
    out = tensor((out_shape[0], out_shape[2], out_shape[3], out_shape[1]), x.dtype, y_params)
    op, kind = ("DEPTHWISE_CONV_2D", "DepthwiseConv2DOptions") if depthwise else ("CONV_2D", "Conv2DOptions")
    return single_op_model(op, specs, [out], options=(kind, fields))


@pytest.mark.parametrize("depthwise", [False, True], ids=["conv2d", "depthwise_conv2d"])
@given(data=st.data())
def test_conv_matches_interpreter_and_naive(depthwise, data):
    x, weight, bias, x_params, w_params, y_params, options, dm = draw_conv_case(data, depthwise)
    if depthwise:
        fast, naive = qops.depthwise_conv2d, qops.depthwise_conv2d_naive
    else:
        fast, naive = qops.conv2d, qops.conv2d_naive
    ours = fast(x, weight, bias, x_params, w_params, y_params, **options)
    zw = 0 if x.dtype == np.int8 else int(w_params.zero_point[0])
    assert qops.accumulator_bound(weight, zw, x.dtype, int(x_params.zero_point[0]), bias) < 2 ** 53
    (theirs,) = run_model(conv_model(x, weight, bias, x_params, w_params, y_params, options, dm, ours.shape, depthwise),
                          nhwc(x))
    assert ours.dtype == x.dtype
    assert np.array_equal(ours, nchw(theirs))
    assert np.array_equal(ours, naive(x, weight, bias, x_params, w_params, y_params, **options))


# --------------------------------------------------------------------------------------------------
# FULLY_CONNECTED
# --------------------------------------------------------------------------------------------------

@given(data=st.data())
def test_fully_connected_matches_interpreter_and_naive(data):
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    n, k, c_out = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 40)), data.draw(st.integers(1, 6))
    x, weight = draw_codes(data, (n, k), dtype), draw_codes(data, (c_out, k), dtype)
    x_params = draw_params(data, dtype, label="x")
    if dtype == np.uint8:
        w_params = draw_params(data, dtype, 1e-3, 0.05, label="w")
    elif data.draw(st.booleans(), label="per-channel"):
        w_params = QuantParams([draw_scale(data, 1e-4, 0.05, f"w scale {o}") for o in range(c_out)], 0, axis=0)
    else:
        w_params = QuantParams(draw_scale(data, 1e-4, 0.05, "w scale"), 0)
    spread = draw_scale(data, 10.0, 1000.0, "output spread") * math.sqrt(k)
    y_params = QuantParams(float(x_params.scale[0]) * float(w_params.scale.max()) * spread,
                           data.draw(st.integers(*fp.dtype_range(dtype)), label="y zero point"))
    bias = np.random.default_rng(k).integers(-2 ** 15, 2 ** 15, c_out).astype(np.int32)
    activation = data.draw(st.sampled_from(sorted(ACTIVATIONS)), label="activation")
    ours = qops.fully_connected(x, weight, bias, x_params, w_params, y_params, activation)
    bias_scale = (np.float32(x_params.scale[0]) * w_params.scale).astype(np.float32)
    model = single_op_model(
        "FULLY_CONNECTED",
        [tensor(x.shape, dtype, x_params), tensor(weight.shape, dtype, w_params, weight),
         Tensor((c_out,), np.int32, scale=bias_scale, zero_point=0, data=bias)],
        [tensor(ours.shape, dtype, y_params)],
        options=("FullyConnectedOptions", dict(fusedActivationFunction=ACTIVATIONS[activation])))
    (theirs,) = run_model(model, x)
    assert np.array_equal(ours, theirs)
    assert np.array_equal(ours, qops.fully_connected_naive(x, weight, bias, x_params, w_params, y_params, activation))


# --------------------------------------------------------------------------------------------------
# ADD
# --------------------------------------------------------------------------------------------------

@given(data=st.data())
def test_add_matches_interpreter_and_naive(data):
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    shape = tuple(data.draw(st.lists(st.integers(1, 5), min_size=1, max_size=4), label="shape"))
    # b broadcasts: some dimensions set to 1, maybe leading ones dropped
    b_shape = tuple(1 if data.draw(st.booleans()) else s for s in shape)[data.draw(st.integers(0, len(shape) - 1)):]
    if data.draw(st.booleans(), label="swap"):
        shape, b_shape = b_shape, shape
    a, b = draw_codes(data, shape, dtype), draw_codes(data, b_shape, dtype)
    a_params, b_params = draw_params(data, dtype, 0.005, 0.2, "a"), draw_params(data, dtype, 0.005, 0.2, "b")
    y_params = draw_params(data, dtype, 0.005, 0.4, "y")
    activation = data.draw(st.sampled_from(sorted(ACTIVATIONS)), label="activation")
    ours = qops.add(a, b, a_params, b_params, y_params, activation)
    model = single_op_model("ADD", [tensor(a.shape, dtype, a_params), tensor(b.shape, dtype, b_params)],
                            [tensor(ours.shape, dtype, y_params)],
                            options=("AddOptions", dict(fusedActivationFunction=ACTIVATIONS[activation])))
    (theirs,) = run_model(model, a, b)
    assert np.array_equal(ours, theirs)
    assert np.array_equal(ours, qops.add_naive(a, b, a_params, b_params, y_params, activation))


# --------------------------------------------------------------------------------------------------
# AVERAGE_POOL_2D and MEAN
# --------------------------------------------------------------------------------------------------

@given(data=st.data())
def test_average_pool_matches_interpreter_and_naive(data):
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    kh, kw = data.draw(st.integers(1, 4), label="kh"), data.draw(st.integers(1, 4), label="kw")   # even windows too
    sh, sw = data.draw(st.integers(1, 3), label="sh"), data.draw(st.integers(1, 3), label="sw")
    padding = data.draw(st.sampled_from(["same", "valid"]), label="padding")
    lo_h, lo_w = (kh, kw) if padding == "valid" else (1, 1)
    shape = (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3)),
             data.draw(st.integers(lo_h, lo_h + 6), label="h"), data.draw(st.integers(lo_w, lo_w + 6), label="w"))
    x = draw_codes(data, shape, dtype)
    params = draw_params(data, dtype, label="x")
    activation = data.draw(st.sampled_from(sorted(ACTIVATIONS)), label="activation")
    args = dict(kernel_size=(kh, kw), stride=(sh, sw), padding=padding, activation=activation)
    ours = qops.average_pool2d(x, params, **args)
    model = single_op_model(
        "AVERAGE_POOL_2D", [tensor(nhwc(x).shape, dtype, params)],
        [tensor(nhwc(ours).shape, dtype, params)],
        options=("Pool2DOptions", dict(padding=PADDINGS[padding], strideH=sh, strideW=sw, filterHeight=kh,
                                       filterWidth=kw, fusedActivationFunction=ACTIVATIONS[activation])))
    (theirs,) = run_model(model, nhwc(x))
    assert np.array_equal(ours, nchw(theirs))
    assert np.array_equal(ours, qops.average_pool2d_naive(x, params, **args))


@given(data=st.data())
def test_mean_matches_interpreter_and_naive(data):
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    shape = (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 4)), data.draw(st.integers(1, 9)),
             data.draw(st.integers(1, 9)))
    x = draw_codes(data, shape, dtype)
    x_params, y_params = draw_params(data, dtype, label="x"), draw_params(data, dtype, label="y")
    keepdims = data.draw(st.booleans(), label="keepdims")
    ours = qops.mean(x, x_params, y_params, axis=(2, 3), keepdims=keepdims)
    out_shape = (shape[0], 1, 1, shape[1]) if keepdims else (shape[0], shape[1])
    model = single_op_model("MEAN", [tensor(nhwc(x).shape, dtype, x_params),
                                     Tensor((2,), np.int32, data=np.array([1, 2], np.int32))],
                            [tensor(out_shape, dtype, y_params)], options=("ReducerOptions", dict(keepDims=keepdims)))
    (theirs,) = run_model(model, nhwc(x))
    assert np.array_equal(ours, nchw(theirs) if keepdims else theirs)
    assert np.array_equal(ours, qops.mean_naive(x, x_params, y_params, axis=(2, 3), keepdims=keepdims))


# --------------------------------------------------------------------------------------------------
# SOFTMAX
# --------------------------------------------------------------------------------------------------

@given(data=st.data())
def test_softmax_matches_interpreter_and_naive(data):
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    shape = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 40)))
    x = draw_codes(data, shape, dtype)
    x_params = draw_params(data, dtype, 0.01, 1.0, label="x")
    beta = float(np.float32(data.draw(st.sampled_from([0.5, 1.0, 2.0, 0.37]), label="beta")))
    ours = qops.softmax(x, x_params, beta)
    y_params = QuantParams(1 / 256, fp.dtype_range(dtype)[0])
    model = single_op_model("SOFTMAX", [tensor(shape, dtype, x_params)], [tensor(shape, dtype, y_params)],
                            options=("SoftmaxOptions", dict(beta=beta)))
    (theirs,) = run_model(model, x)
    assert np.array_equal(ours, theirs)
    assert np.array_equal(ours, qops.softmax_naive(x, x_params, beta))


# --------------------------------------------------------------------------------------------------
# RESIZE_BILINEAR
# --------------------------------------------------------------------------------------------------

@given(data=st.data())
def test_resize_bilinear_matches_interpreter_and_naive(data):
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    shape = (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3)), data.draw(st.integers(1, 8)),
             data.draw(st.integers(1, 8)))
    size = (data.draw(st.integers(1, 17), label="out h"), data.draw(st.integers(1, 17), label="out w"))
    mode = data.draw(st.sampled_from(["plain", "align_corners", "half_pixel_centers"]), label="mode")
    flags = dict(align_corners=mode == "align_corners", half_pixel_centers=mode == "half_pixel_centers")
    x = draw_codes(data, shape, dtype)
    params = draw_params(data, dtype, label="x")
    ours = qops.resize_bilinear(x, size, **flags)
    model = single_op_model("RESIZE_BILINEAR", [tensor(nhwc(x).shape, dtype, params),
                                                Tensor((2,), np.int32, data=np.array(size, np.int32))],
                            [tensor((shape[0],) + size + (shape[1],), dtype, params)],
                            options=("ResizeBilinearOptions", dict(alignCorners=flags["align_corners"],
                                                                   halfPixelCenters=flags["half_pixel_centers"])))
    (theirs,) = run_model(model, nhwc(x))
    assert np.array_equal(ours, nchw(theirs))
    assert np.array_equal(ours, qops.resize_bilinear_naive(x, size, **flags))


# --------------------------------------------------------------------------------------------------
# CONCATENATION
# --------------------------------------------------------------------------------------------------

NHWC_AXIS = {0: 0, 1: 3, 2: 1, 3: 2}   # an NCHW axis -> the same axis in NHWC


@given(data=st.data())
def test_concatenation_matches_interpreter_and_naive(data):
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    axis = data.draw(st.integers(0, 3), label="axis")
    base = [data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4)),
            data.draw(st.integers(1, 4))]
    count = data.draw(st.integers(1, 3), label="inputs")
    inputs = []
    for _ in range(count):
        shape = list(base)
        shape[axis] = data.draw(st.integers(1, 3))
        inputs.append(draw_codes(data, tuple(shape), dtype))
    y_params = draw_params(data, dtype, label="y")
    if dtype == np.int8:   # int8 inputs must share the output's params
        params = [y_params] * count
    else:                  # uint8: each input equal to the output's params, or its own
        params = [y_params if data.draw(st.booleans()) else draw_params(data, dtype, label=f"in{i}")
                  for i in range(count)]
    ours = qops.concatenation(inputs, params, y_params, axis=axis)
    model = single_op_model("CONCATENATION", [tensor(nhwc(x).shape, dtype, p) for x, p in zip(inputs, params)],
                            [tensor(nhwc(ours).shape, dtype, y_params)],
                            options=("ConcatenationOptions", dict(axis=NHWC_AXIS[axis])))
    (theirs,) = run_model(model, *[nhwc(x) for x in inputs])
    assert np.array_equal(ours, nchw(theirs))
    assert np.array_equal(ours, qops.concatenation_naive(inputs, params, y_params, axis=axis))


def test_concatenation_int8_needs_equal_params():
    x = np.zeros((1, 1, 2, 2), np.int8)
    with pytest.raises(ShapeError, match="concatenation: int8 inputs must share"):
        qops.concatenation([x, x], [QuantParams(0.1, 0), QuantParams(0.2, 0)], QuantParams(0.1, 0))


# --------------------------------------------------------------------------------------------------
# QUANTIZE (float -> q, q -> q) and DEQUANTIZE
# --------------------------------------------------------------------------------------------------

@given(data=st.data())
def test_quantize_matches_interpreter_and_naive(data):
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    params = draw_params(data, dtype, 0.001, 0.5, label="y")
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1)))
    scale = np.float32(params.scale[0])
    # random values, and near-ties: (k + 1/2) * scale rounded to float32 (half-even rounding fails on these)
    k = rng.integers(-150, 150, 32)
    x = np.concatenate([rng.normal(size=32) * 40 * scale, (k + np.float32(0.5)) * scale]).astype(np.float32)
    ours = qops.quantize(x, params, dtype)
    model = single_op_model("QUANTIZE", [Tensor(x.shape, np.float32)], [tensor(x.shape, dtype, params)])
    (theirs,) = run_model(model, x)
    assert np.array_equal(ours, theirs)
    assert np.array_equal(ours, qops.quantize_naive(x, params, dtype))


@given(data=st.data())
def test_requantize_matches_interpreter_and_naive(data):
    in_dtype, out_dtype = data.draw(st.sampled_from(DTYPES)), data.draw(st.sampled_from(DTYPES))
    x = draw_codes(data, (3, 17), in_dtype)
    x_params = draw_params(data, in_dtype, label="x")
    if in_dtype != out_dtype and data.draw(st.booleans(), label="xor case"):
        shift = 128 if in_dtype == np.uint8 else -128      # z_y = z_x -+ 128 is always in the output's range
        y_params = QuantParams(x_params.scale, int(x_params.zero_point[0]) - shift)
    else:
        y_params = draw_params(data, out_dtype, label="y")
    ours = qops.requantize(x, x_params, y_params, out_dtype)
    model = single_op_model("QUANTIZE", [tensor(x.shape, in_dtype, x_params)], [tensor(x.shape, out_dtype, y_params)])
    (theirs,) = run_model(model, x)
    assert np.array_equal(ours, theirs)
    assert np.array_equal(ours, qops.requantize_naive(x, x_params, y_params, out_dtype))


def test_requantize_xor_fast_path_equals_general_formula():
    x = np.arange(256, dtype=np.uint8).reshape(16, 16)
    x_params, y_params = QuantParams(0.05, 131), QuantParams(0.05, 3)
    ours = qops.requantize(x, x_params, y_params, np.int8)
    assert np.array_equal(ours, (x ^ 0x80).view(np.int8))
    assert np.array_equal(ours, qops.requantize_naive(x, x_params, y_params, np.int8))


@given(data=st.data())
def test_dequantize_matches_interpreter_and_naive(data):
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    x = draw_codes(data, (2, 19), dtype)
    params = draw_params(data, dtype, label="x")
    ours = qops.dequantize(x, params)
    (theirs,) = run_model(single_op_model("DEQUANTIZE", [tensor(x.shape, dtype, params)],
                                          [Tensor(x.shape, np.float32)]), x)
    assert ours.dtype == np.float32 and np.array_equal(ours, theirs)
    assert np.array_equal(ours, qops.dequantize_naive(x, params))


# --------------------------------------------------------------------------------------------------
# PAD, ARG_MAX, RESHAPE
# --------------------------------------------------------------------------------------------------

@given(data=st.data())
def test_pad_matches_interpreter_and_naive(data):
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    x = draw_codes(data, tuple(data.draw(st.integers(1, 4)) for _ in range(4)), dtype)
    paddings = np.array([[data.draw(st.integers(0, 2)) for _ in range(2)] for _ in range(4)], np.int64)
    x_params = draw_params(data, dtype, label="x")
    y_params = QuantParams(x_params.scale, data.draw(st.integers(*fp.dtype_range(dtype)), label="y zero point"))
    ours = qops.pad(x, paddings, y_params)
    nhwc_paddings = paddings[[0, 2, 3, 1]].astype(np.int32)
    model = single_op_model("PAD", [tensor(nhwc(x).shape, dtype, x_params),
                                    Tensor((4, 2), np.int32, data=nhwc_paddings)],
                            [tensor(nhwc(ours).shape, dtype, y_params)])
    (theirs,) = run_model(model, nhwc(x))
    assert np.array_equal(ours, nchw(theirs))
    assert np.array_equal(ours, qops.pad_naive(x, paddings, y_params))


@given(data=st.data())
def test_arg_max_matches_interpreter_and_naive(data):
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    shape = tuple(data.draw(st.integers(1, 5)) for _ in range(4))
    x = (draw_codes(data, shape, dtype) % 3).astype(dtype)      # few distinct codes: many ties
    axis = data.draw(st.integers(0, 3), label="axis")
    output_dtype = data.draw(st.sampled_from([np.int32, np.int64]), label="output dtype")
    ours = qops.arg_max(x, axis, output_dtype)
    out_type = {np.int32: 2, np.int64: 4}[output_dtype]   # TensorType.INT32 / INT64
    model = single_op_model("ARG_MAX", [tensor(shape, dtype, QuantParams(0.1, 0)),
                                        Tensor((1,), np.int32, data=np.array([axis], np.int32))],
                            [Tensor(ours.shape, output_dtype)], options=("ArgMaxOptions", dict(outputType=out_type)))
    (theirs,) = run_model(model, x)
    assert theirs.dtype == ours.dtype and np.array_equal(ours, theirs)
    assert np.array_equal(ours, qops.arg_max_naive(x, axis, output_dtype))


def test_reshape_matches_interpreter():
    x = np.arange(24, dtype=np.uint8).reshape(1, 2, 3, 4)
    params = QuantParams(0.1, 7)
    ours = qops.reshape(x, (1, 24))
    model = single_op_model("RESHAPE", [tensor(x.shape, np.uint8, params),
                                        Tensor((2,), np.int32, data=np.array([1, 24], np.int32))],
                            [tensor((1, 24), np.uint8, params)])
    (theirs,) = run_model(model, x)
    assert np.array_equal(ours, theirs)
    with pytest.raises(ShapeError, match="reshape: cannot reshape"):
        qops.reshape(x, (5, 5))


def test_uint8_conv_multiplier_takes_the_float32_product():
    """uint8 CONV_2D forms its multiplier as double(float32(s_x * s_w)) / s_y. The double product gives an M a
    few units away, which changes an output only near a rounding boundary (2 of 41.9 M outputs in DeepLab),
    so random layers cannot tell them apart. Here the scales and the accumulator are searched so that they do:
    a 1x1 conv with w - z_w = 1 turns the 256 input codes into the accumulators bias + 0 ... bias + 255."""
    rng = np.random.default_rng(7)
    acc = np.arange(-2 ** 19, 2 ** 19)
    for _ in range(100):
        s_x, s_w = (float(np.float32(v)) for v in rng.uniform(0.001, 0.1, 2))
        s_y = float(np.float32(s_x * s_w * 4096 * rng.uniform(0.9, 1.1)))     # real multiplier ~ 2^-12
        m_f, e_f = fp.quantize_multiplier(float(np.float32(s_x) * np.float32(s_w)) / s_y)   # float32 product
        m_d, e_d = fp.quantize_multiplier(float(s_x) * float(s_w) / float(s_y))
        differ = np.nonzero(fp.multiply_by_quantized_multiplier(acc, m_f, e_f)
                            != fp.multiply_by_quantized_multiplier(acc, m_d, e_d))[0]
        if differ.size:
            break
    else:
        pytest.fail("no distinguishing case found")
    target = int(acc[differ[0]])
    x = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)
    weight = np.full((1, 1, 1, 1), 101, np.uint8)
    bias = np.array([target - 128], np.int32)          # the code 128 gives acc = target
    x_params, w_params, y_params = QuantParams(s_x, 0), QuantParams(s_w, 100), QuantParams(s_y, 128)
    ours = qops.conv2d(x, weight, bias, x_params, w_params, y_params)
    (theirs,) = run_model(conv_model(x, weight, bias, x_params, w_params, y_params,
                                     dict(stride=(1, 1), padding="valid", dilation=(1, 1), activation="none"), 1,
                                     ours.shape, depthwise=False), nhwc(x))
    assert np.array_equal(ours, nchw(theirs))
    with_double_product = np.clip(fp.multiply_by_quantized_multiplier(x.astype(np.int64) + bias[0], m_d, e_d) + 128,
                                  0, 255)
    assert not np.array_equal(ours, with_double_product)   # the case does distinguish the two rules


# --------------------------------------------------------------------------------------------------
# accumulation paths and bad arguments
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["float32", "float64", "int64"])
def test_every_accumulation_path_is_exact(path, monkeypatch):
    """conv2d / depthwise_conv2d / fully_connected pick float32 (< 2^24), float64 (< 2^53) or int64 from
    accumulator_bound; force each path and compare with the naive twins (Python ints)."""
    if path != "float32":
        monkeypatch.setattr(qops, "EXACT_FLOAT32", 0)
    if path == "int64":
        monkeypatch.setattr(qops, "EXACT_FLOAT64", 0)
    rng = np.random.default_rng(3)
    for dtype in DTYPES:
        info = np.iinfo(dtype)
        x = rng.integers(info.min, info.max + 1, (2, 6, 7, 5)).astype(dtype)
        w = rng.integers(info.min, info.max + 1, (4, 6, 3, 3)).astype(dtype)
        dw = rng.integers(info.min, info.max + 1, (12, 1, 3, 3)).astype(dtype)
        bias = rng.integers(-5000, 5000, 12).astype(np.int32)
        zx = int(info.min) + 100
        x_params, w_params = QuantParams(0.03, zx), QuantParams(0.004, 0 if dtype == np.int8 else 131)
        y_params = QuantParams(0.03 * 0.004 * 200, zx + 20)
        args = dict(stride=2, padding="same", activation="relu")
        assert np.array_equal(qops.conv2d(x, w, bias[:4], x_params, w_params, y_params, **args),
                              qops.conv2d_naive(x, w, bias[:4], x_params, w_params, y_params, **args))
        assert np.array_equal(qops.depthwise_conv2d(x, dw, bias, x_params, w_params, y_params, **args),
                              qops.depthwise_conv2d_naive(x, dw, bias, x_params, w_params, y_params, **args))
        flat, fc_w = x.reshape(2, -1)[:, :54], w.reshape(4, 54)
        assert np.array_equal(qops.fully_connected(flat, fc_w, bias[:4], x_params, w_params, y_params),
                              qops.fully_connected_naive(flat, fc_w, bias[:4], x_params, w_params, y_params))


def test_accumulator_bound():
    w = np.array([[[[3, 250]]], [[[128, 128]]]], np.uint8)     # channel sums |w - 128|: 125 + 122, 0
    assert qops.accumulator_bound(w, 128, np.uint8, 0, np.array([7, -9])) == 247 * 255 + 7
    assert qops.accumulator_bound(w, 128, np.uint8, 200, None) == 247 * 200     # max|x - 200| = 200


def test_bad_parameters_raise_shape_error_naming_op_and_argument():
    x = np.zeros((1, 3, 4, 4), np.uint8)
    w = np.zeros((2, 3, 1, 1), np.uint8)
    p = QuantParams(0.1, 0)
    with pytest.raises(ShapeError, match="conv2d: x_params must be a QuantParams"):
        qops.conv2d(x, w, None, None, p, p)
    with pytest.raises(ShapeError, match="conv2d: w_params must be per-tensor for uint8"):
        qops.conv2d(x, w, None, p, QuantParams([0.1, 0.2], 0, axis=0), p)
    xi, wi = x.astype(np.int8), w.astype(np.int8)
    with pytest.raises(ShapeError, match="conv2d: w_params has 3 per-channel scales along axis 0"):
        qops.conv2d(xi, wi, None, p, QuantParams([0.1, 0.2, 0.3], 0, axis=0), p)
    with pytest.raises(ShapeError, match="depthwise_conv2d: w_params has 2 per-channel scales along axis 5"):
        qops.depthwise_conv2d(xi, np.zeros((3, 1, 3, 3), np.int8), None, p, QuantParams([0.1, 0.2], 0, axis=5), p)
    with pytest.raises(ShapeError, match="conv2d: weight must have x's dtype"):
        qops.conv2d(x, wi, None, p, p, p)
    with pytest.raises(ShapeError, match="conv2d: bias must be an integer array of shape"):
        qops.conv2d(x, w, np.zeros(3, np.int32), p, p, p)
    with pytest.raises(ShapeError, match="add: a_params must be per-tensor"):
        qops.add(x, x, QuantParams([0.1, 0.1, 0.1], 0, axis=1), p, p)
    with pytest.raises(ShapeError, match="average_pool2d: x must be uint8 or int8"):
        qops.average_pool2d(x.astype(np.float32), p, 2, 2)
    with pytest.raises(ShapeError, match="mean: y_params must be a QuantParams"):
        qops.mean(x, p, None)
    with pytest.raises(ShapeError, match="conv2d: output would be empty"):
        qops.conv2d(x, np.zeros((2, 3, 5, 5), np.uint8), None, p, p, p, padding="valid")
