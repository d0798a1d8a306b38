# %% [markdown]
# # 7 · Training MobileNetV2 from scratch, in NumPy
#
# Training is four steps, repeated: **forward** a batch in train mode (BatchNorm normalises with the
# batch's own statistics), compute the **loss**, run **backward** to get d loss / d every weight, and let
# the **optimizer** move the weights a little against their gradient. mobilenet-np does each step in
# readable NumPy (`mobilenet_np/training/`: `graph.py` runs the network's layers forward and backward,
# `backward.py` holds every layer's forward/backward pair, `channels_last.py` the same pairs on (N, H, W, C)
# arrays, ~2.5x faster, which training uses by default; `optim.py` holds `torch.optim.SGD`'s equations,
# `trainer/loop.py` the loop around them), and the test suite shows that a whole run equals
# transformers + `torch.optim` step for step in float64, with either set of kernels.
#
# Here we train a small MobileNetV2 (width 0.35, 32x32 inputs, 0.4 M parameters) on a subset of
# **Fashion-MNIST** (Zalando's 28x28 grey photos of clothes, 10 classes; the Debian package
# `dataset-fashion-mnist`), look at the loss curve, and measure what a famous quirk of the transformers
# port costs: BatchNorm's running statistics follow PyTorch's `momentum` rule, but are given TensorFlow's
# *decay* (0.997), so they end up being the statistics of the last batch or so.
#
# The full run on the command line (all 60 000 images, 10 epochs, 91.2 % test accuracy in 42 minutes;
# docs/training.md explains `--output-stride 8`):
#
#     mobilenet-np train --arch mobilenet_v2 --depth-multiplier 0.35 --output-stride 8 --image-size 32 \
#         --train /usr/share/datasets/fashion-mnist/train --val /usr/share/datasets/fashion-mnist/t10k \
#         --epochs 10 --batch-size 64 --lr 0.05 --nesterov --weight-decay 4e-5 --schedule cosine \
#         --warmup-steps 300 --dropout 0 --bn-momentum tensorflow --flip --out run/

# %%
import time
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from threadpoolctl import threadpool_limits

import mobilenet_np
from mobilenet_np.trainer import data as D
from mobilenet_np.trainer.loop import Trainer, TrainSettings, init_weights

plt.rcParams.update({"figure.dpi": 72, "savefig.dpi": 72, "font.size": 9})
warnings.filterwarnings("ignore", message="IProgress not found")
FASHION = Path("/usr/share/datasets/fashion-mnist")
SIZE = 32
processor = mobilenet_np.MobileNetV2ImageProcessor(size={"shortest_edge": SIZE},
                                                   crop_size={"height": SIZE, "width": SIZE})


