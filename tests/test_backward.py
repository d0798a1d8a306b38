"""mobilenet_np.training.backward: every backward equals torch.autograd, its naive twin, and finite differences.

* `*_matches_torch`: hypothesis draws shapes and arguments (batch 1-3, channels 1-12, sizes 1-12, kernels 1-5,
  strides 1-3, dilations 1-3, symmetric / "valid" / TF "SAME" paddings), runs our forward and the torch op in
  float64 on the same inputs, backpropagates the same RANDOM upstream gradient (never all ones: BatchNorm's
  input gradient vanishes for ones) and compares every gradient.
* `*_naive`: each fast backward against its loop twin, on small cases.
* `test_finite_differences`: central differences of sum(out * dout) on tiny float64 cases.
* BatchNorm running statistics against nn.BatchNorm2d(momentum=0.997 / 0.9997) in train mode; dropout with
  torch's own mask; the kinks of ReLU / ReLU6 exactly; float32 against the float64 truth; bad input.

Tolerance (float64): max |ours - torch| <= RTOL64 * max |torch| per gradient (the gradient's own scale), with
RTOL64 = 1e-10. Both sides add the same products in different orders; the observed errors are 1e-16..1e-14
(run with -s to print the worst per op), while every bug tried (see the mutation notes in the report) is off
by 1e-3 or more.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from transformers.models.mobilenet_v2.modeling_mobilenet_v2 import apply_tf_padding

from mobilenet_np.errors import ConfigError, ShapeError
from mobilenet_np.training import backward as bw

RTOL64 = 1e-10           # against torch autograd, float64, relative to the gradient's max |value|
RTOL_NAIVE = 1e-12       # fast vs naive twin, float64
RTOL32 = 1e-4            # float32 vs the float64 truth (reductions in float64, products in float32)
WORST: dict[str, float] = defaultdict(float)


@pytest.fixture(autouse=True, scope="module")
def print_worst_errors():
    yield
    print("\nworst relative errors (test_backward):")
    for name, value in sorted(WORST.items()):
        print(f"  {name:40s} {value:.2e}")


def t(a, grad=False):
    """A float64 tensor sharing nothing with `a`."""
    tensor = torch.tensor(np.asarray(a))
    return tensor.requires_grad_(grad)


def rel_error(actual, expected, floor: float = 0.0) -> float:
    """max |actual - expected| / max(max |expected|, floor)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = expected.detach().numpy() if isinstance(expected, torch.Tensor) else np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape}"
    scale = max(float(np.abs(expected).max(initial=0.0)), floor, 1e-300)
    return float(np.abs(actual - expected).max(initial=0.0)) / scale


def assert_grad(name, actual, expected, rtol=RTOL64, record=None, floor=0.0):
    """max |actual - expected| <= rtol * max(max |expected|, floor). The floor is for gradients that are
    structurally ~0 (terms that cancel: BatchNorm's dx when M == 2): there the error is relative to the
    size of the cancelling terms, not to the rounding noise that is left."""
    assert actual is not None, f"{name}: no gradient"
    assert isinstance(actual, np.ndarray), f"{name}: got {type(actual).__name__}"
    error = rel_error(actual, expected, floor)
    if record:
        WORST[record] = max(WORST[record], error)
    assert error <= rtol, f"{name}: relative error {error:.3g} > {rtol:g}"


def draw_rng(draw) -> np.random.Generator:
    return np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="seed"))


def pair(value):
    return value if isinstance(value, tuple) else (value, value)


# --------------------------------------------------------------------------------------------------
# convolutions
# --------------------------------------------------------------------------------------------------

CONV = {"general": (bw.conv2d_forward, bw.conv2d_backward, bw.conv2d_backward_naive),
        "depthwise": (bw.depthwise_conv2d_forward, bw.depthwise_conv2d_backward, bw.depthwise_conv2d_backward_naive),
        "pointwise": (bw.pointwise_conv2d_forward, bw.pointwise_conv2d_backward, bw.pointwise_conv2d_backward_naive)}


