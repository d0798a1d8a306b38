# %% [markdown]
# # 8 · Fine-tuning a pretrained MobileNet on a small photo task
#
# A network trained on ImageNet has learned edges, textures and object parts that are useful for other
# photo tasks. With only a few dozen labelled photos, three ways to get a classifier:
#
# 1. **frozen backbone**: keep every pretrained layer, train only a new linear head on its 256 features;
# 2. **full fine-tuning**: start from the pretrained weights and let every convolution move (BatchNorm
#    kept in inference mode: with batches of 10, batch statistics would be too noisy, the advice of
#    TF DeepLab's `fine_tune_batch_norm=False`);
# 3. **from scratch**: the same architecture with fresh random weights.
#
# The task: the 100 ImageNet sample photos of `../shared/data` (one photo each of 100 ImageNet classes)
# sorted into three coarse classes — animal (WordNet ids n01/n02), man-made object (n03/n04), food or
# nature (the rest) — 60 photos to train, 40 to test. The test photos are of *other* fine classes than
# the training photos (a robin in training, a quail in testing), so the network must generalise.
# Network: Google's Keras MobileNet V1 0.25 (ImageNet, float32), imported with `weights_tools`, at 96 px
# (docs/training.md has the same three runs at 128 px on the command line).
#
# On the command line (docs/training.md):
#
#     mobilenet-np train --weights v1_025.h5 --freeze backbone --freeze batchnorm --train photos/train \
#         --val photos/test --image-size 128 --epochs 15 --batch-size 10 --lr 0.005 --flip --schedule cosine \
#         --out frozen/

# %%
import time
import warnings

import matplotlib.pyplot as plt
import numpy as np
from threadpoolctl import threadpool_limits

import mobilenet_np
from mobilenet_np.trainer import data as D
from mobilenet_np.trainer.loop import Trainer, TrainSettings, init_weights, with_labels
from notebook_data import load_checkpoint, shared_data

plt.rcParams.update({"figure.dpi": 72, "savefig.dpi": 72, "font.size": 9})
warnings.filterwarnings("ignore", message="IProgress not found")

checkpoint = load_checkpoint("keras_mobilenet_v1_0.25_224")
print(checkpoint.describe())
SIZE = 96
processor = mobilenet_np.MobileNetV1ImageProcessor(size={"shortest_edge": SIZE},
                                                   crop_size={"height": SIZE, "width": SIZE})
CLASSES = ["animal", "food_or_nature", "object"]


def coarse(name):
    return 0 if name[:3] in ("n01", "n02") else 2 if name[:3] in ("n03", "n04") else 1


def photo_task():
    """(train, test) datasets from the shared photos; every 5th photo's 2nd and 4th of each class to test."""
    folder = shared_data() / "images" / "imagenet_sample" if shared_data() else None
    if folder is None or not folder.is_dir():
        return None
    paths = sorted(folder.iterdir())
    images = np.stack([D.read_image(p, processor) for p in paths])      # (100, 3, 96, 96) uint8
    targets = np.array([coarse(p.name) for p in paths])
    rank = np.array([np.sum(targets[:i] == targets[i]) for i in range(len(paths))])   # index within its class
    test = np.isin(rank % 5, (1, 3))
    dataset = D.Dataset(images, targets, CLASSES, [str(p) for p in paths], str(folder))
    return dataset.subset(np.flatnonzero(~test)), dataset.subset(np.flatnonzero(test))


def synthetic_task():
    """The offline stand-in: smooth colour fields (class 0 reddish, 1 greenish, 2 bluish) with noise."""
    rng = np.random.default_rng(0)
    targets = np.arange(100) % 3
    y, x = np.mgrid[0:1:SIZE * 1j, 0:1:SIZE * 1j]
    base = rng.uniform(60, 140, (100, 3, 1, 1)) + 30 * np.sin(6 * x + rng.uniform(0, 6, (100, 1, 1, 1)))
    base[np.arange(100), targets] += 60
    images = np.clip(base + rng.normal(0, 30, (100, 3, SIZE, SIZE)), 0, 255).astype(np.uint8)
    dataset = D.Dataset(images, targets, CLASSES, [f"synthetic{i}" for i in range(100)], "synthetic")
    return dataset.subset(np.arange(60)), dataset.subset(np.arange(60, 100))


