"""The fast inference path: the same layer descriptions, run as a plan of channels-last NumPy kernels.

The readable path (mobilenet_v1.py, mobilenet_v2.py, deeplabv3.py) runs every ConvLayer the way the
papers draw it: pad, convolve in NCHW, BatchNorm, activation, each step a new array. This file runs the
very same layers faster, with the same results up to float rounding (tests/test_fast.py checks it
against the readable path and against transformers). `model(x)` uses it unless a `record` callback is
given, `fast=False` is passed or `model.reference` is True.

1. BatchNorm is folded into the convolution once per set of weights (`fold_batch_norm`):
       BN(conv(x, w) + b) = conv(x, w * scale) + (b * scale + shift)
   with scale = gamma / sqrt(var + eps) and shift = beta - mean * scale, read off ops.batch_norm.
2. Activations are channels-last (N, H, W, C). A pointwise (1x1) convolution is then one matrix product
   (N*H*W, C_in) @ (C_in, C_out), and a depthwise 3x3 convolution is 9 multiply-adds of whole rows of
   contiguous channel vectors.
3. Zero padding is never written out: each kernel tap multiplies only the input pixels that exist and
   adds into only the output pixels they reach (`tap_ranges`); a padding zero would add nothing.
4. Every activation lives in a preallocated arena, reused from layer to layer and from call to call
   (`allocate_slots`); ufuncs write in place with out=, nothing is copied.
5. Work is cut into bands of rows small enough to stay in a core's cache, and the bands are shared out
   to a thread pool (NumPy releases the GIL inside ufuncs and matrix products). A band of a 1x1 layer
   is its matrix product followed at once by bias, activation and residual (the epilogue), while the
   rows are still in cache. When threadpoolctl is installed, the fast path sets BLAS to one thread
   (once, for the whole process) and the pool splits the matrix products; BLAS's own spinning worker
   threads would otherwise fight the pool for the cores (`_single_threaded_blas`). Without
   threadpoolctl, BLAS threads each product itself.

The plan (`Plan`) is built from the model's own layer descriptions (ConvLayer fields,
InvertedResidual.use_residual, the DeepLab head's layers), so it cannot drift from the readable path.
It is built once per (input shape, dtype) and cached on the model with its folded weights. Because of
that cache, the model's weight arrays are made read-only when a plan is built: to change a weight,
assign a new array (`model.params[key] = new_value`); the next call notices and rebuilds.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from . import ops
from .modeling_utils import (ACTIVATIONS, BaseModelOutputWithPoolingAndNoAttention, ConvLayer,
                             ImageClassifierOutputWithNoAttention, SemanticSegmenterOutput)

__all__ = ["fast_forward", "batch_norm_affine", "fold_batch_norm", "tap_ranges", "build_plan", "get_plan", "clear_cache",
           "set_num_threads", "get_num_threads"]

# The depthwise part of a band (its output rows) and a band of a lone 1x1 layer (its matrix product's
# output rows) are cut to about this many bytes, so that they and their inputs stay in a core's L2 cache.
BAND_BYTES = 256 * 1024
GEMM_BAND_BYTES = 256 * 1024
# A band of a depthwise block has at least this many pixels, so that its matrix products are not too
# small for BLAS to run efficiently (its depthwise part is then done in several cache-sized pieces).
BAND_MIN_PIXELS = 256
# Depthwise weights are repeated along the output width (one (W_out, C) block per tap) when that takes
# at most this many bytes: ufuncs then run over whole contiguous rows instead of C-long pieces.
TILE_BYTES = 1024 * 1024
# Below this many output values a layer runs on one thread: handing work out would cost more.
PARALLEL_MIN_VALUES = 32 * 1024
# Matrix products with fewer rows than this per thread are split by output columns instead.
GEMM_MIN_ROWS = 64
# Plans kept per model (one per input shape and dtype), least recently used dropped first.
MAX_PLANS = 2


# --------------------------------------------------------------------------------------------------
# threads
# --------------------------------------------------------------------------------------------------

def _available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


_num_threads = min(_available_cores(), 8)
_executor: ThreadPoolExecutor | None = None
_blas_single_threaded: bool | None = None     # see _single_threaded_blas


def set_num_threads(n: int) -> None:
    """Use `n` threads for the fast path (plans are rebuilt for the new count)."""
    global _num_threads, _executor
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads: n must be an int >= 1, got {n!r}")
    _num_threads = n
    if _executor is not None:
        _executor.shutdown(wait=True)
        _executor = None


def get_num_threads() -> int:
    return _num_threads


def _single_threaded_blas() -> bool:
    """Set BLAS to one thread, for good, so that the pool's threads split the matrix products.

    Returns whether BLAS now runs on one thread (False when threadpoolctl is not installed: then
    each product is left whole to BLAS's own threads). Why not the other way round: BLAS worker
    threads spin for a while after each product, and on a machine with few cores they then fight
    the pool's threads (and anything else running) for the cores; switching BLAS threads down and
    back up around every call wakes them too. Measured on 2 cores under load: 22 ms per MobileNetV2
    inference with BLAS on one thread, 120-160 ms with BLAS on two.
    """
    global _blas_single_threaded
    if _blas_single_threaded is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _blas_single_threaded = False
            return False
        blas = [lib for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas"]
        for lib in blas:
            if lib.get_num_threads() != 1:
                lib.set_num_threads(1)
        _blas_single_threaded = bool(blas)
    return _blas_single_threaded


def _run_parallel(work: Callable[[int], None], threads: int) -> None:
    """work(t) for t in range(threads): the last on this thread, the others on the pool."""
    global _executor
    if threads == 1:
        work(0)
        return
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=_num_threads - 1, thread_name_prefix="mobilenet_np")
    futures = [_executor.submit(work, t) for t in range(threads - 1)]
    work(threads - 1)
    for future in futures:
        future.result()


def _split(length: int, parts: int) -> list[tuple[int, int]]:
    """[0, length) cut into `parts` near-equal consecutive (start, stop) ranges, none empty."""
    parts = max(1, min(parts, length))
    edges = [length * p // parts for p in range(parts + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _bands(start: int, stop: int, rows_per_band: int) -> list[tuple[int, int]]:
    return [(r, min(r + rows_per_band, stop)) for r in range(start, stop, rows_per_band)]


def _threads_for(values: int) -> int:
    return _num_threads if values >= PARALLEL_MIN_VALUES else 1


# --------------------------------------------------------------------------------------------------
# weights and padding
# --------------------------------------------------------------------------------------------------

def batch_norm_affine(layer: ConvLayer, params: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Inference BatchNorm as the per-channel affine map it is: BN(x) = scale * x + shift, float64 (C,).

        scale = gamma / sqrt(var + eps),    shift = beta - mean * scale

    Both are read off `ops.batch_norm` itself, evaluated in float64 at x = 0 (giving shift) and at
    x = 1 (giving scale + shift): the fast path uses exactly the readable path's BatchNorm.
    """
    p = f"{layer.name}.normalization."
    probe = np.zeros((2, layer.out_channels, 1, 1))
    probe[1] = 1.0
    statistics = (params[p + name].astype(np.float64) for name in ("running_mean", "running_var", "weight", "bias"))
    y = ops.batch_norm(probe, *statistics, layer.norm_eps)[:, :, 0, 0]       # (2, C)
    return y[1] - y[0], y[0]


def fold_batch_norm(layer: ConvLayer, params: dict[str, np.ndarray], dtype) -> tuple[np.ndarray, np.ndarray]:
    """The layer's convolution with its BatchNorm folded in: weight (C_out, C_in/groups, k, k), bias (C_out,).

        BN(conv(x, w) + b) = scale * (conv(x, w) + b) + shift = conv(x, w * scale) + (b * scale + shift)

    Computed in float64 and rounded once to `dtype`. A layer without BatchNorm keeps its weights
    (and gets a zero bias when it has none).
    """
    weight = params[f"{layer.name}.convolution.weight"].astype(np.float64)
    bias = params.get(f"{layer.name}.convolution.bias")
    bias = np.zeros(layer.out_channels) if bias is None else bias.astype(np.float64)
    if layer.norm_eps is not None:
        scale, shift = batch_norm_affine(layer, params)
        weight = weight * scale[:, None, None, None]
        bias = bias * scale + shift
    return weight.astype(dtype), bias.astype(dtype)


def tap_ranges(in_size: int, out_size: int, kernel: int, stride: int, dilation: int,
               pad_before: int) -> list[tuple[int, int, int]]:
    """Which outputs each kernel tap reaches along one axis, with the zero padding left implicit.

    Output o, tap k reads input  i = o * stride + k * dilation - pad_before,  a padding zero unless
    0 <= i < in_size. For every tap k this returns (first, stop, first_input): the outputs
    [first, stop) that read a real input pixel, and the input index that output `first` reads.
    """
    ranges = []
    for k in range(kernel):
        offset = k * dilation - pad_before
        first = max(0, -(offset // stride))                          # ceil(-offset / stride)
        stop = min(out_size, (in_size - 1 - offset) // stride + 1)
        ranges.append((first, max(first, stop), first * stride + offset))
    return ranges


def _tap_slice(first_input: int, count: int, stride: int) -> slice:
    """The `count` input indices first_input, first_input + stride, ..."""
    return slice(first_input, first_input + (count - 1) * stride + 1, stride)


# --------------------------------------------------------------------------------------------------
# the plan: values (activations), steps (kernels) and the arena that holds the values
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass(eq=False)
class Value:
    """A planned activation, seen as (N, H, W, C), and the arena slot that will hold it.

    storage: "channels_last" (stored as its shape), "planar" (stored (C, N, H, W): the im2col
    matrix, whose columns are written plane by plane) or "input" (the caller's NCHW pixel values,
    not in the arena).
    """

    shape: tuple[int, ...]
    storage: str = "channels_last"
    written: int = -1           # index of the step that writes it
    last_read: int = -1         # index of the last step that reads it
    slot: int = -1

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def view(self, flat: np.ndarray) -> np.ndarray:
        """This value's (N, H, W, C) view of an arena slot."""
        if self.storage == "planar":
            return flat[: self.size].reshape(self.shape[-1:] + self.shape[:-1]).transpose(1, 2, 3, 0)
        return flat[: self.size].reshape(self.shape)


class Step:
    """One kernel of the plan: reads and writes Values.

    run(views, context): `views` maps each Value to its array (N, H, W, C) in the arena; `context`
    holds the call's "pixel_values" and "hidden_states" (a list, or None when not asked for).
    """

    reads: tuple[Value, ...] = ()
    writes: tuple[Value, ...] = ()
    scratch_values: int = 0         # per-thread scratch this step needs (in values of the plan's dtype)

    def run(self, views: dict[Value, np.ndarray], context: dict) -> None:
        raise NotImplementedError


def allocate_slots(values: list[Value]) -> list[int]:
    """Give every value an arena slot so that no two live values share one; return the slot sizes.

    Linear scan in the order the values are written: take the free slot that fits best (or the
    largest free one, grown), else open a new slot. A slot is free again after the last step that
    reads its value, so the value a step writes never shares a slot with one it reads.
    """
    sizes: list[int] = []
    busy_until: list[int] = []                      # the last step that reads the slot's current value
    for value in sorted(values, key=lambda v: v.written):
        free = [s for s in range(len(sizes)) if busy_until[s] < value.written]
        fitting = [s for s in free if sizes[s] >= value.size]
        if fitting:
            slot = min(fitting, key=lambda s: sizes[s])
        elif free:
            slot = max(free, key=lambda s: sizes[s])
            sizes[slot] = value.size
        else:
            slot = len(sizes)
            sizes.append(value.size)
            busy_until.append(-1)
        value.slot = slot
        busy_until[slot] = max(value.last_read, value.written)
    return sizes


class Plan:
    """The steps of one network for one input shape and dtype, and the arenas to run them in.

    An arena is one set of slot buffers plus per-thread scratch. A call borrows a free arena (or
    makes one), so two threads can run the same model at the same time.
    """

    def __init__(self, steps: list[Step], values: list[Value], dtype, finish: Callable):
        self.steps, self.dtype, self.finish = steps, np.dtype(dtype), finish
        self.values = [v for v in values if v.storage != "input"]
        self.inputs = [v for v in values if v.storage == "input"]
        for i, step in enumerate(steps):
            for value in step.reads:
                value.last_read = max(value.last_read, i)
        self.slot_sizes = allocate_slots(self.values)
        self.scratch_values = max([s.scratch_values for s in steps] + [0])
        self._free_arenas: list[tuple[dict, list[np.ndarray]]] = []
        self._lock = threading.Lock()

    def nbytes(self) -> int:
        """Bytes of one arena: the activations' slots and the threads' scratch."""
        return (sum(self.slot_sizes) + _num_threads * self.scratch_values) * self.dtype.itemsize

    def _new_arena(self):
        slots = [np.empty(size, self.dtype) for size in self.slot_sizes]
        views = {v: v.view(slots[v.slot]) for v in self.values}
        views["scratch"] = [np.empty(self.scratch_values, self.dtype) for _ in range(_num_threads)]
        return views

    def run(self, pixel_values: np.ndarray, output_hidden_states: bool):
        with self._lock:
            views = self._free_arenas.pop() if self._free_arenas else None
        if views is None:
            views = self._new_arena()
        pixels = pixel_values.astype(self.dtype, copy=False).transpose(0, 2, 3, 1)   # (N, H, W, C) view
        views.update({v: pixels for v in self.inputs})
        context = {"hidden_states": [] if output_hidden_states else None}
        try:
            for step in self.steps:
                step.run(views, context)
            return self.finish(views, context)
        finally:
            for v in self.inputs:
                views.pop(v)
            with self._lock:
                self._free_arenas.append(views)


# --------------------------------------------------------------------------------------------------
# the kernels
# --------------------------------------------------------------------------------------------------

def _activation(name: str | None, dtype) -> Callable[[np.ndarray], None] | None:
    """The layer's activation (from modeling_utils.ACTIVATIONS, as the readable path) working in place."""
    if name is None:
        return None
    function = ACTIVATIONS[name]
    zero, six = dtype.type(0), dtype.type(6)
    if function is ops.relu6:
        return lambda y: np.clip(y, zero, six, out=y)
    if function is ops.relu:
        return lambda y: np.maximum(y, zero, out=y)
    return lambda y: np.copyto(y, function(y))               # any other activation, out of place


class SaveHiddenState(Step):
    """Append a copy of a value, back in NCHW, to the hidden states (when they are asked for)."""

    def __init__(self, value: Value):
        self.value = value
        self.reads = (value,)

    def run(self, views, context):
        if context["hidden_states"] is not None:
            context["hidden_states"].append(_nchw(views[self.value]))


class MatMul(Step):
    """A 1x1 convolution: (N*H*W, C_in) @ (C_in, C_out), then + bias, activation, + residual.

    The output rows are cut into bands, each thread taking a run of them: a band's matrix product
    and its epilogue run back to back, while the band is in cache. With few rows (late, small
    layers) the threads split the output columns instead.

    weight: (C_in, C_out). bias: (C_out,), or a Value (N, 1, 1, C_out) holding one bias per image
    (the DeepLab projection, see PooledProjectionBias).
    """

    def __init__(self, x: Value, out: Value, weight: np.ndarray, bias, activation: str | None,
                 residual: Value | None = None, split_gemm: bool = True):
        self.x, self.out, self.weight, self.bias, self.residual = x, out, weight, bias, residual
        self.reads = (x,) + tuple(v for v in (residual, bias) if isinstance(v, Value))
        self.writes = (out,)
        self.activation = _activation(activation, weight.dtype)
        n, h, w, c_out = out.shape
        pixels = h * w
        self.threads = _threads_for(out.size) if split_gemm else 1
        rows_per_band = max(1, GEMM_BAND_BYTES // (c_out * weight.itemsize))
        self.bands = []          # per thread: (image, row slice, column slice) of the (N, H*W, C) views
        if n * pixels >= self.threads * GEMM_MIN_ROWS or self.threads == 1:
            for start, stop in _split(n * pixels, self.threads):
                bands, r = [], start
                while r < stop:                                       # bands never cross an image
                    image, end = r // pixels, min(stop, r + rows_per_band, (r // pixels + 1) * pixels)
                    bands.append((image, slice(r - image * pixels, end - image * pixels), slice(None)))
                    r = end
                self.bands.append(bands)
        else:
            self.bands = [[(slice(None), slice(None), slice(a, b))] for a, b in _split(c_out, self.threads)]
            self.threads = len(self.bands)

    def run(self, views, context):
        n, h, w, c_out = self.out.shape
        x = views[self.x].reshape(n, h * w, -1)                                 # (N, H*W, C_in)
        out = views[self.out].reshape(n, h * w, c_out)                          # (N, H*W, C_out)
        per_image_bias = isinstance(self.bias, Value)
        bias = views[self.bias].reshape(-1, 1, c_out) if per_image_bias else self.bias[None, None]
        residual = None if self.residual is None else views[self.residual].reshape(n, h * w, c_out)

        def work(t):
            for image, rows, cols in self.bands[t]:
                y = out[image, rows, cols]
                np.matmul(x[image, rows], self.weight[:, cols], out=y)
                np.add(y, bias[image if per_image_bias else 0, :, cols], out=y)
                if self.activation is not None:
                    self.activation(y)
                if residual is not None:
                    np.add(y, residual[image, rows, cols], out=y)

        _run_parallel(work, self.threads)


@dataclasses.dataclass
class Pointwise:
    """A 1x1 layer inside a DepthwiseBlock: weight (C_in, C_out), bias (C_out,), in-place activation."""

    weight: np.ndarray
    bias: np.ndarray
    activation: Callable[[np.ndarray], None] | None

    def __call__(self, x: np.ndarray, out: np.ndarray) -> None:
        """out = activation(x @ weight + bias): x (N, rows, W, C_in) -> out (N, rows, W, C_out), in place."""
        n, c_out = x.shape[0], out.shape[-1]
        y = out.reshape(n, -1, c_out)                                            # (N, rows*W, C_out)
        np.matmul(x.reshape(n, -1, x.shape[-1]), self.weight, out=y)
        np.add(y, self.bias, out=y)
        if self.activation is not None:
            self.activation(y)


@dataclasses.dataclass
class Band:
    """What a DepthwiseBlock does for one band of output rows (all slices worked out in advance)."""

    rows: slice                      # the band's output rows
    keep: tuple[slice, slice] | None  # line buffer rows to move to its start: (from, to)
    expand: tuple[slice, slice] | None  # input rows to expand, and the line buffer rows they go to
    depthwise: list[tuple]           # per sub-band: (target rows, first tap, other taps), see DepthwiseBlock._taps


class DepthwiseBlock(Step):
    """[1x1 expand] -> k x k depthwise -> [1x1 project] [+ residual], one band of output rows at a time.

    This is MobileNetV2's inverted residual block (and, without the expand, V1's separable
    convolution or a lone depthwise layer). Each thread takes a run of output rows and walks it
    band by band:
      1. expand: the expanded rows the band's depthwise taps read are computed into the thread's
         line buffer (x rows @ W_expand + bias, activation), except those the previous band already
         computed, which are moved to the buffer's start (the kernel's overlap);
      2. depthwise, channels-last: for each tap, out[rows, cols] += source[shifted] * w[tap], on
         the sub-rectangle of outputs that read real (non-padding) pixels. The tap that reads pixel
         (y*s, x*s) for output (y, x) covers the whole band and writes it first (no zero fill);
         then bias and activation;
      3. project: the band's depthwise output @ W_project + bias [activation] [+ the block input]
         goes straight to the output rows.
    The expanded and depthwise tensors are never stored whole, the band stays in cache from one
    layer to the next, and the threads meet once per block. A thread recomputes the few expanded
    rows its neighbour also needs (the halo at its first band).
    """

    def __init__(self, layer: ConvLayer, x: Value, out: Value, weight: np.ndarray, bias: np.ndarray,
                 padding: tuple[int, int, int, int], expand: Pointwise | None = None,
                 project: Pointwise | None = None, residual: bool = False):
        self.x, self.out, self.bias, self.expand, self.project, self.residual = x, out, bias, expand, project, residual
        self.reads, self.writes = (x,), (out,)
        n, h, w, _ = x.shape
        _, h_out, w_out, _ = out.shape
        c = layer.in_channels                                                    # the depthwise channels
        k, s, d = layer.kernel_size, layer.stride, layer.dilation
        weight = np.ascontiguousarray(weight[:, 0].transpose(1, 2, 0))          # (k, k, C)
        if k * k * w_out * c * weight.itemsize <= TILE_BYTES:
            # (k, k, W_out, C): a tap's weights for a run of output columns is one contiguous block
            weight = np.ascontiguousarray(np.broadcast_to(weight[:, :, None, :], (k, k, w_out, c)))
        self.weight = weight
        self.activation = _activation(layer.activation, weight.dtype)
        self.row_taps = tap_ranges(h, h_out, k, s, d, padding[0])
        self.col_taps = tap_ranges(w, w_out, k, s, d, padding[2])
        self.stride, self.w_out = s, w_out
        self.kernel, self.dilation, self.pad_top, self.in_height = k, d, padding[0], h

        row_values = n * w_out * c
        self.depthwise_rows = max(1, BAND_BYTES // (row_values * weight.itemsize))
        rows_per_band = max(self.depthwise_rows, -(-BAND_MIN_PIXELS // (n * w_out)))
        self.threads = _threads_for(n * h_out * w_out * max(c, out.shape[-1]))
        self.bands = [self._chunk(start, stop, rows_per_band) for start, stop in _split(h_out, self.threads)]
        self.threads = len(self.bands)
        buffer_rows = max((b.expand[1].stop for chunk in self.bands for b in chunk if b.expand), default=0)
        band_rows = min(rows_per_band, h_out)
        self.buffer_shape = (n, buffer_rows, w, c)                               # the expand line buffer
        self.temp_shape = (n, min(self.depthwise_rows, h_out), w_out, c)         # one tap's products
        self.band_shape = (n, band_rows, w_out, c)                               # depthwise output, when projected
        self.scratch_values = sum(int(np.prod(shape)) for shape in self._scratch_shapes())

    def _input_rows(self, first_row: int, stop_row: int) -> tuple[int, int]:
        """The input rows [first, stop) under the kernel windows of output rows [first_row, stop_row).

        (The whole span, inside the image: so that it only moves forward from one band to the next.)
        """
        first = first_row * self.stride - self.pad_top
        stop = (stop_row - 1) * self.stride + (self.kernel - 1) * self.dilation - self.pad_top + 1
        return max(first, 0), min(stop, self.in_height)

    def _chunk(self, start: int, stop: int, rows_per_band: int) -> list[Band]:
        """The bands of one thread's output rows [start, stop), with its line buffer bookkeeping."""
        bands = []
        have = (0, 0)                                   # input rows in the line buffer, from its row 0
        for y0, y1 in _bands(start, stop, rows_per_band):
            need = self._input_rows(y0, y1)
            keep = expand = None
            origin = 0                                  # input row held by source row 0
            if self.expand is not None:
                kept = (need[0], have[1]) if have[1] > need[0] else (need[0], need[0])
                if kept[1] > kept[0] and need[0] != have[0]:
                    keep = (slice(kept[0] - have[0], kept[1] - have[0]), slice(0, kept[1] - kept[0]))
                if need[1] > kept[1]:
                    expand = (slice(kept[1], need[1]), slice(kept[1] - need[0], need[1] - need[0]))
                have, origin = need, need[0]
            bands.append(self._band(y0, y1, origin, keep, expand))
        return bands

    def _band(self, first_row, stop_row, origin, keep, expand) -> Band:
        """The band's bookkeeping; its depthwise part is cut into sub-bands that fit the cache."""
        target_origin = first_row if self.project is not None else 0
        depthwise = []
        for y0, y1 in _bands(first_row, stop_row, self.depthwise_rows):
            first, taps = self._taps(y0, y1, origin, target_origin)
            depthwise.append((slice(y0 - target_origin, y1 - target_origin), first, taps))
        return Band(slice(first_row, stop_row), keep, expand, depthwise)

    def _taps(self, first_row, stop_row, origin, target_origin) -> tuple[tuple, list[tuple]]:
        """The taps of output rows [first_row, stop_row) when source row 0 holds input row `origin`.

        A tap is (source slices, target slices, scratch slices, weights); the first one (without
        scratch slices) covers all the rows and columns and writes them.
        """
        every, s = slice(None), self.stride
        first, taps = None, []
        for i, (r0, r1, in_r0) in enumerate(self.row_taps):
            y0, y1 = max(first_row, r0), min(stop_row, r1)
            for j, (c0, c1, in_c0) in enumerate(self.col_taps):
                if y0 >= y1 or c0 >= c1:
                    continue                                            # this tap only sees padding
                source = (every, _tap_slice(in_r0 + (y0 - r0) * s - origin, y1 - y0, s), _tap_slice(in_c0, c1 - c0, s))
                target = (every, slice(y0 - target_origin, y1 - target_origin), slice(c0, c1))
                temp = (every, slice(0, y1 - y0), slice(0, c1 - c0))
                weight = self.weight[i, j, c0:c1] if self.weight.ndim == 4 else self.weight[i, j]
                if first is None and (y0, y1, c0, c1) == (first_row, stop_row, 0, self.w_out):
                    first = (source, target, weight)
                else:
                    taps.append((source, target, temp, weight))
        if first is None:
            raise ValueError(f"fast path: no kernel tap covers output rows {first_row}..{stop_row - 1} "
                             f"of a depthwise layer {self.x.shape} -> {self.out.shape}")
        return first, taps

    def _scratch_shapes(self):
        return (self.buffer_shape, self.temp_shape) + ((self.band_shape,) if self.project else ())

    def _scratch(self, flat: np.ndarray):
        """A thread's line buffer, product scratch and (when projected) depthwise band, from its scratch."""
        arrays, offset = [], 0
        for shape in self._scratch_shapes():
            size = int(np.prod(shape))
            arrays.append(flat[offset: offset + size].reshape(shape))
            offset += size
        return arrays

    def run(self, views, context):
        x, out = views[self.x], views[self.out]

        def work(t):
            line_buffer, temp, *band_out = self._scratch(views["scratch"][t])
            source = line_buffer if self.expand is not None else x
            band_out = band_out[0] if self.project is not None else out    # else: straight into the output
            for band in self.bands[t]:
                if band.keep is not None:
                    np.copyto(line_buffer[:, band.keep[1]], line_buffer[:, band.keep[0]])
                if band.expand is not None:
                    self.expand(x[:, band.expand[0]], line_buffer[:, band.expand[1]])
                for rows, (source_slices, target, weight), taps in band.depthwise:
                    np.multiply(source[source_slices], weight, out=band_out[target])
                    for source_slices, target, temp_slices, weight in taps:
                        product = temp[temp_slices]
                        np.multiply(source[source_slices], weight, out=product)
                        np.add(band_out[target], product, out=band_out[target])
                    depthwise = band_out[:, rows]
                    np.add(depthwise, self.bias, out=depthwise)
                    if self.activation is not None:
                        self.activation(depthwise)
                if self.project is not None:
                    y = out[:, band.rows]
                    self.project(band_out[:, : band.rows.stop - band.rows.start], y)
                    if self.residual:
                        np.add(y, x[:, band.rows], out=y)

        _run_parallel(work, self.threads)


class Im2col(Step):
    """Gather every output pixel's k x k x C_in receptive field into one row (for the stem).

    cols[n, y, x, (i, j, c)] = x[n, y*s + i*d - top, x*s + j*d - left, c], 0 where that is padding.
    cols is stored planar, (k*k*C_in, N, H_out, W_out): each (i, j, c) column is written as a whole
    image plane from a strided plane of the input, and the matrix product reads it transposed.
    """

    def __init__(self, layer: ConvLayer, x: Value, cols: Value, padding: tuple[int, int, int, int]):
        self.x, self.cols = x, cols
        self.reads, self.writes = (x,), (cols,)
        n, h, w, c = x.shape
        _, h_out, w_out, _ = cols.shape
        k, s, d = layer.kernel_size, layer.stride, layer.dilation
        self.taps = []                         # (first column of the tap, output rows, output cols, input rows, input cols)
        for i, (r0, r1, in_r0) in enumerate(tap_ranges(h, h_out, k, s, d, padding[0])):
            for j, (c0, c1, in_c0) in enumerate(tap_ranges(w, w_out, k, s, d, padding[2])):
                self.taps.append(((i * k + j) * c, (r0, r1), (c0, c1),
                                  _tap_slice(in_r0, r1 - r0, s) if r1 > r0 else None,
                                  _tap_slice(in_c0, c1 - c0, s) if c1 > c0 else None))
        self.channels, self.h_out, self.w_out = c, h_out, w_out

    def run(self, views, context):
        x = views[self.x].transpose(3, 0, 1, 2)                  # (C, N, H, W) view
        cols = views[self.cols].transpose(3, 0, 1, 2)            # (k*k*C, N, H_out, W_out), contiguous
        for first, (r0, r1), (c0, c1), in_rows, in_cols in self.taps:
            planes = cols[first: first + self.channels]          # (C, N, H_out, W_out)
            for zeros in (planes[:, :, :r0], planes[:, :, r1:], planes[:, :, :, :c0], planes[:, :, :, c1:]):
                zeros.fill(0)                                    # the padding this tap would read
            if in_rows is not None and in_cols is not None:
                np.copyto(planes[:, :, r0:r1, c0:c1], x[:, :, in_rows, in_cols])


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
        self.pool_activation = _activation(pool_activation, pool_weight.dtype)
        self.projection_weight, self.projection_bias = projection_weight, projection_bias  # (256, 256)

    def run(self, views, context):
        pooled = views[self.pooled][:, 0, 0]                                           # (N, C)
        branch = pooled @ self.pool_weight + self.pool_bias                             # (N, 256)
        if self.pool_activation is not None:
            self.pool_activation(branch)
        out = views[self.out][:, 0, 0]                                                  # (N, 256)
        np.matmul(branch, self.projection_weight, out=out)
        np.add(out, self.projection_bias, out=out)


# --------------------------------------------------------------------------------------------------
# building a plan from a model
# --------------------------------------------------------------------------------------------------

def _gemm_weight(weight: np.ndarray) -> np.ndarray:
    """(C_out, C_in, 1, 1) 1x1 conv weights -> (C_in, C_out), the right operand of the product."""
    return np.ascontiguousarray(weight[:, :, 0, 0].T)


class PlanBuilder:
    """Turns layer descriptions into steps on symbolic Values (shapes only), in execution order."""

    def __init__(self, params: dict[str, np.ndarray], dtype):
        self.params, self.dtype = params, np.dtype(dtype)
        self.steps: list[Step] = []
        self.values: list[Value] = []
        self.split_gemm = _num_threads > 1 and _single_threaded_blas()    # else BLAS threads each product

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
        weight, bias = fold_batch_norm(layer, self.params, self.dtype)
        if layer.kind == "pointwise" and layer.stride == 1:
            self.add(MatMul(x, out, _gemm_weight(weight), bias, layer.activation, residual, self.split_gemm))
        elif layer.groups == 1 and residual is None:
            k = layer.kernel_size
            cols = self.value((n, h_out, w_out, k * k * c), storage="planar")
            self.add(Im2col(layer, x, cols, layer.padding(h, w)))
            # rows of the weight matrix in the order of cols' columns: (i, j, c)
            weight = weight.transpose(2, 3, 1, 0).reshape(k * k * c, layer.out_channels)
            self.add(MatMul(cols, out, np.ascontiguousarray(weight), bias, layer.activation, None, self.split_gemm))
        else:
            raise ValueError(f"fast path: {layer.name} ({layer.kind}, groups={layer.groups}"
                             f"{', + residual' if residual else ''}) is not supported")
        return out

    def pointwise(self, layer: ConvLayer | None) -> Pointwise | None:
        if layer is None:
            return None
        weight, bias = fold_batch_norm(layer, self.params, self.dtype)
        return Pointwise(_gemm_weight(weight), bias, _activation(layer.activation, self.dtype))

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
        weight, bias = fold_batch_norm(depthwise, self.params, self.dtype)
        self.add(DepthwiseBlock(depthwise, x, out, weight, bias, depthwise.padding(h, w),
                                self.pointwise(expand), self.pointwise(project), residual))
        return out

    def global_avg_pool(self, x: Value) -> Value:
        out = self.value((x.shape[0], 1, 1, x.shape[-1]))
        self.add(GlobalAveragePool(x, out))
        return out


def _mobilenet_v1_backbone(b: PlanBuilder, backbone, x: Value, hidden_states: bool) -> Value:
    x = b.conv(backbone.conv_stem, x)                     # (N, H/2, W/2, 32a)
    layers = backbone.layer                               # 26 layers, each one hidden state
    for depthwise, pointwise in zip(layers[0::2], layers[1::2]):
        if hidden_states:                                 # the depthwise output must be kept
            x = b.conv(depthwise, x)
            b.hidden_state(x)
            x = b.conv(pointwise, x)
            b.hidden_state(x)
        else:
            x = b.depthwise_block(depthwise, x, project=pointwise)
    return x                                              # (N, H/32, W/32, 1024a)


def _mobilenet_v2_backbone(b: PlanBuilder, backbone, x: Value, conv_1x1: bool) -> Value:
    first_conv, *expand, conv_3x3, reduce_1x1 = backbone.conv_stem
    x = b.conv(first_conv, x)                             # (N, H/2, W/2, 32a)
    x = b.depthwise_block(conv_3x3, x, expand=expand[0] if expand else None, project=reduce_1x1)  # (N, H/2, W/2, 16a)
    for block in backbone.layer:                          # 16 inverted residual blocks, each one hidden state
        x = b.depthwise_block(block.conv_3x3, x, expand=block.expand_1x1, project=block.reduce_1x1,
                              residual=block.use_residual)
        b.hidden_state(x)
    if conv_1x1:
        x = b.conv(backbone.conv_1x1, x)                  # (N, h, w, 1280)
    return x


def _deeplab_head(b: PlanBuilder, model, features: Value) -> Value:
    """The DeepLabV3 head (see deeplabv3.py), with the pooling branch as a per-image bias."""
    n, h, w, _ = features.shape
    conv_pool, projection = model.conv_pool, model.conv_projection
    pooled = b.global_avg_pool(features)                                         # (N, 1, 1, C)
    aspp = b.conv(model.conv_aspp, features)                                     # (N, h, w, 256)
    pool_weight, pool_bias = fold_batch_norm(conv_pool, b.params, b.dtype)
    projection_weight, projection_bias = fold_batch_norm(projection, b.params, b.dtype)
    projection_weight = _gemm_weight(projection_weight)                          # (512, 256)
    branch_channels = conv_pool.out_channels                                     # concat order: [branch, aspp]
    image_bias = b.value((n, 1, 1, projection.out_channels))
    b.add(PooledProjectionBias(pooled, image_bias, _gemm_weight(pool_weight), pool_bias, conv_pool.activation,
                               projection_weight[:branch_channels], projection_bias))
    x = b.value((n, h, w, projection.out_channels))
    b.add(MatMul(aspp, x, np.ascontiguousarray(projection_weight[branch_channels:]), image_bias,
                 projection.activation, None, b.split_gemm))                     # (N, h, w, 256)
    return b.conv(model.classifier, x)                                           # (N, h, w, num_labels)


def _nchw(array: np.ndarray) -> np.ndarray:
    """A new (N, C, H, W) array from an (N, H, W, C) one: a copy, since the arena will be reused.

    (np.ascontiguousarray would not do: with H = W = 1 the transposed view is already contiguous.)
    """
    return array.transpose(0, 3, 1, 2).copy()


def build_plan(model, input_shape: tuple[int, ...], dtype, hidden_states: bool = False) -> Plan:
    """The fast plan of `model` for pixel values of shape (N, C, H, W) computed in `dtype`.

    `hidden_states`: whether the plan keeps every hidden state (MobileNetV1's depthwise outputs
    are then stored whole, not only band by band).
    """
    from .deeplabv3 import MobileNetV2ForSemanticSegmentation
    from .mobilenet_v1 import MobileNetV1ForImageClassification, MobileNetV1Model
    from .mobilenet_v2 import MobileNetV2ForImageClassification, MobileNetV2Model

    b = PlanBuilder(model.params, dtype)
    x = b.input(input_shape)

    def hidden(context):
        return None if context["hidden_states"] is None else tuple(context["hidden_states"])

    if isinstance(model, MobileNetV2ForSemanticSegmentation):
        # As in the readable path, the backbone's conv_1x1 (whose output nothing uses) is skipped.
        features = _mobilenet_v2_backbone(b, model.mobilenet_v2, x, conv_1x1=False)
        logits = _deeplab_head(b, model, features)

        def finish(views, context):
            return SemanticSegmenterOutput(logits=_nchw(views[logits]), hidden_states=hidden(context))

    elif isinstance(model, (MobileNetV1Model, MobileNetV2Model)):
        last = (_mobilenet_v1_backbone(b, model, x, hidden_states) if isinstance(model, MobileNetV1Model)
                else _mobilenet_v2_backbone(b, model, x, conv_1x1=True))
        pooled = b.global_avg_pool(last) if model.add_pooling_layer else None

        def finish(views, context):
            return BaseModelOutputWithPoolingAndNoAttention(
                last_hidden_state=_nchw(views[last]),
                pooler_output=None if pooled is None else views[pooled][:, 0, 0].copy(),   # (N, C)
                hidden_states=hidden(context))

    elif isinstance(model, (MobileNetV1ForImageClassification, MobileNetV2ForImageClassification)):
        if isinstance(model, MobileNetV1ForImageClassification):
            last = _mobilenet_v1_backbone(b, model.mobilenet_v1, x, hidden_states)
        else:
            last = _mobilenet_v2_backbone(b, model.mobilenet_v2, x, conv_1x1=True)
        pooled = b.global_avg_pool(last)                                         # (N, 1, 1, C)
        classifier = None
        if model.config.num_labels > 0:              # transformers' classifier is nn.Identity without labels
            classifier = (np.ascontiguousarray(model.params["classifier.weight"].astype(dtype).T),  # (C, labels)
                          model.params["classifier.bias"].astype(dtype))

        def finish(views, context):
            logits = views[pooled][:, 0, 0].copy()                               # (N, C); dropout: identity
            if classifier is not None:
                logits = logits @ classifier[0] + classifier[1]                  # (N, num_labels)
            return ImageClassifierOutputWithNoAttention(logits=logits, hidden_states=hidden(context))
    else:
        raise TypeError(f"fast path: no plan for {type(model).__name__}")
    return Plan(b.steps, b.values, dtype, finish)


# --------------------------------------------------------------------------------------------------
# entry point and cache
# --------------------------------------------------------------------------------------------------

def get_plan(model, input_shape: tuple[int, ...], dtype, hidden_states: bool = False) -> Plan:
    """The cached plan for this model, input shape, dtype and hidden states choice (built on first use).

    The cache key holds the identity of every weight array, so assigning a new array to
    model.params[key] (or load_state_dict) makes the next call build a new plan.
    """
    cache = model.__dict__.setdefault("_fast_plans", {})
    key = (tuple(input_shape), np.dtype(dtype).str, hidden_states, _num_threads,
           tuple((name, id(value)) for name, value in model.params.items()))
    plan = cache.pop(key, None)
    if plan is None:
        plan = build_plan(model, input_shape, dtype, hidden_states)
        for value in model.params.values():     # the plan holds folded copies: freeze the originals
            value.flags.writeable = False
        while len(cache) >= MAX_PLANS:
            cache.pop(next(iter(cache)))
    cache[key] = plan                           # most recently used last
    return plan


def clear_cache(model) -> None:
    """Drop the model's cached plans (folded weights and arenas)."""
    model.__dict__.pop("_fast_plans", None)


def fast_forward(model, pixel_values: np.ndarray, output_hidden_states: bool = False):
    """Run `model` on checked (N, C, H, W) pixel values through its fast plan.

    Returns the same output object as the readable path (NCHW arrays, fresh copies), computed in
    the dtype of the pixel values and the weights promoted together (float32 or float64).
    """
    dtype = np.result_type(pixel_values.dtype, *[v.dtype for v in model.params.values() if v.dtype.kind == "f"])
    plan = get_plan(model, pixel_values.shape, dtype, output_hidden_states)
    return plan.run(pixel_values, output_hidden_states)
