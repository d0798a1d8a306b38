# %% [markdown]
# # 1 · Convolution from scratch
#
# Nearly all the work of a MobileNet is done by convolutions, so this is where we start. In this
# notebook we write a 2-D convolution three times: with plain loops (the definition), vectorised with
# NumPy (how it is computed fast), and with the library op `mobilenet_np.ops.conv2d`. Each version is
# checked against PyTorch. Then we look at the detail that trips up every port of a TensorFlow model:
# TensorFlow's `"SAME"` padding.

# %%
import time
import warnings

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from mobilenet_np import ops
from notebook_data import load_image

plt.rcParams.update({"figure.dpi": 72, "savefig.dpi": 72, "font.size": 9})
rng = np.random.default_rng(0)
_ = torch.set_grad_enabled(False)  # inference only: no autograd bookkeeping
torch.set_num_threads(1)           # small tensors: more threads would mostly wait for each other
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm's notice when transformers loads

# %% [markdown]
# ## The definition
#
# A convolution layer maps an input with $C_\text{in}$ channels to an output with $C_\text{out}$
# channels. Each output channel $o$ has its own filter $w_o$ of shape $(C_\text{in}, k, k)$ and a bias
# $b_o$. The filter slides over the input with a step (stride) $s$; at each position, the output is the
# dot product of the filter with the window of input it covers:
#
# $$\text{out}[o, y, x] = b_o + \sum_{c=0}^{C_\text{in}-1} \sum_{i=0}^{k-1} \sum_{j=0}^{k-1}
#   \text{in}[c,\ y s + i,\ x s + j]\ w[o, c, i, j]$$
#
# (Strictly this is a cross-correlation: the filter is not flipped. Every deep learning framework
# computes it this way and still calls it convolution.) Without padding, the output has
#
# $$H_\text{out} = \left\lfloor \frac{H - k}{s} \right\rfloor + 1$$
#
# rows, and the same for the width. Arrays follow PyTorch's layout: activations are
# `(N, C, H, W)` and weights are `(C_out, C_in, k, k)`.
#
# The loops below are the formula, one line per sum.

# %%
def conv2d_loops(x, w, b, stride=1):
    """x (C_in, H, W), w (C_out, C_in, k, k), b (C_out,) -> (C_out, H_out, W_out). No padding."""
    c_in, h, width = x.shape
    c_out, _, k, _ = w.shape
    h_out, w_out = (h - k) // stride + 1, (width - k) // stride + 1
    out = np.zeros((c_out, h_out, w_out), dtype=x.dtype)
    for o in range(c_out):
        for y in range(h_out):
            for x_ in range(w_out):
                total = b[o]
                for c in range(c_in):
                    for i in range(k):
                        for j in range(k):
                            total += x[c, y * stride + i, x_ * stride + j] * w[o, c, i, j]
                out[o, y, x_] = total
    return out


x = rng.standard_normal((4, 9, 9)).astype(np.float32)      # (C_in, H, W)
w = rng.standard_normal((5, 4, 3, 3)).astype(np.float32)   # (C_out, C_in, k, k)
b = rng.standard_normal(5).astype(np.float32)              # (C_out,)

out_loops = conv2d_loops(x, w, b, stride=2)
out_torch = F.conv2d(torch.from_numpy(x[None]), torch.from_numpy(w), torch.from_numpy(b), stride=2)[0].numpy()
print("output shape:", out_loops.shape, " max |loops - torch| =", np.abs(out_loops - out_torch).max())
# float32 sums of 4*3*3 = 36 products: rounding differences stay near 1e-6.
assert out_loops.shape == (5, 4, 4)
np.testing.assert_allclose(out_loops, out_torch, rtol=1e-5, atol=1e-5)

# %% [markdown]
# ## Vectorised: gather the windows, then one matrix product
#
# Six nested loops in Python are far too slow for a real network. The trick used by most
# libraries is **im2col**: copy every window into a row of a matrix. With $P = H_\text{out}
# W_\text{out}$ output positions and windows of $C_\text{in} k^2$ values, the windows form a
# $(P, C_\text{in} k^2)$ matrix, the filters a $(C_\text{out}, C_\text{in} k^2)$ matrix, and the whole
# convolution becomes one matrix product, which NumPy hands to an optimised BLAS:
#
# $$\text{out} = W_\text{flat}\ \text{cols}^\top + b \qquad (C_\text{out}, C_\text{in}k^2) \times (C_\text{in}k^2, P)$$
#
# `np.lib.stride_tricks.sliding_window_view` builds the windows without copying; the stride is then
# a slice.

