# %% [markdown]
# # 3 · MobileNet V1 step by step, on a real image with real weights
#
# We now run a trained MobileNet V1 ([Howard et al. 2017](https://arxiv.org/abs/1704.04861)) on a photo
# and look inside: how the image becomes the network's input, what some of the 27 convolution layers
# produce, and which classes come out. Then we take apart the one layer type we have not derived yet,
# BatchNorm, and show how it *folds* into the convolution before it, which is what TFLite and most
# inference engines do.
#
# The weights are the Keras applications MobileNet 0.25 (width multiplier 0.25, 224×224, trained on
# ImageNet), imported from `../shared/data` with `weights_tools` into a temporary folder: the same two
# steps you would run with `python -m weights_tools import-keras` and `mobilenet_np.load`. Without the
# shared data (and offline) the notebook uses random weights and says so below.

# %%
import warnings

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch.nn.utils.fusion import fuse_conv_bn_weights

import mobilenet_np
from mobilenet_np import image_processing, ops
from mobilenet_np.pipelines import image_processor_for
from notebook_data import load_checkpoint, load_image, transformers_twin

plt.rcParams.update({"figure.dpi": 72, "savefig.dpi": 72, "font.size": 9})
_ = torch.set_grad_enabled(False)  # inference only: no autograd bookkeeping
torch.set_num_threads(1)           # small tensors: more threads would mostly wait for each other
warnings.filterwarnings("ignore", message="IProgress not found")

checkpoint = load_checkpoint("keras_mobilenet_v1_0.25_224")
model = checkpoint.model
print(checkpoint.describe())
print(f"{type(model).__name__}: width multiplier {model.config.depth_multiplier}, input {model.config.image_size}x"
      f"{model.config.image_size}, {model.config.num_labels} classes, {model.num_parameters():,} parameters")

# %% [markdown]
# ## From a photo to pixel values
#
# The network was trained on 224×224 images whose values are in $[-1, 1]$. The image processor
# (`mobilenet_np.image_processing`, equal to transformers' `MobileNetV1ImageProcessor`) gets there in
# four steps:
#
# 1. **resize** (bilinear) so that the shorter side is 256 pixels, keeping the aspect ratio;
# 2. **center crop** 224×224;
# 3. **rescale** the 0–255 integers to $[0, 1]$: $x / 255$;
# 4. **normalize** each channel: $(x - 0.5) / 0.5$, into $[-1, 1]$;
#
# and the result is stored as `(N, 3, H, W)`, channels first. We run the steps one by one and look at
# each.

# %%
image, image_is_real = load_image("cat.bmp")
processor = image_processor_for(model)
print(processor)

rgb = processor.to_rgb_array(image)                                                       # (3, H, W) uint8
resized = image_processing.resize(rgb, processor.resize_output_size(*rgb.shape[1:]), processor.resample)
cropped = image_processing.center_crop(resized, processor.crop_size["height"], processor.crop_size["width"])
rescaled = image_processing.rescale(cropped, processor.rescale_factor)                    # (3, 224, 224) in [0, 1]
normalized = image_processing.normalize(rescaled, processor.image_mean, processor.image_std)  # in [-1, 1]
pixel_values = normalized[None]                                                           # (1, 3, 224, 224)

fig, axes = plt.subplots(1, 5, figsize=(13, 2.7))
steps = [(rgb, f"input {rgb.shape[2]}x{rgb.shape[1]}"), (resized, f"resized {resized.shape[2]}x{resized.shape[1]}"),
         (cropped, f"center crop {cropped.shape[2]}x{cropped.shape[1]}")]
for ax, (picture, title) in zip(axes, steps):
    ax.imshow(np.moveaxis(picture, 0, -1))
    ax.set_title(title)
for channel, color in zip(normalized, ("red", "green", "blue")):
    axes[3].hist(channel.ravel(), bins=50, histtype="step", color=color, label=color)
axes[3].set_title("normalized values")
axes[3].legend()
axes[4].imshow(normalized[0], cmap="RdBu_r", vmin=-1, vmax=1)
axes[4].set_title("red channel, in [-1, 1]")
for ax in axes[[0, 1, 2, 4]]:
    ax.axis("off")
plt.tight_layout()
plt.show()

# The step-by-step result is what the processor computes in one call, and what transformers computes.
from transformers import MobileNetV1ImageProcessorPil

theirs = MobileNetV1ImageProcessorPil(**processor.to_dict())(image, return_tensors="np")["pixel_values"]
np.testing.assert_array_equal(pixel_values, processor(image)["pixel_values"])
np.testing.assert_allclose(pixel_values, theirs, rtol=0, atol=1e-6)
print("pixel values", pixel_values.shape, pixel_values.dtype, f"in [{pixel_values.min():.3f}, {pixel_values.max():.3f}]",
      f"max |ours - transformers| = {np.abs(pixel_values - theirs).max():.1e}")

