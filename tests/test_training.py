"""Whole networks in train and eval mode against transformers + torch.autograd (float64).

`model.loss_and_gradients(x, labels)` runs the network's Graph through mobilenet_np/training/graph.py;
here it is compared with transformers' `.double()` model after `loss.backward()`: the loss, every
parameter's gradient, the input's gradient and (train mode) the updated running statistics.

Tolerances (float64): relative 1e-9 of each tensor's largest value. Gradients that are zero by
structure (a BatchNorm bias whose output feeds straight into another BatchNorm in train mode: the
batch mean removes any constant, e.g. the linear-bottleneck `reduce_1x1` biases whose block has no
residual) are round-off on both sides; they are compared with an absolute floor of 1e-12 times the
largest gradient of the whole model. Measured: up to ~1e-10 relative (V1's deep BatchNorm weights).
Dropout is switched off (p = 0) where numbers are compared: PyTorch's masks come from its own generator.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import mobilenet_np
from mobilenet_np.errors import ConfigError, ShapeError
from mobilenet_np.training import optim

from torch_reference import numpy_twin, random_transformers_model

RTOL = 1e-9
FLOOR = 1e-12


def transformers_step(torch_model, x: np.ndarray, labels: np.ndarray):
    """(loss, {name: grad}, input grad, state_dict after) of one forward + backward of the torch model."""
    xt = torch.tensor(x, requires_grad=True)
    out = torch_model(pixel_values=xt, labels=torch.tensor(labels))
    out.loss.backward()
    grads = {k: p.grad.numpy() for k, p in torch_model.named_parameters() if p.grad is not None}
    state = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
    return float(out.loss.detach()), grads, xt.grad.numpy(), state


def assert_gradients_equal(ours: dict, theirs: dict, what: str) -> None:
    assert set(ours) - {"pixel_values"} == set(theirs), (what, set(ours) ^ set(theirs))
    floor = FLOOR * max(float(np.max(np.abs(g))) for g in theirs.values())
    for name, expected in theirs.items():
        error = float(np.max(np.abs(ours[name] - expected)))
        scale = float(np.max(np.abs(expected)))
        assert error <= max(RTOL * scale, floor), f"{what}: {name}: error {error:.3g}, scale {scale:.3g}"


@st.composite
def cases(draw):
    architecture = draw(st.sampled_from(["MobileNetV1ForImageClassification", "MobileNetV2ForImageClassification",
                                         "MobileNetV2ForSemanticSegmentation"]))
    config = {"depth_multiplier": draw(st.sampled_from([0.25, 0.35, 0.5])), "tf_padding": draw(st.booleans()),
              "classifier_dropout_prob": 0.0}
    batch = draw(st.integers(2, 4))
    size = (draw(st.integers(17, 40)), draw(st.integers(17, 40)))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if architecture == "MobileNetV2ForSemanticSegmentation":
        config.update(num_labels=draw(st.integers(2, 5)), output_stride=draw(st.sampled_from([8, 16])))
        label_size = (draw(st.integers(5, 40)), draw(st.integers(5, 40)))
        labels = rng.integers(0, config["num_labels"], (batch, *label_size))
        labels[rng.random(labels.shape) < 0.2] = 255                     # some ignored pixels
    else:
        config["num_labels"] = draw(st.integers(2, 7))
        if architecture.startswith("MobileNetV2"):
            config["output_stride"] = draw(st.sampled_from([8, 16, 32]))
        labels = rng.integers(0, config["num_labels"], batch)
    return architecture, config, (batch, 3, *size), labels, draw(st.booleans())


@settings(max_examples=24, deadline=None)
@given(case=cases(), seed=st.integers(0, 2**16), fast=st.booleans())
def test_loss_gradients_and_running_statistics_equal_transformers(case, seed, fast):
    """Both paths: the channels-last kernels (fast) and backward.py's readable ones."""
    architecture, config, shape, labels, training = case
    torch_model = random_transformers_model(architecture, seed, **config).double()
    model = numpy_twin(torch_model, architecture).astype(np.float64)
    torch_model.train(training)
    model.train(training, seed=0)
    x = np.random.default_rng(seed).standard_normal(shape)

    loss, grads = model.loss_and_gradients(x, labels, input_gradient=True, fast=fast)
    torch_loss, torch_grads, torch_dx, state = transformers_step(torch_model, x, labels)

    assert abs(loss - torch_loss) <= RTOL * abs(torch_loss), (loss, torch_loss)
    assert_gradients_equal(grads, torch_grads, f"{architecture} {'train' if training else 'eval'}")
    dx = grads["pixel_values"]
    assert float(np.max(np.abs(dx - torch_dx))) <= RTOL * float(np.max(np.abs(torch_dx)))
    for name, value in state.items():                                   # running statistics (and weights)
        assert np.allclose(model.params[name], value, rtol=RTOL, atol=FLOOR), name