# %%
def conv2d_im2col(x, w, b, stride=1):
    """The same convolution as conv2d_loops, as a matrix product."""
    c_out, c_in, k, _ = w.shape
    windows = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))  # (C_in, H-k+1, W-k+1, k, k)
    windows = windows[:, ::stride, ::stride]                                    # (C_in, H_out, W_out, k, k)
    h_out, w_out = windows.shape[1:3]
    cols = windows.transpose(1, 2, 0, 3, 4).reshape(h_out * w_out, c_in * k * k)  # (P, C_in*k*k)
    out = w.reshape(c_out, c_in * k * k) @ cols.T + b[:, None]                 # (C_out, P)
    return out.reshape(c_out, h_out, w_out)


out_im2col = conv2d_im2col(x, w, b, stride=2)
print("max |im2col - loops| =", np.abs(out_im2col - out_loops).max())
np.testing.assert_allclose(out_im2col, out_torch, rtol=1e-5, atol=1e-5)

# %% [markdown]
# How much faster is it? A small layer (8 to 8 channels on a 24×24 input) is enough to see the
# difference; `ops.conv2d` is the library's version of the same idea. (Timings are indicative only:
# they depend on the machine.)

# %%
xs = rng.standard_normal((8, 24, 24)).astype(np.float32)
ws = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
bs = np.zeros(8, np.float32)


def milliseconds(function, repeats=3):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return 1e3 * best


timings = {
    "loops (conv2d_loops)": milliseconds(lambda: conv2d_loops(xs, ws, bs), repeats=1),
    "im2col (conv2d_im2col)": milliseconds(lambda: conv2d_im2col(xs, ws, bs)),
    "mobilenet_np.ops.conv2d": milliseconds(lambda: ops.conv2d(xs[None], ws, bs)),
}
for name, ms in timings.items():
    print(f"{name:28s} {ms:9.3f} ms")

# %% [markdown]
# ## The library op
#
# `mobilenet_np.ops.conv2d` has the signature of `torch.nn.functional.conv2d`: a batch dimension,
# `stride`, `padding`, `dilation` and `groups`. Beside it, `ops.conv2d_naive` is the loop version,
# kept in the library so that you can read the definition next to the fast code. Two special cases
# carry almost all the work of a MobileNet and get their own fast paths (notebook 2 explains why):
#
# * **pointwise** (1×1, `groups=1`): a matrix product `(C_out, C_in) @ (C_in, H·W)`;
# * **depthwise** (`groups = C_in`): each channel has its own k×k filter, computed as $k^2$ shifted
#   multiply-adds over the whole image.
#
# Everything else goes through im2col, as above. Let us check all three paths, and the naive one,
# against PyTorch.

# %%
def compare_with_torch(x, w, **kwargs):
    ours = ops.conv2d(x, w, **kwargs)
    naive = ops.conv2d_naive(x, w, **kwargs)
    reference = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), **kwargs).numpy()
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(naive, reference, rtol=1e-5, atol=1e-5)
    return ours.shape, np.abs(ours - reference).max()


x = rng.standard_normal((2, 6, 11, 11)).astype(np.float32)  # (N, C_in, H, W)
cases = {
    "3x3 conv, stride 2, padding 1": (rng.standard_normal((4, 6, 3, 3)), dict(stride=2, padding=1)),
    "pointwise 1x1": (rng.standard_normal((4, 6, 1, 1)), dict()),
    "depthwise 3x3, dilation 2": (rng.standard_normal((6, 1, 3, 3)), dict(padding=2, dilation=2, groups=6)),
    "grouped 3x3, groups=2": (rng.standard_normal((4, 3, 3, 3)), dict(padding=1, groups=2)),
}
for name, (weight, kwargs) in cases.items():
    shape, error = compare_with_torch(x, weight.astype(np.float32), **kwargs)
    print(f"{name:32s} output {shape}  max |ours - torch| = {error:.1e}")