def synthetic_bars(n, seed):
    """The offline stand-in: 10 classes of a bright bar at 10 angles, on noise (28x28 uint8)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    y, x = np.mgrid[-1:1:28j, -1:1:28j]
    angles = np.pi * labels / 10 + rng.normal(0, 0.05, n)
    distance = np.abs(np.cos(angles)[:, None, None] * y - np.sin(angles)[:, None, None] * x)
    images = np.clip(200 * (distance < 0.15) + rng.normal(40, 25, (n, 28, 28)), 0, 255).astype(np.uint8)
    return D.Dataset(images[:, None], labels, [f"{18 * k} degrees" for k in range(10)],
                     [f"bar{i}" for i in range(n)], "synthetic bars")


REAL = (FASHION / "train-images-idx3-ubyte.gz").is_file()
if REAL:
    train_all = D.load_dataset(FASHION / "train", processor)      # 60 000 images, resized 28 -> 32 once
    test_all = D.load_dataset(FASHION / "t10k", processor)
    train_set = train_all.subset(np.arange(3000))                 # a subset: the notebook runs in about a minute
    test_set = test_all.subset(np.arange(2000))
    print(f"Fashion-MNIST from {FASHION}: {len(train_set)} training and {len(test_set)} test images")
else:
    train_set, test_set = (D.Dataset(D.stack_to_training_size(d.images, processor, "bars"), d.targets, d.classes,
                                     d.names, d.source) for d in (synthetic_bars(3000, 0), synthetic_bars(2000, 1)))
    print(f"NOTE: {FASHION} is absent (apt-get install dataset-fashion-mnist): SYNTHETIC BARS stand in for "
          "Fashion-MNIST; the numbers below are not Fashion-MNIST's.")
print("images", train_set.images.shape, train_set.images.dtype, "classes", train_set.classes)

fig, axes = plt.subplots(2, 10, figsize=(10, 2.4))
for k, ax in enumerate(axes.T):
    for row, i in enumerate(np.flatnonzero(train_set.targets == k)[:2]):
        ax[row].imshow(train_set.images[i, 0], cmap="gray")
        ax[row].axis("off")
    ax[0].set_title(train_set.classes[k], fontsize=7)
plt.show()

# %% [markdown]
# ## One step by hand
#
# A batch goes through the image processor's float steps (`x / 255`, then `(x - 0.5) / 0.5`), grey
# repeated to 3 channels. `model.train()` switches BatchNorm to batch statistics; `loss_and_gradients`
# runs forward and backward. The gradient g is the direction of steepest ascent: a small step
# `w -= ε g` must lower the loss by about `ε · Σ g²` (first order), and the smaller ε, the better that
# prediction. We check it in float64 on a fresh network — and see how quickly it fails for larger
# steps: at initialisation the loss surface is sharply curved (the stem's weights carry most of the
# gradient), which is why runs start with a small learning rate and warm it up.

# %%
config = mobilenet_np.MobileNetV2Config(depth_multiplier=0.35, image_size=SIZE, num_labels=10,
                                        id2label={str(i): c for i, c in enumerate(train_set.classes)})
model = mobilenet_np.MobileNetV2ForImageClassification(config, seed=None)
init_weights(model, seed=0)          # He-normal convolutions, BatchNorm 1 / 0, classifier N(0, 0.01)
print(f"{model.num_parameters():,} parameters")

x = D.pixel_values(train_set.images[:32], processor, 3, np.float64)   # (32, 3, 32, 32)
y = train_set.targets[:32]
probe = model.astype(np.float64).train(seed=0, dropout=0.0)
loss, grads = probe.loss_and_gradients(x, y)
squared = sum(float(np.sum(g ** 2)) for g in grads.values())
print(f"loss {float(loss):.4f}, |g|^2 = {squared:.1f}; largest share: "
      f"{max(grads, key=lambda k: np.sum(grads[k] ** 2))}")
ratios = {}
for eps in (1e-4, 1e-5, 1e-6, 1e-7):
    stepped = model.astype(np.float64).train(seed=0, dropout=0.0)
    for name, g in grads.items():
        stepped.params[name] = stepped.params[name] - eps * g
    actual = float(loss) - float(stepped(x, labels=y).loss)
    ratios[eps] = actual / (eps * squared)
    print(f"eps {eps:.0e}: loss went down by {actual:.3e}, first order predicts {eps * squared:.3e} "
          f"(ratio {ratios[eps]:.3f})")
assert 0.9 < ratios[1e-7] < 1.1 and abs(ratios[1e-7] - 1) < abs(ratios[1e-4] - 1)

# %% [markdown]
# ## A short run
#
# `Trainer` repeats that over shuffled batches (a new order every epoch, drawn from the seed), with a
# learning rate that warms up linearly and then decays along a cosine, and evaluates the held-out
# images after every epoch in eval mode (running statistics, no dropout). One BLAS thread: for batches
# this small, a second thread mostly waits.
#
# Every step we also keep a second copy of the BatchNorm running statistics, updated as TensorFlow
# meant: `running = 0.997 running + 0.003 batch`. transformers computes `running = 0.003 running +
# 0.997 batch` instead. Both use the same batch statistics, which we can read back from the model's
# own update: `batch = (new - 0.003 old) / 0.997`. Running statistics never change the training itself
# (train mode normalises with the batch's), so one run gives both versions.

# %%
settings = TrainSettings(epochs=2, batch_size=32, lr=0.05, nesterov=True, weight_decay=4e-5, schedule="cosine",
                         warmup_steps=20, dropout=0.0, seed=0)
trainer = Trainer(model, train_set, test_set, settings, processor)
momenta = {f"{layer.name}.normalization.": layer.norm_momentum for layer in model.conv_layers()
           if layer.norm_eps is not None}
tensorflow_stats = {p + s: model.params[p + s].copy() for p in momenta for s in ("running_mean", "running_var")}
previous = dict(tensorflow_stats)
last_epoch_sum = {key: 0.0 for key in tensorflow_stats}       # batch statistics summed over the last epoch


def track_tensorflow_statistics(trainer, record):
    last_epoch = record["epoch"] == trainer.settings.epochs - 1
    for prefix, m in momenta.items():
        for stat in ("running_mean", "running_var"):
            key = prefix + stat
            new = trainer.model.params[key]
            batch = (new - (1 - m) * previous[key]) / m                   # the batch's statistic
            tensorflow_stats[key] = m * tensorflow_stats[key] + (1 - m) * batch
            if last_epoch:
                last_epoch_sum[key] = last_epoch_sum[key] + batch
            previous[key] = new.copy()


began = time.perf_counter()
with threadpool_limits(limits=1):
    history = trainer.fit(on_step=track_tensorflow_statistics)
seconds = time.perf_counter() - began
for row in history:
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
accuracy = history[-1]["val_accuracy"]
print(f"{trainer.step} steps in {seconds:.0f} s ({1e3 * seconds / trainer.step:.0f} ms per step); "
      f"held-out accuracy {accuracy:.1%}")
assert accuracy >= (0.6 if REAL else 0.5), accuracy

# %%
losses = np.array(trainer.step_log["loss"])
fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.2))
a.plot(losses, lw=0.6, alpha=0.5, label="loss per step")
a.plot(np.arange(9, len(losses)), np.convolve(losses, np.ones(10) / 10, "valid"), label="mean of 10")
a.set(xlabel="step", ylabel="cross-entropy", title="training loss")
a.legend()
b.plot(trainer.step_log["lr"])
b.set(xlabel="step", ylabel="learning rate", title="warm-up, then cosine decay")
plt.show()
assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10])

# %% [markdown]
# ## What the momentum quirk does to eval accuracy
#
# With transformers' numbers, the last step leaves `running ≈ 0.997 · (last batch's statistic)`: the
# network is evaluated with the statistics of 32 images. With TensorFlow's, the running statistics
# average the last few hundred batches — but they start at mean 0, variance 1 and forget that start
# only slowly: after T steps it still weighs 0.997^T. A third choice is the plain mean of the batch
# statistics of the last epoch (what "recomputing the BatchNorm statistics" after training gives).
# We evaluate the same weights with all three.

# %%
last_step = {k: trainer.model.params[k].copy() for k in tensorflow_stats}
steps_in_last_epoch = trainer.steps_per_epoch
scores = {"transformers\n(last batch)": trainer.evaluate(test_set)["accuracy"]}
trainer.model.params.update({k: v.astype(np.float32) for k, v in tensorflow_stats.items()})
scores["TensorFlow\n(decay 0.997)"] = trainer.evaluate(test_set)["accuracy"]
trainer.model.params.update({k: (v / steps_in_last_epoch).astype(np.float32) for k, v in last_epoch_sum.items()})
scores["mean of the last\nepoch's batches"] = trainer.evaluate(test_set)["accuracy"]
trainer.model.params.update(last_step)
print(f"after {trainer.step} steps the TensorFlow statistics still weigh their start (0, 1) by "
      f"0.997^{trainer.step} = {0.997 ** trainer.step:.2f}")
for name, accuracy in scores.items():
    print(f"held-out accuracy, {name.replace(chr(10), ' ')} statistics: {accuracy:.2%}")

fig, ax = plt.subplots(figsize=(6, 3))
ax.bar(list(scores), list(scores.values()), color=["tab:red", "tab:blue", "tab:green"])
ax.set(ylabel="held-out accuracy", ylim=(0, 1), title=f"the same weights, three sets of BatchNorm statistics")
plt.show()
values = list(scores.values())
assert values[1] < values[0]      # a short run: TensorFlow's statistics are still mostly their initial 0 and 1

# %% [markdown]
# How much the choice matters depends on the run: the fewer images a running statistic effectively
# averages, the noisier it is; the slower it forgets, the longer the run must be. In the full
# Fashion-MNIST run of docs/training.md (3 748 steps) TensorFlow's decay has forgotten its start
# (0.997^3748 ≈ 1e-5). The command line lets you choose: `--bn-momentum tensorflow` (what the original
# models meant), `--bn-momentum 0.1` (PyTorch's default), or the default `transformers` (to equal
# transformers exactly).
