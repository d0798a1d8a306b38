"""Forward and backward through a network's Graph (mobilenet_np/layers.py), in train or eval mode.

The networks declare what they compute as a Graph of layer descriptions; inference runs it on the
readable layers or the fast engine, and this module runs it with the pairs of `backward.py`:

    forward(graph, params, x, mode)  -> (result, tape)    every unit's forward, keeping its caches
    backward(tape, dresult)          -> grads             every unit's backward, in reverse order

`result` has the fields the fast engine gives ("last", "pooled", "logits", "hidden_states"); `grads`
maps state_dict names to d loss / d tensor, and "pixel_values" to the input's gradient when asked.

What transformers does in train mode, reproduced by default (`Mode`), with TensorFlow's meaning as an option:
  * BatchNorm normalises with the batch's biased statistics and updates the running ones with PyTorch's
    rule running = (1 - m) * running + m * batch (unbiased variance), where m is the *decay* TensorFlow
    meant (0.9997 in V1, 0.997 in V2 and the DeepLab head): one batch nearly replaces the running
    statistics. `Mode(batch_norm_momentum="tensorflow")` uses m = 1 - decay, the update TF-slim made.
  * Dropout drops with probability config.classifier_dropout_prob, although its defaults (0.999 in V1,
    0.8 in V2 and DeepLab's channel dropout) are TensorFlow *keep* probabilities: a default V1 config
    drops 99.9% of the pooled features. `Mode(dropout="tensorflow")` drops 1 - p instead.
  * DeepLab's backbone conv_1x1 runs (its BatchNorm statistics update) but nothing reads its output, so
    it gets no gradient (Graph.unused).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from ..errors import ConfigError
from ..layers import ConvLayer, Dropout, Graph, ImagePoolingASPP, InvertedResidual, Recorder, no_record
from . import backward as B
from . import channels_last as CL


@dataclasses.dataclass
class Mode:
    """How a forward runs: train or eval, and which meaning of the TensorFlow numbers to use.

    training: BatchNorm on batch statistics (running statistics updated) and dropout active.
    batch_norm_momentum: "transformers" (the layer's declared momentum, TF's decay as PyTorch's momentum),
        "tensorflow" (1 - that decay), or a number used for every BatchNorm.
    dropout: "transformers" (p = config.classifier_dropout_prob, drop probability), "tensorflow"
        (p = 1 - it, the keep probability TF meant), or a number used for every dropout.
    rng: the numpy.random.Generator dropout draws its masks from (the caller's: seeded, reproducible).
    frozen_batch_norm: BatchNorm in inference mode even in train mode (running statistics used and left
        unchanged), dropout still active: PyTorch's `model.train()` followed by `.eval()` on every
        BatchNorm module (fine-tuning with small batches).
    """

    training: bool = False
    batch_norm_momentum: str | float = "transformers"
    dropout: str | float = "transformers"
    rng: np.random.Generator | None = None
    frozen_batch_norm: bool = False

    def momentum(self, layer: ConvLayer) -> float:
        if not isinstance(self.batch_norm_momentum, str):
            return float(self.batch_norm_momentum)
        if layer.norm_momentum is None:
            raise ConfigError(f"{layer.name}: the layer declares no BatchNorm momentum")
        if self.batch_norm_momentum == "transformers":
            return layer.norm_momentum
        if self.batch_norm_momentum == "tensorflow":
            return 1.0 - layer.norm_momentum
        raise ConfigError(f"batch_norm_momentum must be 'transformers', 'tensorflow' or a number, "
                          f"got {self.batch_norm_momentum!r}")

    def drop_probability(self, dropout: Dropout) -> float:
        if not isinstance(self.dropout, str):
            return float(self.dropout)
        if self.dropout == "transformers":
            return dropout.p
        if self.dropout == "tensorflow":
            return 1.0 - dropout.p
        raise ConfigError(f"dropout must be 'transformers', 'tensorflow' or a number, got {self.dropout!r}")


@dataclasses.dataclass
class Tape:
    """What backward needs: one function per unit, in forward order, each taking (d output, grads) and
    returning d input (adding its parameters' gradients to grads)."""

    steps: list[Callable[[np.ndarray, dict], np.ndarray]] = dataclasses.field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# one unit each: forward (returns output and cache) and backward (returns the input's gradient)
# --------------------------------------------------------------------------------------------------

def conv_layer_forward(layer: ConvLayer, x, params, mode: Mode, record: Recorder, K=B):
    """[TF "SAME" pad] -> conv -> [BatchNorm] -> [activation], as ConvLayer.__call__, keeping the caches.

    In train mode the BatchNorm's running statistics are replaced in `params` (new arrays) and its
    num_batches_tracked counts the batch, as nn.BatchNorm2d does."""
    name, k, d = layer.name, layer.kernel_size, layer.dilation
    weight, bias = params[f"{name}.convolution.weight"], params.get(f"{name}.convolution.bias")
    padding = "tf_same" if layer.tf_padding else (k - 1) // 2 * d
    if layer.kind == "depthwise" and layer.out_channels == layer.in_channels:
        conv = (K.depthwise_conv2d_forward, K.depthwise_conv2d_backward)
    elif layer.kind == "pointwise":
        conv = (K.pointwise_conv2d_forward, K.pointwise_conv2d_backward)
    else:
        conv = (K.conv2d_forward, K.conv2d_backward)
    x, conv_cache = conv[0](x, weight, bias, layer.stride, padding, d)
    record(f"{name}.convolution", x)                                # (N, C_out, H_out, W_out)
    norm, fused = None, False
    if layer.norm_eps is not None:
        p = f"{name}.normalization."
        if mode.training and not mode.frozen_batch_norm:
            # the channels-last kernels fuse BatchNorm with its activation (one pass less over memory each
            # way), unless `record` wants the tensor between them
            fused = K is CL and layer.activation is not None and record is no_record
            gamma, beta = params[p + "weight"], params[p + "bias"]
            if fused:
                x, norm_cache = CL.batch_norm_train_forward(x, gamma, beta, layer.norm_eps, activation=layer.activation)
            else:
                x, norm_cache = K.batch_norm_train_forward(x, gamma, beta, layer.norm_eps)
            mean, var = K.batch_norm_update_running(params[p + "running_mean"], params[p + "running_var"],
                                                    norm_cache["mean"], norm_cache["var_unbiased"],
                                                    mode.momentum(layer))
            params[p + "running_mean"] = mean.astype(params[p + "running_mean"].dtype)
            params[p + "running_var"] = var.astype(params[p + "running_var"].dtype)
            params[p + "num_batches_tracked"] = params[p + "num_batches_tracked"] + 1
            norm = (K.batch_norm_train_backward, norm_cache)
        else:
            x, norm_cache = K.batch_norm_eval_forward(x, params[p + "running_mean"], params[p + "running_var"],
                                                      params[p + "weight"], params[p + "bias"], layer.norm_eps)
            norm = (K.batch_norm_eval_backward, norm_cache)
        record(f"{name}.normalization", x)
    activation = None
    if layer.activation is not None and not fused:
        forward, backward = {"relu": (K.relu_forward, K.relu_backward),
                             "relu6": (K.relu6_forward, K.relu6_backward)}[layer.activation]
        x, activation_cache = forward(x)
        activation = (backward, activation_cache)
        record(f"{name}.activation", x)
    record(name, x)
    return x, (conv[1], conv_cache, norm, activation)


def conv_layer_backward(layer: ConvLayer, dout, cache, grads: dict):
    conv_backward, conv_cache, norm, activation = cache
    if activation is not None:
        dout = activation[0](dout, activation[1])
    if norm is not None:
        dout, dgamma, dbeta = norm[0](dout, norm[1])
        grads[f"{layer.name}.normalization.weight"] = dgamma
        grads[f"{layer.name}.normalization.bias"] = dbeta
    dx, dweight, dbias = conv_backward(dout, conv_cache)
    grads[f"{layer.name}.convolution.weight"] = dweight
    if dbias is not None:
        grads[f"{layer.name}.convolution.bias"] = dbias
    return dx


def inverted_residual_forward(block: InvertedResidual, x, params, mode, record, K=B):
    caches, y = [], x
    for layer in block.conv_layers():
        y, cache = conv_layer_forward(layer, y, params, mode, record, K)
        caches.append(cache)
    if block.use_residual:
        y = x + y                                    # d(x + f(x)) = dout + df: the gradient takes both roads
    record(block.name, y)
    return y, caches


def inverted_residual_backward(block: InvertedResidual, dout, caches, grads):
    dx = dout
    for layer, cache in zip(reversed(block.conv_layers()), reversed(caches)):
        dx = conv_layer_backward(layer, dx, cache, grads)
    return dx + dout if block.use_residual else dx


def aspp_forward(head: ImagePoolingASPP, features, params, mode, record, K=B):
    """ImagePoolingASPP.__call__ with caches: pool -> conv_pool -> broadcast, conv_aspp, concat, projection."""
    size = K.spatial_size(features)
    pooled, pool_cache = K.global_avg_pool_forward(features)                  # (N, C, 1, 1)
    record(f"{head.name}.avg_pool", pooled)
    pooled, conv_pool_cache = conv_layer_forward(head.conv_pool, pooled, params, mode, record, K)
    pooled, resize_cache = K.interpolate_bilinear_forward(pooled, size, True)  # (N, 256, h, w)
    aspp, aspp_cache = conv_layer_forward(head.conv_aspp, features, params, mode, record, K)
    x, concat_cache = K.concat_channels_forward([pooled, aspp])               # (N, 512, h, w)
    x, projection_cache = conv_layer_forward(head.conv_projection, x, params, mode, record, K)
    return x, (pool_cache, conv_pool_cache, resize_cache, aspp_cache, concat_cache, projection_cache, K)


def aspp_backward(head: ImagePoolingASPP, dout, cache, grads):
    pool_cache, conv_pool_cache, resize_cache, aspp_cache, concat_cache, projection_cache, K = cache
    dx = conv_layer_backward(head.conv_projection, dout, projection_cache, grads)
    dpooled, daspp = K.concat_channels_backward(dx, concat_cache)
    dfeatures = conv_layer_backward(head.conv_aspp, daspp, aspp_cache, grads)
    dpooled = K.interpolate_bilinear_backward(dpooled, resize_cache)
    dpooled = conv_layer_backward(head.conv_pool, dpooled, conv_pool_cache, grads)
    return dfeatures + K.global_avg_pool_backward(dpooled, pool_cache)


def dropout_forward(dropout: Dropout, x, params, mode, record, K=B):
    forward, backward = ((K.dropout2d_forward, K.dropout2d_backward) if dropout.channels
                         else (K.dropout_forward, K.dropout_backward))
    y, cache = forward(x, mode.drop_probability(dropout), mode.training, mode.rng)
    return y, (backward, cache)


def dropout_backward(dropout: Dropout, dout, cache, grads):
    backward, cache = cache
    return backward(dout, cache)


UNITS = {ConvLayer: (conv_layer_forward, conv_layer_backward),
         InvertedResidual: (inverted_residual_forward, inverted_residual_backward),
         ImagePoolingASPP: (aspp_forward, aspp_backward),
         Dropout: (dropout_forward, dropout_backward)}


# --------------------------------------------------------------------------------------------------
# the whole graph
# --------------------------------------------------------------------------------------------------

def forward(graph: Graph, params: dict, pixel_values: np.ndarray, mode: Mode, hidden_states: bool = False,
            record: Recorder = no_record, channels_last: bool = False) -> tuple[dict, Tape]:
    """Run every unit of the graph (and, in train mode, the `unused` ones, for their statistics).

    Returns the engine's result dict and the tape for `backward`. `params` is the model's
    ParameterDict: train mode writes the new running statistics into it.

    channels_last: run the kernels of `channels_last.py` (the same layers on (N, H, W, C) activations,
    several times faster) instead of `backward.py`'s readable ones. The input is transposed once on the
    way in, the results (and the input's gradient) on the way out; `record` still sees NCHW tensors."""
    dropouts = [u for u in graph.units if isinstance(u, Dropout)] + [graph.classifier_dropout]
    if mode.training and mode.rng is None and any(d is not None and mode.drop_probability(d) > 0 for d in dropouts):
        raise ConfigError("train mode with dropout needs a random generator: model.train(seed=...) or rng=...")
    tape = Tape()
    record("pixel_values", pixel_values)
    K, x, see = B, pixel_values, record
    if channels_last:
        K = CL
        dtype = np.result_type(pixel_values, *(v for v in params.values() if v.dtype.kind == "f"))
        x = CL.to_channels_last(pixel_values.astype(dtype, copy=False))
        tape.steps.append(lambda dout, grads: CL.to_channels_first(dout))          # d input back to NCHW
        if record is not no_record:
            def see(name, tensor):
                record(name, CL.to_channels_first(tensor))
    kept = []
    for i, unit in enumerate(graph.units):
        unit_forward, unit_backward = UNITS[type(unit)]
        x, cache = unit_forward(unit, x, params, mode, see, K)
        tape.steps.append(lambda dout, grads, u=unit, c=cache, b=unit_backward: b(u, dout, c, grads))
        if i in graph.hidden_states:
            kept.append(x)
        for reads, unused in graph.unused:           # transformers runs them; their outputs go nowhere
            if reads == i and mode.training:         # (in eval mode they change nothing: skipped)
                UNITS[type(unused)][0](unused, x, params, mode, see, K)
    if channels_last:
        kept = [CL.to_channels_first(h) for h in kept] if hidden_states else kept
        if graph.pool is None:                       # the last map is the result: its gradient comes in NCHW
            tape.steps.append(lambda dout, grads: CL.to_channels_last(dout))
    result = {"last": CL.to_channels_first(x) if channels_last else x, "pooled": None, "logits": None,
              "hidden_states": tuple(kept) if hidden_states else None}
    if graph.pool is None:
        return result, tape
    pooled, pool_cache = K.global_avg_pool_forward(x)                         # (N, C, 1, 1) or (N, 1, 1, C)
    see(graph.pool, pooled)
    pool_shape = pooled.shape
    result["pooled"] = pooled = pooled.reshape(len(pooled), -1)               # (N, C)
    tape.steps.append(lambda dout, grads: K.global_avg_pool_backward(dout.reshape(pool_shape), pool_cache))
    if graph.classifier_dropout is None and graph.classifier is None:
        return result, tape
    logits = pooled
    if graph.classifier_dropout is not None:                                  # the identity in eval mode
        logits, dropout_cache = dropout_forward(graph.classifier_dropout, pooled, params, mode, see, B)
        tape.steps.append(lambda dout, grads: dropout_backward(graph.classifier_dropout, dout, dropout_cache, grads))
    if graph.classifier is not None:
        weight, bias = params[f"{graph.classifier}.weight"], params[f"{graph.classifier}.bias"]
        logits, linear_cache = B.linear_forward(logits, weight, bias)       # (N, num_labels)
        see(graph.classifier, logits)

        def classifier_backward(dout, grads):
            dx, grads[f"{graph.classifier}.weight"], grads[f"{graph.classifier}.bias"] = \
                B.linear_backward(dout, linear_cache)
            return dx
        tape.steps.append(classifier_backward)
    result["logits"] = logits
    return result, tape


def backward(tape: Tape, doutput: np.ndarray, input_gradient: bool = False) -> dict[str, np.ndarray]:
    """Gradients of every parameter the tape's forward used, from d loss / d (its last output): the
    logits of a classifier, else the last unit's output. "pixel_values" too when `input_gradient`."""
    grads: dict[str, np.ndarray] = {}
    dx = doutput
    for step in reversed(tape.steps):
        dx = step(dx, grads)
    if input_gradient:
        grads["pixel_values"] = dx
    return grads
