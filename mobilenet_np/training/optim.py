"""Optimizers, learning-rate schedules and a moving average of the weights, in plain NumPy.

Three optimizers, each the equations of its original written out line by line:

  * `SGD`        = torch.optim.SGD        (momentum with first buffer = gradient, dampening, nesterov,
                                           coupled weight decay, maximize)
  * `RMSprop`    = torch.optim.RMSprop    (eps OUTSIDE the square root, mean square starts at 0)
  * `TFRMSProp`  = TensorFlow 1's RMSPropOptimizer, what the MobileNet V1/V2 papers trained with
                   (mean square starts at 1, epsilon INSIDE the square root, lr inside the momentum)

Parameters are the model's own NumPy arrays, addressed by their state_dict names. `step(grads)` takes a
dict name -> gradient and updates the arrays in place (a name without a gradient is left alone: that
is how a frozen tensor stays frozen). Per-group options (lr, weight_decay, ...) work as torch's
param_groups; `split_decay_groups` builds TF-slim's groups (no weight decay on depthwise filters,
BatchNorm and biases).

Schedules (`ConstantSchedule`, `LinearSchedule`, `StepDecay`, `CosineSchedule`) set every group's
"lr" from a closed-form formula of the step count, like torch.optim.lr_scheduler drives
`group["lr"]`. `ExponentialMovingAverage` keeps TF's moving average of the weights.

Everything has `state_dict()` / `load_state_dict()` (plain dicts of NumPy arrays and numbers), so
that a run restored from a checkpoint continues bit for bit.

Rounding: the arithmetic is the same as torch's, operation for operation, except that torch's CPU
kernels fuse `a + alpha * b` into one FMA (one rounding instead of two) and its float64 sqrt is not
always correctly rounded; results agree to ~1 ulp per step (exactly when alpha * b is exact, e.g.
lr a power of two). See tests/test_optim.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

import numpy as np

from ..errors import ConfigError, ShapeError

__all__ = [
    "Optimizer", "SGD", "RMSprop", "TFRMSProp",
    "trainable_parameters", "split_decay_groups", "is_depthwise_weight",
    "LRSchedule", "ConstantSchedule", "LinearSchedule", "StepDecay", "CosineSchedule",
    "ExponentialMovingAverage",
]

# BatchNorm buffers: state_dict entries that are not learned (torch's named_parameters leaves them out).
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


# --------------------------------------------------------------------------------------------------
# parameters and parameter groups
# --------------------------------------------------------------------------------------------------

def trainable_parameters(named_params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The learned tensors of a model's state_dict (`model.params`): everything except BatchNorm's
    running_mean / running_var / num_batches_tracked. The arrays are the model's own (no copies)."""
    return {name: p for name, p in named_params.items() if not name.endswith(BUFFER_SUFFIXES)}


def is_depthwise_weight(name: str, shape: tuple[int, ...]) -> bool:
    """True for a depthwise convolution weight, judged from its shape: (C, 1, k, k) with k > 1.

    A convolution weight is OIHW = (C_out, C_in / groups, kH, kW); a depthwise layer has
    groups = C_in, hence C_in / groups = 1. A 1x1 weight (C, 1, 1, 1) is a pointwise layer on one
    channel, not depthwise. Caveat: a stem conv on single-channel images also has shape (C, 1, 3, 3);
    pass `depthwise=` to `split_decay_groups` for such models.
    """
    return name.endswith("weight") and len(shape) == 4 and shape[1] == 1 and shape[2] > 1 and shape[3] > 1