@st.composite
def conv_cases(draw, kind, batch=3, channels=12, size=12, kernel=5):
    """(x, weight, bias, kwargs) for one convolution of `kind`, output never empty."""
    rng = draw_rng(draw)
    n = draw(st.integers(1, batch))
    c_in = draw(st.integers(1, channels))
    c_out = c_in if kind == "depthwise" else draw(st.integers(1, channels))
    kh, kw = (1, 1) if kind == "pointwise" else (draw(st.integers(1, kernel)), draw(st.integers(1, kernel)))
    h, w = draw(st.integers(1, size)), draw(st.integers(1, size))
    stride = draw(st.one_of(st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    dilation = draw(st.one_of(st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    padding = draw(st.one_of(st.integers(0, 3), st.tuples(st.integers(0, 3), st.integers(0, 3)),
                             st.just("valid"), st.just("tf_same")))
    if empty_output(h, w, kh, kw, stride, padding, dilation):  # a ShapeError: use TF "SAME", dilation 1 instead
        padding, dilation = "tf_same", 1
    x = rng.standard_normal((n, c_in, h, w))
    weight = rng.standard_normal((c_out, 1 if kind == "depthwise" else c_in, kh, kw))
    bias = rng.standard_normal(c_out) if draw(st.booleans()) else None
    return x, weight, bias, dict(stride=stride, padding=padding, dilation=dilation)


def empty_output(h, w, kh, kw, stride, padding, dilation) -> bool:
    """Would the convolution's output be empty? (TF "SAME" with dilation can be: transformers scales the
    pad of the undilated kernel by the dilation.)"""
    for size, k, s, d, axis in zip((h, w), (kh, kw), pair(stride), pair(dilation), (0, 1)):
        if padding == "tf_same":
            total = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
            total *= d
        else:
            total = 0 if padding == "valid" else 2 * pair(padding)[axis]
        if size + total < d * (k - 1) + 1:
            return True
    return False


def torch_conv(x, weight, bias, stride, padding, dilation, groups):
    """F.conv2d, with transformers' own apply_tf_padding for "tf_same"."""
    if padding == "tf_same":
        layer = torch.nn.Conv2d(1, 1, tuple(weight.shape[2:]), stride=pair(stride), dilation=pair(dilation))
        return F.conv2d(apply_tf_padding(x, layer), weight, bias, pair(stride), 0, pair(dilation), groups)
    padding = 0 if padding == "valid" else pair(padding)
    return F.conv2d(x, weight, bias, pair(stride), padding, pair(dilation), groups)


@pytest.mark.parametrize("kind", list(CONV))
@given(data=st.data())
def test_conv_matches_torch(kind, data):
    x, weight, bias, kwargs = data.draw(conv_cases(kind))
    forward, backward, _ = CONV[kind]
    out, cache = forward(x, weight, bias, **kwargs)
    dout = np.random.default_rng(1).standard_normal(out.shape)
    dx, dw, db = backward(dout, cache)

    xt, wt, bt = t(x, True), t(weight, True), (None if bias is None else t(bias, True))
    ref = torch_conv(xt, wt, bt, groups=x.shape[1] if kind == "depthwise" else 1, **kwargs)
    ref.backward(t(dout))
    assert_grad("out", out, ref, record=f"{kind} conv out")
    assert_grad("dx", dx, xt.grad, record=f"{kind} conv dx")
    assert_grad("dw", dw, wt.grad, record=f"{kind} conv dw")
    if bias is None:
        assert db is None
    else:
        assert_grad("db", db, bt.grad, record=f"{kind} conv db")


@pytest.mark.parametrize("kind", list(CONV))
@given(data=st.data())
def test_conv_naive_matches_fast(kind, data):
    x, weight, bias, kwargs = data.draw(conv_cases(kind, batch=2, channels=4, size=7, kernel=3))
    forward, backward, naive = CONV[kind]
    out, cache = forward(x, weight, bias, **kwargs)
    dout = np.random.default_rng(2).standard_normal(out.shape)
    for name, fast, slow in zip(("dx", "dw", "db"), backward(dout, cache), naive(dout, cache)):
        if fast is None:
            assert slow is None
        else:
            assert_grad(name, slow, fast, RTOL_NAIVE, record=f"{kind} conv naive")


def test_tf_same_backward_crops_the_asymmetric_pad():
    """12x12, k 3, s 2: TF pads (0, 1): no top pad, one extra bottom row. The gradient of x is the padded
    gradient without that row, so dx equals torch's through transformers' padding (a symmetric crop fails)."""
    rng = np.random.default_rng(3)
    x, weight = rng.standard_normal((1, 2, 12, 12)), rng.standard_normal((2, 1, 3, 3))
    out, cache = bw.depthwise_conv2d_forward(x, weight, None, stride=2, padding="tf_same")
    assert cache["geometry"].pads == (0, 1, 0, 1) and out.shape == (1, 2, 6, 6)
    dout = rng.standard_normal(out.shape)
    dx, dw, _ = bw.depthwise_conv2d_backward(dout, cache)
    xt, wt = t(x, True), t(weight, True)
    torch_conv(xt, wt, None, 2, "tf_same", 1, groups=2).backward(t(dout))
    assert_grad("dx", dx, xt.grad)
    assert_grad("dw", dw, wt.grad)
    shifted = np.pad(x, ((0, 0), (0, 0), (1, 0), (1, 0)))[:, :, :12, :12]  # pads moved to the top/left
    out_shifted, _ = bw.depthwise_conv2d_forward(shifted, weight, None, stride=2, padding="valid")
    assert rel_error(out_shifted[:, :, :5, :5], out[:, :, :5, :5]) > 1e-3


def test_tf_same_with_dilation_can_be_empty_in_transformers_too():
    """transformers multiplies the pad of the undilated kernel by the dilation: 1x2 input, kernel 1x2, stride 2,
    dilation 2 pads 0 and cannot fit the dilated span 3. torch fails; we raise a ShapeError."""
    x, weight = np.ones((1, 1, 1, 2)), np.ones((1, 1, 1, 2))
    with pytest.raises(RuntimeError):
        torch_conv(t(x), t(weight), None, 2, "tf_same", 2, groups=1)
    with pytest.raises(ShapeError, match="output would be empty"):
        bw.conv2d_forward(x, weight, None, stride=2, padding="tf_same", dilation=2)


# --------------------------------------------------------------------------------------------------
# BatchNorm
# --------------------------------------------------------------------------------------------------

@st.composite
def bn_cases(draw, batch=3, channels=12, size=12):
    rng = draw_rng(draw)
    shape = (draw(st.integers(1, batch)), draw(st.integers(1, channels)),
             draw(st.integers(1, size)), draw(st.integers(1, size)))
    if shape[0] * shape[2] * shape[3] == 1:
        shape = (2,) + shape[1:]
    c = shape[1]
    scale = draw(st.sampled_from([1e-2, 1.0, 30.0]))  # small variance: eps matters
    x = rng.standard_normal(shape) * scale + rng.standard_normal((1, c, 1, 1))
    return x, rng.standard_normal(c), rng.standard_normal(c), draw(st.sampled_from([1e-3, 1e-5])), rng


@given(bn_cases())
def test_batch_norm_train_matches_torch(case):
    x, gamma, beta, eps, rng = case
    out, cache = bw.batch_norm_train_forward(x, gamma, beta, eps)
    dout = rng.standard_normal(out.shape)
    dx, dgamma, dbeta = bw.batch_norm_train_backward(dout, cache)

    xt, gt, bt = t(x, True), t(gamma, True), t(beta, True)
    ref = F.batch_norm(xt, None, None, gt, bt, training=True, eps=eps)
    ref.backward(t(dout))
    assert_grad("out", out, ref, record="bn train out")
    # dx = gamma * rstd / M * (M dout - sum dout - xhat sum dout xhat) cancels to ~0 when M == 2 (xhat = +-1):
    # the floor is the size of the cancelling terms, |gamma| rstd max|dout|.
    terms = float(np.abs(gamma / np.sqrt(x.var(axis=(0, 2, 3)) + eps)).max() * np.abs(dout).max())
    assert_grad("dx", dx, xt.grad, record="bn train dx", floor=terms)
    assert_grad("dgamma", dgamma, gt.grad, record="bn train dgamma")
    assert_grad("dbeta", dbeta, bt.grad, record="bn train dbeta")


@given(bn_cases(batch=2, channels=3, size=5))
def test_batch_norm_naive_matches_fast(case):
    x, gamma, beta, eps, rng = case
    out, cache = bw.batch_norm_train_forward(x, gamma, beta, eps)
    dout = rng.standard_normal(out.shape)
    for name, fast, slow in zip(("dx", "dgamma", "dbeta"), bw.batch_norm_train_backward(dout, cache),
                                bw.batch_norm_train_backward_naive(dout, cache)):
        assert_grad(f"train {name}", slow, fast, 1e-9, record="bn train naive")
    mean, var = rng.standard_normal(x.shape[1]), rng.uniform(0.1, 2, x.shape[1])
    out, cache = bw.batch_norm_eval_forward(x, mean, var, gamma, beta, eps)
    for name, fast, slow in zip(("dx", "dgamma", "dbeta"), bw.batch_norm_eval_backward(dout, cache),
                                bw.batch_norm_eval_backward_naive(dout, cache)):
        assert_grad(f"eval {name}", slow, fast, RTOL_NAIVE, record="bn eval naive")


@given(bn_cases())
def test_batch_norm_eval_matches_torch(case):
    x, gamma, beta, eps, rng = case
    c = x.shape[1]
    mean, var = rng.standard_normal(c), rng.uniform(0.0, 2.0, c)
    out, cache = bw.batch_norm_eval_forward(x, mean, var, gamma, beta, eps)
    dout = rng.standard_normal(out.shape)
    dx, dgamma, dbeta = bw.batch_norm_eval_backward(dout, cache)
    xt, gt, bt = t(x, True), t(gamma, True), t(beta, True)
    ref = F.batch_norm(xt, t(mean), t(var), gt, bt, training=False, eps=eps)
    ref.backward(t(dout))
    assert_grad("out", out, ref, record="bn eval out")
    assert_grad("dx", dx, xt.grad, record="bn eval dx")
    assert_grad("dgamma", dgamma, gt.grad, record="bn eval dgamma")
    assert_grad("dbeta", dbeta, bt.grad, record="bn eval dbeta")


@pytest.mark.parametrize("momentum", [0.997, 0.9997, 0.1])
@given(case=bn_cases(size=6))
def test_running_statistics_match_batchnorm2d(momentum, case):
    """Three train-mode steps of nn.BatchNorm2d(momentum=...) from non-trivial running statistics."""
    x, gamma, beta, eps, rng = case
    c = x.shape[1]
    layer = torch.nn.BatchNorm2d(c, eps=eps, momentum=momentum).double().train()
    running_mean, running_var = rng.standard_normal(c), rng.uniform(0.5, 2.0, c)
    with torch.no_grad():
        layer.running_mean.copy_(t(running_mean))
        layer.running_var.copy_(t(running_var))
        for step in range(3):
            batch = x * (step + 1) + step
            layer(t(batch))
            _, cache = bw.batch_norm_train_forward(batch, gamma, beta, eps)
            running_mean, running_var = bw.batch_norm_update_running(
                running_mean, running_var, cache["mean"], cache["var_unbiased"], momentum)
    assert_grad("running_mean", running_mean, layer.running_mean, record="bn running_mean")
    assert_grad("running_var", running_var, layer.running_var, record="bn running_var")


def test_batch_norm_one_value_per_channel_raises_like_torch():
    x = np.ones((1, 4, 1, 1))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        F.batch_norm(t(x), None, None, training=True)
    with pytest.raises(ShapeError, match="batch_norm_train_forward: Expected more than 1 value per channel when training"):
        bw.batch_norm_train_forward(x, np.ones(4), np.zeros(4), 1e-5)
    bw.batch_norm_train_forward(np.ones((2, 4, 1, 1)), np.ones(4), np.zeros(4), 1e-5)  # M = 2 is fine


def test_batch_norm_update_running_rejects_bad_momentum():
    with pytest.raises(ConfigError, match="momentum"):
        bw.batch_norm_update_running(np.zeros(2), np.ones(2), np.zeros(2), np.ones(2), 1.5)
    with pytest.raises(ShapeError, match="batch_var_unbiased"):
        bw.batch_norm_update_running(np.zeros(2), np.ones(2), np.zeros(2), np.ones(3), 0.1)


# --------------------------------------------------------------------------------------------------
# activations, pooling, linear
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["relu", "relu6"])
@given(seed=st.integers(0, 2**32 - 1))
def test_activation_matches_torch_exactly_with_kinks(name, seed):
    """Values exactly at 0 and 6 and around them (and NaN for ReLU): the same gradient as torch, bit for bit.
    (torch's ReLU6 gradient at NaN depends on the position in the tensor, see backward.py: not compared.)"""
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(1, 6, size=4))
    x = rng.uniform(-8, 8, shape)
    kinks = np.array([0.0, 6.0, -0.0, 6.0 + 1e-15, 6.0 - 1e-15, 1e-300] + ([np.nan] if name == "relu" else []))
    at_kinks = rng.random(shape) < 0.3
    x[at_kinks] = rng.choice(kinks, size=int(at_kinks.sum()))
    x.reshape(-1)[0] = rng.choice(kinks)
    forward, backward, naive = (getattr(bw, f"{name}_forward"), getattr(bw, f"{name}_backward"),
                                getattr(bw, f"{name}_backward_naive"))
    out, cache = forward(x)
    dout = rng.standard_normal(shape)
    xt = t(x, True)
    ref = (F.relu if name == "relu" else F.relu6)(xt)
    ref.backward(t(dout))
    np.testing.assert_array_equal(out, ref.detach().numpy())
    np.testing.assert_array_equal(backward(dout, cache), xt.grad.numpy())
    np.testing.assert_array_equal(naive(dout, cache), xt.grad.numpy())


def test_relu6_kink_values_from_the_facts():
    """Measured in torch: ReLU6 grads at [-1, 0, 3, 6, 7] are [0, 0, 1, 0, 0]; ReLU's at 0 is 0."""
    x = np.array([-1.0, 0.0, 3.0, 6.0, 7.0])
    _, cache = bw.relu6_forward(x)
    np.testing.assert_array_equal(bw.relu6_backward(np.ones(5), cache), [0, 0, 1, 0, 0])
    _, cache = bw.relu_forward(x)
    np.testing.assert_array_equal(bw.relu_backward(np.ones(5), cache), [0, 0, 1, 1, 1])


@given(seed=st.integers(0, 2**32 - 1))
def test_global_avg_pool_matches_torch(seed):
    rng = np.random.default_rng(seed)
    shape = (rng.integers(1, 4), rng.integers(1, 13), rng.integers(1, 13), rng.integers(1, 13))
    x = rng.standard_normal(shape)
    out, cache = bw.global_avg_pool_forward(x)
    dout = rng.standard_normal(out.shape)
    xt = t(x, True)
    ref = F.adaptive_avg_pool2d(xt, 1)
    ref.backward(t(dout))
    assert_grad("out", out, ref, record="avg pool out")
    assert_grad("dx", bw.global_avg_pool_backward(dout, cache), xt.grad, record="avg pool dx")
    assert_grad("naive", bw.global_avg_pool_backward_naive(dout, cache), xt.grad, record="avg pool naive")


@given(seed=st.integers(0, 2**32 - 1), has_bias=st.booleans())
def test_linear_matches_torch(seed, has_bias):
    rng = np.random.default_rng(seed)
    n, fin, fout = rng.integers(1, 4), rng.integers(1, 40), rng.integers(1, 40)
    x, weight = rng.standard_normal((n, fin)), rng.standard_normal((fout, fin))
    bias = rng.standard_normal(fout) if has_bias else None
    out, cache = bw.linear_forward(x, weight, bias)
    dout = rng.standard_normal(out.shape)
    xt, wt, bt = t(x, True), t(weight, True), (None if bias is None else t(bias, True))
    ref = F.linear(xt, wt, bt)
    ref.backward(t(dout))
    refs = (xt.grad, wt.grad, None if bias is None else bt.grad)
    for impl in (bw.linear_backward, bw.linear_backward_naive):
        for name, ours, expected in zip(("dx", "dw", "db"), impl(dout, cache), refs):
            if expected is None:
                assert ours is None
            else:
                assert_grad(name, ours, expected, record=f"linear {name}")


# --------------------------------------------------------------------------------------------------
# dropout
# --------------------------------------------------------------------------------------------------

class ReplayGenerator(np.random.Generator):
    """A numpy Generator whose random() returns given uniforms: lets our dropout draw torch's own mask."""

    def __init__(self, uniforms):
        super().__init__(np.random.PCG64(0))
        self.uniforms = uniforms

    def random(self, size=None, dtype=np.float64, out=None):
        assert tuple(size) == self.uniforms.shape
        return self.uniforms


@pytest.mark.parametrize("channels_only", [False, True], ids=["dropout", "dropout2d"])
@given(seed=st.integers(0, 2**32 - 1), p=st.sampled_from([0.2, 0.5, 0.8, 0.999, 0.0, 1.0]))
def test_dropout_with_torchs_mask_matches_torch(channels_only, seed, p):
    """torch draws the mask; we read it off torch's output and replay it as uniforms (1 keeps, 0 drops):
    our forward and backward must then equal torch's (F.dropout / F.dropout2d) exactly."""
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 4)), int(rng.integers(1, 13)), int(rng.integers(1, 9)), int(rng.integers(1, 9)))
    x = rng.uniform(0.5, 2.0, shape) * rng.choice([-1, 1], shape)  # no zeros: the mask is readable
    torch.manual_seed(seed)
    xt = t(x, True)
    ref = (F.dropout2d if channels_only else F.dropout)(xt, p, training=True)
    dout = rng.standard_normal(shape)
    ref.backward(t(dout))
    kept = ref.detach().numpy() != 0
    if channels_only:
        assert (kept == kept[:, :, :1, :1]).all()
        kept = kept[:, :, :1, :1]
    forward, backward, naive = ((bw.dropout2d_forward, bw.dropout2d_backward, bw.dropout2d_backward_naive)
                                if channels_only else (bw.dropout_forward, bw.dropout_backward, bw.dropout_backward_naive))
    out, cache = forward(x, p, True, ReplayGenerator(kept.astype(np.float64)))
    np.testing.assert_array_equal(out, ref.detach().numpy())
    np.testing.assert_array_equal(backward(dout, cache), xt.grad.numpy())
    np.testing.assert_array_equal(naive(dout, cache), xt.grad.numpy())


