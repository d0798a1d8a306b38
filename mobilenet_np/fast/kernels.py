"""The fast engine's kernels, channels-last: 1x1 convolutions as matrix products, im2col for the
stem, pooling, DeepLab's pooled branch, hidden states. (The depthwise blocks are in depthwise.py.)
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable

import numpy as np

from .. import ops
from ..layers import ACTIVATIONS, ConvLayer
from .plan import Step, Value, nchw, tap_ranges, tap_slice
from .settings import EngineSettings
from .threads import row_bands, split_range, walker_segments


def c_entry_point(module: str, name: str, public):
    """NumPy's C function `module.name` if this NumPy has it there, else the public function.

    np.clip and np.einsum reach their C code through Python frames (argument handling) that hold the
    GIL; with two walkers every moment one holds it can cost the other a hand-over. Calling the C
    entry points (the `clip` ufunc, `c_einsum`, same arguments and results) measured 3% and 2% off
    MobileNetV1's time on 2 cores. They are where NumPy 2 keeps them; any other NumPy gets np.clip
    and np.einsum.
    """
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return public


clip = c_entry_point("numpy._core.umath", "clip", np.clip)
einsum = c_entry_point("numpy._core.multiarray", "c_einsum", np.einsum)


def activation_function(name: str | None, dtype) -> Callable[[np.ndarray, np.ndarray], None]:
    """The layer's activation (layers.ACTIVATIONS, as in the readable path) as f(x, out=y).

    f(y, y) works in place; None (a linear layer) copies, or does nothing in place.
    """
    if name is None:
        return lambda x, y: None if x is y else np.copyto(y, x)
    function = ACTIVATIONS[name]
    zero, six = dtype.type(0), dtype.type(6)
    if function is ops.relu6:
        return lambda x, y: clip(x, zero, six, out=y)
    if function is ops.relu:
        return lambda x, y: np.maximum(x, zero, out=y)
    return lambda x, y: np.copyto(y, function(x))            # any other activation, out of place


class SaveHiddenState(Step):
    """Append a copy of a value, back in NCHW, to the hidden states (when they are asked for)."""

    def __init__(self, value: Value):
        self.value = value
        self.reads = (value,)

    def run(self, views, context):
        if context["hidden_states"] is not None:
            context["hidden_states"].append(nchw(views[self.value]))


class MatMul(Step):
    """A 1x1 convolution: (N*H*W, C_in) @ (C_in, C_out), then + bias, activation, + residual.

    The output rows are cut into bands of about settings.gemm_band_bytes, which the walkers share: a band's
    matrix product and its epilogue run back to back, while the band is in cache. On a small map,
    each walker computes all rows for a share of the output channels instead.

    weight: (C_in, C_out). bias: (C_out,), or a Value (N, 1, 1, C_out) holding one bias per image
    (the DeepLab projection, see PooledProjectionBias).
    """

    def __init__(self, x: Value, out: Value, weight: np.ndarray, bias, activation: str | None,
                 residual: Value | None = None, settings: EngineSettings = EngineSettings(threads=1)):
        threads = settings.threads
        self.x, self.out, self.weight, self.bias, self.residual = x, out, weight, bias, residual
        self.reads = (x,) + tuple(v for v in (residual, bias) if isinstance(v, Value))
        self.writes = (out,)
        self.activation = activation_function(activation, weight.dtype)
        n, h, w, c_out = out.shape
        rows_per_band = max(1, settings.gemm_band_bytes // (n * w * c_out * weight.itemsize))
        if threads > 1:
            rows_per_band = min(rows_per_band, -(-h // threads))      # a band for every walker
        self.bands, self.channels = row_bands(h, rows_per_band), None
        if threads > 1 and h < settings.channel_share_rows * threads:       # a small map: shared by output channels
            self.shares_channels, self.channels = True, split_range(c_out, threads)
            self.bands = [(0, h)] * len(self.channels)
            self.shares = [np.ascontiguousarray(weight[:, a:b]) for a, b in self.channels]
        self.segments = walker_segments(len(self.bands), threads)

    def needs(self, band):
        start, stop = self.bands[band]
        needs = [(self.x, start, stop)] + ([(self.residual, start, stop)] if self.residual is not None else [])
        return needs + ([(self.bias, 0, 1)] if isinstance(self.bias, Value) else [])

    def run_band(self, views, walker, band, downward):
        start, stop = self.bands[band]
        channels = slice(*self.channels[band]) if self.channels else slice(None)      # (this walker's share)
        n, c_out = self.out.shape[0], self.out.shape[-1]
        x = views[self.x][:, start:stop].reshape(n, -1, self.x.shape[-1])          # (N, rows*W, C_in)
        y = views[self.out][:, start:stop].reshape(n, -1, c_out)[..., channels]    # (N, rows*W, C_out), a view
        bias = views[self.bias].reshape(n, 1, c_out) if isinstance(self.bias, Value) else self.bias
        np.matmul(x, self.shares[band] if self.channels else self.weight, out=y)
        np.add(y, bias[..., channels], out=y)
        self.activation(y, y)
        if self.residual is not None:
            np.add(y, views[self.residual][:, start:stop].reshape(n, -1, c_out)[..., channels], out=y)


@dataclasses.dataclass
class Pointwise:
    """A 1x1 layer inside a DepthwiseBlock: weight (C_in, C_out), bias (C_out,) and its activation."""

    weight: np.ndarray
    bias: np.ndarray
    activation: Callable[[np.ndarray, np.ndarray], None]

    def linear(self, x: np.ndarray, out: np.ndarray, weight: np.ndarray | None = None,
               bias: np.ndarray | None = None) -> None:
        """out = x @ weight + bias: x (N, rows, W, C_in) -> out (N, rows, W, C_out), whose rows and pixels
        are one axis (a reshape of it is a view). `weight`, `bias`: some columns of the layer's, instead."""
        n, c_out = x.shape[0], out.shape[-1]
        y = out.reshape(n, -1, c_out)                                            # (N, rows*W, C_out)
        np.matmul(x.reshape(n, -1, x.shape[-1]), self.weight if weight is None else weight, out=y)
        np.add(y, self.bias if bias is None else bias, out=y)


