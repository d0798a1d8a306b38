"""Integer arithmetic of TensorFlow Lite's reference kernels (and gemmlowp's fixed point), in NumPy.

A quantized tensor stores integer codes q with real value  r = scale * (q - zero_point).
Kernels never leave the integers: a real factor such as s_x * s_w / s_y becomes a quantized multiplier,
an int32 mantissa M in [2^30, 2^31) and an exponent e with

    real ~= M * 2^(e - 31),

applied to an integer accumulator by `multiply_by_quantized_multiplier` (MBQM): a rounding
doubling high multiply (SRDHM, x * M / 2^31 rounded) followed by a rounding right shift (RDBP, ties
away from zero). Two roundings ("double rounding") is what the default TFLite build does, and what
its BUILTIN_REF kernels compute bit for bit.

Every function takes and returns int64 NumPy arrays (values that C++ keeps in int32 never overflow
int64 here), broadcasting like NumPy. Each has a `_naive` twin: a loop over elements in plain Python
ints, the clearest statement of the arithmetic; the tests check the two agree.

Rounding words used below:
  * round half away from zero: C's std::round (2.5 -> 3, -2.5 -> -3). NumPy's np.round is half to even.
  * C division of integers truncates toward zero (-7 / 2 == -3); Python's // floors (-7 // 2 == -4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ShapeError

__all__ = [
    "INT32_MIN", "INT32_MAX", "QuantParams", "dtype_range",
    "round_half_away", "round_half_away_naive",
    "quantize_multiplier", "quantize_multiplier_naive",
    "conv_real_multiplier", "add_real_multipliers", "rescale_real_multiplier", "mean_multiplier",
    "softmax_input_multiplier",
    "saturating_rounding_doubling_high_mul", "saturating_rounding_doubling_high_mul_naive",
    "rounding_divide_by_pot", "rounding_divide_by_pot_naive",
    "saturating_rounding_multiply_by_pot", "saturating_rounding_multiply_by_pot_naive",
    "multiply_by_quantized_multiplier", "multiply_by_quantized_multiplier_naive", "ROUNDINGS",
    "quantize_value", "quantize_value_naive", "activation_range",
    "exp_on_negative_values", "exp_on_negative_values_naive",
    "one_over_one_plus_x_for_x_in_0_1", "one_over_one_plus_x_for_x_in_0_1_naive",
    "get_reciprocal", "get_reciprocal_naive",
]

INT32_MIN = -(2 ** 31)
INT32_MAX = 2 ** 31 - 1


# --------------------------------------------------------------------------------------------------
# quantization parameters
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class QuantParams:
    """Scale(s) and zero point(s) of a quantized tensor:  real = scale * (q - zero_point).

    scale       float32 array (K,): K = 1 per-tensor, or one scale per index of `axis` (per-channel).
    zero_point  int64 array (K,) (a single zero point is repeated K times).
    axis        None (per-tensor) or the axis of the tensor the K entries run along, in this project's
                layout (0 = output channels of OIHW conv weights and of (C*dm, 1, KH, KW) depthwise weights).

    Scales are stored as float32, as in a .tflite file: every multiplier rule below starts from them.
    """

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None = None

    def __post_init__(self):
        scale = np.atleast_1d(np.asarray(self.scale, dtype=np.float32))
        zero_point = np.atleast_1d(np.asarray(self.zero_point))
        if scale.ndim != 1 or zero_point.ndim != 1:
            raise ShapeError(f"QuantParams: scale and zero_point must be scalars or 1-D, got shapes "
                             f"{scale.shape} and {zero_point.shape}")
        if zero_point.dtype.kind not in "iu" or not np.all(zero_point == np.round(zero_point)):
            raise ShapeError(f"QuantParams: zero_point must be integers, got {zero_point!r}")
        zero_point = zero_point.astype(np.int64)
        if zero_point.size == 1 and scale.size > 1:
            zero_point = np.repeat(zero_point, scale.size)
        if zero_point.size != scale.size:
            raise ShapeError(f"QuantParams: {scale.size} scales but {zero_point.size} zero points")
        if not np.all(np.isfinite(scale)) or not np.all(scale > 0):
            raise ShapeError(f"QuantParams: scales must be finite and positive, got {scale!r}")
        if self.axis is None and scale.size != 1:
            raise ShapeError(f"QuantParams: {scale.size} scales need a per-channel axis, got axis=None")
        if self.axis is not None and (not isinstance(self.axis, (int, np.integer)) or self.axis < 0):
            raise ShapeError(f"QuantParams: axis must be None or a non-negative int, got {self.axis!r}")
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "zero_point", zero_point)
        object.__setattr__(self, "axis", None if self.axis is None else int(self.axis))

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    def same_as(self, other: "QuantParams") -> bool:
        """True when both describe the same mapping (TFLite compares float scale and int zero point)."""
        return (self.axis == other.axis and np.array_equal(self.scale, other.scale)
                and np.array_equal(self.zero_point, other.zero_point))

    def check(self, op: str, name: str, tensor_shape, allow_per_channel: bool = False) -> "QuantParams":
        """Raise ShapeError (naming op and argument) unless these params fit a tensor of `tensor_shape`."""
        if not self.per_channel:
            return self
        if not allow_per_channel:
            raise ShapeError(f"{op}: {name} must be per-tensor, got per-channel params along axis {self.axis}")
        if self.axis >= len(tensor_shape) or tensor_shape[self.axis] != self.scale.size:
            raise ShapeError(f"{op}: {name} has {self.scale.size} per-channel scales along axis {self.axis}, "
                             f"which does not fit the tensor of shape {tuple(tensor_shape)}")
        return self


def dtype_range(dtype) -> tuple[int, int]:
    """(qmin, qmax) of an integer dtype: (0, 255) for uint8, (-128, 127) for int8."""
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


# --------------------------------------------------------------------------------------------------
# rounding of floats
# --------------------------------------------------------------------------------------------------

def round_half_away(x) -> np.ndarray:
    """C's std::round: to the nearest integer, ties away from zero (2.5 -> 3, -2.5 -> -3). Dtype kept.

    Computed as trunc(x) + sign(x) where |x - trunc(x)| >= 0.5: x - trunc(x) is exact in floating
    point, so no tie is lost (floor(x + 0.5) would round 0.49999999999999994 up).
    """
    x = np.asarray(x)
    whole = np.trunc(x)
    frac = x - whole
    return whole + np.where(np.abs(frac) >= 0.5, np.sign(x), 0).astype(x.dtype)


def round_half_away_naive(x) -> np.ndarray:
    """Loop version of `round_half_away` with Python floats: floor of |x| + 1/2 decided by the fraction."""
    x = np.asarray(x)
    out = np.empty(x.shape, dtype=x.dtype)
    for i in np.ndindex(x.shape):
        v = float(x[i])
        whole = math.trunc(v)
        if abs(v - whole) >= 0.5:
            whole += 1 if v > 0 else -1
        out[i] = whole
    return out


# --------------------------------------------------------------------------------------------------
# quantized multipliers
# --------------------------------------------------------------------------------------------------

def quantize_multiplier(real) -> tuple[np.ndarray, np.ndarray]:
    """TFLite's QuantizeMultiplier: real ~= M * 2^(e - 31), M an int32 mantissa. Returns int64 (M, e).

        (q, e) = frexp(real)                    q in [0.5, 1) (0 for real == 0)
        M      = round_half_away(q * 2^31)      in double; M in [2^30, 2^31]
        M == 2^31  ->  M = 2^30, e += 1         (q rounded up to 1.0)
        e < -31    ->  M = e = 0                (flushed: the product would always be 0)
    """
    real = np.asarray(real, dtype=np.float64)
    q, e = np.frexp(real)
    m = round_half_away(q * 2.0 ** 31).astype(np.int64)
    e = e.astype(np.int64)
    rollover = m == 2 ** 31
    m = np.where(rollover, 2 ** 30, m)
    e = np.where(rollover, e + 1, e)
    flush = e < -31
    return np.where(flush, 0, m), np.where(flush, 0, e)


def quantize_multiplier_naive(real) -> tuple[np.ndarray, np.ndarray]:
    """Loop version of `quantize_multiplier` with math.frexp and Python ints."""
    real = np.asarray(real, dtype=np.float64)
    m_out = np.empty(real.shape, np.int64)
    e_out = np.empty(real.shape, np.int64)
    for i in np.ndindex(real.shape):
        q, e = math.frexp(float(real[i]))
        scaled = q * 2 ** 31
        m = math.floor(abs(scaled) + 0.5) * (1 if scaled >= 0 else -1)  # exact: |scaled| < 2^31
        if m == 2 ** 31:
            m, e = 2 ** 30, e + 1
        if e < -31:
            m, e = 0, 0
        m_out[i], e_out[i] = m, e
    return m_out, e_out


def conv_real_multiplier(input_scale, weight_scale, output_scale, dtype) -> np.ndarray:
    """The real multiplier s_x * s_w / s_y of CONV_2D / DEPTHWISE_CONV_2D, float64, exactly as TFLite forms it.

    uint8 (per-tensor, GetQuantizedConvolutionMultipler):  double(float32(s_x * s_w)) / double(s_y)
                                                            (the product is rounded to float32 first)
    int8 (per-channel, one per output channel):            double(s_x) * double(s_w[c]) / double(s_y)
    """
    s_x, s_w, s_y = (np.asarray(s, dtype=np.float32) for s in (input_scale, weight_scale, output_scale))
    if np.dtype(dtype) == np.uint8:
        return (s_x * s_w).astype(np.float64) / s_y.astype(np.float64)
    return s_x.astype(np.float64) * s_w.astype(np.float64) / s_y.astype(np.float64)


def add_real_multipliers(scale1, scale2, output_scale, left_shift: int = 20) -> tuple[float, float, float]:
    """ADD's three real multipliers (add.cc): inputs are brought to a common scale 2 * max(s1, s2).

        twice = 2 * max(s1, s2)                 float32 (exact)
        m1 = s1 / twice,  m2 = s2 / twice       (both <= 1/2)
        mo = twice / (2^left_shift * s_y)       2^left_shift * s_y in float32 (exact)
    """
    s1, s2, s_y = (np.float32(s) for s in (scale1, scale2, output_scale))
    twice = float(np.float32(2) * max(s1, s2))
    return float(s1) / twice, float(s2) / twice, twice / float(np.float32(2 ** left_shift) * s_y)


def rescale_real_multiplier(input_scale, output_scale) -> float:
    """double(s_in) / double(s_out): the multiplier of requantization (QUANTIZE q -> q) and MEAN."""
    return float(np.float32(input_scale)) / float(np.float32(output_scale))


def mean_multiplier(input_scale, output_scale, count: int) -> tuple[int, int]:
    """MEAN's (M', e'): QuantizeMultiplier(s_in / s_out) with the division by the element count folded in.

        (M, e) = quantize_multiplier(double(s_in) / double(s_out))
        sh     = min(floor(log2 count), 32, 31 + e)
        M'     = (M * 2^sh) // count           (integer division; M' < 2^31)
        e'     = e - sh
    """
    m, e = (int(v) for v in quantize_multiplier(rescale_real_multiplier(input_scale, output_scale)))
    shift = min(int(count).bit_length() - 1, 32, 31 + e)
    return (m << shift) // int(count), e - shift


def softmax_input_multiplier(beta, input_scale, scaled_diff_integer_bits: int = 5) -> tuple[int, int, int]:
    """SOFTMAX's (M_beta, left_shift, diff_min) from PreprocessSoftmaxScaling and CalculateInputRadius.

        real     = min(double(beta) * double(s_in) * 2^(31 - 5), 2^31 - 1)     (beta is a float32 option)
        (M, ls)  = quantize_multiplier(real)                                   (ls >= 0: real > 1)
        diff_min = -floor((2^5 - 1) * 2^(31 - 5) / 2^ls)
    Input differences q - max(q) below diff_min are so negative that their exponential is 0.
    """
    real = min(float(np.float32(beta)) * float(np.float32(input_scale)) * 2.0 ** (31 - scaled_diff_integer_bits),
               2.0 ** 31 - 1.0)
    m, ls = (int(v) for v in quantize_multiplier(real))
    radius = math.floor((2 ** scaled_diff_integer_bits - 1) * 2.0 ** (31 - scaled_diff_integer_bits) / 2.0 ** ls)
    return m, ls, -radius


# --------------------------------------------------------------------------------------------------
# the integer kernels: SRDHM, RDBP, MBQM
# --------------------------------------------------------------------------------------------------

def _int64(x) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "iub":
        raise ShapeError(f"fixedpoint: expected integers, got dtype {x.dtype}")
    return x.astype(np.int64, copy=False)


def _c_divide(a: int, b: int) -> int:
    """C/C++ integer division of Python ints: the quotient truncated toward zero (b > 0)."""
    q = abs(a) // b
    return q if a >= 0 else -q


def saturating_rounding_doubling_high_mul(a, b) -> np.ndarray:
    """gemmlowp's SaturatingRoundingDoublingHighMul: a * b / 2^31 rounded, for int32 a and b.

    Definition (the `_naive` twin is written exactly like this):
        p     = a * b                                  (int64, exact)
        nudge = 2^30 if p >= 0 else 1 - 2^30
        out   = (p + nudge) / 2^31                     C division: truncates toward zero
        a == b == INT32_MIN  ->  INT32_MAX             (the only product that does not fit)

    Computed here as (p + 2^30) >> 31 (3 array passes instead of 8). The same integers: for p >= 0 both
    are floor((p + 2^30) / 2^31); for p < 0, truncating s = p + 1 - 2^30 < 0 is floor((s + 2^31 - 1) / 2^31)
    = floor((p + 2^30) / 2^31). So SRDHM rounds to nearest with ties upward (+inf), and a `//` (floor)
    of p + nudge would be wrong for negative products.
    """
    a, b = _int64(a), _int64(b)
    out = a * b
    out += 2 ** 30
    out >>= 31
    # Saturation: only when both can be INT32_MIN (never for a multiplier M >= 0); test the smaller array first.
    small, large = (a, b) if a.size <= b.size else (b, a)
    if np.any(small == INT32_MIN) and np.any(large == INT32_MIN):
        out = np.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, out)
    return out


def saturating_rounding_doubling_high_mul_naive(a, b) -> np.ndarray:
    """Loop version of `saturating_rounding_doubling_high_mul` in Python ints."""
    a, b = np.broadcast_arrays(_int64(a), _int64(b))
    out = np.empty(a.shape, np.int64)
    for i in np.ndindex(a.shape):
        ai, bi = int(a[i]), int(b[i])
        if ai == bi == INT32_MIN:
            out[i] = INT32_MAX
            continue
        p = ai * bi
        nudge = 2 ** 30 if p >= 0 else 1 - 2 ** 30
        out[i] = _c_divide(p + nudge, 2 ** 31)
    return out


def rounding_divide_by_pot(x, exponent) -> np.ndarray:
    """gemmlowp's RoundingDivideByPOT: x / 2^exponent, to nearest, ties away from zero (exponent >= 0).

        mask      = 2^exponent - 1
        remainder = x & mask                           (two's complement: in [0, mask])
        threshold = mask >> 1,  plus 1 when x < 0
        out       = (x >> exponent) + (remainder > threshold)      (>> is an arithmetic, flooring shift)
    """
    x, exponent = _int64(x), _int64(exponent)
    mask = (np.int64(1) << exponent) - 1
    threshold = (mask >> 1) + (x < 0)
    round_up = (x & mask) > threshold
    out = x >> exponent
    out += round_up
    return out


def _rounding_divide_by_pot_offset(x, exponent) -> np.ndarray:
    """`rounding_divide_by_pot` in 4 array passes instead of 6, for the hot path of MBQM (exponent >= 1):

        (x + 2^(n-1) - (x < 0)) >> n          with  -(x < 0) == x >> 63  (the sign, 0 or -1)

    The same integers: x >= 0 rounds up iff remainder >= 2^(n-1) (i.e. > mask >> 1); x < 0 rounds up iff
    remainder >= 2^(n-1) + 1 (i.e. > (mask >> 1) + 1). The tests check it against the twin on every MBQM.
    """
    out = x >> 63
    out += x
    out += np.int64(1) << (exponent - 1)
    out >>= exponent
    return out


def rounding_divide_by_pot_naive(x, exponent) -> np.ndarray:
    """Loop version of `rounding_divide_by_pot`: the exact quotient x / 2^n rounded half away from zero."""
    x, exponent = np.broadcast_arrays(_int64(x), _int64(exponent))
    out = np.empty(x.shape, np.int64)
    for i in np.ndindex(x.shape):
        value, n = int(x[i]), int(exponent[i])
        magnitude = (2 * abs(value) + 2 ** n) // 2 ** (n + 1)   # floor(|x| / 2^n + 1/2)
        out[i] = magnitude if value >= 0 else -magnitude
    return out


def saturating_rounding_multiply_by_pot(x, exponent: int) -> np.ndarray:
    """gemmlowp's SaturatingRoundingMultiplyByPOT<exponent> on int32 raw values.

    exponent >= 0: x * 2^exponent, saturated to [INT32_MIN, INT32_MAX]
                   (|x| > 2^(31 - exponent) - 1 saturates);
    exponent <  0: rounding_divide_by_pot(x, -exponent).
    """
    x = _int64(x)
    if exponent < 0:
        return rounding_divide_by_pot(x, -exponent)
    threshold = (1 << (31 - exponent)) - 1
    return np.where(x > threshold, INT32_MAX, np.where(x < -threshold, INT32_MIN, x << exponent))


def saturating_rounding_multiply_by_pot_naive(x, exponent: int) -> np.ndarray:
    """Loop version of `saturating_rounding_multiply_by_pot`."""
    x = _int64(x)
    out = np.empty(x.shape, np.int64)
    for i in np.ndindex(x.shape):
        v = int(x[i])
        if exponent < 0:
            out[i] = rounding_divide_by_pot_naive(v, -exponent)
        else:
            out[i] = min(max(v * 2 ** exponent, INT32_MIN), INT32_MAX)
    return out


ROUNDINGS = ("double", "single", "ruy_upward", "float")


def multiply_by_quantized_multiplier(x, multiplier, exponent, rounding: str = "double") -> np.ndarray:
    """TFLite's MultiplyByQuantizedMultiplier: x * M * 2^(e - 31), rounded, for int32 x. int64 arrays.

    rounding="double" (the TFLite reference, default build):
        left = max(e, 0), right = max(-e, 0)
        out  = RDBP(SRDHM(x * 2^left, M), right)       two roundings: nearest-ties-up, then ties away

    The other settings are NOT the reference; they show what other builds / kernels compute:
        "single":     (x * M + 2^(30 - e)) >> (31 - e)           one rounding, ties up (TFLITE_SINGLE_ROUNDING)
        "ruy_upward": SRDHM, then (y + 2^(right - 1)) >> right      ruy's AVX2 kernels (ties up twice)
        "float":      round_half_away(double(x) * M * 2^(e - 31))   float math with the same (M, e)

    `multiplier` and `exponent` broadcast against x (per-channel: shape them along the channel axis).
    """
    x, m, e = _int64(x), _int64(multiplier), _int64(exponent)
    if rounding == "double":
        left, right = np.maximum(e, 0), np.maximum(-e, 0)
        high = saturating_rounding_doubling_high_mul(x << left if np.any(left) else x, m)
        if not np.any(right):
            return high
        if np.all(right > 0):
            return _rounding_divide_by_pot_offset(high, right)
        return rounding_divide_by_pot(high, right)
    if rounding == "single":
        total = 31 - e
        return np.clip((x * m + (np.int64(1) << (total - 1))) >> total, INT32_MIN, INT32_MAX)
    if rounding == "ruy_upward":
        left, right = np.maximum(e, 0), np.maximum(-e, 0)
        y = saturating_rounding_doubling_high_mul(x << left, m)
        return np.where(right > 0, (y + (np.int64(1) << np.maximum(right - 1, 0))) >> right, y)
    if rounding == "float":
        return round_half_away(x.astype(np.float64) * m * np.exp2(e.astype(np.float64) - 31)).astype(np.int64)
    raise ShapeError(f"multiply_by_quantized_multiplier: rounding must be one of {ROUNDINGS}, got {rounding!r}")


def multiply_by_quantized_multiplier_naive(x, multiplier, exponent) -> np.ndarray:
    """Loop version of `multiply_by_quantized_multiplier` (the reference double rounding) in Python ints."""
    x, m, e = np.broadcast_arrays(_int64(x), _int64(multiplier), _int64(exponent))
    out = np.empty(x.shape, np.int64)
    for i in np.ndindex(x.shape):
        xi, mi, ei = int(x[i]), int(m[i]), int(e[i])
        left, right = max(ei, 0), max(-ei, 0)
        high = int(saturating_rounding_doubling_high_mul_naive(xi * 2 ** left, mi))
        out[i] = int(rounding_divide_by_pot_naive(high, right))
    return out


# --------------------------------------------------------------------------------------------------
# float -> code, activation clamps
# --------------------------------------------------------------------------------------------------

def quantize_value(x, scale, zero_point) -> np.ndarray:
    """TFLite's float -> code step, unclamped:  zero_point + (int)round_half_away(float32(x) / float32(scale)).

    The division and the rounding are done in float32 (as the C++ does with float operands).
    """
    q = np.asarray(x, dtype=np.float32) / np.asarray(scale, dtype=np.float32)
    return round_half_away(q).astype(np.int64) + _int64(zero_point)


def quantize_value_naive(x, scale, zero_point) -> np.ndarray:
    """Loop version of `quantize_value`: one float32 division and one half-away rounding per element."""
    x, scale, zero_point = np.broadcast_arrays(np.asarray(x, np.float32), np.asarray(scale, np.float32),
                                               _int64(zero_point))
    out = np.empty(x.shape, np.int64)
    for i in np.ndindex(x.shape):
        ratio = float(np.float32(x[i]) / np.float32(scale[i]))   # float32 division, then exact in double
        out[i] = int(zero_point[i]) + int(round_half_away_naive(ratio))
    return out


def activation_range(activation: str, scale, zero_point, dtype) -> tuple[int, int]:
    """(act_min, act_max) of a fused activation on the output codes (CalculateActivationRangeQuantized).

        "none":          (qmin, qmax)
        "relu":          (max(qmin, Q(0)), qmax)
        "relu6":         (max(qmin, Q(0)), min(qmax, Q(6)))
        "relu_n1_to_1":  (max(qmin, Q(-1)), min(qmax, Q(1)))
    with Q(f) = quantize_value(f, scale, zero_point) and (qmin, qmax) the dtype's range.
    """
    qmin, qmax = dtype_range(dtype)

    def q(f):
        return int(quantize_value(f, scale, zero_point))

    if activation == "none":
        return qmin, qmax
    if activation == "relu":
        return max(qmin, q(0.0)), qmax
    if activation == "relu6":
        return max(qmin, q(0.0)), min(qmax, q(6.0))
    if activation == "relu_n1_to_1":
        return max(qmin, q(-1.0)), min(qmax, q(1.0))
    raise ShapeError(f"activation_range: activation must be 'none', 'relu', 'relu6' or 'relu_n1_to_1', "
                     f"got {activation!r}")


# --------------------------------------------------------------------------------------------------
# gemmlowp fixed point for SOFTMAX
# --------------------------------------------------------------------------------------------------
# A fixed-point number with I integer bits is an int32 raw value r meaning r / 2^(31 - I).
# Product of two such numbers: SRDHM of the raws (integer bits add up); sum: raw + raw.

_EXP_BARREL = ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308),
               (2, 39332535), (3, 720401), (4, 242))   # (k, exp(-2^k) in Q0.31)


def _exp_on_interval_between_negative_one_quarter_and_0_excl(a, mul, divide_by_pot):
    """exp(a) for a in [-1/4, 0), Q0.31 in and out: 4th-order Taylor expansion around -1/8."""
    constant_term = 1895147668        # exp(-1/8)
    constant_1_over_3 = 715827883
    x = a + (1 << 28)                 # a + 1/8
    x2 = mul(x, x)
    x3 = mul(x2, x)
    x4 = mul(x2, x2)
    x4_over_4 = divide_by_pot(x4, 2)
    poly = divide_by_pot(mul(x4_over_4 + x3, constant_1_over_3) + x2, 1)   # x^4/24 + x^3/6 + x^2/2
    return constant_term + mul(constant_term, x + poly)


def exp_on_negative_values(a) -> np.ndarray:
    """gemmlowp's exp_on_negative_values for a Q5.26 input a <= 0; returns exp(a) as Q0.31 raw int64.

        r   = (a mod 1/4) - 1/4                    in [-1/4, 0)
        out = exp(r) (Taylor, Q0.31), then times exp(-2^k) (one SRDHM each) for every bit k of r - a
        a == 0 -> INT32_MAX (1.0 in Q0.31)
    """
    a = _int64(a)
    one_quarter = 1 << 24                       # 1/4 in Q5.26
    r = (a & (one_quarter - 1)) - one_quarter
    result = _exp_on_interval_between_negative_one_quarter_and_0_excl(
        saturating_rounding_multiply_by_pot(r, 5),       # Q5.26 -> Q0.31
        saturating_rounding_doubling_high_mul, rounding_divide_by_pot)
    remainder = r - a
    for k, multiplier in _EXP_BARREL:
        bit_set = (remainder & (1 << (26 + k))) != 0
        result = np.where(bit_set, saturating_rounding_doubling_high_mul(result, multiplier), result)
    return np.where(a == 0, INT32_MAX, result)


def exp_on_negative_values_naive(a) -> np.ndarray:
    """Loop version of `exp_on_negative_values`, one Python int at a time."""
    a = _int64(a)
    out = np.empty(a.shape, np.int64)

    def mul(u, v):
        return int(saturating_rounding_doubling_high_mul_naive(u, v))

    def divide_by_pot(u, n):
        return int(rounding_divide_by_pot_naive(u, n))

    for i in np.ndindex(a.shape):
        value = int(a[i])
        if value == 0:
            out[i] = INT32_MAX
            continue
        r = (value & (2 ** 24 - 1)) - 2 ** 24
        result = _exp_on_interval_between_negative_one_quarter_and_0_excl(r * 32, mul, divide_by_pot)
        remainder = r - value
        for k, multiplier in _EXP_BARREL:
            if remainder & (1 << (26 + k)):
                result = mul(result, multiplier)
        out[i] = result
    return out


def _one_over_one_plus_x(a, mul, half_sum, times_pot):
    one_q0 = INT32_MAX                          # 1.0 in Q0.31
    half_denominator = half_sum(a, one_q0)      # (1 + a) / 2, Q0.31
    x = 1515870810 + mul(half_denominator, -1010580540)   # 48/17 - 32/17 * d, Q2.29
    for _ in range(3):                          # Newton-Raphson: x <- x + x * (1 - d * x)
        one_minus = (1 << 29) - mul(half_denominator, x)  # Q2.29
        x = x + times_pot(mul(x, one_minus), 2)           # Q4.27 -> Q2.29
    return times_pot(x, 1)                      # 1/(1+a) = x/2: same raw read as Q1.30, then to Q0.31


def one_over_one_plus_x_for_x_in_0_1(a) -> np.ndarray:
    """gemmlowp's one_over_one_plus_x_for_x_in_0_1: 1 / (1 + a) for a Q0.31 raw a in [0, 1), Q0.31 out.

    half_denominator d = RoundingHalfSum(a, 1.0) = (a + INT32_MAX + 1) / 2 (C division);
    three Newton-Raphson steps from x0 = 48/17 - 32/17 d in Q2.29; result 2x saturated to Q0.31.
    """
    a = _int64(a)

    def half_sum(u, v):
        total = u + v
        total = total + np.where(total >= 0, 1, -1)
        return np.where(total >= 0, total >> 1, -((-total) >> 1))

    return _one_over_one_plus_x(a, saturating_rounding_doubling_high_mul, half_sum,
                                saturating_rounding_multiply_by_pot)


def one_over_one_plus_x_for_x_in_0_1_naive(a) -> np.ndarray:
    """Loop version of `one_over_one_plus_x_for_x_in_0_1`."""
    a = _int64(a)
    out = np.empty(a.shape, np.int64)

    def mul(u, v):
        return int(saturating_rounding_doubling_high_mul_naive(u, v))

    def half_sum(u, v):
        total = u + v
        return _c_divide(total + (1 if total >= 0 else -1), 2)

    def times_pot(u, n):
        return int(saturating_rounding_multiply_by_pot_naive(u, n))

    for i in np.ndindex(a.shape):
        out[i] = _one_over_one_plus_x(int(a[i]), mul, half_sum, times_pot)
    return out


def get_reciprocal(x, x_integer_digits: int) -> tuple[np.ndarray, np.ndarray]:
    """TFLite's GetReciprocal: 1 / x for a positive fixed-point x with `x_integer_digits` integer bits.

        h            = count of leading zeros of x as uint32
        nbits        = x_integer_digits - h               (1/x = out * 2^-nbits)
        shifted      = (x << h) - 2^31                    x scaled into [1, 2), minus 1, as Q0.31
        out          = one_over_one_plus_x_for_x_in_0_1(shifted)
    Returns (out raw Q0.31, nbits), both int64 arrays.
    """
    x = _int64(x)
    if np.any(x <= 0):
        raise ShapeError("get_reciprocal: x must be positive")
    headroom = 32 - np.frexp(x.astype(np.float64))[1].astype(np.int64)   # frexp exponent = bit length (x < 2^53)
    shifted = (x << headroom) - 2 ** 31
    return one_over_one_plus_x_for_x_in_0_1(shifted), x_integer_digits - headroom


def get_reciprocal_naive(x, x_integer_digits: int) -> tuple[np.ndarray, np.ndarray]:
    """Loop version of `get_reciprocal` with int.bit_length."""
    x = _int64(x)
    out = np.empty(x.shape, np.int64)
    nbits = np.empty(x.shape, np.int64)
    for i in np.ndindex(x.shape):
        value = int(x[i])
        if value <= 0:
            raise ShapeError("get_reciprocal_naive: x must be positive")
        headroom = 32 - value.bit_length()
        out[i] = int(one_over_one_plus_x_for_x_in_0_1_naive((value << headroom) - 2 ** 31))
        nbits[i] = x_integer_digits - headroom
    return out, nbits
