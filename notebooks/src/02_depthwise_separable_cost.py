# %% [markdown]
# # 2 · Depthwise separable convolutions and what they cost
#
# MobileNet's one idea is to replace each standard convolution by a **depthwise separable**
# convolution: a depthwise convolution that filters every channel on its own, followed by a 1×1
# (pointwise) convolution that mixes the channels. This notebook counts what that saves, checks that
# the two are related exactly as the algebra says, and then recomputes, from the network code, the
# cost tables of the MobileNet papers: where the multiply-adds go, and the trade-off between accuracy,
# width and resolution.
#
# All counts come from `mobilenet_np.summary.summarize`, which walks the network's own layer list
# (`model.conv_layers()`), so they describe exactly the network that computes. Its counting convention
# is written down in `docs/costs.md`.

# %%
import warnings

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

import mobilenet_np
from mobilenet_np import ops
from mobilenet_np.layers import ConvLayer
from mobilenet_np.summary import conv_cost, summarize

plt.rcParams.update({"figure.dpi": 72, "savefig.dpi": 72, "font.size": 9})
_ = torch.set_grad_enabled(False)  # inference only: no autograd bookkeeping
torch.set_num_threads(1)           # small tensors: more threads would mostly wait for each other
warnings.filterwarnings("ignore", message="IProgress not found")
rng = np.random.default_rng(0)

# %% [markdown]
# ## Counting
#
# Take a layer with a $D_K \times D_K$ kernel, $M$ input channels, $N$ output channels and a
# $D_F \times D_F$ output. A **standard convolution** computes every output value from a
# $D_K \times D_K \times M$ window, so it costs
#
# $$\text{params} = D_K^2 M N, \qquad \text{MACs} = D_K^2\, M\, N\, D_F^2$$
#
# (one MAC is one multiply-accumulate). A **depthwise separable convolution** does the spatial filtering
# and the channel mixing in two steps:
#
# * depthwise: one $D_K \times D_K$ filter per input channel: $D_K^2 M$ params, $D_K^2 M D_F^2$ MACs;
# * pointwise: a 1×1 convolution from $M$ to $N$ channels: $M N$ params, $M N D_F^2$ MACs.
#
# Its cost relative to the standard convolution is
#
# $$\frac{D_K^2 M D_F^2 + M N D_F^2}{D_K^2 M N D_F^2} = \frac{1}{N} + \frac{1}{D_K^2},$$
#
# which for 3×3 kernels and hundreds of channels is about $\tfrac19$: 8 to 9 times fewer operations.
#
# The MobileNet paper (Table 3) works this out for one layer in the middle of the network: 512 to 512
# channels at 14×14. Here are the same layers as `ConvLayer`s (without BatchNorm, to count weights
# only), costed by `summary.conv_cost`. The paper also shrinks the separable layer with the two
# hyper-parameters of MobileNet: the **width multiplier** $\alpha$ (every layer gets $\alpha$ times the
# channels) and the **resolution multiplier** $\rho$ (the input, hence every feature map, is $\rho$
# times smaller).

# %%
def conv(in_channels, out_channels, kernel_size, depthwise=False):
    return ConvLayer("layer", in_channels, out_channels, kernel_size, groups=in_channels if depthwise else 1,
                     norm_eps=None, activation=None)


def separable_cost(channels, size):
    """(MACs, params) of depthwise 3x3 + pointwise 1x1 at stride 1 on a size x size input."""
    rows = [conv_cost(conv(channels, channels, 3, depthwise=True), size, size),
            conv_cost(conv(channels, channels, 1), size, size)]
    return sum(r.macs for r in rows), sum(r.params for r in rows)


standard = conv_cost(conv(512, 512, 3), 14, 14)
table_3 = {   # paper: (million MACs, million params)
    "convolution: 14x14x512 -> 14x14x512": ((standard.macs, standard.params), (462, 2.36)),
    "depthwise separable": (separable_cost(512, 14), (52.3, 0.27)),
    "alpha = 0.75 (384 channels)": (separable_cost(384, 14), (29.6, 0.15)),
    "and rho = 0.714 (10x10)": (separable_cost(384, 10), (15.1, 0.15)),
}
print(f"{'layer (MobileNet paper, Table 3)':38s} {'M MACs':>9s} {'paper':>6s} {'M params':>9s} {'paper':>6s}")
for name, ((macs, params), (paper_macs, paper_params)) in table_3.items():
    print(f"{name:38s} {macs / 1e6:9.2f} {paper_macs:6} {params / 1e6:9.3f} {paper_params:6}")
    # The paper prints three significant digits: ours must round to them.
    assert abs(macs / 1e6 - paper_macs) <= 0.5 * 10 ** (np.floor(np.log10(paper_macs)) - 2)
    assert abs(params / 1e6 - paper_params) <= 0.005