def test_dropout_draws_from_the_generator():
    """Drop rate p, survivors scaled 1/(1-p), whole channels for dropout2d, identity in eval, same seed same mask."""
    x = np.ones((8, 64, 16, 16))
    out, cache = bw.dropout_forward(x, 0.8, True, np.random.default_rng(0))
    assert abs((out == 0).mean() - 0.8) < 0.01 and np.allclose(out[out != 0], 5.0)
    again, _ = bw.dropout_forward(x, 0.8, True, np.random.default_rng(0))
    np.testing.assert_array_equal(out, again)
    out2d, cache2d = bw.dropout2d_forward(x, 0.8, True, np.random.default_rng(1))
    assert cache2d["mask"].shape == (8, 64, 1, 1) and (out2d == out2d[:, :, :1, :1]).all()
    assert abs((cache2d["mask"] == 0).mean() - 0.8) < 0.06
    out_eval, cache_eval = bw.dropout_forward(x, 0.8, False, None)
    np.testing.assert_array_equal(out_eval, x)
    np.testing.assert_array_equal(bw.dropout_backward(x * 3, cache_eval), x * 3)
    out_all, cache_all = bw.dropout_forward(x, 1.0, True, None)
    assert not out_all.any() and not bw.dropout_backward(x, cache_all).any()
    with pytest.raises(ConfigError, match="p \\(drop probability\\)"):
        bw.dropout_forward(x, 1.5, True, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="rng must be a numpy.random.Generator"):
        bw.dropout2d_forward(x, 0.5, True, 0)


