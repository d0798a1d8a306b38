# %% [markdown]
# # 5 · DeepLabV3: semantic segmentation with a MobileNet V2 backbone
#
# A classifier answers "what is in the image"; a segmentation network answers it for every pixel.
# DeepLabV3 ([Chen et al. 2017](https://arxiv.org/abs/1706.05587)) turns MobileNet V2 into one with
# three ideas: **dilated (atrous) convolutions**, so that the feature map stays large without losing
# the receptive field; a small head that mixes **image-level context** (a global pooling branch) with
# local features (a 1×1 branch); and **bilinear upsampling** of the per-class scores back to the image.
#
# The weights are Google's DeepLabV3-MobileNetV2 trained on Pascal VOC (21 classes, output stride 16,
# 513×513 input), imported from the quantized TFLite file in `../shared/data` with `weights_tools`
# (the uint8 weights become floats: the float emulation of the quantized network).

# %%
import warnings

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
import torch
import torch.nn.functional as F

import mobilenet_np
from mobilenet_np import ops
from mobilenet_np.pipelines import image_processor_for
from mobilenet_np.summary import summarize
from notebook_data import load_checkpoint, load_image, load_mask, transformers_twin

plt.rcParams.update({"figure.dpi": 72, "savefig.dpi": 72, "font.size": 9})
_ = torch.set_grad_enabled(False)  # inference only: no autograd bookkeeping
torch.set_num_threads(1)           # small tensors: more threads would mostly wait for each other
warnings.filterwarnings("ignore", message="IProgress not found")
rng = np.random.default_rng(0)

checkpoint = load_checkpoint("deeplabv3_mnv2_pascal")
model = checkpoint.model
config = model.config
print(checkpoint.describe())
print(f"{type(model).__name__}: depth multiplier {config.depth_multiplier}, output stride {config.output_stride}, "
      f"{config.num_labels} classes: {', '.join(config.id2label[i] for i in range(config.num_labels))}")

# %% [markdown]
# ## Dilated convolutions
#
# A dilated convolution spreads its kernel taps $d$ pixels apart (the *dilation rate*):
#
# $$\text{out}[y, x] = \sum_{i, j} \text{in}[y + d\,i,\ x + d\,j]\ w[i, j].$$
#
# A 3×3 kernel with dilation $d$ covers $d(k - 1) + 1 = 2d + 1$ pixels per side, with the same 9 weights
# and the same 9 multiply-adds per output. It "sees further" for free.

# %%
fig, axes = plt.subplots(1, 3, figsize=(9, 3.2))
size = 11
for ax, d in zip(axes, (1, 2, 4)):
    grid = np.zeros((size, size))
    centre = size // 2
    for i in (-1, 0, 1):
        for j in (-1, 0, 1):
            grid[centre + d * i, centre + d * j] = 1
    ax.imshow(grid, cmap="Blues", vmin=0, vmax=1.3)
    ax.set_xticks(np.arange(-0.5, size), minor=True)
    ax.set_yticks(np.arange(-0.5, size), minor=True)
    ax.grid(which="minor", color="0.8")
    ax.tick_params(which="both", length=0, labelbottom=False, labelleft=False)
    ax.set_title(f"3x3, dilation {d}: covers {2 * d + 1}x{2 * d + 1}")
plt.tight_layout()
plt.show()

x = rng.standard_normal((1, 8, 20, 20)).astype(np.float32)
w = rng.standard_normal((8, 1, 3, 3)).astype(np.float32)           # depthwise, as in MobileNet V2
for d in (1, 2, 4):
    ours = ops.conv2d(x, w, padding=d, dilation=d, groups=8)
    theirs = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=d, dilation=d, groups=8).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
print("dilated depthwise convolutions equal to PyTorch's for dilation 1, 2, 4")