print(f"separable / standard = {table_3['depthwise separable'][0][0] / standard.macs:.4f}"
      f"   1/N + 1/D_K^2 = {1 / 512 + 1 / 9:.4f}")

# %% [markdown]
# PyTorch counts the same. `torch.utils.flop_counter.FlopCounterMode` reports FLOPs, two per MAC (a
# multiply and an add), and `numel()` of a `torch.nn.Conv2d`'s weight is its parameter count:

# %%
def torch_cost(module, size):
    with FlopCounterMode(display=False) as counter:
        module(torch.zeros(1, module.in_channels, size, size))
    return counter.get_total_flops() // 2, sum(p.numel() for p in module.parameters())


standard_torch = torch.nn.Conv2d(512, 512, 3, padding=1, bias=False)
separable_torch = torch.nn.Sequential(torch.nn.Conv2d(512, 512, 3, padding=1, groups=512, bias=False),
                                      torch.nn.Conv2d(512, 512, 1, bias=False))
separable_torch.in_channels = 512
assert torch_cost(standard_torch, 14) == (standard.macs, standard.params)
assert torch_cost(separable_torch, 14) == separable_cost(512, 14)
print("PyTorch:", torch_cost(standard_torch, 14), torch_cost(separable_torch, 14))

# %% [markdown]
# ## A separable convolution is a constrained standard convolution
#
# Compose the two steps. With depthwise filters $d_c$ (one $D_K \times D_K$ filter per channel $c$) and
# pointwise weights $p_{o,c}$,
#
# $$\text{out}_o = \sum_c p_{o,c}\,(d_c \star x_c) = \sum_c (p_{o,c}\, d_c) \star x_c,$$
#
# which is a standard convolution whose kernel is $K[o, c, i, j] = p_{o,c}\, d_c[i, j]$. So a separable
# convolution can compute only those standard convolutions whose $D_K \times D_K$ kernels, for a given
# input channel, are all multiples of one filter. That restriction is where the 8 to 9 times saving
# comes from; the network makes up for it with more layers and channels for the same budget. We can check the identity with the library
# ops (and PyTorch):

# %%
x = rng.standard_normal((1, 16, 12, 12)).astype(np.float32)          # (N, M, H, W)
depthwise = rng.standard_normal((16, 1, 3, 3)).astype(np.float32)    # (M, 1, 3, 3): one filter per channel
pointwise = rng.standard_normal((24, 16, 1, 1)).astype(np.float32)   # (N, M, 1, 1)

two_steps = ops.conv2d(ops.conv2d(x, depthwise, padding=1, groups=16), pointwise)     # (1, 24, 12, 12)
combined_kernel = pointwise[:, :, 0, 0, None, None] * depthwise[None, :, 0]             # (N, M, 3, 3)
one_step = ops.conv2d(x, combined_kernel, padding=1)
reference = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(combined_kernel), padding=1).numpy()
print("max |separable - combined standard conv| =", np.abs(two_steps - one_step).max())
np.testing.assert_allclose(two_steps, one_step, rtol=1e-4, atol=1e-4)
np.testing.assert_allclose(one_step, reference, rtol=1e-4, atol=1e-4)

# %% [markdown]
# ## Where MobileNet V1 spends its operations
#
# With depthwise separable layers, the 3×3 filtering becomes cheap and almost everything is spent in
# the 1×1 convolutions, which are plain matrix products, the operation every BLAS library and
# accelerator runs fastest. Table 2 of the paper breaks 1.0 MobileNet-224 down by layer type. We
# recompute it from `summarize`, with the paper's conventions: a 1024 × 1000 classifier and weights only
# (no BatchNorm, no classifier bias).

# %%
v1 = mobilenet_np.MobileNetV1ForImageClassification(mobilenet_np.MobileNetV1Config(num_labels=1000), seed=None)
summary = summarize(v1)
kinds = {"conv": "Conv 3x3 (the stem)", "depthwise": "Conv DW 3x3", "pointwise": "Conv 1x1", "linear": "Fully connected"}
macs = {kind: 0 for kind in kinds}
weights = {kind: 0 for kind in kinds}
for row in summary.layers:
    if row.op in kinds:
        macs[row.op] += row.macs
        weights[row.op] += row.params - row.batchnorm_params - (row.output_shape[0] if row.op == "linear" else 0)
mac_share = {k: 100 * v / sum(macs.values()) for k, v in macs.items()}
weight_share = {k: 100 * v / sum(weights.values()) for k, v in weights.items()}

