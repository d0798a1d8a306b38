# %% [markdown]
# # 9 · Backpropagation through MobileNet
#
# Training needs the gradient of the loss with respect to every weight. PyTorch computes it with
# autograd; here every layer has a hand-written backward pass (`mobilenet_np/training/backward.py`,
# cs231n style: `out, cache = layer_forward(...)`, `dx, dw = layer_backward(dout, cache)`, each beside a
# loop twin), and `model.loss_and_gradients(x, labels)` chains them through the network
# (`mobilenet_np/training/graph.py`). In this notebook we derive and check four of them, then the
# whole network against transformers, and measure two quirks of the transformers models in train mode.
#
# Every check uses a random upstream gradient `dout`: with `dout` all ones, some gradients vanish
# (BatchNorm's input gradient is exactly zero then), and a wrong backward could pass unnoticed.

# %%
import warnings

import matplotlib.pyplot as plt
import numpy as np
import torch

import mobilenet_np
from mobilenet_np.training import backward as B
from notebook_data import load_image, shared_data, transformers_twin

plt.rcParams.update({"figure.dpi": 72, "savefig.dpi": 72, "font.size": 9})
torch.set_num_threads(1)           # small tensors: more threads would mostly wait for each other
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm's notice when transformers loads
rng = np.random.default_rng(0)


def relative_error(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))

# %% [markdown]
# ## 1. A depthwise convolution's backward is a scatter of its forward's gather
#
# The forward *gathers*: each output value reads a 3×3 window of its own channel,
#
# $$y[n, c, i, j] = \sum_{a, b} x_p[n, c, s i + a, s j + b] \; w[c, a, b].$$
#
# Going backward, each output's gradient is *scattered* back along the same arrows: the input pixel
# under tap $(a, b)$ of output $(i, j)$ receives $\text{dout}[n, c, i, j] \, w[c, a, b]$, and the weight
# receives $\text{dout} \cdot x_p$. That is the whole of `depthwise_conv2d_backward_naive`:

# %%
import inspect

print(inspect.getsource(B.depthwise_conv2d_backward_naive))

# %% [markdown]
# The fast version does the same nine taps at once with array slices. Both against PyTorch's
# autograd, in float64, for a stride-2 layer with TensorFlow's asymmetric "SAME" padding:

# %%
x = rng.standard_normal((2, 5, 9, 8))
w = rng.standard_normal((5, 1, 3, 3))
out, cache = B.depthwise_conv2d_forward(x, w, None, stride=2, padding="tf_same")
dout = rng.standard_normal(out.shape)                              # a random upstream gradient
dx, dw, _ = B.depthwise_conv2d_backward(dout, cache)
dx_naive, dw_naive, _ = B.depthwise_conv2d_backward_naive(dout, cache)

xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
top, bottom = mobilenet_np.ops.tf_same_padding_amounts(9, 3, 2)    # TF "SAME", k 3, s 2: rows 9 -> (1, 1)
left, right = mobilenet_np.ops.tf_same_padding_amounts(8, 3, 2)    # ... columns 8 -> (0, 1): asymmetric
padded = torch.nn.functional.pad(xt, (left, right, top, bottom))
torch.nn.functional.conv2d(padded, wt, stride=2, groups=5).backward(torch.tensor(dout))
print("dx: fast vs torch", relative_error(dx, xt.grad.numpy()), " naive vs torch", relative_error(dx_naive, xt.grad.numpy()))
print("dw: fast vs torch", relative_error(dw, wt.grad.numpy()), " naive vs torch", relative_error(dw_naive, wt.grad.numpy()))
assert relative_error(dx, xt.grad.numpy()) < 1e-12 and relative_error(dw_naive, wt.grad.numpy()) < 1e-12

# %% [markdown]
# ## 2. BatchNorm in train mode: the backward, derived
#
# Per channel, over the $M = N H W$ values: $\mu = \frac1M\sum x$, $\sigma^2 = \frac1M\sum (x-\mu)^2$,
# $\hat x = (x - \mu)/\sqrt{\sigma^2 + \epsilon}$, $y = \gamma \hat x + \beta$. The batch statistics depend on
# every $x$, so $\partial y_k/\partial x_m$ has three terms; summing them against `dout` gives
#
# $$\frac{\partial L}{\partial \beta} = \sum_k \text{dout}_k, \qquad
#   \frac{\partial L}{\partial \gamma} = \sum_k \text{dout}_k \hat x_k, \qquad
#   \frac{\partial L}{\partial x} = \frac{\gamma}{M\sqrt{\sigma^2+\epsilon}}
#   \Big(M\,\text{dout} - \frac{\partial L}{\partial \beta} - \hat x\,\frac{\partial L}{\partial \gamma}\Big).$$
#
# The two subtracted terms are the paths through $\mu$ and $\sigma^2$. With `dout` all ones,
# $\partial L/\partial\beta = M$ and $\sum \hat x = 0$, so $\partial L/\partial x = 0$ exactly: shifting all inputs
# of a channel changes nothing after normalisation. Checked against central finite differences:

# %%
x = rng.standard_normal((3, 2, 4, 4))
gamma, beta = rng.uniform(0.5, 1.5, 2), rng.normal(0, 0.2, 2)
dout = rng.standard_normal(x.shape)
_, cache = B.batch_norm_train_forward(x, gamma, beta, 1e-3)
dx, dgamma, dbeta = B.batch_norm_train_backward(dout, cache)


def loss_of(x_):
    y, _ = B.batch_norm_train_forward(x_, gamma, beta, 1e-3)
    return float(np.sum(y * dout))                                  # L = <y, dout>, so dL/dy = dout


h, numeric = 1e-6, np.zeros_like(x)
for index in np.ndindex(x.shape):
    plus, minus = x.copy(), x.copy()
    plus[index] += h
    minus[index] -= h
    numeric[index] = (loss_of(plus) - loss_of(minus)) / (2 * h)
print("dx vs finite differences:", relative_error(dx, numeric))
ones_dx, _, _ = B.batch_norm_train_backward(np.ones_like(x), cache)
print("dx for dout = ones (the gradient that hides bugs):", float(np.max(np.abs(ones_dx))))
assert relative_error(dx, numeric) < 1e-7

# %% [markdown]
# ## 3. The residual connection: two roads for the gradient
#
# A block with a shortcut computes $y = x + f(x)$, so $\partial L/\partial x = \text{dout} + f'(x)^\top \text{dout}$:
# the upstream gradient reaches the block's input unchanged along the shortcut, whatever $f$ does to it.
# We take block `layer.1` of a MobileNetV2 (24 → 24 channels, stride 1, with a residual) and compute its
# input gradient through the block, and through the same block without the shortcut:

# %%
from mobilenet_np.training import graph as G

model = mobilenet_np.MobileNetV2ForImageClassification(mobilenet_np.MobileNetV2Config(num_labels=10), seed=0)
model64 = model.astype(np.float64)
block = model64.mobilenet_v2.layer[1]
print(block.name, "use_residual =", block.use_residual)
x = rng.standard_normal((2, block.expand_1x1.in_channels, 28, 28))
mode = G.Mode(training=False)
y, cache = G.inverted_residual_forward(block, x, model64.params, mode, lambda name, t: None)
dout = rng.standard_normal(y.shape)
dx = G.inverted_residual_backward(block, dout, cache, {})
without = block.__class__(**{**block.__dict__, "use_residual": False})
_, cache_f = G.inverted_residual_forward(without, x, model64.params, mode, lambda name, t: None)
df = G.inverted_residual_backward(without, dout, cache_f, {})
print("|dx - (dout + df)| =", float(np.max(np.abs(dx - (dout + df)))))
assert np.allclose(dx, dout + df, rtol=0, atol=1e-12)

# %% [markdown]
# ## 4. Why the linear bottlenecks' BatchNorm biases get no gradient in train mode
#
# A block ends with `reduce_1x1`: a 1×1 convolution, BatchNorm, and *no* activation. Its BatchNorm bias
# $\beta$ adds a constant to each output channel. Where does that constant go? Into the next block's
# `expand_1x1` (a 1×1 convolution: a constant per channel stays a constant per channel) and along the
# shortcuts, which only add more such constants, until it reaches a BatchNorm (every `expand_1x1` and the
# final `conv_1x1` have one). In train mode that BatchNorm subtracts the *batch* mean, which contains the
# constant: it cancels. The loss does not depend on $\beta$, and its gradient is zero up to rounding. In
# eval mode BatchNorm subtracts its stored running mean instead, and the gradient is an ordinary number.

# %%
x = rng.uniform(-1, 1, (4, 3, 64, 64))
labels = np.array([1, 2, 3, 4])
reduce_biases = [f"mobilenet_v2.layer.{i}.reduce_1x1.normalization.bias" for i in range(16)]
size = {}
for mode_name in ("train", "eval"):
    model64.train(mode_name == "train", seed=0, dropout=0.0)
    _, grads = model64.loss_and_gradients(x, labels)
    largest = max(float(np.max(np.abs(g))) for g in grads.values())
    size[mode_name] = [float(np.max(np.abs(grads[name]))) / largest for name in reduce_biases]
    others = [float(np.max(np.abs(g))) / largest for name, g in grads.items() if name.endswith("normalization.bias")
              and name not in reduce_biases]
    print(f"{mode_name}: reduce_1x1 biases, largest |grad| / largest of the model: {max(size[mode_name]):.1e};"
          f" other BatchNorm biases: median {np.median(others):.1e}")
