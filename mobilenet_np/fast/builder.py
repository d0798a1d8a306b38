"""Building a plan from a network's Graph (mobilenet_np/layers.py): the engine reads the layer
descriptions a network declares -- ConvLayer fields, InvertedResidual.use_residual, the DeepLab
head's layers, which unit outputs are hidden states -- so it cannot drift from the readable path.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..layers import ConvLayer, Dropout, Graph, ImagePoolingASPP, InvertedResidual
from .depthwise import DepthwiseBlock
from .kernels import (GlobalAveragePool, Im2col, MatMul, PooledProjectionBias, Pointwise, SaveHiddenState,
                      activation_function, along_row, flattens, gemm_weight)
from .plan import Plan, Step, Value, fold_batch_norm, nchw
from .settings import EngineSettings


class PlanBuilder:
    """Turns layer descriptions into steps on symbolic Values (shapes only), in execution order."""

    def __init__(self, params: dict[str, np.ndarray], dtype, settings: EngineSettings = EngineSettings(threads=1)):
        self.params, self.dtype, self.settings = params, np.dtype(dtype), settings
        self.steps: list[Step] = []
        self.values: list[Value] = []
        self.threads = settings.threads             # the walkers
        self.shared: dict = {}                      # prepared weights, by layer (a layer may be used twice)

    def _shared(self, key, make: Callable):
        if key not in self.shared:
            self.shared[key] = make()
        return self.shared[key]

    def folded(self, layer: ConvLayer) -> tuple[np.ndarray, np.ndarray]:
        """fold_batch_norm of the layer: weight (C_out, C_in/groups, k, k), bias (C_out,)."""
        return self._shared(("folded", layer.name), lambda: fold_batch_norm(layer, self.params, self.dtype))

    def gemm_weights(self, layer: ConvLayer) -> tuple[np.ndarray, np.ndarray]:
        """A 1x1 layer's (C_in, C_out) weight matrix and bias."""
        weight, bias = self.folded(layer)
        return self._shared(("gemm", layer.name), lambda: gemm_weight(weight)), bias

    def depthwise_weights(self, layer: ConvLayer, w_out: int, may_flatten: bool = True
                          ) -> tuple[np.ndarray, np.ndarray, bool]:
        """A depthwise layer's (weights, bias, flat) as DepthwiseBlock uses them: weights (k, k, C), or,
        `flat` (stride 1, small enough: settings.tile_bytes), (k, k, W_out * C), each tap's repeated along the row."""
        weight, bias = self.folded(layer)
        taps = self._shared(("depthwise", layer.name),
                            lambda: np.ascontiguousarray(weight[:, 0].transpose(1, 2, 0)))   # (k, k, C)
        if may_flatten and flattens(layer.stride, taps, w_out, self.settings):
            return self._shared(("depthwise", layer.name, w_out), lambda: along_row(taps, w_out)), bias, True
        return taps, bias, False

    def value(self, shape, storage: str = "channels_last") -> Value:
        v = Value(tuple(int(s) for s in shape), storage)
        self.values.append(v)
        return v

    def add(self, step: Step) -> None:
        for v in step.writes:
            v.written = len(self.steps)
        self.steps.append(step)

    def input(self, shape_nchw) -> Value:
        n, c, h, w = shape_nchw
        return self.value((n, h, w, c), storage="input")

    def hidden_state(self, x: Value) -> None:
        self.add(SaveHiddenState(x))

    def conv(self, layer: ConvLayer, x: Value, residual: Value | None = None) -> Value:
        """The step(s) of one ConvLayer, BatchNorm folded in (+ a residual added after it)."""
        n, h, w, c = x.shape
        if c != layer.in_channels:
            raise ValueError(f"fast path: {layer.name} expects {layer.in_channels} channels, the plan has {c}")
        if layer.kind == "depthwise" and layer.out_channels == layer.in_channels and residual is None:
            return self.depthwise_block(layer, x)
        h_out, w_out = layer.output_size(h, w)
        out = self.value((n, h_out, w_out, layer.out_channels))
        if layer.kind == "pointwise" and layer.stride == 1:
            self.add(MatMul(x, out, *self.gemm_weights(layer), layer.activation, residual, self.settings))
        elif layer.groups == 1 and residual is None:
            k = layer.kernel_size
            cols = self.value((n, h_out, w_out, k * k * c), storage="planar")
            self.add(Im2col(layer, x, cols, layer.padding(h, w), self.dtype.itemsize, self.settings))
            weight, bias = self.folded(layer)
            # rows of the weight matrix in the order of cols' columns: (i, j, c)
            matrix = self._shared(("im2col", layer.name), lambda: np.ascontiguousarray(
                weight.transpose(2, 3, 1, 0).reshape(k * k * c, layer.out_channels)))
            self.add(MatMul(cols, out, matrix, bias, layer.activation, None, self.settings))
        else:
            raise ValueError(f"fast path: {layer.name} ({layer.kind}, groups={layer.groups}"
                             f"{', + residual' if residual else ''}) is not supported")
        return out

    def pointwise(self, layer: ConvLayer | None) -> Pointwise | None:
        if layer is None:
            return None
        return Pointwise(*self.gemm_weights(layer), activation_function(layer.activation, self.dtype))

    def depthwise_block(self, depthwise: ConvLayer, x: Value, expand: ConvLayer | None = None,
                        project: ConvLayer | None = None, residual: bool = False) -> Value:
        """[expand ->] depthwise [-> project] [+ x] as one DepthwiseBlock step.

        Layers that do not have that shape (a "depthwise" layer of one channel is a plain
        convolution) become separate steps instead.
        """
        fits = depthwise.kind == "depthwise" and depthwise.out_channels == depthwise.in_channels and all(
            layer.kind == "pointwise" and layer.stride == 1 for layer in (expand, project) if layer is not None)
        if not fits:
            y = x
            for layer in (expand, depthwise, project):
                if layer is not None:
                    y = self.conv(layer, y, residual=x if residual and layer is project else None)
            return y
        n, h, w, c = x.shape
        if c != (expand or depthwise).in_channels:
            raise ValueError(f"fast path: {(expand or depthwise).name} expects "
                             f"{(expand or depthwise).in_channels} channels, the plan has {c}")
        h_out, w_out = depthwise.output_size(h, w)
        out = self.value((n, h_out, w_out, (project or depthwise).out_channels))
        if residual and out.shape != x.shape:
            raise ValueError(f"fast path: residual of shape {x.shape} cannot be added to {out.shape}")
        # Small maps whose block ends with the depthwise layer (MobileNetV1's) are shared by channels.
        share_channels = (self.threads > 1 and expand is not None and project is None
                          and h_out < self.settings.channel_share_rows * self.threads)
        self.add(DepthwiseBlock(depthwise, x, out, *self.depthwise_weights(depthwise, w_out, not share_channels),
                                depthwise.padding(h, w), self.pointwise(expand), self.pointwise(project), residual,
                                self.settings, share_channels))
        return out

    def global_avg_pool(self, x: Value) -> Value:
        out = self.value((x.shape[0], 1, 1, x.shape[-1]))
        self.add(GlobalAveragePool(x, out))
        return out