# %% [markdown]
# ## What a filter does to an image
#
# The filters of a trained network's first layer often look like edge detectors. A hand-made one
# shows the idea: the Sobel filter
# $\begin{pmatrix}-1&0&1\\-2&0&2\\-1&0&1\end{pmatrix}$ responds to horizontal changes of brightness
# (vertical edges) and its transpose to vertical changes. Both are just `(1, 1, 3, 3)` weights for
# `ops.conv2d`.

# %%
image, image_is_real = load_image("cat.bmp")
gray = np.asarray(image.convert("L"), dtype=np.float32)[None, None] / 255   # (1, 1, H, W)
sobel_x = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)
sobel = np.stack([sobel_x, sobel_x.T])[:, None]                            # (2, 1, 3, 3): two filters
edges = ops.conv2d(gray, sobel, padding=1)                                  # (1, 2, H, W)
np.testing.assert_allclose(edges, F.conv2d(torch.from_numpy(gray), torch.from_numpy(sobel), padding=1).numpy(),
                           rtol=1e-5, atol=1e-5)

fig, axes = plt.subplots(1, 4, figsize=(12, 3.2))
panels = [(image, "input" + ("" if image_is_real else " (synthetic)")),
          (edges[0, 0], "Sobel x: vertical edges"), (edges[0, 1], "Sobel y: horizontal edges"),
          (np.hypot(edges[0, 0], edges[0, 1]), "edge strength")]
for ax, (picture, title) in zip(axes, panels):
    ax.imshow(picture, cmap=None if picture is image else "gray")
    ax.set_title(title)
    ax.axis("off")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## TensorFlow "SAME" padding
#
# Padding adds zeros around the input so that the filter can also be centred on border pixels.
# PyTorch's `padding=p` adds $p$ rows on top *and* $p$ at the bottom. The MobileNet checkpoints were
# trained in TensorFlow with `padding="SAME"`, which works differently. TensorFlow first decides the
# output size,
#
# $$H_\text{out} = \left\lceil \frac{H}{s} \right\rceil,$$
#
# then pads just enough zeros for the last window to fit:
#
# $$p_\text{total} = \max\big((H_\text{out} - 1)\, s + k - H,\ 0\big),\qquad
#   p_\text{top} = \lfloor p_\text{total} / 2 \rfloor,\qquad p_\text{bottom} = p_\text{total} - p_\text{top}.$$
#
# Two consequences:
#
# * **It is asymmetric.** When $p_\text{total}$ is odd, the extra row goes at the *bottom* (and the
#   extra column at the right).
# * **It depends on the input size**, not only on the layer. A 3×3 convolution with stride 2 pads
#   224 rows with 0 on top and 1 at the bottom, but 225 rows with 1 and 1.
#
# transformers reproduces this with `apply_tf_padding` before each convolution (when
# `config.tf_padding` is true), and so does `ops.pad_tf_same`. The amounts, for the layer shapes that
# occur in MobileNet:

# %%
def tf_same_amounts_from_definition(size, kernel, stride):
    """TensorFlow's definition: first the output size, then just enough padding."""
    out = -(-size // stride)                      # ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


print(" input  kernel stride | top bottom | output")
for size, kernel, stride in [(224, 3, 2), (225, 3, 2), (112, 3, 1), (160, 3, 2), (7, 3, 2), (8, 3, 2), (513, 3, 2)]:
    top, bottom = ops.tf_same_padding_amounts(size, kernel, stride)
    out = ops.conv_output_size(size, kernel, stride, top + bottom)
    print(f"{size:6d} {kernel:6d} {stride:6d} | {top:3d} {bottom:6d} | {out:6d}")

# The library's formula (the one in transformers) is TensorFlow's definition, and the output size is
# always ceil(size / stride), for every size, kernel and stride of the range below.
for size in range(1, 80):
    for kernel in (1, 2, 3, 5, 7):
        for stride in (1, 2, 3, 4):
            top, bottom = ops.tf_same_padding_amounts(size, kernel, stride)
            assert (top, bottom) == tf_same_amounts_from_definition(size, kernel, stride)
            assert ops.conv_output_size(size, kernel, stride, top + bottom) == -(-size // stride)

# %% [markdown]
# The drawing shows which input pixels each output pixel reads, for a 3×3 filter with stride 2.
# Grey cells are the input, red cells the zero padding, and the outlined squares the windows of the
# first and last output pixels. With 8 rows, TensorFlow pads only the bottom; with 7 rows it pads both
# sides; PyTorch's symmetric `padding=1` on 8 rows starts every window one pixel higher and to the
# left than TensorFlow, so a TensorFlow-trained filter would be applied at the wrong place.

# %%
def draw_padding(ax, size, pads, kernel, stride, title):
    """Input grid with padding cells (red) and the windows of the first and last output pixels."""
    top, bottom = pads
    total = top + size + bottom
    for i in range(total):
        for j in range(total):
            inside = top <= i < top + size and top <= j < top + size
            ax.add_patch(plt.Rectangle((j, i), 1, 1, facecolor="0.85" if inside else "#f4a6a6",
                                       edgecolor="white", linewidth=1.5))
    n_out = ops.conv_output_size(size, kernel, stride, top + bottom)
    for index, color in ((0, "tab:blue"), (n_out - 1, "tab:green")):
        start = index * stride
        ax.add_patch(plt.Rectangle((start, start), kernel, kernel, fill=False, edgecolor=color, linewidth=2.5))
    ax.set_xlim(0, total)
    ax.set_ylim(total, 0)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{title}\n{size} px, pad top/left {top}, bottom/right {bottom}: {n_out} outputs")


fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
draw_padding(axes[0], 8, ops.tf_same_padding_amounts(8, 3, 2), 3, 2, "TensorFlow SAME")
draw_padding(axes[1], 7, ops.tf_same_padding_amounts(7, 3, 2), 3, 2, "TensorFlow SAME")
draw_padding(axes[2], 8, (1, 1), 3, 2, "PyTorch padding=1")
plt.tight_layout()
plt.show()

# %% [markdown]
# Finally, the check that matters for porting: padding with `ops.pad_tf_same` and then convolving
# without padding gives what transformers computes with its own `apply_tf_padding`, for even and odd
# input sizes. On 225 pixels TensorFlow pads 1 and 1, so PyTorch's symmetric `padding=1` happens to
# agree. On 224 pixels it gives the same output *shape* (112×112) but different values, because every
# window is shifted by one pixel.

# %%
from transformers.models.mobilenet_v1.modeling_mobilenet_v1 import apply_tf_padding

conv = torch.nn.Conv2d(3, 4, kernel_size=3, stride=2, bias=False)
weight = conv.weight.numpy()
for size in (224, 225):
    x = rng.standard_normal((1, 3, size, size)).astype(np.float32)
    ours = ops.conv2d(ops.pad_tf_same(x, kernel_size=3, stride=2), weight, stride=2)
    reference = conv(apply_tf_padding(torch.from_numpy(x), conv)).numpy()
    symmetric = ops.conv2d(x, weight, stride=2, padding=1)
    print(f"{size}x{size}: output {ours.shape[2:]}, max |ours - transformers| = {np.abs(ours - reference).max():.1e}, "
          f"max |symmetric padding - transformers| = {np.abs(symmetric - reference).max():.2f}")
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5)

# On even sizes the symmetric padding is a real error, not rounding: the windows are in other places.
x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
reference = conv(apply_tf_padding(torch.from_numpy(x), conv)).numpy()
symmetric = ops.conv2d(x, weight, stride=2, padding=1)
assert symmetric.shape == reference.shape and np.abs(symmetric - reference).max() > 0.1

# %% [markdown]
# **Summary.** A convolution is a sliding dot product (six nested loops), computed fast as one matrix
# product over gathered windows. `mobilenet_np.ops.conv2d` matches `torch.nn.functional.conv2d` to
# float32 rounding. TensorFlow's "SAME" padding is decided per input size and puts the odd pixel at the
# bottom/right; a port that uses symmetric padding instead is silently wrong on even input sizes.
# Next: [2 · Depthwise separable convolutions and their cost](02_depthwise_separable_cost.ipynb).