def split_decay_groups(named_params: Mapping[str, np.ndarray],
                       no_decay: Iterable[str] = ("depthwise", "batchnorm", "bias"),
                       depthwise: Iterable[str] | None = None) -> list[dict]:
    """Two parameter groups as TF-slim trained MobileNets: weight decay on regular conv / linear
    weights only, none on depthwise filters, BatchNorm gamma/beta and biases.

        [{"params": {name: array, ...}},                       # decayed: the optimizer's weight_decay
         {"params": {name: array, ...}, "weight_decay": 0.0}]  # the kinds listed in `no_decay`

    Kinds, decided from names and shapes:
      "depthwise"  a 4-D weight of shape (C, 1, k, k), k > 1 (see `is_depthwise_weight`), or, when
                   `depthwise` is given, exactly the names in it (e.g. the weights of the layers whose
                   `ConvLayer.kind == "depthwise"`; needed when the stem sees 1-channel images);
      "batchnorm"  names containing "normalization" (transformers' BatchNorm modules);
      "bias"       names ending with ".bias".
    BatchNorm running statistics are left out (they are buffers, not parameters). An empty group is
    dropped. The arrays are the model's own.
    """
    no_decay = tuple(no_decay)
    unknown = [kind for kind in no_decay if kind not in ("depthwise", "batchnorm", "bias")]
    if unknown:
        raise ConfigError(f"split_decay_groups: no_decay kinds must be 'depthwise', 'batchnorm' or 'bias', "
                          f"got {unknown}")
    depthwise_names = None if depthwise is None else set(depthwise)
    decay, keep = {}, {}
    for name, p in trainable_parameters(named_params).items():
        if depthwise_names is None:
            is_dw = is_depthwise_weight(name, np.shape(p))
        else:
            is_dw = name in depthwise_names
        kinds = {"depthwise": is_dw, "batchnorm": "normalization" in name, "bias": name.endswith(".bias")}
        if any(kinds[kind] for kind in no_decay):
            keep[name] = p
        else:
            decay[name] = p
    groups = []
    if decay:
        groups.append({"params": decay})
    if keep:
        groups.append({"params": keep, "weight_decay": 0.0})
    return groups


# --------------------------------------------------------------------------------------------------
# the optimizer base class
# --------------------------------------------------------------------------------------------------