# --------------------------------------------------------------------------------------------------
# bilinear resizing, concatenation, residual add
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("align_corners", [False, True])
@given(seed=st.integers(0, 2**32 - 1))
def test_interpolate_matches_torch(align_corners, seed):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 4)), int(rng.integers(1, 6)), int(rng.integers(1, 13)), int(rng.integers(1, 13)))
    size = (int(rng.integers(1, 25)), int(rng.integers(1, 25)))
    x = rng.standard_normal(shape)
    out, cache = bw.interpolate_bilinear_forward(x, size, align_corners)
    dout = rng.standard_normal(out.shape)
    xt = t(x, True)
    ref = F.interpolate(xt, size=size, mode="bilinear", align_corners=align_corners)
    ref.backward(t(dout))
    assert_grad("out", out, ref, record="interpolate out")
    assert_grad("dx", bw.interpolate_bilinear_backward(dout, cache), xt.grad, record="interpolate dx")
    assert_grad("naive", bw.interpolate_bilinear_backward_naive(dout, cache), xt.grad, record="interpolate naive")


@given(seed=st.integers(0, 2**32 - 1))
def test_concat_and_add_match_torch(seed):
    rng = np.random.default_rng(seed)
    n, h, w = (int(v) for v in rng.integers(1, 6, 3))
    parts = [rng.standard_normal((n, int(c), h, w)) for c in rng.integers(1, 6, int(rng.integers(1, 4)))]
    out, cache = bw.concat_channels_forward(parts)
    dout = rng.standard_normal(out.shape)
    tensors = [t(p, True) for p in parts]
    ref = torch.cat(tensors, dim=1)
    ref.backward(t(dout))
    assert_grad("out", out, ref)
    for impl in (bw.concat_channels_backward, bw.concat_channels_backward_naive):
        grads = impl(dout, cache)
        assert len(grads) == len(parts)
        for g, tensor in zip(grads, tensors):
            np.testing.assert_array_equal(g, tensor.grad.numpy())

    a, b = parts[0], rng.standard_normal(parts[0].shape)
    out, cache = bw.add_forward(a, b)
    dout = rng.standard_normal(out.shape)
    at, bt = t(a, True), t(b, True)
    (at + bt).backward(t(dout))
    for impl in (bw.add_backward, bw.add_backward_naive):
        da, db = impl(dout, cache)
        np.testing.assert_array_equal(da, at.grad.numpy())
        np.testing.assert_array_equal(db, bt.grad.numpy())


