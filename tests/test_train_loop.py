"""The training loop (mobilenet_np/training/loop.py) against transformers + torch.optim, and resumed runs.

* A whole run of a few steps in float64 (train mode, dropout 0, data order and augmentation from the
  loop's own pipeline) is replayed in PyTorch on the very same batches: transformers' `.double()` model,
  `loss.backward()`, `torch.optim.SGD` (momentum, TF-slim decay groups) or `torch.optim.RMSprop`
  (momentum, linear lr decay = `LinearLR`). After EVERY step the loss, every weight and every BatchNorm
  running statistic must agree: per tensor max |ours - torch| <= 1e-9 * max |torch| + 1e-12 * (the model's
  largest value) (loss: relative 1e-9). Measured (printed with -s): see
  `test_run_equals_transformers_and_torch_optim` (worst 3.4e-10, a BatchNorm bias with a zero gradient).
* A run stopped after step k and continued from its checkpoint equals the uninterrupted run BIT FOR BIT
  (weights, running statistics, optimizer state, EMA, logs), with dropout, augmentation and shuffling on.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mobilenet_np
from mobilenet_np.image_processing import MobileNetV2ImageProcessor
from mobilenet_np.trainer import data as D
from mobilenet_np.trainer.loop import Trainer, TrainSettings, init_weights, with_labels

from torch_reference import numpy_twin, random_transformers_model

RTOL = 1e-9
FLOOR = 1e-12


def processor(size=32):
    return MobileNetV2ImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def random_dataset(n, size=32, num_labels=3, segmentation=False, seed=0, channels=3) -> D.Dataset:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, channels, size, size), dtype=np.uint8)
    if segmentation:
        targets = rng.integers(0, num_labels, (n, size, size))
        targets[rng.random(targets.shape) < 0.1] = D.IGNORE_INDEX
    else:
        targets = rng.integers(0, num_labels, n)
    return D.Dataset(images, targets, [str(i) for i in range(num_labels)], [f"item{i}" for i in range(n)], "random")


def torch_optimizer(trainer: Trainer, torch_model, settings: TrainSettings):
    """torch.optim with the same parameter groups (by name) and options as the trainer's optimizer."""
    named = dict(torch_model.named_parameters())
    groups = [{"params": [named[name] for name in group["params"]], "weight_decay": group["weight_decay"]}
              for group in trainer.optimizer.param_groups]
    if settings.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=settings.lr, momentum=settings.momentum, nesterov=settings.nesterov)
    else:
        optimizer = torch.optim.RMSprop(groups, lr=settings.lr, alpha=settings.rmsprop_decay, eps=1e-8,
                                        momentum=settings.momentum)
    if settings.schedule == "linear":
        schedule = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0, end_factor=0.0,
                                                     total_iters=trainer.total_steps)
    else:
        assert settings.schedule == "constant"
        schedule = None
    return optimizer, schedule


def relative_error(ours, theirs) -> float:
    ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    scale = max(float(np.max(np.abs(theirs))), 1e-300)
    return float(np.max(np.abs(ours - theirs))) / scale


# (architecture, config, options, image size, items, batch size): 4 steps each
CASES = [
    ("MobileNetV1ForImageClassification", {"depth_multiplier": 0.25, "num_labels": 3},
     dict(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=1e-3, nesterov=True), 64, 24, 6),
    ("MobileNetV2ForImageClassification", {"depth_multiplier": 0.35, "num_labels": 3},
     dict(optimizer="rmsprop", lr=2e-4, momentum=0.9, weight_decay=1e-4, schedule="linear"), 64, 24, 6),
    ("MobileNetV2ForSemanticSegmentation", {"depth_multiplier": 0.25, "num_labels": 3, "output_stride": 8},
     dict(optimizer="sgd", lr=0.004, momentum=0.9, weight_decay=4e-5), 32, 32, 8),
]


@pytest.mark.parametrize("architecture, config, options, size, items, batch", CASES,
                         ids=["V1-sgd", "V2-rmsprop", "DeepLab-sgd"])
