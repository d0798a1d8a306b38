"""mobilenet_np.training.optim agrees with torch.optim step for step, and TFRMSProp with TF's equations.

* SGD and RMSprop: hypothesis draws the options, 1-6 steps of random float64 gradients are fed to
  ours and to torch.optim; parameters and optimizer state must agree after every step.
* parameter groups (per-group options, names looked up in `arrays=`, frozen names) as torch's param_groups;
  `split_decay_groups` against the layer kinds the model itself declares.
* schedules: the lr sequences of torch.optim.lr_scheduler (StepLR, ExponentialLR, LinearLR,
  CosineAnnealingLR, SequentialLR for warm-up + cosine).
* TFRMSProp against TF1's ApplyRMSProp equations written out here as a plain-Python scalar loop (and
  against TensorFlow itself when it is installed); the "lr 0.045 in torch RMSprop" first-step ratio.
* checkpoints: state_dict round trips resume bit for bit; in-place updates, on_update, frozen tensors, errors.

Tolerances (float64, eps = 2.2e-16). Our update is torch's, operation for operation, but torch's CPU
kernels evaluate `a + alpha * b` (add with alpha, addcmul, lerp) as one fused multiply-add (measured:
bitwise equal to a correctly rounded fma, one rounding instead of NumPy's two), and torch's float64
sqrt is not correctly rounded (measured: 0.8 % of values 1 ulp off). So for arbitrary options we
allow, per compared array,

    |ours - torch| <= rtol * |torch| + rtol * max|torch|

over at most 6 steps: SGD rtol = 1e-15 (about 4.5 ulp; observed worst 5.8e-16 over 200 random
runs of 6 steps); RMSprop rtol = 5e-15 (observed worst 1.5e-15 over 300 runs, in momentum buffers:
b = sum of mu^k g / d, whose terms, each one rounding off, can be larger than their sum).
With dyadic options (lr, weight decay, nesterov momentum and 1 - dampening powers of two) every
alpha * b is exact, fma and NumPy round the same single result, and SGD must agree EXACTLY: that
proves the order of operations is torch's, not only the formula. TFRMSProp against the plain-Python
loop is exact too (same operations, both sqrt correctly rounded), and against TensorFlow 2.21 when
hyperparameters are rounded to float32 as TF1 does. Schedules: torch updates most lrs recursively
(lr_t from lr_{t-1}), we use the closed form; the difference grows by about one rounding per step
(observed worst 1.5e-15 relative over 61 steps): rtol 1e-14.
"""

from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mobilenet_np.errors import ConfigError, ShapeError
from mobilenet_np import MobileNetV2Config, MobileNetV2Model
from mobilenet_np.training.optim import (
    SGD, ConstantSchedule, CosineSchedule, ExponentialMovingAverage, LinearSchedule, RMSprop, StepDecay,
    TFRMSProp, is_depthwise_weight, split_decay_groups, trainable_parameters,
)

RTOL = 1e-15           # SGD, see the module docstring
RTOL_RMSPROP = 5e-15
RTOL_SCHEDULE = 1e-14

# a small "model": a regular conv, a depthwise conv, BatchNorm gamma/beta, a linear layer and its bias
SHAPES = {
    "conv.convolution.weight": (4, 3, 3, 3),
    "dw.convolution.weight": (4, 1, 3, 3),
    "dw.normalization.weight": (4,),
    "dw.normalization.bias": (4,),
    "classifier.weight": (5, 4),
    "classifier.bias": (5,),
}


def make_params(seed: int, dtype=np.float64) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(dtype) for name, shape in SHAPES.items()}


def make_grads(seed: int, steps: int, names=tuple(SHAPES), scale: float = 1.0, dtype=np.float64):
    rng = np.random.default_rng(seed + 1000)
    return [{name: (scale * rng.standard_normal(SHAPES[name])).astype(dtype) for name in names} for _ in range(steps)]