# --------------------------------------------------------------------------------------------------
# finite differences, float32, bad input
# --------------------------------------------------------------------------------------------------

def numeric_gradient(f, array, dout, h=1e-6):
    """Central differences of L = sum(f() * dout) with respect to every entry of `array` (changed in place)."""
    grad = np.zeros_like(array)
    for k in np.ndindex(array.shape):
        old = array[k]
        array[k] = old + h
        plus = float((f() * dout).sum())
        array[k] = old - h
        minus = float((f() * dout).sum())
        array[k] = old
        grad[k] = (plus - minus) / (2 * h)
    return grad




FD_CASES = {
    "conv2d": (lambda r: [r.standard_normal((2, 2, 5, 4)), r.standard_normal((3, 2, 3, 2)), r.standard_normal(3)],
               lambda a: bw.conv2d_forward(*a, stride=(2, 1), padding="tf_same", dilation=(1, 2)), bw.conv2d_backward),
    "depthwise": (lambda r: [r.standard_normal((2, 3, 5, 5)), r.standard_normal((3, 1, 3, 3)), r.standard_normal(3)],
                  lambda a: bw.depthwise_conv2d_forward(*a, stride=2, padding=1, dilation=2), bw.depthwise_conv2d_backward),
    "pointwise": (lambda r: [r.standard_normal((2, 3, 3, 4)), r.standard_normal((2, 3, 1, 1)), r.standard_normal(2)],
                  lambda a: bw.pointwise_conv2d_forward(*a, stride=2, padding=(1, 0)), bw.pointwise_conv2d_backward),
    "batch_norm_train": (lambda r: [r.standard_normal((2, 3, 2, 3)), r.standard_normal(3), r.standard_normal(3)],
                         lambda a: bw.batch_norm_train_forward(*a, 1e-3), bw.batch_norm_train_backward),
    "batch_norm_eval": (lambda r: [r.standard_normal((2, 3, 2, 2)), r.standard_normal(3), r.standard_normal(3)],
                        lambda a: bw.batch_norm_eval_forward(a[0], np.array([0.1, -0.2, 0.3]), np.array([0.5, 1.0, 2.0]),
                                                             a[1], a[2], 1e-3), bw.batch_norm_eval_backward),
    "linear": (lambda r: [r.standard_normal((3, 4)), r.standard_normal((2, 4)), r.standard_normal(2)],
               lambda a: bw.linear_forward(*a), bw.linear_backward),
    "avg_pool": (lambda r: [r.standard_normal((2, 3, 3, 2))], lambda a: bw.global_avg_pool_forward(*a),
                 lambda d, c: (bw.global_avg_pool_backward(d, c),)),
    "interpolate": (lambda r: [r.standard_normal((1, 2, 3, 4))],
                    lambda a: bw.interpolate_bilinear_forward(a[0], (5, 3), False),
                    lambda d, c: (bw.interpolate_bilinear_backward(d, c),)),
    "relu6": (lambda r: [r.uniform(0.5, 5.5, (2, 3)) * r.choice([-1, 1], (2, 3)) + np.array([0, 0, 6.0])],
              lambda a: bw.relu6_forward(*a), lambda d, c: (bw.relu6_backward(d, c),)),
}