def test_run_equals_transformers_and_torch_optim(architecture, config, options, size, items, batch):
    """Tolerance: per tensor max |ours - torch| <= 1e-9 * max |torch tensor| + 1e-12 * (largest value in the
    model); loss relative 1e-9. The floor is for the BatchNorm biases whose gradient is zero by structure
    (training_facts 1.5): both sides update them with round-off, which RMSprop divides by sqrt(v) + eps.
    Differences grow ~10-100x per step (train-mode BatchNorm over few values per channel amplifies them),
    which is why the runs are short and the images 64 px. Measured worst per-tensor relative error after
    4 steps: V1 5.8e-11, V2 (RMSprop) 3.4e-10 (a structurally-zero bias; 4e-13 of the model's scale),
    DeepLab 3.3e-12; the losses agree to <= 1e-11."""
    torch_model = random_transformers_model(architecture, 3, classifier_dropout_prob=0.0, **config).double().train()
    model = numpy_twin(torch_model, architecture)
    segmentation = "Segmentation" in architecture
    train = random_dataset(items, size=size, segmentation=segmentation, seed=1)
    settings = TrainSettings(epochs=1, batch_size=batch, dtype="float64", flip=True, crop_padding=2, seed=5, **options)
    trainer = Trainer(model, train, None, settings, processor(size))
    steps = []

    def on_step(trainer, record):
        steps.append((record["x"], record["targets"], record["loss"],
                      {k: np.array(v, copy=True) for k, v in trainer.model.params.items()}))

    trainer.fit(on_step=on_step)
    assert len(steps) == 4
    optimizer, schedule = torch_optimizer(trainer, torch_model, settings)
    worst = {"loss": 0.0, "weights": 0.0, "running statistics": 0.0}
    for n, (x, targets, loss, params) in enumerate(steps):
        optimizer.zero_grad()
        out = torch_model(pixel_values=torch.from_numpy(x), labels=torch.from_numpy(targets))
        out.loss.backward()
        optimizer.step()
        if schedule is not None:
            schedule.step()
        torch_loss = float(out.loss.detach())
        error = abs(loss - torch_loss) / abs(torch_loss)
        assert error <= RTOL, f"step {n}: loss {loss} vs {torch_loss}"
        worst["loss"] = max(worst["loss"], error)
        state = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
        floor = FLOOR * max(float(np.max(np.abs(v))) for k, v in state.items() if v.dtype.kind == "f")
        for name, value in state.items():
            if name.endswith("num_batches_tracked"):
                assert int(params[name]) == int(value), (n, name)
                continue
            difference = float(np.max(np.abs(params[name] - value)))
            assert difference <= RTOL * float(np.max(np.abs(value))) + floor, \
                f"step {n}: {name}: difference {difference:.3g}, relative {relative_error(params[name], value):.3g}"
            kind = "running statistics" if "running" in name else "weights"
            worst[kind] = max(worst[kind], relative_error(params[name], value))
    print(f"\n{architecture} {settings.optimizer}: worst relative errors over {len(steps)} steps: {worst}")
    # the weights did move: a test that would also pass with a no-op optimizer proves nothing
    first = steps[0][3]
    assert any(relative_error(first[k], steps[-1][3][k]) > 1e-3 for k in trainer.optimizer.params)


# --------------------------------------------------------------------------------------------------
# resume == uninterrupted, bit for bit
# --------------------------------------------------------------------------------------------------

def small_classifier(seed=0):
    config = mobilenet_np.MobileNetV2Config(depth_multiplier=0.25, num_labels=3, image_size=32)
    model = mobilenet_np.MobileNetV2ForImageClassification(config, seed=None)
    init_weights(model, seed)
    return model


RESUME_SETTINGS = [
    dict(optimizer="sgd", lr=0.05, weight_decay=4e-5, schedule="cosine", warmup_steps=3, ema_decay=0.9,
         dropout=0.3, flip=True, crop_padding=3, batch_norm_momentum="tensorflow"),
    dict(optimizer="tf-rmsprop", lr=0.01, weight_decay=4e-5, schedule="step", step_epochs=1.0, gamma=0.5,
         warmup_steps=2, dropout=0.5, flip=True),
]


def comparable(trainer: Trainer):
    history = [{k: v for k, v in row.items() if k != "seconds"} for row in trainer.history]
    optimizer = trainer.optimizer.state_dict()
    ema = trainer.ema.state_dict() if trainer.ema is not None else None
    return dict(trainer.model.params), history, trainer.step_log, optimizer, ema, trainer.model.mode.rng.random()


