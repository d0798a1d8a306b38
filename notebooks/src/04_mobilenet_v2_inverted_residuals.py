# %% [markdown]
# # 4 · MobileNet V2: inverted residuals and linear bottlenecks
#
# MobileNet V2 ([Sandler et al. 2018](https://arxiv.org/abs/1801.04381)) keeps V1's depthwise separable
# convolutions (notebook 2) but arranges them in a new block, the **inverted residual with a linear
# bottleneck**. In this notebook we follow a tensor through one block, reproduce the paper's
# experiment that explains why the block's last convolution has no activation, look at the residual
# connections, and finally run the whole network and check it against the transformers (PyTorch)
# implementation, layer by layer.

# %%
import warnings

import matplotlib.pyplot as plt
import numpy as np
import torch

import mobilenet_np
from notebook_data import transformers_twin

plt.rcParams.update({"figure.dpi": 72, "savefig.dpi": 72, "font.size": 9})
_ = torch.set_grad_enabled(False)  # inference only: no autograd bookkeeping
torch.set_num_threads(1)           # small tensors: more threads would mostly wait for each other
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm's notice when transformers loads

# %% [markdown]
# ## One block, step by step
#
# A block takes a thin tensor with $k$ channels and
#
# 1. **expands** it with a 1×1 convolution to $tk$ channels ($t = 6$, the *expansion ratio*), then ReLU6;
# 2. filters each of the $tk$ channels with a 3×3 **depthwise** convolution (stride $s$), then ReLU6;
# 3. **projects** back to a thin tensor with $k'$ channels with a 1×1 convolution, and **no activation**;
# 4. adds the block's input to the result when the shapes allow it ($s = 1$ and $k = k'$).
#
# | input | operator | output |
# |---|---|---|
# | $h \times w \times k$ | 1×1 conv, ReLU6 | $h \times w \times tk$ |
# | $h \times w \times tk$ | 3×3 depthwise, stride $s$, ReLU6 | $\frac{h}{s} \times \frac{w}{s} \times tk$ |
# | $\frac{h}{s} \times \frac{w}{s} \times tk$ | 1×1 conv, linear | $\frac{h}{s} \times \frac{w}{s} \times k'$ |
#
# (Table 1 of the paper; every convolution is followed by BatchNorm.) ResNet's bottleneck blocks are
# wide at their ends and thin in the middle; these are thin at the ends and wide in the middle, hence
# "inverted". The expensive operation, the 3×3 filter, runs depthwise on the wide tensor, which is cheap;
# the tensors passed between blocks, and kept in memory, are the thin ones.
#
# Let us build the network (random weights are enough to look at shapes) and record every tensor that
# flows through blocks `layer.1` (24 → 24 channels, stride 1, with a residual) and `layer.2`
# (24 → 32 channels, stride 2, no residual). `model(x, record=...)` calls our function with the name
# (the transformers module path) and value of every intermediate tensor.

# %%
config = mobilenet_np.MobileNetV2Config(num_labels=1001)   # MobileNet V2 1.0, 224x224, ImageNet's 1001 classes
model = mobilenet_np.MobileNetV2ForImageClassification(config, seed=0)
pixel_values = np.random.default_rng(0).uniform(-1, 1, (1, 3, 224, 224)).astype(np.float32)

recorded = {}
output = model(pixel_values, output_hidden_states=True, record=lambda name, tensor: recorded.setdefault(name, tensor))

for index in (1, 2):
    block = model.mobilenet_v2.layer[index]
    print(f"{block.name}  (residual: {block.use_residual})")
    print(f"    {'input':26s} {recorded[model.mobilenet_v2.layer[index - 1].name].shape}")
    for conv in (block.expand_1x1, block.conv_3x3, block.reduce_1x1):
        step = conv.name.removeprefix(block.name + ".")
        print(f"    {step + ' (' + conv.kind + ')':26s} {recorded[conv.name].shape}")
    print(f"    {'output':26s} {recorded[block.name].shape}")

# %% [markdown]
# The whole network is a stem, 17 such blocks in 7 stages and a final 1×1 convolution (Table 2 of the
# paper). transformers calls the first block `conv_stem` (it has no expansion: $t = 1$) and the other
# 16 `layer.0` … `layer.15`. The recorded shapes reproduce the paper's table, which we check row by row:

# %%
# Table 2 of the paper: (what, output height = width, output channels), with the module that produces it.
PAPER_TABLE_2 = [
    ("conv2d 3x3, stride 2", 112, 32, "mobilenet_v2.conv_stem.first_conv"),
    ("bottleneck t=1, c=16, n=1, s=1", 112, 16, "mobilenet_v2.conv_stem"),
    ("bottleneck t=6, c=24, n=2, s=2", 56, 24, "mobilenet_v2.layer.1"),
    ("bottleneck t=6, c=32, n=3, s=2", 28, 32, "mobilenet_v2.layer.4"),
    ("bottleneck t=6, c=64, n=4, s=2", 14, 64, "mobilenet_v2.layer.8"),
    ("bottleneck t=6, c=96, n=3, s=1", 14, 96, "mobilenet_v2.layer.11"),
    ("bottleneck t=6, c=160, n=3, s=2", 7, 160, "mobilenet_v2.layer.14"),
    ("bottleneck t=6, c=320, n=1, s=1", 7, 320, "mobilenet_v2.layer.15"),
    ("conv2d 1x1", 7, 1280, "mobilenet_v2.conv_1x1"),
]
for what, size, channels, module in PAPER_TABLE_2:
    shape = recorded[module].shape
    print(f"{what:34s} paper {size:3d}x{size:<3d}x{channels:<5d} ours {shape}  ({module})")
    assert shape == (1, channels, size, size)