@pytest.mark.parametrize("name", list(FD_CASES))
def test_finite_differences(name):
    """max |analytic - numeric| < 1e-7 max |numeric| for every input (float64, h = 1e-6: truncation ~h^2, rounding
    ~1e-16 |L| / h ~ 1e-9; random dout; ReLU6 kept away from its kinks)."""
    make, forward, backward = FD_CASES[name]
    rng = np.random.default_rng(4)
    arrays = make(rng)
    out, cache = forward(arrays)
    dout = rng.standard_normal(out.shape)
    grads = backward(dout, cache)
    for k, (array, grad) in enumerate(zip(arrays, grads)):
        numeric = numeric_gradient(lambda: forward(arrays)[0], array, dout)
        error = rel_error(grad, numeric)
        WORST[f"finite differences {name}"] = max(WORST[f"finite differences {name}"], error)
        assert error < 1e-7, f"{name} input {k}: rel_error {error:.3g}"


def test_float32_in_float32_out_close_to_float64():
    rng = np.random.default_rng(5)
    x, weight, bias = rng.standard_normal((2, 6, 9, 9)), rng.standard_normal((6, 1, 3, 3)), rng.standard_normal(6)
    gamma, beta = rng.standard_normal(6), rng.standard_normal(6)
    dout64 = rng.standard_normal((2, 6, 11, 7))
    results = {}
    for dtype in (np.float32, np.float64):
        out, c1 = bw.depthwise_conv2d_forward(x.astype(dtype), weight.astype(dtype), bias.astype(dtype), 2, "tf_same")
        out, c2 = bw.batch_norm_train_forward(out, gamma.astype(dtype), beta.astype(dtype), 1e-3)
        out, c3 = bw.interpolate_bilinear_forward(out, (11, 7), False)
        dout = dout64.astype(dtype)
        d, dgamma, dbeta = bw.batch_norm_train_backward(bw.interpolate_bilinear_backward(dout, c3), c2)
        dx, dw, db = bw.depthwise_conv2d_backward(d, c1)
        results[dtype] = (out, dx, dw, db, dgamma, dbeta)
        summed_terms = float(np.abs(d).sum(axis=(0, 2, 3)).max())
    # The conv bias feeds a train-mode BatchNorm, which subtracts it again: db is structurally 0 (rounding
    # noise in both dtypes), so it is compared relative to the size of the terms it sums.
    floors = (0.0, 0.0, 0.0, summed_terms, 0.0, 0.0)
    for ours, truth, floor in zip(results[np.float32], results[np.float64], floors):
        assert ours.dtype == np.float32
        error = rel_error(ours, truth, floor)
        WORST["float32 vs float64"] = max(WORST["float32 vs float64"], error)
        assert error < RTOL32


