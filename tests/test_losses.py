"""mobilenet_np.training.losses: every loss and d loss / d logits equal PyTorch's (and transformers' code paths).

* cross-entropy / MSE / BCE-with-logits against F.cross_entropy / F.mse_loss /
  F.binary_cross_entropy_with_logits on hypothesis shapes, float64, gradients by torch.autograd with a random
  upstream scalar (the loss times g: never 1);
* the classification dispatch against transformers' own `ForSequenceClassificationLoss` (problem type,
  stickiness, the dtypes torch rejects) and the segmentation loss against the inline code of
  `MobileNetV2ForSemanticSegmentation` (interpolate align_corners=False + CrossEntropyLoss(ignore 255)),
  also through a real (tiny, random) transformers model;
* naive twins, float32, errors.

Tolerance: RTOL64 = 1e-10 of the value's scale (max |reference|), as in test_backward.py.
"""

from __future__ import annotations

import types
from collections import defaultdict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from transformers.loss.loss_utils import ForSequenceClassificationLoss

from mobilenet_np.errors import ConfigError, ShapeError
from mobilenet_np.training import losses

RTOL64 = 1e-10
RTOL32 = 1e-5
WORST: dict[str, float] = defaultdict(float)


@pytest.fixture(autouse=True, scope="module")
def print_worst_errors():
    yield
    print("\nworst relative errors (test_losses):")
    for name, value in sorted(WORST.items()):
        print(f"  {name:40s} {value:.2e}")


def t(a, grad=False):
    return torch.tensor(np.asarray(a)).requires_grad_(grad)


def check(name, actual, expected, rtol=RTOL64):
    actual = np.asarray(actual, dtype=np.float64)
    expected = expected.detach().numpy() if isinstance(expected, torch.Tensor) else np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    if np.isnan(expected).any() or np.isnan(actual).any():
        np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), err_msg=name)
        actual, expected = np.nan_to_num(actual), np.nan_to_num(expected)
    scale = max(float(np.abs(expected).max(initial=0.0)), 1e-300)
    error = float(np.abs(actual - expected).max(initial=0.0)) / scale
    WORST[name] = max(WORST[name], error)
    assert error <= rtol, f"{name}: relative error {error:.3g} > {rtol:g}"


def torch_loss_and_grad(function, logits, *args, upstream=1.0, **kwargs):
    """The torch loss and upstream * d loss / d logits."""
    z = t(logits, True)
    loss = function(z, *args, **kwargs)
    loss.backward(torch.tensor(upstream, dtype=loss.dtype))
    return loss, z.grad


# --------------------------------------------------------------------------------------------------
# cross-entropy, MSE, BCE
# --------------------------------------------------------------------------------------------------

@st.composite
def ce_cases(draw, max_classes=12, max_batch=3, max_size=6):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n, c = draw(st.integers(1, max_batch)), draw(st.integers(1, max_classes))
    spatial = tuple(draw(st.lists(st.integers(1, max_size), max_size=2)))
    ignore_index = draw(st.sampled_from([-100, 255, 0]))
    scale = draw(st.sampled_from([1.0, 100.0]))  # 100: exp overflows unless the maximum is subtracted
    logits = rng.standard_normal((n, c) + spatial) * scale
    labels = rng.integers(0, c, (n,) + spatial)
    labels[rng.random(labels.shape) < draw(st.sampled_from([0.0, 0.3, 1.0]))] = ignore_index
    return logits, labels, ignore_index, float(rng.standard_normal())


@given(ce_cases())
def test_cross_entropy_matches_torch(case):
    logits, labels, ignore_index, g = case
    loss, dlogits = losses.cross_entropy(logits, labels, ignore_index)
    ref, ref_grad = torch_loss_and_grad(F.cross_entropy, logits, t(labels), ignore_index=ignore_index, upstream=g)
    assert isinstance(loss, np.float64) and dlogits.dtype == np.float64
    check("cross_entropy loss", loss, ref)
    check("cross_entropy dlogits", g * dlogits, ref_grad)


@given(ce_cases(max_classes=5, max_batch=2, max_size=3))
def test_cross_entropy_naive_matches_fast(case):
    logits, labels, ignore_index, _ = case
    loss, dlogits = losses.cross_entropy(logits, labels, ignore_index)
    loss_naive, dlogits_naive = losses.cross_entropy_naive(logits, labels, ignore_index)
    check("cross_entropy naive loss", loss_naive, loss, 1e-12)
    check("cross_entropy naive dlogits", dlogits_naive, dlogits, 1e-12)