class Optimizer:
    """Parameter groups, per-parameter state, `step`, `state_dict` / `load_state_dict`.

    `params` is either a mapping name -> array (one group with the defaults) or a list of groups,
    each a dict {"params": mapping name -> array, or list of names looked up in `arrays`,
    "lr": ..., other options}; options a group does not give come from the constructor's keywords.

        self.params        name -> the model's array (updated in place by `step`)
        self.param_groups  list of dicts {"params": [names], "lr": ..., ...}; a schedule sets "lr"
        self.state         name -> dict of state arrays (momentum buffers, ...), created lazily

    The optimizer keeps references to the arrays: if the model replaces an array (e.g. its
    load_state_dict), build a new optimizer (and load the old one's state_dict into it).
    `on_update(names)`, if given, is called after every step with the names that were updated.
    """

    def __init__(self, params, defaults: dict, *, on_update: Callable[[list[str]], None] | None = None,
                 arrays: Mapping[str, np.ndarray] | None = None):
        self.defaults = dict(defaults)
        self.on_update = on_update
        self.params: dict[str, np.ndarray] = {}
        self.param_groups: list[dict] = []
        self.state: dict[str, dict] = {}
        groups = [{"params": params}] if isinstance(params, Mapping) else list(params)
        if not groups:
            raise ConfigError(f"{self._op}: got no parameter groups")
        for group in groups:
            self.add_param_group(group, arrays)

    @property
    def _op(self) -> str:
        return type(self).__name__

    def add_param_group(self, group: dict, arrays: Mapping[str, np.ndarray] | None = None) -> None:
        """Add one group: its names and arrays are checked, missing options filled from the defaults."""
        if not isinstance(group, Mapping) or "params" not in group:
            raise ConfigError(f"{self._op}: a parameter group must be a dict with a 'params' entry, got {group!r:.80}")
        unknown = [k for k in group if k != "params" and k not in self.defaults]
        if unknown:
            raise ConfigError(f"{self._op}: unknown option(s) {unknown} in a parameter group; "
                              f"known: {sorted(self.defaults)}")
        entries = group["params"]
        if isinstance(entries, Mapping):
            named = dict(entries)
        else:
            if arrays is None:
                raise ConfigError(f"{self._op}: a group lists parameter names; pass arrays= (name -> array) "
                                  f"to look them up")
            missing = [name for name in entries if name not in arrays]
            if missing:
                raise ConfigError(f"{self._op}: parameter(s) {missing[:3]} of a group are not in arrays")
            named = {name: arrays[name] for name in entries}
        for name, p in named.items():
            if name in self.params:
                raise ConfigError(f"{self._op}: parameter {name!r} appears in more than one group")
            if not isinstance(p, np.ndarray) or p.dtype.kind != "f":
                kind = p.dtype if isinstance(p, np.ndarray) else type(p).__name__
                raise ConfigError(f"{self._op}: parameter {name!r} must be a float NumPy array, got {kind} "
                                  f"(leave BatchNorm buffers out: see trainable_parameters)")
            if not p.flags.writeable:
                raise ConfigError(f"{self._op}: parameter {name!r} is a read-only array; it must be updated in place")
        options = {**self.defaults, **{k: v for k, v in group.items() if k != "params"}}
        self._check_options(options)
        self.params.update(named)
        self.param_groups.append({"params": list(named), **options})

    def _check_options(self, options: dict) -> None:
        """Raise ConfigError for an invalid option value (each optimizer checks its own)."""
        if not options["lr"] >= 0:
            raise ConfigError(f"{self._op}: lr must be >= 0, got {options['lr']}")
        if not options["weight_decay"] >= 0:
            raise ConfigError(f"{self._op}: weight_decay must be >= 0, got {options['weight_decay']}")

    def step(self, grads: Mapping[str, np.ndarray]) -> list[str]:
        """Update every parameter that has a gradient in `grads` (name -> array of the parameter's
        shape); names without one are skipped. All gradients are checked before anything changes.
        Returns the updated names (in group order), which `on_update` also receives."""
        unknown = [name for name in grads if name not in self.params]
        if unknown:
            raise ConfigError(f"{self._op}.step: gradient(s) for parameter(s) {unknown[:3]} this optimizer does not "
                              f"hold; pass only the gradients of its parameters")
        work = []
        for group in self.param_groups:
            for name in group["params"]:
                if grads.get(name) is None:
                    continue
                p = self.params[name]
                g = np.asarray(grads[name])
                if g.shape != p.shape:
                    raise ShapeError(f"{self._op}.step: gradient of {name!r} has shape {g.shape}, expected {p.shape}")
                if g.dtype.kind != "f":
                    raise ShapeError(f"{self._op}.step: gradient of {name!r} must be a float array, got {g.dtype}")
                work.append((name, p, g.astype(p.dtype, copy=False), group))
        for name, p, g, group in work:
            self._update(p, g, self.state.setdefault(name, {}), group)
        updated = [name for name, *_ in work]
        if self.on_update is not None:
            self.on_update(updated)
        return updated

    def _update(self, p: np.ndarray, g: np.ndarray, state: dict, group: dict) -> None:
        """Update one parameter array `p` in place from its gradient `g` (never modified)."""
        raise NotImplementedError

    # -- checkpoints ------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """{"state": {name: {key: array copy}}, "param_groups": [{"params": [names], options...}]}."""
        return {"state": {name: {k: np.array(v, copy=True) for k, v in s.items()} for name, s in self.state.items()},
                "param_groups": [dict(group, params=list(group["params"])) for group in self.param_groups]}

    def load_state_dict(self, state_dict: Mapping) -> None:
        """Restore options and state saved by `state_dict` (the groups must list the same names)."""
        groups = state_dict["param_groups"]
        if [list(g["params"]) for g in groups] != [g["params"] for g in self.param_groups]:
            raise ConfigError(f"{self._op}.load_state_dict: the saved parameter groups list other names "
                              f"than this optimizer's")
        state = {}
        for name, entries in state_dict["state"].items():
            p = self.params[name]
            state[name] = {}
            for key, value in entries.items():
                value = np.array(value, dtype=p.dtype, copy=True)
                if value.shape != p.shape:
                    raise ShapeError(f"{self._op}.load_state_dict: state {key!r} of {name!r} has shape {value.shape}, "
                                     f"expected {p.shape}")
                state[name][key] = value
        self.param_groups = [dict(saved, params=list(saved["params"])) for saved in groups]
        self.state = state


# --------------------------------------------------------------------------------------------------
# SGD
# --------------------------------------------------------------------------------------------------