def test_bad_input_raises_shape_error_naming_the_op():
    x, weight = np.zeros((1, 2, 5, 5)), np.zeros((3, 2, 3, 3))
    out, cache = bw.conv2d_forward(x, weight)
    with pytest.raises(ShapeError, match="conv2d_backward: dout has shape"):
        bw.conv2d_backward(np.zeros((1, 3, 4, 4)), cache)
    with pytest.raises(ShapeError, match="depthwise_conv2d_forward: weight must have shape"):
        bw.depthwise_conv2d_forward(x, weight)
    with pytest.raises(ShapeError, match="pointwise_conv2d_forward: weight must be 1x1"):
        bw.pointwise_conv2d_forward(x, weight)
    with pytest.raises(ShapeError, match="conv2d_forward: output would be empty"):
        bw.conv2d_forward(x, np.zeros((3, 2, 6, 6)))
    with pytest.raises(ShapeError, match="padding must be"):
        bw.conv2d_forward(x, weight, padding="SAME")
    with pytest.raises(ShapeError, match="batch_norm_train_forward: weight has shape"):
        bw.batch_norm_train_forward(x, np.ones(3), np.zeros(2), 1e-3)
    with pytest.raises(ShapeError, match="concat_channels_forward: arrays\\[1\\]"):
        bw.concat_channels_forward([x, np.zeros((1, 2, 4, 5))])