def torch_params(params: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {name: torch.tensor(p.copy(), requires_grad=True) for name, p in params.items()}


def torch_step(opt: torch.optim.Optimizer, tparams: dict[str, torch.Tensor], grads: dict[str, np.ndarray]) -> None:
    for name, t in tparams.items():
        t.grad = torch.from_numpy(grads[name].copy()) if name in grads else None
    opt.step()


def assert_matches(ours: np.ndarray, ref, what: str, exact: bool = False, rtol: float = RTOL) -> None:
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    assert ours.dtype == ref.dtype, what
    if exact:
        np.testing.assert_array_equal(ours, ref, err_msg=what)
    else:
        scale = float(np.max(np.abs(ref))) if ref.size else 0.0
        np.testing.assert_allclose(ours, ref, rtol=rtol, atol=rtol * scale, err_msg=what)


def compare_run(ours_factory, torch_factory, state_keys, seed: int, steps: int, exact: bool = False,
                grad_names=tuple(SHAPES), rtol: float = RTOL):
    """Run both optimizers on the same gradients; compare parameters and state after every step."""
    params = make_params(seed)
    tparams = torch_params(params)
    opt, topt = ours_factory(params), torch_factory(tparams)
    for k, grads in enumerate(make_grads(seed, steps, grad_names)):
        opt.step(grads)
        torch_step(topt, tparams, grads)
        for name, p in params.items():
            assert_matches(p, tparams[name], f"step {k + 1}: {name}", exact, rtol)
            for key in state_keys:
                if key in opt.state.get(name, {}):
                    assert_matches(opt.state[name][key], topt.state[tparams[name]][key], f"step {k + 1}: {name} {key}",
                                   exact, rtol)
                else:
                    assert key not in topt.state.get(tparams[name], {}), f"{name}: torch has {key}, we do not"
    return params, opt


# --------------------------------------------------------------------------------------------------
# SGD
# --------------------------------------------------------------------------------------------------

@st.composite
def sgd_options(draw, dyadic: bool = False):
    """SGD options as torch accepts them. dyadic: lr, weight decay, 1 - dampening and nesterov's
    momentum are powers of two, so that every alpha * b torch fuses into an fma is exact."""
    def power_of_two(lo, hi):
        return 2.0 ** draw(st.integers(lo, hi))

    def some(strategy_value):
        return draw(st.sampled_from([0.0, strategy_value]))

    nesterov = draw(st.booleans())
    if dyadic:
        lr = power_of_two(-10, 0)
        weight_decay = some(power_of_two(-12, -2))
        momentum = power_of_two(-4, -1) if nesterov else some(draw(st.floats(0.01, 0.99)))
        dampening = 0.0 if nesterov else draw(st.sampled_from([0.0, 0.5, 0.75]))
    else:
        lr = draw(st.floats(1e-4, 1.0))
        weight_decay = some(draw(st.floats(1e-5, 0.1)))
        momentum = draw(st.floats(0.01, 0.99)) if nesterov else some(draw(st.floats(0.01, 0.99)))
        dampening = 0.0 if nesterov else some(draw(st.floats(0.0, 0.9)))
    return dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
                maximize=draw(st.booleans()))