class SGD(Optimizer):
    """Stochastic gradient descent, equation for equation torch.optim.SGD.

    Per parameter p with gradient g (λ weight_decay, μ momentum, τ dampening, b the momentum buffer):

        g = -g                       if maximize
        g = g + λ p                  (coupled weight decay: the gradient of λ/2 · ||p||² added to g)
        if μ != 0:
            b = g                    on the first step (torch: not (1 - τ) g)
            b = μ b + (1 - τ) g      afterwards
            g = g + μ b              if nesterov, else g = b
        p = p - lr g

    nesterov needs μ > 0 and τ = 0 (as in torch).
    """

    def __init__(self, params, *, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, maximize: bool = False,
                 on_update: Callable[[list[str]], None] | None = None, arrays: Mapping | None = None):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize)
        super().__init__(params, defaults, on_update=on_update, arrays=arrays)

    def _check_options(self, options: dict) -> None:
        super()._check_options(options)
        if not options["momentum"] >= 0:
            raise ConfigError(f"SGD: momentum must be >= 0, got {options['momentum']}")
        if options["nesterov"] and (options["momentum"] <= 0 or options["dampening"] != 0):
            raise ConfigError(f"SGD: nesterov needs momentum > 0 and dampening 0, got momentum={options['momentum']}, "
                              f"dampening={options['dampening']}")

    def _update(self, p, g, state, group):
        lr, mu, tau, wd = group["lr"], group["momentum"], group["dampening"], group["weight_decay"]
        if group["maximize"]:
            g = -g
        if wd != 0:
            g = g + wd * p
        if mu != 0:
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = g.copy()
            else:
                b = state["momentum_buffer"]
                b *= mu
                b += (1 - tau) * g
            b = state["momentum_buffer"]
            g = g + mu * b if group["nesterov"] else b
        p -= lr * g


# --------------------------------------------------------------------------------------------------
# RMSprop: PyTorch's and TensorFlow's
# --------------------------------------------------------------------------------------------------

class RMSprop(Optimizer):
    """RMSprop as torch.optim.RMSprop: mean square starts at 0, eps is added OUTSIDE the square root.

    Per parameter (α alpha, ε eps, λ weight_decay, μ momentum; v, ḡ, b start at 0):

        g = -g                             if maximize
        g = g + λ p
        v = α v + (1 - α) g²
        if centered:  ḡ = ḡ + (1 - α)(g - ḡ)        (= α ḡ + (1 - α) g)
                      d = sqrt(v - ḡ²) + ε
        else:         d = sqrt(v) + ε
        if μ > 0:     b = μ b + g / d;   p = p - lr b
        else:         p = p - lr g / d

    On the first step d ≈ sqrt(1 - α) |g|, so every weight moves by about lr / sqrt(1 - α) whatever
    the gradient's scale: TensorFlow's RMSProp (`TFRMSProp`) behaves very differently at the same lr.
    """

    def __init__(self, params, *, lr: float, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
                 momentum: float = 0.0, centered: bool = False, maximize: bool = False,
                 on_update: Callable[[list[str]], None] | None = None, arrays: Mapping | None = None):
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                        centered=centered, maximize=maximize)
        super().__init__(params, defaults, on_update=on_update, arrays=arrays)

    def _check_options(self, options: dict) -> None:
        super()._check_options(options)
        for key in ("alpha", "eps", "momentum"):
            if not options[key] >= 0:
                raise ConfigError(f"RMSprop: {key} must be >= 0, got {options[key]}")

    def _update(self, p, g, state, group):
        lr, alpha, eps, wd, mu = group["lr"], group["alpha"], group["eps"], group["weight_decay"], group["momentum"]
        for key, wanted in (("square_avg", True), ("momentum_buffer", mu > 0), ("grad_avg", group["centered"])):
            if wanted and key not in state:
                state[key] = np.zeros_like(p)  # v, b and ḡ start at 0
        if group["maximize"]:
            g = -g
        if wd != 0:
            g = g + wd * p
        v = state["square_avg"]
        v *= alpha
        v += (1 - alpha) * g * g
        if group["centered"]:
            g_avg = state["grad_avg"]
            g_avg += (1 - alpha) * (g - g_avg)
            d = np.sqrt(v - g_avg * g_avg) + eps
        else:
            d = np.sqrt(v) + eps
        if mu > 0:
            b = state["momentum_buffer"]
            b *= mu
            b += g / d
            p -= lr * b
        else:
            p -= lr * g / d