# Table 2 of the paper: (Mult-Adds %, parameters %)
paper_table_2 = {"pointwise": (94.86, 74.59), "depthwise": (3.06, 1.06), "conv": (1.19, 0.02), "linear": (0.18, 24.33)}
print(f"{'type':22s} {'MACs %':>8s} {'paper':>7s} {'params %':>9s} {'paper':>7s}")
for kind, (paper_macs, paper_params) in paper_table_2.items():
    print(f"{kinds[kind]:22s} {mac_share[kind]:8.2f} {paper_macs:7.2f} {weight_share[kind]:9.2f} {paper_params:7.2f}")
    assert abs(weight_share[kind] - paper_params) < 0.005 + 1e-9
    if kind != "conv":
        assert abs(mac_share[kind] - paper_macs) < 0.005 + 1e-9
print("sum of the paper's MAC column:", round(sum(m for m, _ in paper_table_2.values()), 2),
      "  with 1.91 instead of 1.19:", round(sum(m for m, _ in paper_table_2.values()) - 1.19 + 1.91, 2))
assert round(mac_share["conv"], 2) == 1.91

# %% [markdown]
# Every share matches to the printed two decimals except one: the stem's MACs are **1.91 %**, printed
# as 1.19 % in the paper. The digits are swapped: the paper's column adds up to 99.29 % as printed and
# to 100.01 % with 1.91. (Recounting from code is how you find such things.)
#
# 95 % of the operations and 75 % of the parameters are in the 1×1 convolutions; the depthwise
# convolutions, which do all the spatial filtering, cost 3 %.

# %%
fig, ax = plt.subplots(figsize=(8, 2.2))
colors = {"pointwise": "tab:blue", "depthwise": "tab:orange", "conv": "tab:green", "linear": "tab:red"}
for y, share in ((1, mac_share), (0, weight_share)):
    left = 0
    for kind in kinds:
        ax.barh(y, share[kind], left=left, color=colors[kind], label=kinds[kind] if y == 1 else None)
        left += share[kind]
ax.set_yticks([1, 0], ["multiply-adds", "parameters"])
ax.set_xlabel("% of 1.0 MobileNet-224")
ax.set_xlim(0, 100)
ax.legend(ncols=4, loc="upper center", bbox_to_anchor=(0.5, 1.35), frameon=False)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Width and resolution: the trade-off tables
#
# The width multiplier $\alpha$ scales every layer's channels, so a pointwise layer's cost
# $M N D_F^2$ shrinks by about $\alpha^2$; the resolution multiplier $\rho$ scales every feature map, so
# every layer's cost shrinks by $\rho^2$. Together,
#
# $$\text{MACs}(\alpha, \rho) \approx \alpha^2 \rho^2\ \text{MACs}(1, 1),$$
#
# while the number of parameters depends on $\alpha$ only. Tables 6 and 7 of the paper list the
# resulting models. We rebuild each one from its config, count it, and compare with the published
# numbers (the classifier has 1001 outputs, as in the released checkpoints). The paper rounds to the
# nearest million MACs and a tenth of a million parameters, except the 1.0 MobileNet-160 row: the exact
# 290.68 M is printed as 290, because the paper scaled the 224 total by $\rho^2$, which is exact for the
# convolutions but not for the classifier (see `docs/costs.md`). So the check allows one million.

# %%
def v1_cost(alpha, resolution):
    model = mobilenet_np.MobileNetV1ForImageClassification(
        mobilenet_np.MobileNetV1Config(depth_multiplier=alpha, image_size=resolution, num_labels=1001), seed=None)
    s = summarize(model)
    return s.total_macs / 1e6, s.params_without_batchnorm / 1e6


# (width multiplier, resolution): (ImageNet top-1 %, million MACs, million params), Tables 6 and 7.
PAPER_V1 = {
    (1.0, 224): (70.6, 569, 4.2), (0.75, 224): (68.4, 325, 2.6), (0.5, 224): (63.7, 149, 1.3),
    (0.25, 224): (50.6, 41, 0.5), (1.0, 192): (69.1, 418, 4.2), (1.0, 160): (67.2, 290, 4.2),
    (1.0, 128): (64.4, 186, 4.2),
}
print(f"{'model':22s} {'M MACs':>8s} {'paper':>6s} {'M params':>9s} {'paper':>6s} {'top-1 (paper)':>14s}")
for (alpha, resolution), (top1, paper_macs, paper_params) in PAPER_V1.items():
    macs, params = v1_cost(alpha, resolution)
    print(f"{alpha} MobileNet-{resolution:<8d} {macs:8.2f} {paper_macs:6d} {params:9.3f} {paper_params:6} {top1:14}")
    assert abs(macs - paper_macs) < 1 and round(params, 1) == paper_params