def test_cross_entropy_all_ignored_is_nan_with_zero_gradient_like_torch():
    logits, labels = np.random.default_rng(0).standard_normal((3, 4)), np.full(3, -100)
    loss, dlogits = losses.cross_entropy(logits, labels)
    ref, ref_grad = torch_loss_and_grad(F.cross_entropy, logits, t(labels))
    assert np.isnan(loss) and torch.isnan(ref)
    assert not dlogits.any() and not ref_grad.any()
    assert np.isnan(losses.cross_entropy_naive(logits, labels)[0])


def test_cross_entropy_label_out_of_range_raises():
    logits, labels = np.zeros((3, 4)), np.array([1, 7, -100])
    with pytest.raises(IndexError, match="Target 7 is out of bounds"):
        F.cross_entropy(t(logits), t(labels))
    with pytest.raises(ShapeError, match=r"cross_entropy: labels\[1\] = 7 is outside \[0, 4\)"):
        losses.cross_entropy(logits, labels)
    with pytest.raises(ShapeError, match="must hold integer class ids"):
        losses.cross_entropy(logits, labels.astype(float))
    with pytest.raises(ShapeError, match=r"labels \(2,\) must have shape \(3,\)"):
        losses.cross_entropy(logits, labels[:2])


@st.composite
def elementwise_cases(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = tuple(draw(st.lists(st.integers(1, 12), min_size=1, max_size=3)))
    scale = draw(st.sampled_from([1.0, 50.0, 800.0]))  # 800: exp(800) overflows a float64
    return rng.standard_normal(shape) * scale, rng, float(rng.standard_normal())


@given(elementwise_cases())
def test_mse_matches_torch(case):
    logits, rng, g = case
    labels = rng.standard_normal(logits.shape)
    loss, dlogits = losses.mse_loss(logits, labels)
    ref, ref_grad = torch_loss_and_grad(F.mse_loss, logits, t(labels), upstream=g)
    check("mse loss", loss, ref)
    check("mse dlogits", g * dlogits, ref_grad)
    loss_naive, dlogits_naive = losses.mse_loss_naive(logits, labels)
    check("mse naive", loss_naive, loss, 1e-12)
    check("mse naive", dlogits_naive, dlogits, 1e-12)


@given(elementwise_cases())
def test_bce_with_logits_matches_torch(case):
    logits, rng, g = case
    labels = rng.random(logits.shape) if rng.random() < 0.5 else (rng.random(logits.shape) < 0.5).astype(float)
    loss, dlogits = losses.bce_with_logits(logits, labels)
    ref, ref_grad = torch_loss_and_grad(F.binary_cross_entropy_with_logits, logits, t(labels), upstream=g)
    assert np.isfinite(loss)
    check("bce loss", loss, ref)
    check("bce dlogits", g * dlogits, ref_grad)
    loss_naive, dlogits_naive = losses.bce_with_logits_naive(logits, labels)
    check("bce naive", loss_naive, loss, 1e-12)
    check("bce naive", dlogits_naive, dlogits, 1e-12)


# --------------------------------------------------------------------------------------------------
# transformers' classification loss
# --------------------------------------------------------------------------------------------------

NP_TO_TORCH = {np.int64: torch.long, np.int32: torch.int, np.uint8: torch.uint8, np.int16: torch.int16,
               np.float64: torch.float64, np.float32: torch.float32}


def transformers_loss(logits, labels, config):
    """transformers' ForSequenceClassificationLoss on float64 logits: (loss, dlogits) or the exception."""
    z = t(logits, True)
    try:
        loss = ForSequenceClassificationLoss(t(labels), z, config)
        loss.backward()
    except (RuntimeError, ValueError, IndexError) as error:
        return error
    return loss, z.grad


def ours(logits, labels, problem_type):
    """Our two steps: (problem_type, loss, dlogits), or (problem_type, the exception). When the inference
    itself refuses (int32 ids), the problem type is read from its message."""
    try:
        problem_type = losses.infer_problem_type(logits.shape[-1], labels.dtype, problem_type)
    except (ShapeError, ConfigError) as error:
        named = [name for name in losses.PROBLEM_TYPES if name in str(error)]
        return (named[0] if named else None), error
    try:
        return (problem_type,) + losses.classification_loss(logits, labels, problem_type)
    except (ShapeError, ConfigError) as error:
        return problem_type, error


RNG = np.random.default_rng(7)
CLASSIFICATION_CASES = {  # name: (num_labels, labels, initial problem_type, expected problem_type, raises)
    "1 label, float": (1, RNG.standard_normal(3), None, "regression", False),
    "1 label, int64 -> still regression": (1, np.array([1, 0, 2]), None, "regression", False),
    "1 label, (N, 1) labels": (1, RNG.standard_normal((3, 1)), None, "regression", False),
    "4 labels, int64": (4, np.array([1, 0, 3]), None, "single_label_classification", False),
    "4 labels, int64 with -100": (4, np.array([1, -100, 3]), None, "single_label_classification", False),
    "4 labels, int32: torch raises": (4, np.array([1, 0, 3], np.int32), None, "single_label_classification", True),
    "4 labels, float multi-hot": (4, (RNG.random((3, 4)) < 0.5).astype(float), None, "multi_label_classification", False),
    "4 labels, uint8 ids -> multi-label shape error": (4, np.array([1, 0, 3], np.uint8), None,
                                                       "multi_label_classification", True),
    "4 labels, int16 ids -> multi-label shape error": (4, np.array([1, 0, 3], np.int16), None,
                                                       "multi_label_classification", True),
    "4 labels, uint8 multi-hot: BCE rejects the dtype": (4, (RNG.random((3, 4)) < 0.5).astype(np.uint8), None,
                                                         "multi_label_classification", True),
    "sticky multi-label, then int64 ids": (4, np.array([1, 0, 3]), "multi_label_classification",
                                           "multi_label_classification", True),
    "explicit single-label, uint8 ids (Byte is accepted)": (4, np.array([1, 0, 3], np.uint8),
                                                            "single_label_classification", "single_label_classification",
                                                            False),
    "explicit regression, 4 labels": (4, RNG.standard_normal((3, 4)), "regression", "regression", False),
    "4 labels, int64 label 7: out of bounds": (4, np.array([1, 7, 3]), None, "single_label_classification", True),
}


@pytest.mark.parametrize("name", list(CLASSIFICATION_CASES))
def test_classification_loss_matches_transformers(name):
    num_labels, labels, initial, expected_type, raises = CLASSIFICATION_CASES[name]
    logits = np.random.default_rng(8).standard_normal((3, num_labels))
    config = types.SimpleNamespace(num_labels=num_labels, problem_type=initial)
    reference = transformers_loss(logits, labels, config)
    result = ours(logits, labels, initial)
    assert config.problem_type == expected_type == result[0]
    if raises:
        assert isinstance(reference, Exception), f"transformers did not raise: {reference}"
        assert isinstance(result[1], (ShapeError, ConfigError)), f"we did not raise: {result}"
        assert "labels" in str(result[1])
    else:
        assert not isinstance(reference, Exception), reference
        assert not isinstance(result[1], Exception), result[1]
        check("classification loss", result[1], reference[0])
        check("classification dlogits", result[2], reference[1])


def test_infer_problem_type_rejects_bad_config():
    with pytest.raises(ConfigError, match="problem_type must be None or one of"):
        losses.infer_problem_type(4, np.int64, "single_label")
    with pytest.raises(ConfigError, match="num_labels must be an int >= 0"):
        losses.infer_problem_type(-1, np.int64, None)
    with pytest.raises(ConfigError, match="resolve None with infer_problem_type"):
        losses.classification_loss(np.zeros((2, 3)), np.zeros(2, np.int64), None)
    assert losses.infer_problem_type(0, np.int64, None) == "multi_label_classification"  # as transformers


# --------------------------------------------------------------------------------------------------
# segmentation loss
# --------------------------------------------------------------------------------------------------

def transformers_segmentation_loss(logits, labels, ignore_index):
    """The inline code of MobileNetV2ForSemanticSegmentation.forward."""
    upsampled = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return torch.nn.CrossEntropyLoss(ignore_index=ignore_index)(upsampled, labels)


@st.composite
def segmentation_cases(draw, max_size=12, max_label_size=40):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n, c = draw(st.integers(1, 3)), draw(st.integers(2, 12))
    h, w = draw(st.integers(1, max_size)), draw(st.integers(1, max_size))
    big_h, big_w = draw(st.integers(1, max_label_size)), draw(st.integers(1, max_label_size))
    ignore_index = draw(st.sampled_from([255, -100, 0]))
    logits = rng.standard_normal((n, c, h, w)) * draw(st.sampled_from([1.0, 30.0]))
    labels = rng.integers(0, c, (n, big_h, big_w))
    labels[rng.random(labels.shape) < draw(st.sampled_from([0.0, 0.2, 1.0]))] = ignore_index
    return logits, labels, ignore_index, float(rng.standard_normal())


@given(segmentation_cases())
def test_segmentation_loss_matches_transformers_code(case):
    logits, labels, ignore_index, g = case
    loss, dlogits = losses.segmentation_loss(logits, labels, ignore_index)
    ref, ref_grad = torch_loss_and_grad(transformers_segmentation_loss, logits, t(labels), ignore_index,
                                        upstream=g)
    assert dlogits.shape == logits.shape
    check("segmentation loss", loss, ref)
    check("segmentation dlogits", g * dlogits, ref_grad)


@given(segmentation_cases(max_size=4, max_label_size=7))
def test_segmentation_loss_naive_matches_fast(case):
    logits, labels, ignore_index, _ = case
    loss, dlogits = losses.segmentation_loss(logits, labels, ignore_index)
    loss_naive, dlogits_naive = losses.segmentation_loss_naive(logits, labels, ignore_index)
    check("segmentation naive loss", loss_naive, loss, 1e-12)
    check("segmentation naive dlogits", dlogits_naive, dlogits, 1e-12)


def test_segmentation_loss_through_a_transformers_model():
    """A tiny random MobileNetV2ForSemanticSegmentation (float64, eval) computes its loss from its logits;
    ours, from the same logits and labels (37x50, some 255), gives the same loss and d loss / d logits."""
    transformers = pytest.importorskip("transformers")
    config = transformers.MobileNetV2Config(depth_multiplier=0.35, image_size=32, num_labels=5, output_stride=8)
    torch.manual_seed(0)
    model = transformers.MobileNetV2ForSemanticSegmentation(config).double().eval()
    with torch.no_grad():  # the default init (N(0, 0.02), BN at identity) gives logits ~1e-27: widen it
        for parameter in model.parameters():
            torch.nn.init.normal_(parameter, 0.0, 0.3)
    rng = np.random.default_rng(9)
    pixels = t(rng.standard_normal((2, 3, 32, 32)))
    labels = rng.integers(0, 5, (2, 37, 50))
    labels[0, :10] = 255
    output = model(pixel_values=pixels, labels=t(labels))
    output.logits.retain_grad()
    output.loss.backward()
    logits = output.logits.detach().numpy()
    loss, dlogits = losses.segmentation_loss(logits, labels, config.semantic_loss_ignore_index)
    check("segmentation via model loss", loss, output.loss)
    check("segmentation via model dlogits", dlogits, output.logits.grad)
    # align_corners=True (the ASPP pooling branch's setting) gives another loss: the test can tell.
    wrong = F.cross_entropy(F.interpolate(output.logits.detach(), (37, 50), mode="bilinear", align_corners=True),
                            t(labels), ignore_index=255)
    assert abs(float(wrong) - float(loss)) > 1e-6
    with pytest.raises(ValueError, match="The number of labels should be greater than one"):
        transformers.MobileNetV2ForSemanticSegmentation(
            transformers.MobileNetV2Config(depth_multiplier=0.35, num_labels=1)).eval()(
            pixel_values=pixels.float(), labels=t(labels))


def test_segmentation_loss_errors():
    logits = np.zeros((1, 3, 4, 4))
    with pytest.raises(ConfigError, match="num_labels .* must be greater than one"):
        losses.segmentation_loss(np.zeros((1, 1, 4, 4)), np.zeros((1, 8, 8), np.int64))
    with pytest.raises(ShapeError, match=r"labels\[0, 2, 3\] = 7 is outside \[0, 3\) and not ignore_index=255"):
        labels = np.zeros((1, 8, 8), np.int64)
        labels[0, 2, 3] = 7
        losses.segmentation_loss(logits, labels)
    with pytest.raises(ShapeError, match=r"labels must be \(N, H, W\)"):
        losses.segmentation_loss(logits, np.zeros((2, 8, 8), np.int64))
    all_ignored = np.full((1, 8, 8), 255)
    loss, dlogits = losses.segmentation_loss(logits, all_ignored)
    assert np.isnan(loss) and not dlogits.any()


def test_float32_inputs_give_float32_close_to_float64():
    rng = np.random.default_rng(10)
    logits, labels = rng.standard_normal((2, 5, 6, 7)) * 5, rng.integers(0, 5, (2, 23, 17))
    labels[0, 0] = 255
    cases = [(losses.segmentation_loss, (logits, labels)),
             (losses.cross_entropy, (logits[:, :, 0, 0], labels[:, 0, 0].clip(0, 4))),
             (losses.mse_loss, (logits[:, :, 0], logits[:, :, 1])),
             (losses.bce_with_logits, (logits[:, :, 0], rng.random((2, 5, 7))))]
    for function, (z, y) in cases:
        loss64, d64 = function(z, y)
        y32 = y.astype(np.float32) if y.dtype.kind == "f" else y
        loss32, d32 = function(z.astype(np.float32), y32)
        assert isinstance(loss32, np.float32) and d32.dtype == np.float32, function.__name__
        check(f"float32 {function.__name__} loss", loss32, loss64, RTOL32)
        check(f"float32 {function.__name__} dlogits", d32, d64, RTOL32)
