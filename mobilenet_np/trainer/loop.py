"""The training loop: a model, a dataset, an optimizer; epochs of steps, evaluation, logs, checkpoints.

    trainer = Trainer(model, train_set, val_set, TrainSettings(epochs=3, batch_size=64, lr=0.05), processor)
    trainer.fit()                                  # every epoch: train steps, then evaluation on val_set
    trainer.save_checkpoint("ckpt.npz")            # weights, optimizer, schedule, EMA, RNG, data position
    trainer = Trainer.from_checkpoint("ckpt.npz", train_set, val_set)   # continues bit for bit

One training step (`train_step`) is

    x (B, 3, H, W), targets  -> forward in train mode through the network's Graph (training/graph.py)
                             -> transformers' loss of the head and d loss / d logits
                             -> backward: d loss / d every trainable tensor
                             -> optimizer.step(grads) (training/optim.py), schedule.step(), ema.apply()

Nothing is drawn from a global random state: the data order and augmentation come from counters
(trainer/data.py), dropout from the model's generator (`model.mode.rng`), whose state the checkpoint
keeps. So a run stopped after step k and resumed from its checkpoint computes the same numbers as
the run that never stopped (tests/test_train_loop.py checks it bit for bit).

Freezing: "backbone" trains only the head (the tensors outside `model.base_model_prefix`);
"batchnorm" keeps every BatchNorm in inference mode (running statistics used and left unchanged,
gamma and beta not trained: TF DeepLab's fine_tune_batch_norm=False for small batches) while dropout
still trains (`model.train(frozen_batch_norm=True)`: PyTorch's `.eval()` on the BatchNorm modules).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import ops
from ..errors import ConfigError, MobileNetError
from ..evaluation.metrics import confusion_matrix, segmentation_scores
from ..fileio import atomic_output
from ..image_processing import image_processor_class
from ..networks import model_class
from ..training import graph as training_graph
from ..training import optim
from . import data as D

try:  # optional: the curves' plot (the `train` extra)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
except ImportError:  # no plot without matplotlib; everything else works
    Figure = None

__all__ = ["TrainSettings", "Trainer", "init_weights", "with_labels", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "mobilenet-np-checkpoint/1"
OPTIMIZERS = ("sgd", "rmsprop", "tf-rmsprop")
SCHEDULES = ("constant", "step", "cosine", "linear")
FREEZE = ("backbone", "batchnorm")


@dataclasses.dataclass
class TrainSettings:
    """Everything a run is made of besides the model and the data (all stored in checkpoints and logs).

    optimizer: "sgd" (torch.optim.SGD), "rmsprop" (torch.optim.RMSprop), "tf-rmsprop" (TF1's RMSProp).
    momentum / nesterov: SGD's and both RMSprops' momentum. rmsprop_decay: RMSprop's alpha / TF's decay.
    eps: RMSprop's eps (None: torch's 1e-8 / TF-slim's 1.0).
    weight_decay, decay_groups: coupled L2 decay; "tf-slim" leaves depthwise filters, BatchNorm and
        biases undecayed (optim.split_decay_groups), "all" decays every trainable tensor.
    schedule: "constant", "step" (x gamma every step_epochs epochs), "cosine" (to min_lr at the end),
        "linear" (to 0 at the end); warmup_steps of linear warm-up from warmup_factor * lr first.
    ema_decay: a moving average of the weights (optim.ExponentialMovingAverage), evaluated too.
    batch_norm_momentum, dropout: model.train()'s meanings ("transformers", "tensorflow" or a number).
    freeze: any of "backbone", "batchnorm" (see the module docstring).
    crop_padding, flip: augmentation (data.Augmentation). shuffle: a new order every epoch.
    dtype: "float32" or "float64" (the golden path). checkpoint_every: steps between checkpoints (0: none).
    channels_last: the fast kernels (training/channels_last.py) rather than backward.py's readable ones.
    """

    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    rmsprop_decay: float = 0.9
    eps: float | None = None
    weight_decay: float = 0.0
    decay_groups: str = "tf-slim"
    schedule: str = "constant"
    warmup_steps: int = 0
    warmup_factor: float = 0.1
    step_epochs: float = 1.0
    gamma: float = 0.1
    min_lr: float = 0.0
    ema_decay: float | None = None
    batch_norm_momentum: str | float = "transformers"
    dropout: str | float = "transformers"
    freeze: tuple[str, ...] = ()
    crop_padding: int = 0
    flip: bool = False
    shuffle: bool = True
    seed: int = 0
    dtype: str = "float32"
    checkpoint_every: int = 0
    eval_batch_size: int = 256
    channels_last: bool = True

    def __post_init__(self):
        self.freeze = tuple(self.freeze)
        checks = [(self.epochs >= 1, "epochs", ">= 1", self.epochs),
                  (self.batch_size >= 2, "batch_size", ">= 2 (train-mode BatchNorm needs 2 values per channel)",
                   self.batch_size),
                  (self.lr >= 0, "lr", ">= 0", self.lr),
                  (self.optimizer in OPTIMIZERS, "optimizer", f"one of {OPTIMIZERS}", self.optimizer),
                  (self.schedule in SCHEDULES, "schedule", f"one of {SCHEDULES}", self.schedule),
                  (self.decay_groups in ("tf-slim", "all"), "decay_groups", "'tf-slim' or 'all'", self.decay_groups),
                  (all(f in FREEZE for f in self.freeze), "freeze", f"a subset of {FREEZE}", self.freeze),
                  (self.dtype in ("float32", "float64"), "dtype", "'float32' or 'float64'", self.dtype),
                  (self.warmup_steps >= 0, "warmup_steps", ">= 0", self.warmup_steps),
                  (self.checkpoint_every >= 0, "checkpoint_every", ">= 0", self.checkpoint_every),
                  (self.ema_decay is None or 0 <= self.ema_decay <= 1, "ema_decay", "in [0, 1]", self.ema_decay),
                  (self.step_epochs > 0, "step_epochs", "> 0", self.step_epochs),
                  (self.eval_batch_size >= 1, "eval_batch_size", ">= 1", self.eval_batch_size)]
        for ok, field, expected, value in checks:
            if not ok:
                raise ConfigError(f"training setting {field!r} must be {expected}, got {value!r}")

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainSettings":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown training settings {unknown}")
        return cls(**d)


# --------------------------------------------------------------------------------------------------
# models for training: fresh weights, a new head
# --------------------------------------------------------------------------------------------------

def init_weights(model, seed: int, keys=None) -> None:
    """Weights for training from scratch (in place, float32), drawn from default_rng(seed):
    convolution weights He-normal N(0, 2 / fan_in) (fan_in = C_in/groups * kH * kW), convolution
    biases 0, BatchNorm weight 1, bias 0, running mean 0, running variance 1, counter 0 (PyTorch's
    BatchNorm init), the linear classifier N(0, 0.01^2) with bias 0 (torchvision's MobileNetV2).
    `keys`: only these tensors (the rest stay)."""
    rng = np.random.default_rng(seed)
    values = {}
    for key, shape in model.parameter_shapes().items():
        if keys is not None and key not in keys:
            continue
        if key.endswith("num_batches_tracked"):
            values[key] = np.array(0, dtype=np.int64)
            continue
        if key.endswith(("normalization.weight", "running_var")):
            value = np.ones(shape)
        elif key.endswith(("bias", "running_mean")):
            value = np.zeros(shape)
        elif len(shape) == 2:                                       # the linear classifier (out, in)
            value = rng.normal(0.0, 0.01, shape)
        else:
            value = rng.normal(0.0, math.sqrt(2.0 / int(np.prod(shape[1:]))), shape)
        values[key] = value.astype(np.float32)
    model.params.update(values)


def with_labels(model, classes: list[str], seed: int):
    """The model with a head for `classes` (id2label from them): every tensor whose name and shape fit
    is kept, the others (the classifier of another number of labels) are drawn by `init_weights`.
    Returns `model` itself when its labels are these already."""
    config = model.config
    if config.num_labels == len(classes) and [config.id2label[i] for i in range(len(classes))] == list(classes):
        return model
    fields = config.to_dict()
    fields.update(num_labels=len(classes), id2label={str(i): c for i, c in enumerate(classes)})
    fields.pop("label2id", None)
    fresh = type(model)(type(config).from_dict(fields), seed=None)
    shapes = fresh.parameter_shapes()
    kept = {k: v for k, v in model.params.items() if k in shapes and np.shape(v) == tuple(shapes[k])}
    fresh.params.update(kept)
    init_weights(fresh, seed, keys=set(shapes) - set(kept))
    fresh.metadata = getattr(model, "metadata", {})
    return fresh


def depthwise_weight_names(model) -> list[str]:
    return [f"{layer.name}.convolution.weight" for layer in model.conv_layers() if layer.kind == "depthwise"]


# --------------------------------------------------------------------------------------------------
# the schedule with warm-up
# --------------------------------------------------------------------------------------------------

class Warmup(optim.LRSchedule):
    """Linear warm-up, then another schedule's formula counted from the end of the warm-up:

        t < W:   lr(t) = base_lr · (s + (1 - s) · t / W)
        t >= W:  lr(t) = after.lr_at(t - W, base_lr)
    """

    def __init__(self, optimizer, after: optim.LRSchedule, warmup_steps: int, start_factor: float):
        self.after, self.warmup_steps, self.start_factor = after, int(warmup_steps), start_factor
        super().__init__(optimizer)
        self.base_lrs = list(after.base_lrs)
        self._apply()

    def lr_at(self, step, base_lr):
        W, s = self.warmup_steps, self.start_factor
        if step < W:
            return base_lr * (s + (1 - s) * step / W)
        return self.after.lr_at(step - W, base_lr)


# --------------------------------------------------------------------------------------------------
# the trainer
# --------------------------------------------------------------------------------------------------

class Trainer:
    """One training run (see the module docstring). Attributes a caller reads:

    model, optimizer, schedule, ema (or None), step (optimizer steps done), steps_per_epoch,
    total_steps, history (one dict per finished epoch), step_log (per step: loss, accuracy, lr).
    """

    def __init__(self, model, train_set: D.Dataset, val_set: D.Dataset | None, settings: TrainSettings,
                 processor, extra: dict | None = None):
        self.settings, self.processor, self.extra = settings, processor, dict(extra or {})
        self.train_set, self.val_set = train_set, val_set
        task = "semantic-segmentation" if "Segmentation" in type(model).__name__ else "image-classification"
        if not type(model).__name__.endswith(("ForImageClassification", "ForSemanticSegmentation")):
            raise ConfigError(f"{type(model).__name__} has no head to train: use a ...ForImageClassification or "
                              f"...ForSemanticSegmentation model")
        for dataset in (train_set, val_set):
            if dataset is not None and dataset.task != task:
                raise ConfigError(f"{dataset.source}: a {dataset.task} dataset, the model does {task}")
        ignore = getattr(model.config, "semantic_loss_ignore_index", D.IGNORE_INDEX)
        if task != "image-classification" and ignore != D.IGNORE_INDEX:
            raise ConfigError(f"config.semantic_loss_ignore_index is {ignore}, but training masks mark ignored pixels "
                              f"(and crop padding) with {D.IGNORE_INDEX}, as Pascal VOC: set it to {D.IGNORE_INDEX}")
        self.task = task
        dtype = np.float64 if settings.dtype == "float64" else np.float32
        if any(v.dtype != dtype for v in model.params.values() if v.dtype.kind == "f"):
            metadata = getattr(model, "metadata", {})
            model = model.astype(dtype)
            model.metadata = metadata
        self.model, self.dtype = model, dtype
        if "backbone" in settings.freeze:
            model.freeze(model.base_model_prefix + ".")
        if "batchnorm" in settings.freeze:
            model.freeze(".normalization.")
        model.train(True, rng=np.random.default_rng([settings.seed, 0xD20]),
                    batch_norm_momentum=settings.batch_norm_momentum, dropout=settings.dropout,
                    frozen_batch_norm="batchnorm" in settings.freeze)
        trainable = model.trainable_parameters()
        if not trainable:
            raise ConfigError("nothing to train: every tensor is frozen")
        groups = (optim.split_decay_groups(trainable, depthwise=depthwise_weight_names(model))
                  if settings.decay_groups == "tf-slim" else [{"params": trainable}])
        self.optimizer = self._optimizer(groups, lambda names: model.params.mark_changed())
        self.steps_per_epoch = len(D.batch_indices(len(train_set), settings.batch_size, 0, settings.seed, False))
        self.total_steps = settings.epochs * self.steps_per_epoch
        self.schedule = self._schedule()
        self.ema = (optim.ExponentialMovingAverage(trainable, decay=settings.ema_decay)
                    if settings.ema_decay is not None else None)
        self.augmentation = D.Augmentation(settings.crop_padding, settings.flip)
        self.step = 0
        self.elapsed = 0.0
        self.history: list[dict] = []
        self.step_log = {"loss": [], "accuracy": [], "lr": []}

    def _optimizer(self, groups, on_update):
        s = self.settings
        if s.optimizer == "sgd":
            return optim.SGD(groups, lr=s.lr, momentum=s.momentum, nesterov=s.nesterov, weight_decay=s.weight_decay,
                             on_update=on_update)
        if s.optimizer == "rmsprop":
            return optim.RMSprop(groups, lr=s.lr, alpha=s.rmsprop_decay, eps=1e-8 if s.eps is None else s.eps,
                                 momentum=s.momentum, weight_decay=s.weight_decay, on_update=on_update)
        return optim.TFRMSProp(groups, lr=s.lr, decay=s.rmsprop_decay, momentum=s.momentum,
                               epsilon=1.0 if s.eps is None else s.eps, weight_decay=s.weight_decay,
                               on_update=on_update)

    def _schedule(self) -> optim.LRSchedule:
        s, total = self.settings, self.total_steps
        after_warmup = max(total - s.warmup_steps, 1)
        if s.schedule == "cosine":
            if s.warmup_steps >= total:
                raise ConfigError(f"warmup_steps {s.warmup_steps} must be fewer than the {total} steps of the run")
            return optim.CosineSchedule(self.optimizer, total_steps=total, warmup_steps=s.warmup_steps,
                                        warmup_start_factor=s.warmup_factor, min_lr=s.min_lr)
        if s.schedule == "step":
            inner = optim.StepDecay(self.optimizer, step_size=max(1, round(s.step_epochs * self.steps_per_epoch)),
                                    gamma=s.gamma)
        elif s.schedule == "linear":
            inner = optim.LinearSchedule(self.optimizer, start_factor=1.0, end_factor=0.0, total_steps=after_warmup)
        else:
            inner = optim.ConstantSchedule(self.optimizer)
        return Warmup(self.optimizer, inner, s.warmup_steps, s.warmup_factor) if s.warmup_steps else inner

    # -- one step -------------------------------------------------------------------------------------
    def batch(self, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(pixel values (B, 3, H, W), targets) of batch `index` of epoch `epoch`, augmented."""
        s = self.settings
        indices = D.batch_indices(len(self.train_set), s.batch_size, epoch, s.seed, s.shuffle)[index]
        images, targets = self.train_set.images[indices], self.train_set.targets[indices]
        if self.augmentation.crop_padding or self.augmentation.flip:
            rng = np.random.default_rng([s.seed, epoch, index])
            images, targets = D.augment(images, targets, self.augmentation, rng)
        return D.pixel_values(images, self.processor, self.model.config.num_channels, self.dtype), targets

    def train_step(self, x: np.ndarray, targets: np.ndarray) -> dict:
        """One optimizer step on a batch; returns {"loss", "accuracy", "lr"} (the lr this step used)."""
        model = self.model
        x = model._checked_input(x, targets)
        result, tape = training_graph.forward(model.graph(), model.params, x, model.mode,
                                             channels_last=self.settings.channels_last)
        outputs = model.outputs_from(result, False)
        loss, dlogits = model.loss_from(outputs, targets)
        grads = training_graph.backward(tape, dlogits)
        grads = {k: g for k, g in grads.items() if k in self.optimizer.params}
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step(grads)
        self.schedule.step()
        if self.ema is not None:
            self.ema.apply(self.optimizer.params)
        return {"loss": float(loss), "accuracy": self._accuracy(outputs.logits, targets), "lr": lr}

    def _accuracy(self, logits: np.ndarray, targets: np.ndarray) -> float:
        if self.task == "image-classification":
            return float(np.mean(np.argmax(logits, axis=1) == targets))
        predicted = np.argmax(ops.interpolate_bilinear(logits, targets.shape[-2:], False), axis=1)
        kept = targets != D.IGNORE_INDEX
        return float(np.mean(predicted[kept] == targets[kept])) if kept.any() else float("nan")

    # -- evaluation -----------------------------------------------------------------------------------
    def evaluate(self, dataset: D.Dataset, use_ema: bool = False) -> dict:
        """Loss and accuracy (segmentation: pixel accuracy and mean IoU) of the model in eval mode on
        `dataset`, without augmentation; with `use_ema`, of the moving-average weights."""
        model, training = self.model, self.model.training
        saved = None
        if use_ema:
            saved = {k: model.params[k].copy() for k in self.ema.shadow}
            self.ema.copy_to(model.params)
            model.params.mark_changed()
        model.eval()
        try:
            total_loss, correct, count = 0.0, 0, 0
            confusion = np.zeros((model.config.num_labels,) * 2, dtype=np.int64)
            for start in range(0, len(dataset), self.settings.eval_batch_size):
                images = dataset.images[start:start + self.settings.eval_batch_size]
                targets = dataset.targets[start:start + self.settings.eval_batch_size]
                x = D.pixel_values(images, self.processor, model.config.num_channels, self.dtype)
                outputs = model(x)
                loss, _ = model.loss_from(outputs, targets)
                if self.task == "image-classification":
                    total_loss += float(loss) * len(targets)
                    correct += int(np.sum(np.argmax(outputs.logits, axis=1) == targets))
                    count += len(targets)
                else:
                    kept = int(np.sum(targets != D.IGNORE_INDEX))
                    total_loss += float(loss) * kept if kept else 0.0
                    count += kept
                    predicted = np.argmax(ops.interpolate_bilinear(outputs.logits, targets.shape[-2:], False), axis=1)
                    confusion += confusion_matrix(targets, predicted, model.config.num_labels)
        finally:
            model.train(training)
            if saved is not None:
                for k, v in saved.items():
                    model.params[k][...] = v
                model.params.mark_changed()
        if self.task == "image-classification":
            return {"loss": total_loss / count, "accuracy": correct / count}
        scores = segmentation_scores(confusion)
        return {"loss": total_loss / count if count else float("nan"), "accuracy": scores["pixel_accuracy"],
                "mean_iou": scores["mean_iou"]}

    # -- the run --------------------------------------------------------------------------------------
    def fit(self, *, stop_after: int | None = None, on_step: Callable[["Trainer", dict], None] | None = None,
            on_epoch: Callable[["Trainer", dict], None] | None = None, checkpoint_path=None,
            progress: Callable[[int, int], Any] | None = None) -> list[dict]:
        """Train until `total_steps` (or until step `stop_after`), evaluating at every epoch's end.

        on_step(trainer, record): after every step; record has "epoch", "batch", "loss", "accuracy", "lr",
        "x", "targets". on_epoch(trainer, row): after every evaluation. checkpoint_path: written every
        settings.checkpoint_every steps (after that step's evaluation, if any). progress(epoch, start):
        a context manager factory wrapping range(start, steps_per_epoch) (e.g. a tqdm bar); returns history."""
        end = self.total_steps if stop_after is None else min(stop_after, self.total_steps)
        while self.step < end:
            epoch, start = divmod(self.step, self.steps_per_epoch)
            steps = range(start, self.steps_per_epoch)
            bar = progress(epoch, start) if progress is not None else None
            for index in (bar if bar is not None else steps):
                began = time.perf_counter()
                x, targets = self.batch(epoch, index)
                record = self.train_step(x, targets)
                for key in self.step_log:
                    self.step_log[key].append(record[key])
                self.step += 1
                if bar is not None and hasattr(bar, "set_postfix"):
                    window = slice(epoch * self.steps_per_epoch, self.step)
                    bar.set_postfix(loss=f"{np.mean(self.step_log['loss'][window]):.4f}",
                                    acc=f"{np.nanmean(self.step_log['accuracy'][window]):.3f}", refresh=False)
                if on_step is not None:
                    on_step(self, {"epoch": epoch, "batch": index, **record, "x": x, "targets": targets})
                self.elapsed += time.perf_counter() - began
                if index == self.steps_per_epoch - 1:
                    row = self._end_of_epoch(epoch)
                    if on_epoch is not None:
                        on_epoch(self, row)
                if checkpoint_path is not None and self.settings.checkpoint_every and \
                        self.step % self.settings.checkpoint_every == 0:
                    self.save_checkpoint(checkpoint_path)
                if self.step >= end:
                    break
            if bar is not None and hasattr(bar, "close"):
                bar.close()
        return self.history

    def _end_of_epoch(self, epoch: int) -> dict:
        began = time.perf_counter()
        window = slice(epoch * self.steps_per_epoch, (epoch + 1) * self.steps_per_epoch)
        row = {"epoch": epoch + 1, "step": self.step, "lr": self.step_log["lr"][window.stop - 1],
               "train_loss": float(np.mean(self.step_log["loss"][window])),
               "train_accuracy": float(np.nanmean(self.step_log["accuracy"][window]))}
        if self.val_set is not None:
            scores = self.evaluate(self.val_set)
            row.update({f"val_{k}": v for k, v in scores.items()})
            if self.ema is not None:
                row.update({f"ema_val_{k}": v for k, v in self.evaluate(self.val_set, use_ema=True).items()})
        self.elapsed += time.perf_counter() - began
        row["seconds"] = round(self.elapsed, 3)
        self.history.append(row)
        return row

    # -- checkpoints ----------------------------------------------------------------------------------
    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(JSON-able metadata, arrays) of everything a resumed run needs."""
        optimizer = self.optimizer.state_dict()
        arrays = {f"params/{k}": np.asarray(v) for k, v in self.model.params.items()}
        for name, entries in optimizer["state"].items():
            arrays.update({f"optimizer/{name}/{key}": v for key, v in entries.items()})
        meta = {"format": CHECKPOINT_FORMAT, "architecture": type(self.model).__name__,
                "config": self.model.config.to_dict(), "image_processor": self.processor.to_dict(),
                "settings": self.settings.to_dict(), "step": self.step, "elapsed": self.elapsed,
                "history": self.history, "step_log": self.step_log,
                "optimizer_groups": optimizer["param_groups"], "schedule": self.schedule.state_dict(),
                "dropout_rng": self.model.mode.rng.bit_generator.state,
                "data": {"train": self.train_set.fingerprint(),
                         "val": self.val_set.fingerprint() if self.val_set is not None else None},
                "extra": self.extra, "ema": None}
        if self.ema is not None:
            ema = self.ema.state_dict()
            meta["ema"] = {k: v for k, v in ema.items() if k != "shadow"}
            arrays.update({f"ema/{k}": v for k, v in ema["shadow"].items()})
        return meta, arrays

    def save_checkpoint(self, path) -> Path:
        """Write the checkpoint (.npz: "meta" JSON + arrays) atomically: a crash never leaves half a file."""
        meta, arrays = self.state()
        with atomic_output(path, overwrite=True) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
        return Path(path)

    @staticmethod
    def read_checkpoint(path) -> tuple[dict, dict[str, np.ndarray]]:
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
            meta = json.loads(str(arrays.pop("meta")))
        except FileNotFoundError:
            raise MobileNetError(f"{path}: no such checkpoint") from None
        except (OSError, ValueError, KeyError) as e:
            raise MobileNetError(f"{path}: not a mobilenet-np checkpoint ({str(e).splitlines()[0][:120]})") from None
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise MobileNetError(f"{path}: checkpoint format {meta.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
        return meta, arrays

    @classmethod
    def from_checkpoint(cls, path, train_set: D.Dataset, val_set: D.Dataset | None) -> "Trainer":
        """The run saved in `path`, ready to continue (`fit()`), on the same data (checked)."""
        meta, arrays = cls.read_checkpoint(path)
        for name, dataset in (("train", train_set), ("val", val_set)):
            found = dataset.fingerprint() if dataset is not None else None
            if found != meta["data"][name]:
                raise MobileNetError(f"{path}: the checkpoint was made on other {name} data ({meta['data'][name]}), "
                                     f"got {found}")
        architecture = model_class(meta["architecture"])
        model = architecture(architecture.config_class.from_dict(meta["config"]), seed=None)
        model.load_state_dict({k[len("params/"):]: v for k, v in arrays.items() if k.startswith("params/")},
                              source=str(path))
        processor = image_processor_class(meta["image_processor"].get("image_processor_type")).from_dict(
            meta["image_processor"])
        trainer = cls(model, train_set, val_set, TrainSettings.from_dict(meta["settings"]), processor, meta["extra"])
        state: dict[str, dict] = {}
        for key, value in arrays.items():
            if key.startswith("optimizer/"):
                name, entry = key[len("optimizer/"):].rsplit("/", 1)
                state.setdefault(name, {})[entry] = value
        trainer.optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer_groups"]})
        trainer.schedule.load_state_dict(meta["schedule"])
        if trainer.ema is not None:
            trainer.ema.load_state_dict({**meta["ema"], "shadow": {k[len("ema/"):]: v for k, v in arrays.items()
                                                                   if k.startswith("ema/")}})
        trainer.model.mode.rng.bit_generator.state = meta["dropout_rng"]
        trainer.step, trainer.elapsed = int(meta["step"]), float(meta["elapsed"])
        trainer.history, trainer.step_log = meta["history"], meta["step_log"]
        return trainer

    # -- results --------------------------------------------------------------------------------------
    def save_model(self, path, overwrite: bool = False, use_ema: bool = False) -> Path:
        """The trained network as a normal weights file (float32), with its image processor and provenance."""
        model = self.model
        tensors = {k: (v.astype(np.float32) if v.dtype.kind == "f" else v) for k, v in model.state_dict().items()}
        if use_ema:
            tensors.update({k: v.astype(np.float32) for k, v in self.ema.shadow.items()})
        last = self.history[-1] if self.history else {}
        provenance = {"source": "mobilenet-np train", "steps": self.step, "settings": self.settings.to_dict(),
                      "train_data": self.train_set.source, "final": {k: v for k, v in last.items()},
                      "weights": "moving average" if use_ema else "last step", **self.extra}
        fresh = type(model)(model.config, seed=None)
        fresh.params.update(tensors)
        fresh.save_pretrained(path, overwrite=overwrite, image_processor=self.processor.to_dict(),
                              provenance=provenance)
        return Path(path)

    def write_logs(self, folder) -> list[Path]:
        """log.csv (one row per epoch), log.json (settings, epochs, per-step loss / accuracy / lr) and,
        with matplotlib, curves.png; each written atomically. Returns the paths written."""
        folder = Path(folder)
        written = []
        columns = list(dict.fromkeys(k for row in self.history for k in row))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.history)
        with atomic_output(folder / "log.csv", overwrite=True) as tmp:
            tmp.write_text(text.getvalue())
        written.append(folder / "log.csv")
        document = {"settings": self.settings.to_dict(), "architecture": type(self.model).__name__,
                    "steps": self.step, "steps_per_epoch": self.steps_per_epoch, "epochs": self.history,
                    "step_log": self.step_log, **self.extra}
        with atomic_output(folder / "log.json", overwrite=True) as tmp:
            tmp.write_text(json.dumps(document, indent=1))
        written.append(folder / "log.json")
        if Figure is not None and self.history:
            with atomic_output(folder / "curves.png", overwrite=True, suffix=".png") as tmp:
                plot_curves(self.step_log, self.history, self.steps_per_epoch, tmp)
            written.append(folder / "curves.png")
        return written


def plot_curves(step_log: dict, history: list[dict], steps_per_epoch: int, path) -> None:
    """Training loss per step (and its moving mean), train and held-out accuracy per epoch: one PNG."""
    figure = Figure(figsize=(10, 3.8))
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    loss = np.asarray(step_log["loss"], dtype=float)
    steps = np.arange(1, len(loss) + 1)
    left.plot(steps, loss, lw=0.5, alpha=0.4, label="loss per step")
    width = max(1, min(len(loss) // 20, steps_per_epoch))
    if len(loss) >= width > 1:
        left.plot(steps[width - 1:], np.convolve(loss, np.ones(width) / width, mode="valid"), lw=1.5,
                  label=f"mean of {width}")
    left.set(xlabel="step", ylabel="training loss", yscale="log")
    left.legend()
    epochs = [row["epoch"] for row in history]
    right.plot(epochs, [row["train_accuracy"] for row in history], "o-", label="train (train mode)")
    if "val_accuracy" in history[0]:
        right.plot(epochs, [row["val_accuracy"] for row in history], "s-", label="held out")
    if "ema_val_accuracy" in history[0]:
        right.plot(epochs, [row["ema_val_accuracy"] for row in history], "^-", label="held out, EMA weights")
    right.set(xlabel="epoch", ylabel="accuracy")
    right.grid(alpha=0.3)
    right.legend()
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=90)