# %% [markdown]
# ## Inside the network
#
# MobileNet V1 is one 3×3 convolution (the stem, stride 2) followed by 13 depthwise separable blocks:
# a 3×3 depthwise convolution and a 1×1 pointwise one, each followed by BatchNorm and ReLU6.
# transformers numbers the 26 depthwise and pointwise layers `layer.0` … `layer.25`. Four times a
# depthwise layer has stride 2, so the 224×224 input ends as a 7×7 map (stride 32), while the channels
# grow from 32 to 1024 (times the width multiplier). Global average pooling and a linear classifier
# finish it.
#
# `model(x, record=...)` hands us every intermediate tensor by name. We keep the output of a few
# layers and draw, for each, the six channels that respond most strongly. The early maps still look
# like the cat (edges, colours, textures); the late ones are coarse 7×7 maps of where some learned
# pattern is, many of them saturated at 6, the cap of ReLU6.

# %%
recorded = {}
output = model(pixel_values, record=lambda name, tensor: recorded.__setitem__(name, tensor))
print(len(recorded), "recorded tensors, e.g.", list(recorded)[:5])

shown = ["mobilenet_v1.conv_stem", "mobilenet_v1.layer.3", "mobilenet_v1.layer.11", "mobilenet_v1.layer.25"]
fig, axes = plt.subplots(len(shown), 6, figsize=(9, 6.3))
for row, name in zip(axes, shown):
    maps = recorded[name][0]                                   # (C, h, w)
    strongest = np.argsort(maps.mean(axis=(1, 2)))[::-1][:6]
    for ax, channel in zip(row, strongest):
        ax.imshow(maps[channel], cmap="viridis")
        ax.set_xticks([])
        ax.set_yticks([])
    row[0].set_ylabel(f"{name.removeprefix('mobilenet_v1.')}\n{maps.shape[0]}x{maps.shape[1]}x{maps.shape[2]}")
plt.suptitle("the 6 most active channels of four layers (after BatchNorm and ReLU6)")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## The prediction
#
# The classifier's 1000 logits go through a softmax, $p_i = e^{z_i} / \sum_j e^{z_j}$, into
# probabilities. The same weights in transformers' PyTorch model must give the same logits.

# %%
logits = output.logits[0]                                        # (num_labels,)
probabilities = ops.softmax(logits)
top5 = np.argsort(probabilities)[::-1][:5]
for rank, i in enumerate(top5, 1):
    print(f"{rank}. {probabilities[i]:6.1%}  {model.config.id2label[i]}")

reference = transformers_twin(model)(torch.from_numpy(pixel_values)).logits[0].numpy()
print(f"max |ours - transformers| = {np.abs(logits - reference).max():.1e} (logits up to {np.abs(reference).max():.1f})")
np.testing.assert_allclose(logits, reference, rtol=0, atol=1e-4 * np.abs(reference).max())
assert list(np.argsort(reference)[::-1][:5]) == list(top5)
if checkpoint.real and image_is_real:
    assert "cat" in model.config.id2label[top5[0]], "a trained MobileNet should see a cat"

fig, ax = plt.subplots(figsize=(6, 2.2))
ax.barh(range(5)[::-1], probabilities[top5], color="tab:blue")
ax.set_yticks(range(5)[::-1], [model.config.id2label[i][:30] for i in top5])
ax.set_xlabel("probability")
ax.set_title("top-5" + ("" if checkpoint.real else " (RANDOM WEIGHTS: meaningless)"))
plt.tight_layout()
plt.show()

# %% [markdown]
# ## BatchNorm, and folding it into the convolution
#
# At inference, BatchNorm normalizes each channel $o$ with statistics collected during training (the
# running mean $\mu_o$ and variance $\sigma_o^2$) and then scales and shifts it with learned
# $\gamma_o, \beta_o$:
#
# $$\mathrm{BN}(z)_o = \gamma_o\,\frac{z_o - \mu_o}{\sqrt{\sigma_o^2 + \varepsilon}} + \beta_o .$$
#
# Every coefficient is a constant, so BN is a per-channel affine map, $s_o z_o + t_o$ with
# $s_o = \gamma_o / \sqrt{\sigma_o^2 + \varepsilon}$ and $t_o = \beta_o - \mu_o s_o$. Applied to a
# convolution $z_o = \sum W_o \cdot x + b_o$:
#
# $$\mathrm{BN}(z)_o = \sum (s_o W_o) \cdot x + (s_o b_o + t_o),$$
#
# one convolution with weights $W'_o = s_o W_o$ and bias $b'_o = s_o (b_o - \mu_o) + \beta_o$.
# Folding removes a whole pass over every activation, and it is exact up to rounding. TFLite files
# come folded (that is why their importer stores BatchNorm as an identity).
#
# Let us fold one layer by hand, the first pointwise layer `layer.1`, and compare.