def deeplab_head(b: PlanBuilder, head: ImagePoolingASPP, features: Value) -> Value:
    """DeepLabV3's head up to its classifier, with the pooling branch as a per-image bias (PooledProjectionBias)."""
    n, h, w, _ = features.shape
    conv_pool, projection = head.conv_pool, head.conv_projection
    pooled = b.global_avg_pool(features)                                         # (N, 1, 1, C)
    aspp = b.conv(head.conv_aspp, features)                                      # (N, h, w, 256)
    projection_weight, projection_bias = b.gemm_weights(projection)              # (512, 256)
    branch_channels = conv_pool.out_channels                                     # concat order: [branch, aspp]
    image_bias = b.value((n, 1, 1, projection.out_channels))
    b.add(PooledProjectionBias(pooled, image_bias, *b.gemm_weights(conv_pool), conv_pool.activation,
                               projection_weight[:branch_channels], projection_bias))
    x = b.value((n, h, w, projection.out_channels))
    b.add(MatMul(aspp, x, projection_weight[branch_channels:], image_bias,
                 projection.activation, None, b.settings))                       # (N, h, w, 256)
    return x


def build_plan(graph: Graph, params: dict[str, np.ndarray], input_shape: tuple[int, ...], dtype,
               hidden_states: bool = False, settings: EngineSettings = EngineSettings()) -> Plan:
    """The fast plan of a network's graph for pixel values of shape (N, C, H, W) computed in `dtype`.

    Unit by unit: an InvertedResidual is one DepthwiseBlock; a pointwise ConvLayer followed by a
    depthwise one (MobileNetV1) runs as that block's "expand", its output rows going straight into
    the depthwise layer's line buffer, unless its output is a hidden state asked for; other conv
    layers are one step each. The plan's result is a dict: "last" (the last unit's output, NCHW; when
    there is no classifier), "pooled" (N, C), "logits" (N, num_labels) and "hidden_states".
    """
    b = PlanBuilder(params, dtype, settings)
    x = b.input(input_shape)
    keep = set(graph.hidden_states) if hidden_states else set()
    units, i = graph.units, 0
    while i < len(units):
        unit = units[i]
        following = units[i + 1] if i + 1 < len(units) else None
        if isinstance(unit, Dropout):
            pass                                                                 # the identity at inference
        elif isinstance(unit, InvertedResidual):
            x = b.depthwise_block(unit.conv_3x3, x, expand=unit.expand_1x1, project=unit.reduce_1x1,
                                  residual=unit.use_residual)
        elif isinstance(unit, ImagePoolingASPP):
            x = deeplab_head(b, unit, x)
        elif (unit.kind == "pointwise" and i not in keep and isinstance(following, ConvLayer)
              and following.kind == "depthwise"):
            i += 1
            x = b.depthwise_block(following, x, expand=unit)
        else:
            x = b.conv(unit, x)
        if i in keep:
            b.hidden_state(x)
        i += 1
    last = x
    pooled = b.global_avg_pool(last) if graph.pool else None                     # (N, 1, 1, C)
    classifier = None
    if graph.classifier is not None:
        classifier = (np.ascontiguousarray(params[f"{graph.classifier}.weight"].astype(dtype).T),   # (C, labels)
                      params[f"{graph.classifier}.bias"].astype(dtype))

    def finish(views, context) -> dict:
        result = {"last": None, "pooled": None, "logits": None,
                  "hidden_states": None if context["hidden_states"] is None else tuple(context["hidden_states"])}
        if classifier is None:
            result["last"] = nchw(views[last])
        if pooled is not None:
            result["pooled"] = views[pooled][:, 0, 0].copy()                      # (N, C)
        if classifier is not None:
            result["logits"] = result["pooled"] @ classifier[0] + classifier[1]   # (N, num_labels)
        return result

    return Plan(b.steps, b.values, dtype, finish, settings)