# %% [markdown]
# ## Output stride: trading strides for dilations
#
# MobileNet V2 halves the resolution five times: its last feature map is 32 times smaller than the
# input (*output stride* 32), 17×17 for a 513×513 image, too coarse for outlines. DeepLab removes the
# last strides: with `config.output_stride = 16`, the stride-2 depthwise convolution of `layer.12`
# becomes stride 1, and every later 3×3 convolution gets dilation 2; with output stride 8, one more
# stride goes and the dilations are 2, then 4. (`networks/mobilenet_v2.py` builds this from the stage table.)
#
# Why dilation exactly makes up for the lost stride: a tap at offset $i$ in a layer whose input pixels
# are $J$ image pixels apart reads the image $i \cdot d \cdot J$ pixels away. Halving $J$ and doubling
# $d$ keeps every tap on the same image location, so each output sees the same image region
# (its *receptive field*), there are just four times as many outputs. The receptive field follows from
# the layer list: going through the layers, it grows by $(k_\text{eff} - 1) \cdot J$ at each layer,
# where $k_\text{eff} = d(k-1) + 1$, and $J$ is multiplied by the stride.

# %%
def receptive_fields(network):
    """(receptive field, pixel spacing J) after each backbone ConvLayer, in input pixels."""
    field, spacing, rows = 1, 1, []
    backbone = network.mobilenet_v2
    for layer in backbone.conv_layers():
        if layer is backbone.conv_1x1:    # the DeepLab head reads the last block, not conv_1x1
            continue
        field += (layer.dilation * (layer.kernel_size - 1)) * spacing
        spacing *= layer.stride
        rows.append((layer.name, field, spacing))
    return rows


networks = {stride: mobilenet_np.MobileNetV2ForSemanticSegmentation(
    mobilenet_np.MobileNetV2Config(output_stride=stride, image_size=513, num_labels=21), seed=None)
    for stride in (32, 16, 8)}
fields = {stride: receptive_fields(network) for stride, network in networks.items()}

fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.2))
for (stride, rows), style in zip(fields.items(), ("-", "--", ":")):
    left.plot([f for _, f, _ in rows], style, linewidth=2, label=f"output stride {stride}")
    right.plot([s for _, _, s in rows], style, linewidth=2, label=f"output stride {stride}")
left.set_title("receptive field (input pixels) after each conv layer")
right.set_title("spacing J of the feature map pixels (input pixels)")
for ax in (left, right):
    ax.set_xlabel("conv layer of the backbone")
    ax.legend()
plt.tight_layout()
plt.show()