# %%
layer = model.mobilenet_v1.layer[1]
p = model.params
weight = p[f"{layer.name}.convolution.weight"]                   # (C_out, C_in, 1, 1)
gamma, beta = p[f"{layer.name}.normalization.weight"], p[f"{layer.name}.normalization.bias"]
mean, var = p[f"{layer.name}.normalization.running_mean"], p[f"{layer.name}.normalization.running_var"]

scale = gamma / np.sqrt(var + layer.norm_eps)                    # (C_out,)
folded_weight = weight * scale[:, None, None, None]              # (C_out, C_in, 1, 1)
folded_bias = beta - mean * scale                                # (C_out,): this conv has no bias of its own

layer_input = recorded[model.mobilenet_v1.layer[0].name]         # the previous layer's output
unfolded = recorded[f"{layer.name}.normalization"]               # conv then BatchNorm, as the network ran it
folded = ops.conv2d(layer_input, folded_weight, folded_bias)     # one conv
print(f"{layer.name}: {layer.in_channels} -> {layer.out_channels} channels; "
      f"max |folded - conv+BN| = {np.abs(folded - unfolded).max():.1e} (values up to {np.abs(unfolded).max():.1f})")
np.testing.assert_allclose(folded, unfolded, rtol=0, atol=1e-5 * np.abs(unfolded).max())

# PyTorch's own folding (used by torch.ao quantization) gives the same weights.
torch_weight, torch_bias = fuse_conv_bn_weights(*(torch.from_numpy(a) for a in (weight,)), None,
                                                *(torch.from_numpy(a) for a in (mean, var)), layer.norm_eps,
                                                *(torch.from_numpy(a) for a in (gamma, beta)))
np.testing.assert_allclose(folded_weight, torch_weight.detach().numpy(), rtol=1e-6, atol=1e-7)
np.testing.assert_allclose(folded_bias, torch_bias.detach().numpy(), rtol=1e-6, atol=1e-6)

# %% [markdown]
# Folding every layer gives a network without BatchNorm. In the transformers layout we can store a
# folded layer by setting BatchNorm to the identity, $\gamma = 1, \beta = b', \mu = 0,
# \sigma^2 = 1 - \varepsilon$ (exactly what the TFLite importer does). The folded network, run through
# the readable layers (`fast=False`), must predict the same. So must `model(x)` itself: when nothing is
# recorded it takes mobilenet-np's fast path (`mobilenet_np/fast/`), which folds BatchNorm this way
# once per set of weights. The histogram shows how much folding changes the weights: $s_o$ spans orders
# of magnitude, which is why quantizing folded weights per output channel works better than per tensor.

# %%
def fold_all(model):
    """A copy of `model` with every conv+BN folded; BatchNorm stored as the identity."""
    folded = model.astype(np.float32)
    scales = []
    for layer in folded.conv_layers():
        p, n = folded.params, f"{layer.name}.normalization"
        s = p[f"{n}.weight"] / np.sqrt(p[f"{n}.running_var"] + layer.norm_eps)
        p[f"{layer.name}.convolution.weight"] = p[f"{layer.name}.convolution.weight"] * s[:, None, None, None]
        p[f"{n}.bias"] = p[f"{n}.bias"] - p[f"{n}.running_mean"] * s
        p[f"{n}.weight"] = np.ones_like(s)
        p[f"{n}.running_mean"] = np.zeros_like(s)
        p[f"{n}.running_var"] = np.full_like(s, 1 - layer.norm_eps)
        scales.append(s)
    return folded, np.concatenate(scales)


folded_model, scales = fold_all(model)
folded_logits = folded_model(pixel_values, fast=False).logits[0]     # readable layers, BatchNorm as identity
fast_logits = model(pixel_values).logits[0]                          # the fast path, which folds by itself
for name, other in (("folded by hand", folded_logits), ("fast path", fast_logits)):
    print(f"max |{name} - original| logits = {np.abs(other - logits).max():.1e}")
    np.testing.assert_allclose(other, logits, rtol=0, atol=1e-4 * np.abs(logits).max())
    assert np.argmax(other) == np.argmax(logits)

fig, ax = plt.subplots(figsize=(6, 2.6))
ax.hist(np.log10(np.abs(scales)), bins=60)
ax.set_xlabel("log10 |s| = log10 |gamma / sqrt(var + eps)|, one per output channel")
ax.set_ylabel("channels")
ax.set_title("the BatchNorm scales that folding multiplies into the weights")
plt.tight_layout()
plt.show()

# %% [markdown]
# **Summary.** The input is resized, center-cropped and scaled to $[-1, 1]$ exactly as transformers
# does; 27 convolutions turn it into a 7×7 map of 256 channels (at width 0.25), whose average feeds the
# classifier; our logits equal PyTorch's. BatchNorm at inference is a per-channel affine map and folds
# into the convolution before it: $W' = sW$, $b' = s(b - \mu) + \beta$ with $s = \gamma/\sqrt{\sigma^2 +
# \varepsilon}$. Next: [4 · MobileNet V2](04_mobilenet_v2_inverted_residuals.ipynb).