class Im2col(Step):
    """Gather every output pixel's k x k x C_in receptive field into one row (for the stem).

    cols[n, y, x, (i, j, c)] = x[n, y*s + i*d - top, x*s + j*d - left, c], 0 where that is padding.
    cols is stored planar, (k*k*C_in, N, H_out, W_out): each (i, j, c) column is written as a whole
    image plane (one band of its rows) from a strided plane of the input, and the matrix product
    reads it transposed.
    """

    def __init__(self, layer: ConvLayer, x: Value, cols: Value, padding: tuple[int, int, int, int],
                 itemsize: int, settings: EngineSettings = EngineSettings(threads=1)):
        threads = settings.threads
        self.x, self.cols = x, cols
        self.reads, self.writes = (x,), (cols,)
        n, h, w, c = x.shape
        _, h_out, w_out, row_length = cols.shape
        self.k, self.s, self.d, self.top, self.height = layer.kernel_size, layer.stride, layer.dilation, padding[0], h
        # per tap (i, j): its first column in cols, and the tap_ranges of its rows and of its columns
        self.taps = [((i * self.k + j) * c, rows, columns)
                     for i, rows in enumerate(tap_ranges(h, h_out, self.k, self.s, self.d, padding[0]))
                     for j, columns in enumerate(tap_ranges(w, w_out, self.k, self.s, self.d, padding[2]))]
        self.channels, self.w_out = c, w_out
        # Bands of about gemm_band_bytes, not one per walker: each band is a hundred small copies, and
        # (for the stem) the other walkers are still waking up.
        self.bands = row_bands(h_out, max(1, settings.gemm_band_bytes // (n * w_out * row_length * itemsize)))
        self.segments = walker_segments(len(self.bands), threads)

    def needs(self, band):
        y0, y1 = self.bands[band]
        first, stop = y0 * self.s - self.top, (y1 - 1) * self.s + (self.k - 1) * self.d + 1 - self.top
        return [(self.x, max(0, first), min(self.height, stop))]

    def run_band(self, views, walker, band, downward):
        y0, y1 = self.bands[band]
        x = views[self.x].transpose(3, 0, 1, 2)                  # (C, N, H, W) view
        cols = views[self.cols].transpose(3, 0, 1, 2)            # (k*k*C, N, H_out, W_out), contiguous
        for first, (r0, r1, in_r0), (c0, c1, in_c0) in self.taps:
            planes = cols[first: first + self.channels, :, y0:y1]          # (C, N, band rows, W_out)
            a, b = max(r0, y0) - y0, max(min(r1, y1) - y0, 0)              # band rows that read input rows
            a = min(a, b)
            for zeros in (planes[:, :, :a], planes[:, :, b:], planes[:, :, a:b, :c0], planes[:, :, a:b, c1:]):
                if zeros.size:
                    zeros.fill(0)                                # the padding this tap would read
            if b > a and c1 > c0:
                in_rows = tap_slice(in_r0 + (a + y0 - r0) * self.s, b - a, self.s)
                np.copyto(planes[:, :, a:b, c0:c1], x[:, :, in_rows, tap_slice(in_c0, c1 - c0, self.s)])


class GlobalAveragePool(Step):
    """(N, H, W, C) -> (N, 1, 1, C): mean over the pixels."""

    def __init__(self, x: Value, out: Value):
        self.x, self.out = x, out
        self.reads, self.writes = (x,), (out,)

    def run(self, views, context):
        np.mean(views[self.x], axis=(1, 2), keepdims=True, out=views[self.out])


class PooledProjectionBias(Step):
    """DeepLab's image-pooling branch, turned into a per-image bias of the projection.

    The branch is global average pool -> 1x1 conv_pool (BN, ReLU) -> bilinear upsampling of a 1x1
    map, i.e. the same 256 values at every pixel. The projection of concat([branch, aspp]) is then
        W @ concat(branch, aspp) + b = W_aspp @ aspp + (W_branch @ branch + b)
    so the second term is computed once per image and added like a bias: no concat, no upsampling.
    """

    def __init__(self, pooled: Value, out: Value, pool_weight, pool_bias, pool_activation,
                 projection_weight, projection_bias):
        self.pooled, self.out = pooled, out
        self.reads, self.writes = (pooled,), (out,)
        self.pool_weight, self.pool_bias = pool_weight, pool_bias                  # (C, 256), (256,)
        self.pool_activation = activation_function(pool_activation, pool_weight.dtype)
        self.projection_weight, self.projection_bias = projection_weight, projection_bias  # (256, 256)

    def run(self, views, context):
        pooled = views[self.pooled][:, 0, 0]                                           # (N, C)
        branch = pooled @ self.pool_weight + self.pool_bias                             # (N, 256)
        self.pool_activation(branch, branch)
        out = views[self.out][:, 0, 0]                                                  # (N, 256)
        np.matmul(branch, self.projection_weight, out=out)
        np.add(out, self.projection_bias, out=out)


def flattens(stride: int, taps: np.ndarray, w_out: int, settings: EngineSettings) -> bool:
    """Whether depthwise weights `taps` (k, k, C) run flat: stride 1, and repeated along the row within tile_bytes."""
    return stride == 1 and taps.nbytes * w_out <= settings.tile_bytes


def along_row(taps: np.ndarray, w_out: int) -> np.ndarray:
    """(k, k, C) depthwise weights repeated along an output row: (k, k, W_out * C), for the flat einsum."""
    k, c = taps.shape[0], taps.shape[-1]
    return np.ascontiguousarray(np.broadcast_to(taps[:, :, None, :], (k, k, w_out, c))).reshape(k, k, w_out * c)


def gemm_weight(weight: np.ndarray) -> np.ndarray:
    """(C_out, C_in, 1, 1) 1x1 conv weights -> (C_in, C_out), the right operand of the product."""
    return np.ascontiguousarray(weight[:, :, 0, 0].T)