fig, ax = plt.subplots(figsize=(9, 2.6))
ax.semilogy(range(16), size["eval"], "o-", label="eval mode")
ax.semilogy(range(16), np.maximum(size["train"], 1e-18), "s-", label="train mode (round-off)")
ax.set(xlabel="block (layer.i)", ylabel="|d loss / d β| (relative)", title="reduce_1x1 BatchNorm biases")
ax.legend()
plt.show()
assert max(size["train"]) < 1e-10 < min(size["eval"])

# %% [markdown]
# ## 5. The whole network against transformers
#
# The same model in transformers (`transformers_twin` copies the weights), both in float64 and in train
# mode with dropout off, one batch: the loss, every parameter's gradient and the input's gradient.

# %%
torch_model = transformers_twin(model64).double().train()
torch_model.config.classifier_dropout_prob = 0.0
torch_model.dropout.p = 0.0
model64.train(seed=0, dropout=0.0)
before = {k: v.copy() for k, v in model64.params.items()}
loss, grads = model64.loss_and_gradients(x, labels, input_gradient=True)
xt = torch.tensor(x, requires_grad=True)
torch_loss = torch_model(pixel_values=xt, labels=torch.tensor(labels)).loss
torch_loss.backward()
errors = {name: relative_error(grads[name], p.grad.numpy()) for name, p in torch_model.named_parameters()
          if float(p.grad.abs().max()) > 1e-9 * float(torch_loss)}
print(f"loss {loss:.12f} vs transformers {float(torch_loss):.12f}")
print(f"{len(errors)} gradients compared, largest relative error {max(errors.values()):.1e} "
      f"({max(errors, key=errors.get)}); input gradient {relative_error(grads['pixel_values'], xt.grad.numpy()):.1e}")
assert abs(loss - float(torch_loss)) < 1e-9 and max(errors.values()) < 1e-8

# %% [markdown]
# ## 6. Two transformers quirks, measured on a real batch
#
# transformers builds its BatchNorms with `momentum=0.997` (V2) and `0.9997` (V1): TensorFlow's *decay*,
# passed where PyTorch expects the weight of the *new* batch. One train-mode step therefore nearly replaces
# the running statistics with the batch's: with TensorFlow's meaning (`batch_norm_momentum="tensorflow"`)
# they would move by 0.3 %. And the config's `classifier_dropout_prob` defaults (0.999 in V1, 0.8 in V2)
# are TensorFlow *keep* probabilities, used as drop probabilities.
#
# The batch: photos from the shared ImageNet sample (or, without the shared data, synthetic images),
# through the image processor.

# %%
data = shared_data()
photos = sorted((data / "images" / "imagenet_sample").glob("*.JPEG"))[:8] if data else []
processor = mobilenet_np.MobileNetV2ImageProcessor()
if photos:
    batch = np.concatenate([processor(str(p))["pixel_values"] for p in photos])
    print(f"{len(photos)} real photos")
else:
    image, _ = load_image("cat.bmp")
    batch = np.concatenate([processor(image.rotate(15 * i))["pixel_values"] for i in range(8)])
    print("NOTE: no shared data: 8 rotated copies of a synthetic image")
key = "mobilenet_v2.conv_stem.first_conv.normalization.running_mean"
moved = {}
for meaning in ("transformers", "tensorflow"):
    trained = mobilenet_np.MobileNetV2ForImageClassification(mobilenet_np.MobileNetV2Config(num_labels=10), seed=0)
    old = trained.params[key].copy()
    trained.train(seed=0, batch_norm_momentum=meaning)
    trained(batch)
    recorded = {}
    trained.eval()(batch, record=lambda name, t: recorded.setdefault(name, t), fast=False)
    batch_mean = recorded["mobilenet_v2.conv_stem.first_conv.convolution"].mean(axis=(0, 2, 3))
    moved[meaning] = float(np.median(np.abs(trained.params[key] - old) / np.abs(batch_mean - old)))
    print(f"{meaning:12s}: one step moves the running mean {100 * moved[meaning]:.2f} % of the way to the batch mean")
v1 = mobilenet_np.MobileNetV1ForImageClassification(mobilenet_np.MobileNetV1Config(num_labels=0), seed=0).train(seed=1)
dropped = float(np.mean(v1(batch).logits == 0))
print(f"MobileNetV1, default classifier_dropout_prob {v1.config.classifier_dropout_prob}: "
      f"{100 * dropped:.1f} % of the pooled features dropped in train mode")
assert moved["transformers"] > 0.99 and moved["tensorflow"] < 0.01 and dropped > 0.99

# %% [markdown]
# `model.train()` reproduces transformers by default, so that a training run here equals one there step
# for step (tests/test_training.py, tests/test_train_loop.py); `model.train(batch_norm_momentum="tensorflow",
# dropout="tensorflow")` trains the way the MobileNet authors did.