def assert_identical(a, b):
    params_a, history_a, log_a, optimizer_a, ema_a, draw_a = a
    params_b, history_b, log_b, optimizer_b, ema_b, draw_b = b
    assert params_a.keys() == params_b.keys()
    for name in params_a:
        assert params_a[name].dtype == params_b[name].dtype and np.array_equal(params_a[name], params_b[name]), name
    assert history_a == history_b and log_a == log_b
    assert optimizer_a["param_groups"] == optimizer_b["param_groups"]
    for name, entries in optimizer_a["state"].items():
        for key, value in entries.items():
            assert np.array_equal(value, optimizer_b["state"][name][key]), (name, key)
    if ema_a is not None:
        assert all(np.array_equal(v, ema_b["shadow"][k]) for k, v in ema_a["shadow"].items())
        assert ema_a["num_updates"] == ema_b["num_updates"]
    assert draw_a == draw_b                                   # the dropout generator is where it was


@pytest.mark.parametrize("options", RESUME_SETTINGS, ids=["sgd-cosine-ema", "tf-rmsprop-step"])
@pytest.mark.parametrize("stop", [5, 4], ids=["mid-epoch", "epoch-end"])
def test_resumed_run_equals_uninterrupted_run_bit_for_bit(tmp_path, options, stop):
    train, val = random_dataset(17, seed=2), random_dataset(6, seed=3)     # 17: the last partial batch is dropped
    settings = TrainSettings(epochs=3, batch_size=4, seed=11, **options)
    whole = Trainer(small_classifier(), train, val, settings, processor())
    whole.fit()
    assert whole.step == 12 and len(whole.history) == 3

    first = Trainer(small_classifier(), train, val, settings, processor())
    first.fit(stop_after=stop)
    first.save_checkpoint(tmp_path / "ckpt.npz")
    assert not list(tmp_path.glob(".*tmp*"))                 # written atomically: no temporary file left
    resumed = Trainer.from_checkpoint(tmp_path / "ckpt.npz", train, val)
    assert resumed.step == stop
    resumed.fit()
    assert_identical(comparable(whole), comparable(resumed))


def test_checkpoint_refuses_other_data(tmp_path):
    train = random_dataset(8, seed=2)
    trainer = Trainer(small_classifier(), train, None, TrainSettings(epochs=1, batch_size=4, lr=0.01), processor())
    trainer.fit(stop_after=1)
    trainer.save_checkpoint(tmp_path / "ckpt.npz")
    with pytest.raises(mobilenet_np.MobileNetError, match="other train data"):
        Trainer.from_checkpoint(tmp_path / "ckpt.npz", random_dataset(8, seed=9), None)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(mobilenet_np.MobileNetError, match="bad.npz: not a mobilenet-np checkpoint"):
        Trainer.from_checkpoint(tmp_path / "bad.npz", train, None)


# --------------------------------------------------------------------------------------------------
# what the loop does besides stepping
# --------------------------------------------------------------------------------------------------

def test_freeze_backbone_and_batchnorm_train_only_the_head():
    model = small_classifier()
    before = {k: v.copy() for k, v in model.params.items()}
    settings = TrainSettings(epochs=1, batch_size=4, lr=0.1, freeze=("backbone", "batchnorm"))
    trainer = Trainer(model, random_dataset(8), None, settings, processor())
    assert set(trainer.optimizer.params) == {"classifier.weight", "classifier.bias"}
    trainer.fit()
    changed = {k for k in before if not np.array_equal(before[k], trainer.model.params[k])}
    assert changed == {"classifier.weight", "classifier.bias"}          # running statistics untouched too


def test_freeze_backbone_alone_keeps_batchnorm_statistics_moving():
    settings = TrainSettings(epochs=1, batch_size=4, lr=0.1, freeze=("backbone",))
    trainer = Trainer(small_classifier(), random_dataset(8), None, settings, processor())
    before = {k: v.copy() for k, v in trainer.model.params.items()}
    trainer.fit()
    changed = {k for k in before if not np.array_equal(before[k], trainer.model.params[k])}
    assert {"classifier.weight", "classifier.bias"} <= changed
    assert all("running" in k or "num_batches" in k or k.startswith("classifier") for k in changed)