class TFRMSProp(Optimizer):
    """RMSProp as TensorFlow 1 (`tf.compat.v1.train.RMSPropOptimizer`, kernel ApplyRMSProp), the
    optimizer of the MobileNet V1 and V2 papers. Defaults are TF-slim's train_image_classifier.py
    flags (--rmsprop_decay=0.9 --rmsprop_momentum=0.9 --opt_epsilon=1.0); TF's own default epsilon
    is 1e-10. The papers used lr 0.045, weight decay 4e-5 (not on depthwise filters).

    Per parameter (ρ decay, μ momentum, ε epsilon, λ weight_decay):

        ms = 1, mom = 0, mg = 0            at the start: the mean square starts at ONE
        g   = g + λ p                      (slim's L2 regulariser λ/2 · ||p||², added to the loss)
        ms  = ms + (1 - ρ)(g² - ms)        (= ρ ms + (1 - ρ) g²)
        if centered:  mg = mg + (1 - ρ)(g - mg);   d = sqrt(ms - mg² + ε)
        else:         d = sqrt(ms + ε)                 <- ε INSIDE the square root
        mom = μ mom + lr g / d             <- lr INSIDE the momentum accumulator
        p   = p - mom

    Differences from torch's RMSprop: ms starts at 1 (not 0), so early steps are about lr·g, not
    lr·sign(g)·const; ε sits inside the sqrt; and a change of lr only scales new momentum terms.

    TF1 turns Python-float hyperparameters into float32 tensors, even for float64 variables (lr
    0.045 becomes 0.04500000178813934): to reproduce a float64 TensorFlow run bit for bit, pass
    them rounded, e.g. lr=float(np.float32(0.045)) (measured: then equal to TF 2.21 exactly).
    """

    def __init__(self, params, *, lr: float, decay: float = 0.9, momentum: float = 0.9, epsilon: float = 1.0,
                 weight_decay: float = 0.0, centered: bool = False,
                 on_update: Callable[[list[str]], None] | None = None, arrays: Mapping | None = None):
        defaults = dict(lr=lr, decay=decay, momentum=momentum, epsilon=epsilon, weight_decay=weight_decay,
                        centered=centered)
        super().__init__(params, defaults, on_update=on_update, arrays=arrays)

    def _check_options(self, options: dict) -> None:
        super()._check_options(options)
        if not 0 <= options["decay"] <= 1:
            raise ConfigError(f"TFRMSProp: decay must be in [0, 1], got {options['decay']}")
        for key in ("epsilon", "momentum"):
            if not options[key] >= 0:
                raise ConfigError(f"TFRMSProp: {key} must be >= 0, got {options[key]}")

    def _update(self, p, g, state, group):
        lr, rho, mu, eps, wd = group["lr"], group["decay"], group["momentum"], group["epsilon"], group["weight_decay"]
        if "ms" not in state:
            state["ms"] = np.ones_like(p)    # ms starts at ONE (TF's "rms" slot initialiser)
            state["mom"] = np.zeros_like(p)
        if group["centered"] and "mg" not in state:
            state["mg"] = np.zeros_like(p)
        if wd != 0:
            g = g + wd * p
        ms, mom = state["ms"], state["mom"]
        ms += (1 - rho) * (g * g - ms)
        if group["centered"]:
            mg = state["mg"]
            mg += (1 - rho) * (g - mg)
            d = np.sqrt(ms - mg * mg + eps)
        else:
            d = np.sqrt(ms + eps)
        mom *= mu
        mom += lr * g / d
        p -= mom


# --------------------------------------------------------------------------------------------------
# learning-rate schedules
# --------------------------------------------------------------------------------------------------

class LRSchedule:
    """Sets `group["lr"] = lr_at(step, base_lr)` in every group of an optimizer.

    base_lr is each group's lr when the schedule is built; `step` counts the calls of `step()`, so
    the lr of optimizer step t (t = 0, 1, ...) is lr_at(t, base_lr). Call `schedule.step()` after
    `optimizer.step(...)`, as with torch's schedulers. The formulas are closed-form in t, so a
    restored schedule (`load_state_dict`) gives the same lrs bit for bit; torch computes most of
    its schedules recursively from the previous lr, equal to ~1e-16 relative per step.
    """

    def __init__(self, optimizer: Optimizer):
        self.optimizer = optimizer
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.last_step = 0
        self._apply()

    def lr_at(self, step: int, base_lr: float) -> float:
        raise NotImplementedError

    def _apply(self) -> None:
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = self.lr_at(self.last_step, base_lr)

    def step(self) -> None:
        """Advance one step and set the groups' lr for the next optimizer step."""
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        """The lr of every group, as set by the last `step()` (or the constructor)."""
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"last_step": self.last_step, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state_dict: Mapping) -> None:
        """Restore the step count and base lrs, and set the groups' lr accordingly."""
        if len(state_dict["base_lrs"]) != len(self.optimizer.param_groups):
            raise ConfigError(f"{type(self).__name__}.load_state_dict: {len(state_dict['base_lrs'])} base lrs for "
                              f"{len(self.optimizer.param_groups)} parameter groups")
        self.last_step = int(state_dict["last_step"])
        self.base_lrs = list(state_dict["base_lrs"])
        self._apply()