@given(options=sgd_options(), steps=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_sgd_matches_torch(options, steps, seed):
    compare_run(lambda p: SGD(p, **options), lambda t: torch.optim.SGD(list(t.values()), **options),
                ["momentum_buffer"], seed, steps)


@given(options=sgd_options(dyadic=True), steps=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_sgd_matches_torch_exactly_with_dyadic_options(options, steps, seed):
    compare_run(lambda p: SGD(p, **options), lambda t: torch.optim.SGD(list(t.values()), **options),
                ["momentum_buffer"], seed, steps, exact=True)


# --------------------------------------------------------------------------------------------------
# RMSprop (torch) and TFRMSProp (TensorFlow 1)
# --------------------------------------------------------------------------------------------------

@st.composite
def rmsprop_options(draw):
    # alpha >= 0.5: torch's lerp switches formula below 0.5 and centered v - ḡ² cancels for small alpha;
    # the values used in practice are 0.9 .. 0.999.
    return dict(lr=draw(st.floats(1e-4, 0.1)), alpha=draw(st.floats(0.5, 0.999)),
                eps=draw(st.sampled_from([1e-8, 1e-3, 1.0])), weight_decay=draw(st.sampled_from([0.0, 4e-5, 0.01])),
                momentum=draw(st.sampled_from([0.0, 0.5, 0.9])), centered=draw(st.booleans()),
                maximize=draw(st.booleans()))


@given(options=rmsprop_options(), steps=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_rmsprop_matches_torch(options, steps, seed):
    compare_run(lambda p: RMSprop(p, **options), lambda t: torch.optim.RMSprop(list(t.values()), **options),
                ["square_avg", "momentum_buffer", "grad_avg"], seed, steps, rtol=RTOL_RMSPROP)


def tf_rmsprop_reference(p0: float, grads: list[float], lrs: list[float], rho: float, momentum: float, eps: float,
                         weight_decay: float, centered: bool) -> float:
    """TF1's RMSPropOptimizer on one scalar, as its CPU kernels (ApplyRMSProp / ApplyCenteredRMSProp)
    write it; slots rms = 1, momentum = 0, mg = 0; slim's L2 regulariser adds weight_decay * var."""
    var, ms, mom, mg = p0, 1.0, 0.0, 0.0
    for grad, lr in zip(grads, lrs):
        grad = grad + weight_decay * var
        ms += (grad * grad - ms) * (1 - rho)
        if centered:
            mg += (grad - mg) * (1 - rho)
            denom = (ms - mg * mg) + eps
        else:
            denom = ms + eps
        mom = mom * momentum + (grad * lr) / math.sqrt(denom)
        var -= mom
    return var


@given(steps=st.integers(1, 6), seed=st.integers(0, 2**16), decay=st.sampled_from([0.9, 0.99]),
       momentum=st.sampled_from([0.0, 0.9]), epsilon=st.sampled_from([1.0, 1e-3, 1e-10]),
       weight_decay=st.sampled_from([0.0, 4e-5]), centered=st.booleans(), grad_scale=st.sampled_from([1e-2, 1.0]))
def test_tf_rmsprop_matches_tf_equations(steps, seed, decay, momentum, epsilon, weight_decay, centered, grad_scale):
    """Exact: the reference does the same operations per element (Python floats, math.sqrt); the lr
    changes every step (a decaying schedule), which only TF's lr-inside-momentum form gets right."""
    params = make_params(seed)
    start = copy.deepcopy(params)
    opt = TFRMSProp(params, lr=0.045, decay=decay, momentum=momentum, epsilon=epsilon, weight_decay=weight_decay,
                    centered=centered)
    schedule = StepDecay(opt, step_size=1, gamma=0.9)
    grads = make_grads(seed, steps, scale=grad_scale)
    lrs = []
    for g in grads:
        lrs.append(opt.param_groups[0]["lr"])
        opt.step(g)
        schedule.step()
    for name, p in params.items():
        expected = [tf_rmsprop_reference(float(start[name].flat[i]), [float(g[name].flat[i]) for g in grads], lrs,
                                         decay, momentum, epsilon, weight_decay, centered) for i in range(p.size)]
        np.testing.assert_array_equal(p.ravel(), np.array(expected), err_msg=name)


@pytest.mark.parametrize("centered", [False, True])
def test_tf_rmsprop_matches_tensorflow(centered):
    """Optional: TensorFlow's own tf.compat.v1.train.RMSPropOptimizer on the same gradients.

    TF1 turns Python-float hyperparameters into float32 tensors and casts them to the variable's
    dtype, so even float64 variables see lr = float32(0.045) = 0.04500000178813934: with the
    hyperparameters rounded to float32 the float64 runs agree EXACTLY (measured: with the exact
    0.045, 0.9 the parameters differ by ~1e-10). float32 variables: Eigen and NumPy round some
    float32 products differently (e.g. TF forms 1 - rho in float32): within 1e-6 of the scale.
    """
    tf = pytest.importorskip("tensorflow")

    def run(dtype, f32_hyperparameters):
        params, grads = make_params(3, dtype), make_grads(3, 5, scale=0.3, dtype=dtype)
        variables = {name: tf.Variable(p.copy()) for name, p in params.items()}
        tf_opt = tf.compat.v1.train.RMSPropOptimizer(0.045, decay=0.9, momentum=0.9, epsilon=1e-3, centered=centered)
        cast = (lambda x: float(np.float32(x))) if f32_hyperparameters else float
        opt = TFRMSProp(params, lr=cast(0.045), decay=cast(0.9), momentum=cast(0.9), epsilon=cast(1e-3),
                        centered=centered)
        for g in grads:
            opt.step(g)
            tf_opt.apply_gradients([(tf.constant(g[name]), variables[name]) for name in params])
        return {name: (p, variables[name].numpy()) for name, p in params.items()}

    for name, (ours, theirs) in run(np.float64, f32_hyperparameters=True).items():
        np.testing.assert_array_equal(ours, theirs, err_msg=name)
    quirk = max(np.max(np.abs(ours - theirs)) for ours, theirs in run(np.float64, False).values())
    assert 1e-12 < quirk < 1e-8, quirk
    for name, (ours, theirs) in run(np.float32, f32_hyperparameters=False).items():
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6 * np.max(np.abs(theirs)), err_msg=name)


def test_lr_0045_ported_into_torch_rmsprop_takes_a_hundreds_of_times_larger_first_step():
    """The V2 paper's "RMSProp, lr 0.045, decay 0.9, momentum 0.9" copied into torch.optim.RMSprop
    (keeping its eps 1e-8): torch's mean square starts at 0, so the first step is lr / sqrt(1 - alpha)
    = 0.142 per weight whatever the gradient; TF's starts at 1 with eps 1 inside the sqrt: ~lr * g / 1.38."""
    params = make_params(0)
    grads = make_grads(0, 1, scale=1e-2)[0]
    start = copy.deepcopy(params)
    TFRMSProp(params, lr=0.045, decay=0.9, momentum=0.9, epsilon=1.0).step(grads)
    tf_step = np.mean([np.mean(np.abs(params[n] - start[n])) for n in params])

    def torch_first_step(**options):
        tparams = torch_params(start)
        torch_step(torch.optim.RMSprop(list(tparams.values()), lr=0.045, alpha=0.9, momentum=0.9, **options),
                   tparams, grads)
        return np.mean([np.mean(np.abs(tparams[n].detach().numpy() - start[n])) for n in start])

    ratio = torch_first_step() / tf_step
    ratio_eps1 = torch_first_step(eps=1.0) / tf_step
    print(f"mean |first step|: TF {tf_step:.3g}; torch eps 1e-8 {ratio:.0f}x larger; torch eps 1.0 {ratio_eps1:.2f}x")
    assert ratio > 100
    # eps = 1.0 outside the sqrt hides the difference on step 1 (both ~lr * g): the trap is the default eps
    assert 0.5 < ratio_eps1 < 2


# --------------------------------------------------------------------------------------------------
# parameter groups, split_decay_groups, frozen tensors, on_update
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["sgd", "rmsprop"])
def test_param_groups_match_torch_param_groups(kind):
    """Two groups with their own options (one given as names + arrays=, one as a mapping), and a
    frozen tensor that never gets a gradient."""
    names_a = ["conv.convolution.weight", "classifier.weight"]
    names_b = ["dw.convolution.weight", "dw.normalization.weight", "dw.normalization.bias", "classifier.bias"]
    if kind == "sgd":
        cls, tcls, keys = SGD, torch.optim.SGD, ["momentum_buffer"]
        defaults = dict(lr=0.05, momentum=0.9, weight_decay=4e-5)
        options_b = dict(lr=0.2, weight_decay=0.0, nesterov=True)
    else:
        cls, tcls, keys = RMSprop, torch.optim.RMSprop, ["square_avg", "momentum_buffer", "grad_avg"]
        defaults = dict(lr=0.01, alpha=0.9, momentum=0.9, eps=1.0, weight_decay=4e-5)
        options_b = dict(lr=0.003, weight_decay=0.0, centered=True, momentum=0.0)
    frozen = "dw.normalization.bias"
    grad_names = tuple(n for n in SHAPES if n != frozen)

    def ours(params):
        return cls([{"params": names_a}, {"params": {n: params[n] for n in names_b}, **options_b}],
                   arrays=params, **defaults)

    def theirs(tparams):
        return tcls([{"params": [tparams[n] for n in names_a]},
                     {"params": [tparams[n] for n in names_b], **options_b}], **defaults)

    start = make_params(7)
    params, opt = compare_run(ours, theirs, keys, seed=7, steps=5, grad_names=grad_names,
                              rtol=RTOL if kind == "sgd" else RTOL_RMSPROP)
    np.testing.assert_array_equal(params[frozen], start[frozen])
    assert frozen not in opt.state
    assert opt.param_groups[1]["lr"] == options_b["lr"] and opt.param_groups[0]["lr"] == defaults["lr"]


def test_split_decay_groups_follows_the_model_layer_kinds():
    """On MobileNetV2 0.35: depthwise weights are exactly the layers the model declares depthwise;
    BatchNorm gamma/beta and biases are not decayed; running statistics are left out."""
    model = MobileNetV2Model(MobileNetV2Config(depth_multiplier=0.35, image_size=32), seed=0)
    declared_dw = {f"{layer.name}.convolution.weight" for layer in model.conv_layers() if layer.kind == "depthwise"}
    decayed, kept = split_decay_groups(model.params)
    assert kept["weight_decay"] == 0.0 and "weight_decay" not in decayed
    assert set(decayed["params"]) | set(kept["params"]) == set(trainable_parameters(model.params))
    assert not any(n.endswith(("running_mean", "running_var", "num_batches_tracked")) for n in kept["params"])
    assert {n for n in kept["params"] if n.endswith("convolution.weight")} == declared_dw
    assert all(p is model.params[n] for n, p in kept["params"].items())   # the model's own arrays
    assert all(len(p.shape) == 4 and n.endswith("convolution.weight") for n, p in decayed["params"].items())
    assert all("normalization" in n or n.endswith(".bias") for n, p in kept["params"].items() if n not in declared_dw)

    # A 1-channel stem (C, 1, 3, 3) looks depthwise by shape; the model's own layer kinds fix it.
    gray = MobileNetV2Model(MobileNetV2Config(depth_multiplier=0.35, image_size=32, num_channels=1), seed=0)
    stem = "conv_stem.first_conv.convolution.weight"
    assert is_depthwise_weight(stem, gray.params[stem].shape)
    assert stem in split_decay_groups(gray.params)[1]["params"]
    dw = [f"{layer.name}.convolution.weight" for layer in gray.conv_layers() if layer.kind == "depthwise"]
    assert stem in split_decay_groups(gray.params, depthwise=dw)[0]["params"]
    only_bn = split_decay_groups(gray.params, no_decay=["batchnorm"])
    assert all("normalization" in n for n in only_bn[1]["params"])
    with pytest.raises(ConfigError, match="no_decay"):
        split_decay_groups(gray.params, no_decay=["depthwize"])


def test_update_in_place_on_update_and_frozen_names():
    model = {name: p for name, p in make_params(1).items()}
    identities = {name: id(p) for name, p in model.items()}
    start = copy.deepcopy(model)
    calls = []
    opt = SGD(trainable_parameters(model), lr=0.1, momentum=0.9, on_update=calls.append)
    grads = make_grads(1, 1, names=("conv.convolution.weight", "classifier.bias"))[0]
    grads_before = copy.deepcopy(grads)
    updated = opt.step(grads)
    for name in grads:                                                        # gradients are read, never written
        np.testing.assert_array_equal(grads[name], grads_before[name])
    assert calls == [updated] == [["conv.convolution.weight", "classifier.bias"]]
    assert {name: id(p) for name, p in model.items()} == identities           # the same arrays, changed in place
    np.testing.assert_array_equal(model["classifier.bias"], start["classifier.bias"] - 0.1 * grads["classifier.bias"])
    for name in set(model) - set(grads):                                      # frozen: untouched, no state
        np.testing.assert_array_equal(model[name], start[name])
        assert name not in opt.state
    opt.step({})
    assert calls[-1] == []


def test_float32_parameters_stay_float32_and_match_torch_float32():
    params = make_params(5, np.float32)
    tparams = torch_params(params)
    opt = RMSprop(params, lr=0.01, alpha=0.9, momentum=0.9, centered=True)
    topt = torch.optim.RMSprop(list(tparams.values()), lr=0.01, alpha=0.9, momentum=0.9, centered=True)
    for g in make_grads(5, 4, dtype=np.float32):
        opt.step(g)
        torch_step(topt, tparams, g)
    for name, p in params.items():
        assert p.dtype == np.float32 and opt.state[name]["square_avg"].dtype == np.float32
        np.testing.assert_allclose(p, tparams[name].detach().numpy(), rtol=1e-6, atol=1e-6, err_msg=name)


# --------------------------------------------------------------------------------------------------
# schedules
# --------------------------------------------------------------------------------------------------

def lr_sequences(ours_factory, torch_factory, steps: int, lrs=(0.1, 0.025)):
    """lr of each group before each of `steps` optimizer steps, ours and torch's (two groups)."""
    params = make_params(0)
    tparams = torch_params(params)
    names = list(SHAPES)
    opt = SGD([{"params": {n: params[n] for n in names[:3]}, "lr": lrs[0]},
               {"params": {n: params[n] for n in names[3:]}, "lr": lrs[1]}], lr=1.0)
    topt = torch.optim.SGD([{"params": [tparams[n] for n in names[:3]], "lr": lrs[0]},
                            {"params": [tparams[n] for n in names[3:]], "lr": lrs[1]}], lr=1.0)
    ours, theirs = ours_factory(opt), torch_factory(topt)
    got, want = [], []
    for _ in range(steps):
        got.append([g["lr"] for g in opt.param_groups])
        want.append([g["lr"] for g in topt.param_groups])
        topt.step()     # no gradients: only keeps torch from warning about the call order
        ours.step()
        theirs.step()
    return np.array(got), np.array(want)


S = torch.optim.lr_scheduler
SCHEDULES = {
    "constant": (lambda o: ConstantSchedule(o), lambda o: S.ConstantLR(o, factor=1.0)),
    "step": (lambda o: StepDecay(o, step_size=7, gamma=0.5), lambda o: S.StepLR(o, step_size=7, gamma=0.5)),
    "tf_exponential_per_epoch": (lambda o: StepDecay(o, step_size=5, gamma=0.98),
                                 lambda o: S.StepLR(o, step_size=5, gamma=0.98)),
    "exponential": (lambda o: StepDecay(o, step_size=1, gamma=0.94), lambda o: S.ExponentialLR(o, gamma=0.94)),
    "linear_warmup": (lambda o: LinearSchedule(o, start_factor=0.1, end_factor=1.0, total_steps=13),
                      lambda o: S.LinearLR(o, start_factor=0.1, end_factor=1.0, total_iters=13)),
    "linear_decay": (lambda o: LinearSchedule(o, start_factor=1.0, end_factor=0.05, total_steps=40),
                     lambda o: S.LinearLR(o, start_factor=1.0, end_factor=0.05, total_iters=40)),
    "cosine": (lambda o: CosineSchedule(o, total_steps=60, min_lr=1e-4),
               lambda o: S.CosineAnnealingLR(o, T_max=60, eta_min=1e-4)),
    "warmup_cosine": (lambda o: CosineSchedule(o, total_steps=60, warmup_steps=10, warmup_start_factor=0.2),
                      lambda o: S.SequentialLR(o, [S.LinearLR(o, start_factor=0.2, total_iters=10),
                                                   S.CosineAnnealingLR(o, T_max=50)], milestones=[10])),
}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_schedule_matches_torch_lr_scheduler(name):
    got, want = lr_sequences(*SCHEDULES[name], steps=61)
    np.testing.assert_allclose(got, want, rtol=RTOL_SCHEDULE, atol=0)
    assert len(np.unique(got[:, 0])) > (1 if name != "constant" else 0)


def test_schedule_formulas_beyond_torch():
    """TF's smooth (non-staircase) exponential decay, and the cosine holding min_lr after total_steps."""
    opt = SGD(make_params(0), lr=0.045)
    smooth = StepDecay(opt, step_size=4, gamma=0.98, staircase=False)
    for t in range(10):
        assert opt.param_groups[0]["lr"] == 0.045 * 0.98 ** (t / 4)
        smooth.step()
    opt = SGD(make_params(0), lr=0.1)
    cosine = CosineSchedule(opt, total_steps=5, min_lr=0.01)
    lrs = []
    for _ in range(8):
        lrs.append(cosine.get_last_lr()[0])
        cosine.step()
    assert lrs[0] == 0.1 and lrs[5:] == [0.01, 0.01, 0.01] and all(a > b for a, b in zip(lrs[:5], lrs[1:6]))


# --------------------------------------------------------------------------------------------------
# moving average of the weights
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("use_num_updates", [False, True])
def test_ema_matches_tf_formula(use_num_updates):
    """tf.train.ExponentialMovingAverage(decay, num_updates=step): decay = min(decay, (1+n)/(10+n)),
    assign_moving_average: shadow -= (1 - decay) * (shadow - value); written out per element."""
    params = make_params(2)
    ema = ExponentialMovingAverage(params, decay=0.99, use_num_updates=use_num_updates)
    history = [copy.deepcopy(params)]
    opt = SGD(params, lr=0.1)
    for g in make_grads(2, 5):
        opt.step(g)
        ema.apply(params)
        history.append(copy.deepcopy(params))
    name = "classifier.weight"
    for i in range(params[name].size):
        shadow = float(history[0][name].flat[i])
        for n, snapshot in enumerate(history[1:]):
            decay = min(0.99, (1 + n) / (10 + n)) if use_num_updates else 0.99
            shadow -= (shadow - float(snapshot[name].flat[i])) * (1 - decay)
        assert ema.shadow[name].flat[i] == shadow
    target = make_params(9)
    assert ema.copy_to(target) == list(SHAPES)
    np.testing.assert_array_equal(target[name], ema.shadow[name])


# --------------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------------

OPTIMIZERS = {
    "sgd": lambda p: SGD(split_decay_groups(p), lr=0.05, momentum=0.9, nesterov=True, weight_decay=4e-5),
    "rmsprop": lambda p: RMSprop(p, lr=0.01, alpha=0.9, eps=1.0, momentum=0.9, centered=True, weight_decay=1e-3),
    "tf_rmsprop": lambda p: TFRMSProp(split_decay_groups(p), lr=0.045, weight_decay=4e-5, centered=True),
}


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_state_dict_round_trip_resumes_bit_exactly(kind):
    """3 steps, checkpoint (through pickle), 4 more steps; a fresh optimizer, schedule and EMA loaded
    from the checkpoint must produce the same 4 steps bit for bit."""
    grads = make_grads(4, 7)

    def build(params):
        opt = OPTIMIZERS[kind](params)
        schedule = CosineSchedule(opt, total_steps=6, warmup_steps=2)
        return opt, schedule, ExponentialMovingAverage(params, decay=0.9, use_num_updates=True)

    def run(params, opt, schedule, ema, steps):
        for g in steps:
            opt.step(g)
            schedule.step()
            ema.apply(params)

    params = make_params(4)
    opt, schedule, ema = build(params)
    run(params, opt, schedule, ema, grads[:3])
    checkpoint = pickle.loads(pickle.dumps({"params": params, "opt": opt.state_dict(),
                                            "schedule": schedule.state_dict(), "ema": ema.state_dict()}))
    run(params, opt, schedule, ema, grads[3:])

    restored = {name: p.copy() for name, p in checkpoint["params"].items()}
    opt2, schedule2, ema2 = build(restored)
    opt2.load_state_dict(checkpoint["opt"])
    schedule2.load_state_dict(checkpoint["schedule"])
    ema2.load_state_dict(checkpoint["ema"])
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in checkpoint["opt"]["param_groups"]]
    run(restored, opt2, schedule2, ema2, grads[3:])
    for name in params:
        np.testing.assert_array_equal(restored[name], params[name], err_msg=name)
        np.testing.assert_array_equal(ema2.shadow[name], ema.shadow[name], err_msg=name)
        for key in opt.state[name]:
            np.testing.assert_array_equal(opt2.state[name][key], opt.state[name][key], err_msg=f"{name} {key}")
    assert schedule2.get_last_lr() == schedule.get_last_lr()


