"""mobilenet_np.training.channels_last: the fast training kernels equal the readable ones of backward.py.

backward.py's pairs are proven against torch.autograd, finite differences and their loop twins
(test_backward.py); here every channels-last kernel runs on the same inputs, transposed to (N, H, W, C),
and its outputs and gradients, transposed back, must equal the readable kernel's:

* hypothesis draws convolutions (general, depthwise, pointwise; strides, dilations, symmetric, "valid" and
  TF "SAME" padding, with and without bias), BatchNorm in train and eval mode, activations with values at
  their kinks, pooling, channel dropout with the same generator, bilinear resizing and concatenation;
* fixed larger shapes make the kernels walk several blocks (several whole images per block, several
  blocks of rows within one image, a block boundary inside a tap's window, strides and dilations);
* BatchNorm fused with its activation against the two readable kernels one after the other;
* whole networks (V1, V2, DeepLab) in train mode with dropout, eval mode, hidden states, `record` and
  the input's gradient: graph.forward(channels_last=True) against channels_last=False, with and
  without `record` (without it, each train-mode BatchNorm runs fused with its activation).

Tolerance (float64): max |fast - readable| <= 1e-12 * max |readable| per tensor for single kernels (both
add the same products in other orders; measured ~1e-15), 1e-9 for whole networks (train-mode BatchNorm on
2x2 maps amplifies round-off, as in test_training.py). Activations, masks and pooling of exact values are
compared bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mobilenet_np
from mobilenet_np.layers import no_record
from mobilenet_np.training import backward as bw
from mobilenet_np.training import channels_last as cl
from mobilenet_np.training import graph

from test_backward import bn_cases, conv_cases

RTOL = 1e-12
RTOL_NETWORK = 1e-9

CONV = {"general": ("conv2d_forward", "conv2d_backward"),
        "depthwise": ("depthwise_conv2d_forward", "depthwise_conv2d_backward"),
        "pointwise": ("pointwise_conv2d_forward", "pointwise_conv2d_backward")}


def nhwc(a):
    return np.ascontiguousarray(np.asarray(a).transpose(0, 2, 3, 1))


def nchw(a):
    return np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2))


def assert_close(name, actual, expected, rtol=RTOL):
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1e-300)
    error = float(np.max(np.abs(actual - expected), initial=0.0))
    assert error <= rtol * scale, f"{name}: relative error {error / scale:.3g} > {rtol:g}"


def check_conv(kind, x, weight, bias, kwargs, seed=0):
    """Run both kernels of `kind` on x (NCHW) and compare out, dx, dw, db."""
    forward, backward = CONV[kind]
    out, cache = getattr(bw, forward)(x, weight, bias, **kwargs)
    fast_out, fast_cache = getattr(cl, forward)(nhwc(x), weight, bias, **kwargs)
    assert_close("out", nchw(fast_out), out)
    dout = np.random.default_rng(seed).standard_normal(out.shape)
    expected = getattr(bw, backward)(dout, cache)
    actual = getattr(cl, backward)(nhwc(dout), fast_cache)
    assert_close("dx", nchw(actual[0]), expected[0])
    assert_close("dw", actual[1], expected[1])
    assert (actual[2] is None) == (expected[2] is None)
    if expected[2] is not None:
        assert_close("db", actual[2], expected[2])


@pytest.mark.parametrize("kind", list(CONV))
@given(data=st.data())
def test_conv_equals_the_readable_kernel(kind, data):
    x, weight, bias, kwargs = data.draw(conv_cases(kind))
    check_conv(kind, x, weight, bias, kwargs)


BLOCKED = [  # (N, C, H, W), kernel, stride, padding, dilation: outputs larger than one block (cl.BLOCK values)
    ((3, 8, 20, 20), 3, 1, "tf_same", 1),     # several whole images per block
    ((2, 16, 70, 70), 3, 1, 1, 1),            # three blocks of rows per image
    ((1, 24, 90, 90), 3, 2, "tf_same", 1),    # stride 2, asymmetric pad, a boundary at output row 30
    ((2, 16, 64, 64), 3, 1, 2, 2),            # dilation 2 (DeepLab's backbone at output stride 8)
    ((1, 12, 67, 71), 5, (2, 1), "valid", (1, 2)),
]


@pytest.mark.parametrize("shape, k, stride, padding, dilation", BLOCKED)
def test_depthwise_walks_blocks_like_one_pass(shape, k, stride, padding, dilation):
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape)
    weight = rng.standard_normal((shape[1], 1, k, k))
    check_conv("depthwise", x, weight, rng.standard_normal(shape[1]),
               dict(stride=stride, padding=padding, dilation=dilation))


@given(bn_cases(size=40), st.booleans())
def test_batch_norm_equals_the_readable_kernel(case, training):
    """Train mode (statistics, running-statistics inputs, gradients) and eval mode; up to 40x40 maps so
    that the (M, C) passes cross block boundaries."""
    x, gamma, beta, eps, rng = case
    dout = rng.standard_normal(x.shape)
    if training:
        out, cache = bw.batch_norm_train_forward(x, gamma, beta, eps)
        fast_out, fast_cache = cl.batch_norm_train_forward(nhwc(x), gamma, beta, eps)
        for key in ("mean", "var", "var_unbiased", "rstd"):
            assert_close(key, fast_cache[key], cache[key])
        expected = bw.batch_norm_train_backward(dout, cache)
        actual = cl.batch_norm_train_backward(nhwc(dout), fast_cache)
    else:
        mean, var = rng.standard_normal(x.shape[1]), rng.uniform(0.1, 3.0, x.shape[1])
        out, cache = bw.batch_norm_eval_forward(x, mean, var, gamma, beta, eps)
        fast_out, fast_cache = cl.batch_norm_eval_forward(nhwc(x), mean, var, gamma, beta, eps)
        expected = bw.batch_norm_eval_backward(dout, cache)
        actual = cl.batch_norm_eval_backward(nhwc(dout), fast_cache)
    assert_close("out", nchw(fast_out), out)
    assert_close("dx", nchw(actual[0]), expected[0])
    assert_close("dgamma", actual[1], expected[1])
    assert_close("dbeta", actual[2], expected[2])


@pytest.mark.parametrize("activation", ["relu", "relu6"])
@given(case=bn_cases(size=40))
def test_batch_norm_fused_with_its_activation_equals_the_two_readable_kernels(activation, case):
    """BatchNorm then ReLU/ReLU6 (train mode), fused: the same output and gradients as the readable pairs.
    The inputs are scaled so that many outputs are clipped at 0 and at 6."""
    x, gamma, beta, eps, rng = case
    gamma, beta = gamma * 4, beta * 3
    dout = rng.standard_normal(x.shape)
    out, bn_cache = bw.batch_norm_train_forward(x, gamma, beta, eps)
    y, act_cache = getattr(bw, f"{activation}_forward")(out)
    dz = getattr(bw, f"{activation}_backward")(dout, act_cache)
    expected = bw.batch_norm_train_backward(dz, bn_cache)
    fast_y, cache = cl.batch_norm_train_forward(nhwc(x), gamma, beta, eps, activation=activation)
    assert_close("out", nchw(fast_y), y)
    actual = cl.batch_norm_train_backward(nhwc(dout), cache)
    assert_close("dx", nchw(actual[0]), expected[0])
    assert_close("dgamma", actual[1], expected[1])
    assert_close("dbeta", actual[2], expected[2])


@pytest.mark.parametrize("name", ["relu", "relu6"])
@given(seed=st.integers(0, 2**32 - 1), big=st.booleans())
def test_activations_equal_the_readable_kernel_bit_for_bit_at_the_kinks(name, seed, big):
    rng = np.random.default_rng(seed)
    shape = (2, 8, 48, 48) if big else tuple(int(v) for v in rng.integers(1, 6, size=4))
    x = rng.uniform(-8, 8, shape)
    at_kinks = rng.random(shape) < 0.3
    x[at_kinks] = rng.choice([0.0, -0.0, 6.0, 6.0 + 1e-15, 6.0 - 1e-15, 1e-300], size=int(at_kinks.sum()))
    dout = rng.standard_normal(shape)
    out, cache = getattr(bw, f"{name}_forward")(x)
    fast_out, fast_cache = getattr(cl, f"{name}_forward")(nhwc(x))
    np.testing.assert_array_equal(nchw(fast_out), out)
    np.testing.assert_array_equal(nchw(getattr(cl, f"{name}_backward")(nhwc(dout), fast_cache)),
                                  getattr(bw, f"{name}_backward")(dout, cache))


def test_activation_overwrites_its_input_as_documented():
    x = nhwc(np.linspace(-3, 9, 24).reshape(1, 2, 3, 4))
    y, _ = cl.relu6_forward(x)
    assert y is x and x.min() == 0 and x.max() == 6


@given(seed=st.integers(0, 2**32 - 1), p=st.sampled_from([0.0, 0.3, 0.8, 1.0]), training=st.booleans())
def test_pool_dropout_resize_concat_equal_the_readable_kernels(seed, p, training):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 4)), int(rng.integers(1, 9)), int(rng.integers(1, 10)), int(rng.integers(1, 10)))
    x = rng.standard_normal(shape)
    dout = rng.standard_normal(shape)

    pooled, cache = bw.global_avg_pool_forward(x)
    fast_pooled, fast_cache = cl.global_avg_pool_forward(nhwc(x))
    assert_close("pool", nchw(fast_pooled), pooled)
    dpool = rng.standard_normal(pooled.shape)
    assert_close("pool dx", nchw(cl.global_avg_pool_backward(nhwc(dpool), fast_cache)),
                 bw.global_avg_pool_backward(dpool, cache))

    out, cache = bw.dropout2d_forward(x, p, training, np.random.default_rng(seed))
    fast_out, fast_cache = cl.dropout2d_forward(nhwc(x), p, training, np.random.default_rng(seed))
    np.testing.assert_array_equal(nchw(fast_out), out)                 # the same draws, the same mask
    np.testing.assert_array_equal(nchw(cl.dropout2d_backward(nhwc(dout), fast_cache)),
                                  bw.dropout2d_backward(dout, cache))

    size = (int(rng.integers(1, 20)), int(rng.integers(1, 20)))
    for corners in (False, True):
        out, cache = bw.interpolate_bilinear_forward(x, size, corners)
        fast_out, fast_cache = cl.interpolate_bilinear_forward(nhwc(x), size, corners)
        assert_close("resize", nchw(fast_out), out)
        d = rng.standard_normal(out.shape)
        assert_close("resize dx", nchw(cl.interpolate_bilinear_backward(nhwc(d), fast_cache)),
                     bw.interpolate_bilinear_backward(d, cache))

    other = rng.standard_normal((shape[0], 3) + shape[2:])
    out, cache = bw.concat_channels_forward([x, other])
    fast_out, fast_cache = cl.concat_channels_forward([nhwc(x), nhwc(other)])
    np.testing.assert_array_equal(nchw(fast_out), out)
    d = rng.standard_normal(out.shape)
    for fast, slow in zip(cl.concat_channels_backward(nhwc(d), fast_cache), bw.concat_channels_backward(d, cache)):
        np.testing.assert_array_equal(nchw(fast), slow)


# --------------------------------------------------------------------------------------------------
# whole networks: graph.forward(channels_last=True) against the readable path
# --------------------------------------------------------------------------------------------------

def network(architecture, **config):
    cls = getattr(mobilenet_np, architecture)
    config = {"depth_multiplier": 0.35, "num_labels": 5, "classifier_dropout_prob": 0.3, **config}
    return cls(cls.config_class(**config), seed=3).astype(np.float64)


def run(model, x, channels_last, training, doutput_seed=5, record=True):
    """(result, grads incl. the input's, recorded tensors, params after) of one forward + backward.
    Without `record` the channels-last path fuses each BatchNorm with its activation."""
    model.train(training, seed=11)
    recorded = {}
    result, tape = graph.forward(model.graph(), model.params, x, model.mode, hidden_states=True,
                                 record=(lambda name, t: recorded.__setitem__(name, t)) if record else no_record,
                                 channels_last=channels_last)
    output = result["logits"] if result["logits"] is not None else result["last"]
    grads = graph.backward(tape, np.random.default_rng(doutput_seed).standard_normal(output.shape), True)
    return result, grads, recorded, {k: np.array(v) for k, v in model.params.items()}


@settings(max_examples=12, deadline=None)
@given(architecture=st.sampled_from(["MobileNetV1ForImageClassification", "MobileNetV2ForImageClassification",
                                     "MobileNetV2ForSemanticSegmentation"]),
       size=st.tuples(st.integers(33, 48), st.integers(33, 48)), training=st.booleans(),
       tf_padding=st.booleans(), output_stride=st.sampled_from([8, 16, 32]))
def test_networks_equal_the_readable_path(architecture, size, training, tf_padding, output_stride):
    config = {"tf_padding": tf_padding}
    if architecture != "MobileNetV1ForImageClassification":
        config["output_stride"] = 16 if "Segmentation" in architecture and output_stride == 32 else output_stride
    x = np.random.default_rng(size[0]).standard_normal((3, 3, *size))
    readable = run(network(architecture, **config), x, False, training)
    fused = run(network(architecture, **config), x, True, training, record=False)
    fast = run(network(architecture, **config), x, True, training)
    compare_runs(fused, readable, recorded=False)
    compare_runs(fast, readable, recorded=True)


def compare_runs(fast, readable, recorded):
    for key in ("last", "pooled", "logits"):
        if readable[0][key] is None:
            assert fast[0][key] is None
        else:
            assert_close(key, fast[0][key], readable[0][key], RTOL_NETWORK)
    assert len(fast[0]["hidden_states"]) == len(readable[0]["hidden_states"])
    for k, (a, b) in enumerate(zip(fast[0]["hidden_states"], readable[0]["hidden_states"])):
        assert_close(f"hidden_states[{k}]", a, b, RTOL_NETWORK)
    assert fast[1].keys() == readable[1].keys()
    largest = max(float(np.max(np.abs(g))) for g in readable[1].values())
    for name, g in readable[1].items():                 # structurally-zero gradients: a floor, as test_training
        error = float(np.max(np.abs(fast[1][name] - g)))
        assert error <= max(RTOL_NETWORK * float(np.max(np.abs(g))), 1e-12 * largest), name
    if recorded:
        assert fast[2].keys() == readable[2].keys()
        for name, t in readable[2].items():
            assert_close(f"record {name}", fast[2][name], t, RTOL_NETWORK)
    for name, value in readable[3].items():             # running statistics, num_batches_tracked
        assert_close(f"param {name}", fast[3][name], value, RTOL_NETWORK)


def test_float32_forward_is_as_accurate_as_the_readable_one():
    """float32 against the float64 truth, MobileNetV2 0.35 at 32x32, batch 64, train mode (the Fashion-MNIST
    setting): every recorded tensor within 3x the readable path's error (its sums are float64; here BLAS
    sums float32), plus 1e-6 of the tensor's scale. Measured: the readable path 3e-7 .. 1.9e-5, this one
    at most 1.9x that. (Gradients in float32: test_training.py, both paths. Whole-network float32
    gradients cannot be compared tightly: a ReLU6 input within rounding of 0 or 6 falls on either side --
    on this batch, 3 of conv_1x1's 81 920 inputs do for the fast path, none for the readable one, and
    those 3 move conv_1x1's weight gradient by 8 %.)"""
    x = np.random.default_rng(1).uniform(-1, 1, (64, 3, 32, 32))
    records = {}
    for key, dtype, fast in (("truth", np.float64, False), ("readable", np.float32, False), ("fast", np.float32, True)):
        model = network("MobileNetV2ForImageClassification", classifier_dropout_prob=0.0, num_labels=10)
        model = model.astype(dtype).train(seed=0)
        records[key] = {}
        graph.forward(model.graph(), model.params, x.astype(dtype), model.mode,
                      record=lambda name, t, r=records[key]: r.__setitem__(name, t), channels_last=fast)
    assert records["fast"].keys() == records["truth"].keys()
    for name, truth in records["truth"].items():
        scale = float(np.max(np.abs(truth)))
        fast, readable = (float(np.max(np.abs(records[k][name] - truth))) / scale for k in ("fast", "readable"))
        assert records["fast"][name].dtype == np.float32
        assert fast <= 3 * readable + 1e-6, (name, fast, readable)


def test_the_default_record_is_not_called_and_inputs_are_not_modified():
    model = network("MobileNetV2ForImageClassification").train(seed=0)
    x = np.random.default_rng(0).standard_normal((2, 3, 40, 40))
    before = x.copy()
    result, tape = graph.forward(model.graph(), model.params, x, model.mode, record=no_record, channels_last=True)
    graph.backward(tape, np.ones_like(result["logits"]))
    np.testing.assert_array_equal(x, before)