print(f"{'output stride':>14s} {'feature map':>12s} {'receptive field':>16s} {'M MACs (whole model)':>21s}")
for stride, network in networks.items():
    cost = summarize(network)
    _, size, _ = next(row for row in cost.layers if row.name == "mobilenet_v2.layer.15.reduce_1x1").output_shape
    print(f"{stride:14d} {size:>9d}x{size:<3d} {fields[stride][-1][1]:16d} {cost.total_macs / 1e6:21.0f}")
    assert size == -(-513 // stride)                                # ceil(513 / output stride)
assert fields[32][-1][1] == fields[16][-1][1] == fields[8][-1][1]   # same receptive field at every output stride

# %% [markdown]
# The receptive field of 491 pixels is the same at every output stride; the cost is not (the later
# layers run on 4 or 16 times more pixels). That is why mobile models often run at output stride 16,
# like the TFLite model used here. On the image: the dots are the 33×33 output pixels at output
# stride 16, the square is the receptive field of the centre one, and the crosses are where the centre
# output's last depthwise 3×3 filter (`layer.15`, dilation 2 on a grid of spacing 16) reads, 32 image
# pixels apart: exactly where a stride-32 network without dilation would read.

# %%
image, image_is_real = load_image("bird_segmentation.bmp")
truth = load_mask("bird_segmentation_mask.bmp")
height, width = truth.shape
spacing = config.output_stride
field = fields[config.output_stride][-1][1]
grid = np.arange(0, height, spacing)                 # TF "SAME": output pixel i is centred near input pixel i * spacing
centre = grid[len(grid) // 2]
last_dilation = model.mobilenet_v2.layer[-1].conv_3x3.dilation

fig, ax = plt.subplots(figsize=(5, 5))
ax.imshow(image)
gy, gx = np.meshgrid(grid, grid)
ax.scatter(gx, gy, s=2, color="white")
ax.add_patch(plt.Rectangle((centre - field // 2, centre - field // 2), field, field, fill=False, color="yellow", linewidth=2))
taps = centre + last_dilation * spacing * np.array([-1, 0, 1])
ax.scatter(*np.meshgrid(taps, taps), marker="x", s=80, color="red")
ax.set_xlim(-0.5, width - 0.5)
ax.set_ylim(height - 0.5, -0.5)
ax.set_title(f"output stride {spacing}: {len(grid)}x{len(grid)} outputs, receptive field {field} px")
ax.axis("off")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## The head: a pooling branch and a 1×1 branch
#
# transformers' `MobileNetV2DeepLabV3Plus` is the DeepLabV3 head without its atrous branches, the
# configuration of Google's mobile DeepLab models; two branches remain:
#
# * **image pooling**: average the whole feature map to one vector (global context: "this is an
#   outdoor scene with a bird"), a 1×1 convolution to 256 channels, then back to the map's size (from
#   1×1, bilinear upsampling just copies the vector to every pixel);
# * **1×1 branch**: a 1×1 convolution to 256 channels at every pixel (local evidence);
#
# concatenated (512 channels), projected to 256 by another 1×1 convolution, and classified by a last
# 1×1 convolution into 21 scores per pixel. The head uses ReLU and BatchNorm with $\varepsilon =
# 10^{-5}$. We run the network on the image and record the head's tensors:

# %%
processor = image_processor_for(model)
# The image is already 513x513: only rescale and normalize (no resize, no crop), so that the
# prediction lines up with the ground-truth mask pixel for pixel.
pixel_values = processor(image, do_resize=False, do_center_crop=False)["pixel_values"]     # (1, 3, 513, 513)

recorded = {}
output = model(pixel_values, record=lambda name, tensor: recorded.__setitem__(name, tensor))
for name in ["pixel_values", "mobilenet_v2.layer.15", "segmentation_head.avg_pool", "segmentation_head.conv_pool",
             "segmentation_head.conv_aspp", "segmentation_head.conv_projection", "segmentation_head.classifier"]:
    print(f"{name:36s} {recorded[name].shape}")
feature_size = -(-height // config.output_stride)               # ceil(513 / 16) = 33
assert output.logits.shape == (1, config.num_labels, feature_size, feature_size)

reference = transformers_twin(model)(torch.from_numpy(pixel_values)).logits.numpy()
error = np.abs(output.logits - reference).max()
print(f"max |ours - transformers| = {error:.1e} (logits up to {np.abs(reference).max():.1f})")
np.testing.assert_allclose(output.logits, reference, rtol=0, atol=1e-4 * np.abs(reference).max())

# %% [markdown]
# ## Bilinear upsampling, and what `align_corners` means
#
# The logits are 33×33; the image is 513×513. Bilinear upsampling computes each output pixel from the
# 4 nearest input pixels, weighted by distance. The one question is *where* output pixel $i$ lies in the
# input's coordinates, and there are two conventions:
#
# * `align_corners=True`: the corner pixels of input and output coincide,
#   $\; s = i \,\dfrac{n_\text{in} - 1}{n_\text{out} - 1}$
#   (what TensorFlow's DeepLab, and the TFLite graph, do; for 33 → 513 the scale is exactly 1/16);
# * `align_corners=False`: pixels are squares and their *centres* line up,
#   $\; s = (i + \tfrac12)\dfrac{n_\text{in}}{n_\text{out}} - \tfrac12$, clamped at 0
#   (transformers' `post_process_semantic_segmentation`, and PyTorch's default).
#
# The plot shows where 4 input samples land among 9 outputs in each convention.

# %%
n_in, n_out = 4, 9
fig, axes = plt.subplots(2, 1, figsize=(8, 3.4), sharex=True)
for ax, align in zip(axes, (True, False)):
    # Source coordinate of every output pixel, from an identity ramp through the library op.
    ramp = np.arange(n_in, dtype=np.float64)[None, None, None, :]                    # (1, 1, 1, n_in)
    source = ops.interpolate_bilinear(ramp, (1, n_out), align_corners=align)[0, 0, 0]
    ax.scatter(np.arange(n_in), np.zeros(n_in), s=120, color="tab:blue", label="input pixel centres", zorder=3)
    ax.scatter(source, np.zeros(n_out), marker="|", s=400, color="tab:orange", label="output pixels", zorder=2)
    ax.set_title(f"align_corners={align}: output i samples the input at " + ", ".join(f"{s:.2f}" for s in source))
    ax.set_yticks([])
    ax.set_xlim(-0.6, n_in - 0.4)
    ax.set_ylim(-1, 1)
fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncols=2)
axes[1].set_xlabel("input coordinate")
plt.tight_layout(rect=(0, 0.1, 1, 1))
plt.show()

small = rng.standard_normal((1, 3, 5, 7)).astype(np.float32)
for align in (True, False):
    ours = ops.interpolate_bilinear(small, (17, 11), align_corners=align)
    theirs = F.interpolate(torch.from_numpy(small), size=(17, 11), mode="bilinear", align_corners=align).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
print("ops.interpolate_bilinear equals torch.nn.functional.interpolate in both conventions")

# %% [markdown]
# With `align_corners=False` the clamp at 0 makes the border pixels copies of the edge (its last
# samples stop at 3.00). For the class map the difference is a few boundary pixels.
#
# ## The prediction
#
# Upsample the 21 score maps to 513×513, take the best class at each pixel, and compare the bird's
# pixels with the ground-truth mask by their **intersection over union**,
# $\text{IoU} = |P \cap T| \,/\, |P \cup T|$ (1 is a perfect outline).

# %%
def class_map(logits, size, align_corners):
    upsampled = ops.interpolate_bilinear(logits, size, align_corners=align_corners)   # (1, 21, H, W)
    return upsampled[0].argmax(axis=0)                                                 # (H, W)


def iou(predicted, truth):
    return np.logical_and(predicted, truth).sum() / np.logical_or(predicted, truth).sum()


bird = config.label2id.get("bird", 3)
classes = class_map(output.logits, (height, width), align_corners=True)               # as the TFLite graph
classes_transformers = processor.post_process_semantic_segmentation(output, target_sizes=[(height, width)])[0]
scores = {"align_corners=True": iou(classes == bird, truth),
          "align_corners=False (transformers)": iou(classes_transformers == bird, truth)}
for name, value in scores.items():
    print(f"IoU of '{config.id2label[bird]}' vs ground truth, {name}: {value:.3f}")
print(f"pixels whose class differs between the two conventions: {np.mean(classes != classes_transformers):.2%}")
found = {config.id2label[int(c)]: f"{np.mean(classes == c):.1%}" for c in np.unique(classes)}
print("classes found:", found)
if checkpoint.real and image_is_real:
    assert scores["align_corners=True"] > 0.8, "a trained DeepLabV3 should outline the bird"

fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
axes[0].imshow(image)
axes[0].set_title("image" + ("" if image_is_real else " (synthetic)"))
axes[1].imshow(image)
axes[1].imshow(np.ma.masked_where(classes != bird, classes), cmap=ListedColormap(["orange"]), alpha=0.6)
axes[1].contour(truth, levels=[0.5], colors="cyan", linewidths=1.5)
axes[1].set_title(f"predicted '{config.id2label[bird]}' (orange), ground truth (cyan)\nIoU {scores['align_corners=True']:.3f}"
                  + ("" if checkpoint.real else " - RANDOM WEIGHTS"))
axes[2].imshow(output.logits[0, bird], cmap="magma")
axes[2].set_title(f"'{config.id2label[bird]}' score before upsampling ({feature_size}x{feature_size})")
for ax in axes:
    ax.axis("off")
plt.tight_layout()
plt.show()

# %% [markdown]
# **Summary.** Dilated convolutions let DeepLab keep a 33×33 (or 65×65) feature map while every
# output still sees a 491-pixel receptive field; the head adds image-level context to each pixel's
# features; bilinear upsampling (mind `align_corners`) brings the scores back to the image. Our
# logits equal transformers', and the real network outlines the bird. Next:
# [6 · Golden references for ports](06_golden_references.ipynb).