def test_state_dict_is_a_copy():
    params = make_params(0)
    opt = SGD(params, lr=0.1, momentum=0.9)
    opt.step(make_grads(0, 1)[0])
    saved = opt.state_dict()
    buffer = saved["state"]["classifier.bias"]["momentum_buffer"].copy()
    opt.step(make_grads(1, 1)[0])
    np.testing.assert_array_equal(saved["state"]["classifier.bias"]["momentum_buffer"], buffer)


# --------------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------------

def test_bad_input_raises_and_changes_nothing():
    params = make_params(0)
    start = copy.deepcopy(params)
    opt = SGD(params, lr=0.1)
    bad_shape = dict(make_grads(0, 1)[0], **{"classifier.bias": np.zeros(4)})
    with pytest.raises(ShapeError, match=r"SGD.step: gradient of 'classifier.bias' has shape \(4,\), expected \(5,\)"):
        opt.step(bad_shape)
    for name in params:   # checked before anything moved
        np.testing.assert_array_equal(params[name], start[name])
    with pytest.raises(ConfigError, match="does not hold"):
        opt.step({"nope": np.zeros(3)})
    with pytest.raises(ShapeError, match="float"):
        opt.step({"classifier.bias": np.zeros(5, dtype=np.int64)})
    with pytest.raises(ConfigError, match="nesterov"):
        SGD(params, lr=0.1, nesterov=True)
    with pytest.raises(ConfigError, match="more than one group"):
        SGD([{"params": params}, {"params": {"classifier.bias": params["classifier.bias"]}}], lr=0.1)
    with pytest.raises(ConfigError, match="unknown option"):
        SGD([{"params": params, "weight_decy": 1e-4}], lr=0.1)
    with pytest.raises(ConfigError, match="arrays="):
        SGD([{"params": ["classifier.bias"]}], lr=0.1)
    with pytest.raises(ConfigError, match="float NumPy array"):
        SGD({"layer.num_batches_tracked": np.zeros((), np.int64)}, lr=0.1)
    read_only = np.zeros(3)
    read_only.flags.writeable = False
    with pytest.raises(ConfigError, match="read-only"):
        RMSprop({"w": read_only}, lr=0.1)
    with pytest.raises(ConfigError, match="lr"):
        TFRMSProp(params, lr=-1.0)
    with pytest.raises(ConfigError, match="warmup_steps"):
        CosineSchedule(opt, total_steps=5, warmup_steps=5)