assert output.logits.shape == (1, 1001)

# %% [markdown]
# ## Why the bottleneck is linear
#
# The paper argues that the information in a layer's activations lies on a low-dimensional "manifold"
# inside the space of channels, and that ReLU destroys information about such a manifold unless it is
# embedded in a space of much higher dimension. Its Figure 1 shows this with a spiral: take 2-D points
# $x$, embed them into $n$ dimensions with a random matrix $T$ ($n \times 2$), apply ReLU, and map back
# with the pseudo-inverse: $\hat x = T^{+}\,\mathrm{ReLU}(T x)$.
#
# Why information is lost: $\mathrm{ReLU}(Tx)$ keeps only the coordinates where $(Tx)_i > 0$. The point
# $x$ can be recovered from them only if at least two of the kept rows of $T$ are linearly independent
# (two equations for two unknowns). For a random Gaussian $T$ each row is kept with probability
# $\tfrac12$, independently, so
#
# $$P(\text{recoverable}) = P(\text{at least 2 of } n \text{ rows kept}) = 1 - \frac{n + 1}{2^n}:$$
#
# only 25 % of the points survive in 2 dimensions, 50 % in 3, but 99.95 % in 15. A block's output
# (the bottleneck) is exactly the low-dimensional case, so the projection into it must stay linear;
# ReLU6 is used only in the wide, expanded space ($tk$ channels), where it loses little.

# %%
angle = np.linspace(0.5, 4 * np.pi, 400)
spiral = np.stack([angle * np.cos(angle), angle * np.sin(angle)]) / (4 * np.pi)   # (2, P): points as columns


def relu_round_trip(points, n, rng):
    """Embed 2-D points in n dimensions with a random T, apply ReLU, map back with T's pseudo-inverse."""
    T = rng.standard_normal((n, 2))                      # (n, 2)
    return np.linalg.pinv(T) @ np.maximum(T @ points, 0)  # (2, n) @ (n, P) -> (2, P)


rng = np.random.default_rng(1)
dimensions = [2, 3, 5, 15, 30]
fig, axes = plt.subplots(1, len(dimensions) + 1, figsize=(13, 2.6))
axes[0].scatter(*spiral, c=angle, s=3, cmap="viridis")
axes[0].set_title("input")
for ax, n in zip(axes[1:], dimensions):
    ax.scatter(*relu_round_trip(spiral, n, rng), c=angle, s=3, cmap="viridis")
    ax.set_title(f"ReLU in {n} dimensions")
for ax in axes:
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
plt.tight_layout()
plt.show()

# %% [markdown]
# The pseudo-inverse is only the simplest way back. To measure what is really lost, recover each point
# the best possible way, from the coordinates ReLU kept: with $y = \mathrm{ReLU}(Tx)$ and $G =
# \sum_{i\ \text{kept}} T_i T_i^\top$, the kept equations say $G x = T^\top y$, which has a unique
# solution exactly when $G$ has rank 2. We count how often that solution is the original point, over
# many random $T$, and compare with the formula above.

# %%
def fraction_recovered(points, n, rng, trials=100):
    """Fraction of (T, point) pairs where the coordinates kept by ReLU give back the point exactly."""
    recovered = 0
    for _ in range(trials):
        T = rng.standard_normal((n, 2))                                   # (n, 2)
        y = np.maximum(T @ points, 0)                                     # (n, P)
        kept = (y > 0).astype(float)                                      # (n, P)
        G = np.einsum("ip,ia,ib->pab", kept, T, T)                        # (P, 2, 2): sum of T_i T_i^T over kept rows
        estimate = np.einsum("pab,bp->ap", np.linalg.pinv(G, rcond=1e-10), T.T @ y)   # (2, P)
        recovered += np.sum(np.linalg.norm(estimate - points, axis=0) < 1e-8 * np.linalg.norm(points, axis=0))
    return recovered / (trials * points.shape[1])


ns = np.arange(1, 21)
measured = np.array([fraction_recovered(spiral, n, rng) for n in ns])
predicted = 1 - (ns + 1) / 2.0 ** ns

fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(ns, predicted, "-", label="$1 - (n + 1) / 2^n$")
ax.plot(ns, measured, "o", label="measured (100 random T x 400 points)")
ax.set_xlabel("dimension n of the space where ReLU is applied")
ax.set_ylabel("points recoverable after ReLU")
ax.set_xticks(ns[::2])
ax.legend()
plt.tight_layout()
plt.show()
print("n:", *ns[:6], "\nmeasured: ", np.round(measured[:6], 3), "\npredicted:", np.round(predicted[:6], 3))
# 40 000 samples per n, but the points of one T are not independent: 0.05 is a loose sampling margin.
assert np.all(np.abs(measured - predicted) < 0.05)

# %% [markdown]
# ## Residual connections
#
# A block adds its input to its output when it keeps both the resolution and the number of channels
# (the first block of each stage changes one of them, the others do not). Unlike ResNet, the shortcut
# connects the *thin* bottlenecks. The chart shows, for each block, the thin input and output channels
# and the wide expanded channels in between, and which blocks have a shortcut: 10 of the 17.

# %%
blocks = model.mobilenet_v2.layer
names = ["conv_stem"] + [f"layer.{i}" for i in range(len(blocks))]
stem = model.mobilenet_v2.conv_stem           # the stem's block: [expand], depthwise 3x3, linear 1x1
inputs = [stem.conv_3x3.in_channels] + [b.expand_1x1.in_channels for b in blocks]
expanded = [stem.conv_3x3.out_channels] + [b.expand_1x1.out_channels for b in blocks]
outputs = [stem.reduce_1x1.out_channels] + [b.reduce_1x1.out_channels for b in blocks]
residual = [False] + [b.use_residual for b in blocks]

fig, ax = plt.subplots(figsize=(12, 3.2))
positions = np.arange(len(names))
ax.bar(positions, expanded, width=0.8, color="#c6dbef", label="expanded (depthwise 3x3 runs here)")
ax.bar(positions - 0.2, inputs, width=0.4, color="tab:blue", label="block input")
ax.bar(positions + 0.2, outputs, width=0.4, color="tab:orange", label="block output (linear bottleneck)")
for p in positions[np.array(residual)]:
    ax.annotate("+x", (p, outputs[p]), xytext=(0, 4), textcoords="offset points", ha="center", color="tab:green")
ax.set_xticks(positions, names, rotation=45, ha="right")
ax.set_ylabel("channels")
ax.set_title("MobileNet V2 1.0: thin bottlenecks, wide middles; +x marks a residual connection")
ax.legend(loc="upper left")
plt.tight_layout()
plt.show()
assert sum(residual) == 10
assert all(r == (b.conv_3x3.stride == 1 and b.expand_1x1.in_channels == b.reduce_1x1.out_channels)
           for r, b in zip(residual[1:], blocks))

# %% [markdown]
# ## The full network, against transformers
#
# `transformers_twin(model)` builds `transformers.MobileNetV2ForImageClassification` with our config
# and loads our (random) weights into it: same weights, so every tensor must agree, up to float32
# rounding. We compare the 16 hidden states (the outputs of `layer.0` … `layer.15`) and the logits.
# Random BatchNorm statistics (not PyTorch's default mean 0, variance 1) make sure that a mistake in
# BatchNorm could not hide.

# %%
torch_model = transformers_twin(model)
reference = torch_model(torch.from_numpy(pixel_values), output_hidden_states=True)
assert len(reference.hidden_states) == len(output.hidden_states) == 16


def relative_error(ours, theirs):
    """max |ours - theirs| / max |theirs|: the error at the scale of the tensor."""
    theirs = theirs.numpy()
    return np.abs(ours - theirs).max() / np.abs(theirs).max()


errors = [relative_error(ours, theirs) for ours, theirs in zip(output.hidden_states, reference.hidden_states)]
errors.append(relative_error(output.logits, reference.logits))

fig, ax = plt.subplots(figsize=(8, 2.8))
ax.semilogy(range(len(errors)), errors, "o-")
ax.set_xticks(range(len(errors)), [f"layer.{i}" for i in range(16)] + ["logits"], rotation=45, ha="right")
ax.axhline(np.finfo(np.float32).eps, color="gray", linestyle=":", label="float32 machine epsilon")
ax.set_ylabel("relative error")
ax.set_title("max |ours - torch| / max |torch|: mobilenet_np vs transformers, random weights, float32")
ax.legend()
plt.tight_layout()
plt.show()
print("top-5 classes, ours:        ", np.argsort(output.logits[0])[::-1][:5])
print("top-5 classes, transformers:", np.argsort(reference.logits[0].numpy())[::-1][:5])
# float32 keeps ~7 digits; 50 layers of sums of up to 960 terms lose a few of them, not 3.
assert max(errors) < 1e-4

# %% [markdown]
# **Summary.** A MobileNet V2 block expands a thin tensor six-fold, filters it depthwise, and projects
# it back linearly, because ReLU in a low-dimensional space destroys information (here: 75 % of the
# points in 2-D, $1 - (n+1)/2^n$ recoverable in general). Shortcuts join the thin ends of the 10 blocks
# that keep their shape. The NumPy network reproduces the paper's Table 2 and transformers' outputs
# to float32 rounding. Next: [5 · DeepLabV3 segmentation](05_deeplabv3_segmentation.ipynb), which puts
# this network to work at a finer output stride.