task = photo_task()
REAL = task is not None and checkpoint.real
if task is None:
    task = synthetic_task()
    print("NOTE: the shared photos are absent: SYNTHETIC COLOUR FIELDS stand in for them.")
train_set, test_set = task
print(f"{len(train_set)} training photos {np.bincount(train_set.targets).tolist()}, "
      f"{len(test_set)} test photos {np.bincount(test_set.targets).tolist()} ({CLASSES})")

fig, axes = plt.subplots(1, 8, figsize=(12, 1.9))
for ax, i in zip(axes, np.linspace(0, len(train_set) - 1, 8).astype(int)):
    ax.imshow(np.moveaxis(train_set.images[i], 0, -1))
    ax.set_title(CLASSES[train_set.targets[i]], fontsize=8)
    ax.axis("off")
plt.show()

# %% [markdown]
# ## Three runs
#
# `with_labels` gives the pretrained network a new head for our 3 classes (a random linear layer; every
# other tensor kept). The settings differ only where they must: the frozen head learns with lr 0.005,
# the full fine-tuning uses a smaller step (0.002) so it does not wash out what the backbone knows, and
# the network from scratch trains in train mode (batch statistics, PyTorch's BatchNorm momentum 0.1).

# %%
def run(name, model, **options):
    settings = TrainSettings(epochs=8, batch_size=10, flip=True, schedule="cosine", seed=0, **options)
    trainer = Trainer(model, train_set, test_set, settings, processor)
    began = time.perf_counter()
    with threadpool_limits(limits=1):
        trainer.fit()
    accuracy = trainer.history[-1]["val_accuracy"]
    print(f"{name:18s} {len(trainer.optimizer.params):3d} trainable tensors, "
          f"{time.perf_counter() - began:5.1f} s, test accuracy {accuracy:.1%}")
    return trainer


runs = {"frozen backbone": run("frozen backbone", with_labels(checkpoint.model, CLASSES, seed=0), lr=0.005,
                               freeze=("backbone", "batchnorm"))}

# %%
runs["full fine-tuning"] = run("full fine-tuning", with_labels(checkpoint.model, CLASSES, seed=0), lr=0.002,
                               freeze=("batchnorm",))

# %%
scratch = with_labels(checkpoint.model, CLASSES, seed=0)
init_weights(scratch, seed=0)
runs["from scratch"] = run("from scratch", scratch, lr=0.05, dropout=0.2, batch_norm_momentum=0.1)

# %%
fig, ax = plt.subplots(figsize=(6, 3.4))
for name, trainer in runs.items():
    ax.plot([r["epoch"] for r in trainer.history], [r["val_accuracy"] for r in trainer.history], "o-", label=name)
ax.axhline(np.max(np.bincount(test_set.targets)) / len(test_set), color="gray", ls=":", label="majority class")
ax.set(xlabel="epoch", ylabel="test accuracy", ylim=(0, 1.02), title="60 training photos, 3 coarse classes")
ax.legend()
plt.show()
final = {name: trainer.history[-1]["val_accuracy"] for name, trainer in runs.items()}
if REAL:   # ImageNet features transfer: a linear head on them beats the network that starts from nothing
    assert final["frozen backbone"] > final["from scratch"], final
assert all(0 <= a <= 1 for a in final.values())

# %% [markdown]
# With 60 photos, training from scratch can at best pick up colour statistics; the pretrained
# features already separate animals from objects, so a linear head on them does most of the job.
# Letting the whole backbone move did *worse* here (docs/training.md: 80 % frozen vs 57.5 % full at
# 128 px): 60 photos are few, the new head starts random (its large early gradients flow into the
# backbone), and this Keras network has 21 "dead" channels whose running variance is ~0, which the
# frozen BatchNorm divides by sqrt(eps) = 0.03, so small weight changes there are amplified 30x. The
# usual remedies: train the head first, then fine-tune with a 10-100x smaller learning rate.