def small(architecture="MobileNetV2ForImageClassification", **config):
    cls = getattr(mobilenet_np, architecture)
    config = {"depth_multiplier": 0.25, "num_labels": 4, **config}
    return cls(cls.config_class(**config), seed=1)


def pixels(shape=(3, 3, 32, 32), seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("architecture", ["MobileNetV1ForImageClassification", "MobileNetV2ForImageClassification",
                                          "MobileNetV2ForSemanticSegmentation"])
@pytest.mark.parametrize("fast", [True, False], ids=["channels_last", "readable"])
def test_float32_gradients_are_float64_gradients_to_float32_precision(architecture, fast):
    """float32 end to end against the same model in float64, train mode, batch 4 at 64x64.

    Tolerances: loss 1e-5 relative; every gradient within 5e-4 of the model's largest gradient (not of
    its own scale: some gradients are zero by structure or tiny, their float32 values are round-off).
    Measured: 1.5e-6 and 8.3e-5 (the stem's weights, whose gradient sums over the most pixels). Why not
    tighter: train-mode BatchNorm divides by the batch's standard deviation, which on the last 2x2 maps
    comes from 16 values per channel, and a ReLU6 input within float32 rounding of 0 or 6 can fall on the
    other side of the kink, switching its gradient on or off."""
    model = small(architecture, classifier_dropout_prob=0.0).train(seed=0)
    model64 = model.astype(np.float64).train(seed=0)
    x = pixels((4, 3, 64, 64))
    labels = np.random.default_rng(0).integers(0, 4, (4, 20, 20) if "Segmentation" in architecture else 4)
    loss32, grads32 = model.loss_and_gradients(x.astype(np.float32), labels, fast=fast)
    loss64, grads64 = model64.loss_and_gradients(x, labels, fast=False)
    assert all(g.dtype == np.float32 for g in grads32.values()) and all(g.dtype == np.float64 for g in grads64.values())
    assert abs(loss32 - loss64) <= 1e-5 * abs(loss64)
    largest = max(float(np.max(np.abs(g))) for g in grads64.values())
    for name, g in grads64.items():
        assert np.max(np.abs(grads32[name] - g)) <= 5e-4 * largest, name


# --------------------------------------------------------------------------------------------------
# the transformers quirks, measured
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("architecture, decay", [("MobileNetV1ForImageClassification", 0.9997),
                                                 ("MobileNetV2ForImageClassification", 0.997)])
def test_one_train_step_nearly_replaces_the_running_statistics(architecture, decay):
    """transformers passes TF's decay as PyTorch's momentum: running = (1 - d) * old + d * batch.
    batch_norm_momentum="tensorflow" gives TF's own update, running = d * old + (1 - d) * batch."""
    x = pixels()
    key = f"{small(architecture).base_model_prefix}.conv_stem{'.first_conv' if 'V2' in architecture else ''}" \
          ".normalization."
    for meaning, weight_of_batch in (("transformers", decay), ("tensorflow", 1 - decay)):
        model = small(architecture, classifier_dropout_prob=0.0)
        old_mean, old_var = model.params[key + "running_mean"].copy(), model.params[key + "running_var"].copy()
        model.train(seed=0, batch_norm_momentum=meaning)
        model(x)
        readable = small(architecture)
        record = {}
        readable(x, record=lambda name, t: record.__setitem__(name, t))
        conv = record[key[:-len("normalization.")] + "convolution"].astype(np.float64)
        batch_mean = conv.mean(axis=(0, 2, 3))
        batch_var = conv.var(axis=(0, 2, 3), ddof=1)                     # unbiased, as PyTorch's running_var
        np.testing.assert_allclose(model.params[key + "running_mean"],
                                   (1 - weight_of_batch) * old_mean + weight_of_batch * batch_mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(model.params[key + "running_var"],
                                   (1 - weight_of_batch) * old_var + weight_of_batch * batch_var, rtol=1e-5, atol=1e-6)
        assert int(model.params[key + "num_batches_tracked"]) == 1


def test_dropout_uses_the_config_probability_as_a_drop_rate_and_the_callers_generator():
    """V1's default classifier_dropout_prob 0.999 (a TF keep probability) drops 99.9% of the pooled
    features in train mode; dropout="tensorflow" drops 0.1%. Same seed, same masks; eval: no dropout."""
    model = small("MobileNetV1ForImageClassification", num_labels=0)        # logits = dropout(pooled)
    assert model.config.classifier_dropout_prob == 0.999
    x = pixels((4, 3, 64, 64))
    pooled = model.train(seed=7, dropout=0.0)(x).logits                    # train-mode BatchNorm, no dropout
    quirk = model.train(seed=7, dropout="transformers")(x).logits
    assert 0.99 <= float(np.mean(quirk == 0))
    kept = quirk != 0
    np.testing.assert_allclose(quirk[kept], pooled[kept] / (1 - 0.999), rtol=1e-6)   # inverted dropout
    model.train(seed=7, dropout="tensorflow")
    assert float(np.mean((model(x).logits == 0) & (pooled != 0))) <= 0.01   # (ReLU6 makes some zeros anyway)
    again = model.train(seed=7, dropout="transformers")(x).logits
    np.testing.assert_array_equal(again, quirk)                           # the caller's seed: reproducible
    classifier = small("MobileNetV1ForImageClassification", classifier_dropout_prob=0.9).eval()
    labels = np.array([0, 1, 2, 3])
    loss, _ = classifier.loss_and_gradients(x, labels)                    # eval: the training path drops nothing
    assert loss == pytest.approx(classifier(x, labels=labels, fast=False).loss, rel=1e-12)


def test_deeplab_channel_dropout_and_unused_conv_1x1():
    """DeepLab drops whole channels (Dropout2d) before its classifier; its backbone conv_1x1 runs in train
    mode (statistics updated) but gets no gradient, as in transformers."""
    model = small("MobileNetV2ForSemanticSegmentation", output_stride=16).train(seed=0)
    key = "mobilenet_v2.conv_1x1.normalization.running_mean"
    before = model.params[key].copy()
    labels = np.random.default_rng(0).integers(0, 4, (3, 20, 20))
    loss, grads = model.loss_and_gradients(pixels(), labels)
    assert not np.array_equal(model.params[key], before)
    assert not any(name.startswith("mobilenet_v2.conv_1x1.") for name in grads)
    assert "segmentation_head.classifier.convolution.weight" in grads


def test_a_batch_norm_with_one_value_per_channel_raises_in_train_mode():
    model = small().train(seed=0)
    with pytest.raises(ShapeError, match="more than 1 value per channel"):
        model(pixels((1, 3, 32, 32)))                                     # 1x1 feature map, batch 1
    model.eval()
    model(pixels((1, 3, 32, 32)))                                         # eval: fine


# --------------------------------------------------------------------------------------------------
# losses through the model API
# --------------------------------------------------------------------------------------------------

def test_problem_type_is_inferred_once_and_kept_in_the_config():
    x = pixels()
    regression = small(num_labels=1)
    out = regression(x, labels=np.array([0.5, -1.0, 2.0]))
    assert regression.config.problem_type == "regression"
    np.testing.assert_allclose(out.loss, np.mean((out.logits[:, 0] - [0.5, -1.0, 2.0]) ** 2), rtol=1e-12)
    model = small()
    assert model(x, labels=np.array([0, 3, -100])).loss > 0                 # int64: cross-entropy, -100 ignored
    assert model.config.problem_type == "single_label_classification"
    with pytest.raises(ShapeError, match="int64"):
        small()(x, labels=np.array([0, 1, 2], np.int32))                 # torch: "expected Long or Byte"
    multi = small()
    multi(x, labels=np.eye(4)[[0, 1, 2]])                                 # float multi-hot: BCE
    assert multi.config.problem_type == "multi_label_classification"
    with pytest.raises(ShapeError):
        multi(x, labels=np.array([0, 1, 2]))                              # sticky, as in transformers


def test_segmentation_labels_are_checked():
    x = pixels()
    with pytest.raises(ConfigError, match="greater than one"):
        small("MobileNetV2ForSemanticSegmentation", num_labels=1)(x, labels=np.zeros((3, 8, 8), np.int64))
    model = small("MobileNetV2ForSemanticSegmentation")
    with pytest.raises(ShapeError):
        model(x, labels=np.full((3, 8, 8), 7))                            # outside [0, 4), not 255
    assert np.isnan(model(x, labels=np.full((3, 8, 8), 255)).loss)        # all ignored: NaN, as PyTorch
    with pytest.raises(ConfigError, match="no head"):
        small("MobileNetV2Model", num_labels=2)(x, labels=np.zeros(3, np.int64))


def test_model_call_with_labels_gives_the_loss_of_loss_and_gradients():
    model = small()
    labels = np.array([1, 2, 3])
    assert model(pixels(), labels=labels).loss == pytest.approx(model.loss_and_gradients(pixels(), labels)[0],
                                                                 rel=1e-9)


def test_frozen_parameters_get_no_gradient_and_an_optimizer_step_reaches_the_fast_path():
    model = small().train(seed=0)
    model.freeze("mobilenet_v2.")
    loss, grads = model.loss_and_gradients(pixels(), np.array([1, 2, 3]))
    assert set(grads) == {"classifier.weight", "classifier.bias"}
    model.unfreeze()
    loss, grads = model.loss_and_gradients(pixels(), np.array([1, 2, 3]))
    assert len(grads) == len(model.trainable_parameters()) > 2
    model.eval()
    before = model(pixels()).logits                                        # the fast path, plan cached
    sgd = optim.SGD(model.trainable_parameters(), lr=0.1, on_update=lambda names: model.params.mark_changed())
    sgd.step(grads)
    after = model(pixels()).logits
    assert not np.allclose(after, before)
    np.testing.assert_allclose(after, model(pixels(), fast=False).logits, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("fast", [True, False], ids=["channels_last", "readable"])
def test_frozen_batch_norm_keeps_its_statistics_while_dropout_trains(fast):
    """model.train(frozen_batch_norm=True) is PyTorch's model.train() + .eval() on every BatchNorm: the same
    loss and gradients as transformers so (dropout 0), the running statistics untouched; with dropout the
    masks are drawn (two generators, two losses)."""
    architecture = "MobileNetV2ForImageClassification"
    torch_model = random_transformers_model(architecture, 4, depth_multiplier=0.35, num_labels=5,
                                            classifier_dropout_prob=0.0).double().train()
    for module in torch_model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    model = numpy_twin(torch_model, architecture).astype(np.float64).train(seed=0, frozen_batch_norm=True)
    before = {k: v.copy() for k, v in model.params.items()}
    x, labels = pixels((3, 3, 40, 40)), np.array([0, 3, 4])
    loss, grads = model.loss_and_gradients(x, labels, fast=fast)
    torch_loss, torch_grads, _, _ = transformers_step(torch_model, x, labels)
    assert abs(loss - torch_loss) <= RTOL * abs(torch_loss)
    assert_gradients_equal(grads, torch_grads, "frozen BatchNorm")
    for name, value in before.items():
        np.testing.assert_array_equal(model.params[name], value, err_msg=name)
    model.train(seed=1, dropout=0.5)
    first, _ = model.loss_and_gradients(x, labels, fast=fast)
    model.train(seed=2)
    assert model.loss_and_gradients(x, labels, fast=fast)[0] != first
    assert model.mode.frozen_batch_norm