class ConstantSchedule(LRSchedule):
    """lr(t) = base_lr."""

    def lr_at(self, step, base_lr):
        return base_lr


class LinearSchedule(LRSchedule):
    """Linear change of the lr factor from `start_factor` to `end_factor` over `total_steps`
    (torch.optim.lr_scheduler.LinearLR), constant afterwards:

        lr(t) = base_lr · (s + (e - s) · min(t, T) / T)

    Linear warm-up: LinearSchedule(opt, start_factor=0.1, end_factor=1.0, total_steps=500).
    Linear decay to zero: LinearSchedule(opt, start_factor=1.0, end_factor=0.0, total_steps=n).
    """

    def __init__(self, optimizer: Optimizer, *, start_factor: float, end_factor: float, total_steps: int):
        if total_steps < 1:
            raise ConfigError(f"LinearSchedule: total_steps must be >= 1, got {total_steps}")
        if start_factor < 0 or end_factor < 0:
            raise ConfigError(f"LinearSchedule: factors must be >= 0, got start_factor={start_factor}, "
                              f"end_factor={end_factor}")
        self.start_factor, self.end_factor, self.total_steps = start_factor, end_factor, int(total_steps)
        super().__init__(optimizer)

    def lr_at(self, step, base_lr):
        s, e, T = self.start_factor, self.end_factor, self.total_steps
        return base_lr * (s + (e - s) * min(step, T) / T)


class StepDecay(LRSchedule):
    """Multiply the lr by `gamma` every `step_size` steps (torch's StepLR; TF's exponential_decay
    with staircase=True):

        lr(t) = base_lr · gamma ^ floor(t / step_size)        staircase=True
        lr(t) = base_lr · gamma ^ (t / step_size)             staircase=False (TF's smooth decay)

    TF-slim's MobileNet V2 recipe: gamma 0.98 per epoch (README: every 2.5 epochs on one GPU), i.e.
    step_size = steps_per_epoch (int(num_samples / batch_size * num_epochs_per_decay) in slim).
    """

    def __init__(self, optimizer: Optimizer, *, step_size: int, gamma: float, staircase: bool = True):
        if step_size < 1:
            raise ConfigError(f"StepDecay: step_size must be >= 1, got {step_size}")
        if gamma < 0:
            raise ConfigError(f"StepDecay: gamma must be >= 0, got {gamma}")
        self.step_size, self.gamma, self.staircase = int(step_size), gamma, staircase
        super().__init__(optimizer)

    def lr_at(self, step, base_lr):
        exponent = step // self.step_size if self.staircase else step / self.step_size
        return base_lr * self.gamma ** exponent


class CosineSchedule(LRSchedule):
    """Cosine decay from base_lr to `min_lr` at step `total_steps`, after an optional linear warm-up:

        t < W:        lr(t) = base_lr · (s + (1 - s) · t / W)                 (W warmup_steps, s warmup_start_factor)
        W <= t <= T:  lr(t) = min_lr + (base_lr - min_lr) · (1 + cos(π (t - W) / (T - W))) / 2
        t > T:        lr(t) = min_lr

    Without warm-up this is torch's CosineAnnealingLR(T_max=T, eta_min=min_lr); with it,
    SequentialLR([LinearLR(start_factor=s, total_iters=W), CosineAnnealingLR(T_max=T - W)], [W]).
    (torch's cosine climbs back up after T_max; this one stays at min_lr.)
    """

    def __init__(self, optimizer: Optimizer, *, total_steps: int, warmup_steps: int = 0,
                 warmup_start_factor: float = 0.1, min_lr: float = 0.0):
        if not 0 <= warmup_steps < total_steps:
            raise ConfigError(f"CosineSchedule: need 0 <= warmup_steps < total_steps, got warmup_steps={warmup_steps}, "
                              f"total_steps={total_steps}")
        if warmup_start_factor < 0 or min_lr < 0:
            raise ConfigError(f"CosineSchedule: warmup_start_factor and min_lr must be >= 0, got "
                              f"{warmup_start_factor}, {min_lr}")
        self.total_steps, self.warmup_steps = int(total_steps), int(warmup_steps)
        self.warmup_start_factor, self.min_lr = warmup_start_factor, min_lr
        super().__init__(optimizer)

    def lr_at(self, step, base_lr):
        W, T, s = self.warmup_steps, self.total_steps, self.warmup_start_factor
        if step < W:
            return base_lr * (s + (1 - s) * step / W)
        if step > T:
            return self.min_lr
        return self.min_lr + (base_lr - self.min_lr) * (1 + math.cos(math.pi * (step - W) / (T - W))) / 2