# %% [markdown]
# The full grid of the 16 released V1 models, and the paper's accuracies against our counts. The left
# plot also shows the $\alpha^2\rho^2$ rule (dotted): the thin models cost a little more than it
# predicts, because the depthwise layers and the stem scale with $\alpha$, not $\alpha^2$.

# %%
alphas = [1.0, 0.75, 0.5, 0.25]
resolutions = [224, 192, 160, 128]
grid = np.array([[v1_cost(a, r)[0] for a in alphas] for r in resolutions])   # (resolution, alpha) -> M MACs

fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.8))
for r, row in zip(resolutions, grid):
    line, = left.plot(alphas, row, "o-", label=f"{r}x{r}")
    left.plot(alphas, [grid[0, 0] * a ** 2 * (r / 224) ** 2 for a in alphas], ":", color=line.get_color())
left.set_yscale("log")
left.set_yticks([10, 20, 50, 100, 200, 500], ["10", "20", "50", "100", "200", "500"])
left.minorticks_off()
left.set_xlabel("width multiplier alpha")
left.set_ylabel("million MACs (log)")
left.set_title("MobileNet V1: MACs counted from the code (dotted: alpha² rho² rule)")
left.legend(title="input")
for (alpha, resolution), (top1, _, params) in PAPER_V1.items():
    macs, _ = v1_cost(alpha, resolution)
    right.scatter(macs, top1, s=40 * params, color="tab:blue" if resolution == 224 else "tab:orange")
    right.annotate(f"{alpha}-{resolution}", (macs, top1), xytext=(5, -3), textcoords="offset points")
right.set_xlabel("million MACs (ours)")
right.set_ylabel("ImageNet top-1 % (paper)")
right.set_title("accuracy vs cost: blue = width, orange = resolution; size ~ params")
plt.tight_layout()
plt.show()
for r, row in zip(resolutions, grid):
    print(f"{r}x{r}: " + "  ".join(f"{a}: {m:6.1f} M" for a, m in zip(alphas, row)))

# %% [markdown]
# Around 300 M MACs, thinning the network (0.75-224: 68.4 %) beats shrinking its input (1.0-160:
# 67.2 %), and accuracy falls off fastest at the thinnest width (0.25-224: 50.6 %). This is the table a
# deployment engineer picks a model from.
#
# ## MobileNet V2
#
# The same count for MobileNet V2 (notebook 4 explains its blocks) against the table of released
# checkpoints in TF-slim's MobileNet README, which truncates MACs to whole millions and rounds
# parameters (weights only) to two decimals:

# %%
# (depth multiplier, resolution): (million MACs, million params), TF-slim "Mobilenet V2 Imagenet Checkpoints".
TF_SLIM_V2 = {
    (1.4, 224): (582, 6.06), (1.0, 224): (300, 3.47), (0.75, 224): (209, 2.61), (0.5, 224): (97, 1.95),
    (0.35, 224): (59, 1.66), (1.0, 192): (221, 3.47), (1.0, 160): (154, 3.47), (1.0, 128): (99, 3.47),
    (1.0, 96): (56, 3.47),
}
print(f"{'model':22s} {'M MACs':>8s} {'TF-slim':>8s} {'M params':>9s} {'TF-slim':>8s}")
for (alpha, resolution), (published_macs, published_params) in TF_SLIM_V2.items():
    model = mobilenet_np.MobileNetV2ForImageClassification(
        mobilenet_np.MobileNetV2Config(depth_multiplier=alpha, image_size=resolution, num_labels=1001), seed=None)
    s = summarize(model)
    macs, params = s.total_macs / 1e6, s.params_without_batchnorm / 1e6
    print(f"mobilenet_v2_{alpha}_{resolution:<8d} {macs:8.2f} {published_macs:8d} {params:9.3f} {published_params:8}")
    assert int(macs) == published_macs and round(params, 2) == published_params

# %% [markdown]
# MobileNet V2 1.0 needs 300 M MACs where V1 1.0 needs 569 M, with fewer parameters (3.47 M against
# 4.2 M), and it is more accurate (71.8 % against 70.6–70.9 % top-1). Its blocks apply the 3×3
# depthwise filter in a space expanded six-fold, but keep the tensors between blocks thin.
#
# **Summary.** A depthwise separable convolution is a standard convolution whose kernels are
# constrained to $p_{o,c}\, d_c$; it costs $\frac1N + \frac1{D_K^2}$ of one. Counting the networks from
# their code reproduces the papers' tables (and finds one swapped pair of digits), and the two
# multipliers trade accuracy for cost along the curve above. Next:
# [3 · MobileNet V1 step by step](03_mobilenet_v1_step_by_step.ipynb) with real weights.
