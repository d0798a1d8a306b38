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
from hypothesis import given, settings, strategies as st

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