def test_with_labels_keeps_the_backbone_and_draws_a_new_head():
    model = small_classifier()
    new = with_labels(model, ["a", "b", "c", "d", "e"], seed=1)
    assert new.config.num_labels == 5 and new.config.id2label[4] == "e"
    assert new.params["classifier.weight"].shape == (5, model.params["classifier.weight"].shape[1])
    for k, v in model.params.items():
        if not k.startswith("classifier"):
            assert np.array_equal(new.params[k], v), k
    assert with_labels(new, ["a", "b", "c", "d", "e"], seed=2) is new


def test_tf_slim_groups_leave_depthwise_batchnorm_and_biases_undecayed():
    trainer = Trainer(small_classifier(), random_dataset(8), None,
                      TrainSettings(epochs=1, batch_size=4, lr=0.1, weight_decay=4e-5), processor())
    decayed, kept = trainer.optimizer.param_groups
    assert decayed["weight_decay"] == 4e-5 and kept["weight_decay"] == 0.0
    assert all(name.endswith("convolution.weight") or name == "classifier.weight" for name in decayed["params"])
    depthwise = [layer.name for layer in trainer.model.conv_layers() if layer.kind == "depthwise"]
    assert all(f"{name}.convolution.weight" in kept["params"] for name in depthwise)
    assert not any("normalization" in name or name.endswith("bias") for name in decayed["params"])


def test_evaluation_and_saved_model(tmp_path):
    train = random_dataset(8)
    trainer = Trainer(small_classifier(), train, train, TrainSettings(epochs=1, batch_size=4, lr=0.01), processor())
    trainer.fit()
    row = trainer.history[0]
    model = trainer.model
    model.eval()
    logits = model(D.pixel_values(train.images, processor(), 3)).logits
    assert row["val_accuracy"] == np.mean(np.argmax(logits, axis=1) == train.targets)
    trainer.save_model(tmp_path / "m.h5")
    loaded = mobilenet_np.load(tmp_path / "m.h5")
    assert all(np.array_equal(loaded.params[k], v) for k, v in model.params.items())
    assert loaded.metadata["image_processor"]["crop_size"] == {"height": 32, "width": 32}
    written = trainer.write_logs(tmp_path)
    assert {p.name for p in written} >= {"log.csv", "log.json"}
    assert (tmp_path / "log.csv").read_text().splitlines()[0].startswith("epoch,step,lr,train_loss")


def test_settings_are_checked():
    with pytest.raises(mobilenet_np.ConfigError, match="'optimizer' must be one of"):
        TrainSettings(epochs=1, batch_size=4, lr=0.1, optimizer="adam")
    with pytest.raises(mobilenet_np.ConfigError, match="'batch_size' must be >= 2"):
        TrainSettings(epochs=1, batch_size=1, lr=0.1)
    model = small_classifier()
    model.freeze("")                                       # every name starts with ""
    with pytest.raises(mobilenet_np.ConfigError, match="nothing to train"):
        Trainer(model, random_dataset(8), None, TrainSettings(epochs=1, batch_size=4, lr=0.1), processor())
    cls = mobilenet_np.MobileNetV2ForSemanticSegmentation
    deeplab = cls(cls.config_class(depth_multiplier=0.25, num_labels=3, semantic_loss_ignore_index=-100), seed=0)
    with pytest.raises(mobilenet_np.ConfigError, match="semantic_loss_ignore_index is -100.*with 255"):
        Trainer(deeplab, random_dataset(8, segmentation=True), None, TrainSettings(epochs=1, batch_size=4, lr=0.1),
                processor())


def test_batches_follow_each_epochs_order():
    """Batch b of epoch e holds the items of data.batch_indices(N, B, e, seed)[b] (a new order every epoch)."""
    train = random_dataset(12, seed=4)
    trainer = Trainer(small_classifier(), train, None, TrainSettings(epochs=2, batch_size=4, lr=0.1, seed=3),
                      processor())
    seen = []
    for epoch in range(2):
        for b in range(3):
            x, targets = trainer.batch(epoch, b)
            indices = D.batch_indices(12, 4, epoch, 3)[b]
            assert np.array_equal(x, D.pixel_values(train.images[indices], processor(), 3))
            assert np.array_equal(targets, train.targets[indices])
            seen.append(indices)
    assert sorted(np.concatenate(seen[:3])) == list(range(12))
    assert not np.array_equal(np.concatenate(seen[:3]), np.concatenate(seen[3:]))