# --------------------------------------------------------------------------------------------------
# moving average of the weights
# --------------------------------------------------------------------------------------------------

class ExponentialMovingAverage:
    """A moving average ("shadow" copy) of the weights, as tf.train.ExponentialMovingAverage:

        shadow = params at construction (copies)
        apply():  d = decay,  or  min(decay, (1 + n) / (10 + n))  with use_num_updates
                  shadow = shadow - (1 - d)(shadow - p)       (= d · shadow + (1 - d) · p)
                  n = n + 1

    n counts the previous `apply` calls (TF's num_updates = the global step before the update); the
    (1 + n)/(10 + n) ramp lets the average forget the random initial weights early. TF-slim's
    MobileNet V2 recipe: decay 0.9999. Evaluate with the averages: `ema.copy_to(model.params)`.
    """

    def __init__(self, params: Mapping[str, np.ndarray], *, decay: float, use_num_updates: bool = False):
        if not 0 <= decay <= 1:
            raise ConfigError(f"ExponentialMovingAverage: decay must be in [0, 1], got {decay}")
        for name, p in params.items():
            if not isinstance(p, np.ndarray) or p.dtype.kind != "f":
                raise ConfigError(f"ExponentialMovingAverage: {name!r} must be a float NumPy array "
                                  f"(leave num_batches_tracked out)")
        self.decay, self.use_num_updates = decay, use_num_updates
        self.num_updates = 0
        self.shadow: dict[str, np.ndarray] = {name: p.copy() for name, p in params.items()}

    def current_decay(self) -> float:
        """The decay the next `apply` uses."""
        if self.use_num_updates:
            return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        return self.decay

    def apply(self, params: Mapping[str, np.ndarray]) -> None:
        """Move every shadow array towards the current value in `params` (same names, same shapes)."""
        missing = [name for name in self.shadow if name not in params]
        if missing:
            raise ConfigError(f"ExponentialMovingAverage.apply: no value for {missing[:3]}")
        for name, s in self.shadow.items():
            if np.shape(params[name]) != s.shape:
                raise ShapeError(f"ExponentialMovingAverage.apply: {name!r} has shape {np.shape(params[name])}, "
                                 f"expected {s.shape}")
        d = self.current_decay()
        for name, s in self.shadow.items():
            s -= (1 - d) * (s - params[name])
        self.num_updates += 1

    def copy_to(self, params: Mapping[str, np.ndarray]) -> list[str]:
        """Write the averages into the arrays of `params` in place (only the names it holds); returns them."""
        written = []
        for name, s in self.shadow.items():
            if name in params:
                if params[name].shape != s.shape:
                    raise ShapeError(f"ExponentialMovingAverage.copy_to: {name!r} has shape {params[name].shape}, "
                                     f"expected {s.shape}")
                params[name][...] = s
                written.append(name)
        return written

    def state_dict(self) -> dict:
        return {"decay": self.decay, "use_num_updates": self.use_num_updates, "num_updates": self.num_updates,
                "shadow": {name: s.copy() for name, s in self.shadow.items()}}

    def load_state_dict(self, state_dict: Mapping) -> None:
        if set(state_dict["shadow"]) != set(self.shadow):
            raise ConfigError("ExponentialMovingAverage.load_state_dict: the saved averages have other names")
        self.decay, self.use_num_updates = state_dict["decay"], bool(state_dict["use_num_updates"])
        self.num_updates = int(state_dict["num_updates"])
        self.shadow = {name: np.array(state_dict["shadow"][name], dtype=self.shadow[name].dtype, copy=True)
                       for name in self.shadow}
