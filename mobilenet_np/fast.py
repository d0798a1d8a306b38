"""The fast inference path: the same layer descriptions, run as a plan of channels-last NumPy kernels.

The readable path (mobilenet_v1.py, mobilenet_v2.py, deeplabv3.py) runs every ConvLayer the way the
papers draw it: pad, convolve in NCHW, BatchNorm, activation, each step a new array. This file runs the
very same layers faster, with the same results up to float rounding (tests/test_fast.py checks it
against the readable path and against transformers). `model(x)` uses it unless a `record` callback is
given, `fast=False` is passed or `model.reference` is True.

1. BatchNorm is folded into the convolution once per set of weights (`fold_batch_norm`):
       BN(conv(x, w) + b) = conv(x, w * scale) + (b * scale + shift)
   with scale = gamma / sqrt(var + eps) and shift = beta - mean * scale, read off ops.batch_norm.
2. Activations are channels-last (N, H, W, C). A pointwise (1x1) convolution is then one matrix
   product (N*H*W, C_in) @ (C_in, C_out) (`MatMul`, `Pointwise`), and a depthwise convolution one
   np.einsum over a strided view of its input: for each output value, the 9 products of the window
   summed in one pass, with no temporary arrays (`DepthwiseBlock._windows`).
3. An inverted residual block (expand -> depthwise -> project, + residual) runs as one step, a band
   of output rows at a time (`DepthwiseBlock`): the expanded rows a band needs go to a small
   per-thread line buffer that also holds the zero padding, the band is convolved and projected
   straight into the output rows. The expanded and depthwise tensors are never stored whole, and a
   band stays in cache from one layer to the next. MobileNetV1 runs the same way, each pointwise
   layer as the "expand" of the depthwise layer after it. (The stem's convolution gathers its
   patches with the padding left implicit: `tap_ranges`, `Im2col`.)
4. Every activation lives in a preallocated arena, reused from layer to layer and from call to call
   (`allocate_slots`); ufuncs write in place with out=, outputs are copied out at the end.
5. Threads (`set_num_threads`; NumPy releases the GIL inside ufuncs, einsum and matrix products):
   every thread walks through all the steps (`_Call`), one from the top of each layer down, one
   from the bottom up, and waits only for the rows a band reads, so the threads meet where their
   rows touch instead of at a barrier after every layer (each barrier costs a wake-up of a
   sleeping thread). Small maps are shared by channels instead of rows (CHANNEL_SHARE_ROWS). When
   threadpoolctl is installed, BLAS is set to one thread (`_set_blas_threads`): BLAS worker threads
   spin for about 100 ms after each product and would fight the walkers (and anything else) for
   the cores. Without threadpoolctl there is one walker and BLAS threads each product itself.

The plan (`Plan`) is built from the model's own layer descriptions (ConvLayer fields,
InvertedResidual.use_residual, the DeepLab head's layers), so it cannot drift from the readable path.
It is built once per (input shape, dtype) and cached on the model with its folded weights. Because of
that cache, the model's weight arrays are made read-only when a plan is built: to change a weight,
assign a new array (`model.params[key] = new_value`); the next call notices and rebuilds.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from . import ops
from .modeling_utils import (ACTIVATIONS, BaseModelOutputWithPoolingAndNoAttention, ConvLayer,
                             ImageClassifierOutputWithNoAttention, SemanticSegmenterOutput)

__all__ = ["fast_forward", "batch_norm_affine", "fold_batch_norm", "tap_ranges", "build_plan", "get_plan",
           "clear_cache", "set_num_threads", "get_num_threads"]

# A band of a DepthwiseBlock (its depthwise output) or of a lone 1x1 layer (its matrix product's
# output) is at most about this many bytes, a core's L2 cache here, so that it and its inputs stay
# in cache; with several walkers, each gets at least one band of every layer. Bigger bands mean fewer
# NumPy calls, and with two walkers each call can cost a hand-over of the GIL: on 2 cores, 2 MB bands
# ran MobileNetV1 12% faster than 256 KB ones ...
BAND_BYTES = 2 * 1024 * 1024
GEMM_BAND_BYTES = 2 * 1024 * 1024
# ... but a DepthwiseBlock band has at least this many pixels, so that its matrix products are not
# too small for BLAS to run efficiently.
BAND_MIN_PIXELS = 256
# Stride-1 depthwise weights are repeated along the output row (one (W_out * C) vector per tap) when
# that takes at most this many bytes: einsum then runs along (x, c) flattened, whole rows at a time,
# instead of C values at a time (3x faster with C = 32; with large C the per-channel form is as fast).
TILE_BYTES = 1024 * 1024
# With several walkers, a block on a map of fewer than this many rows per walker is shared out by
# channels rather than by rows, when it can be (see DepthwiseBlock): splitting 14 rows in two, each
# half would also expand the row next to it (14% more work) with half as many rows per product.
CHANNEL_SHARE_ROWS = 8
# A walker that must wait polls this long before it sleeps on a lock (_Call._wait).
SPIN_SECONDS = 300e-6
# Plans kept per model (one per input shape and dtype), least recently used dropped first.
MAX_PLANS = 2


def _c_entry_point(module: str, name: str, public):
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


_clip = _c_entry_point("numpy._core.umath", "clip", np.clip)
_einsum = _c_entry_point("numpy._core.multiarray", "c_einsum", np.einsum)


# --------------------------------------------------------------------------------------------------
# threads
# --------------------------------------------------------------------------------------------------

def _available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


_num_threads = min(_available_cores(), 8)
_executor: ThreadPoolExecutor | None = None
_blas: list | None = None                       # see _blas_libraries
_blas_threads: int | None = None                # the BLAS thread count last set, see _set_blas_threads


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


def _blas_libraries() -> list:
    """threadpoolctl's controllers of the BLAS libraries loaded (empty without threadpoolctl)."""
    global _blas
    if _blas is None:
        try:
            from threadpoolctl import ThreadpoolController
            _blas = [lib for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas"]
        except ImportError:
            _blas = []
    return _blas


def _set_blas_threads(n: int) -> None:
    """Give BLAS `n` threads (when threadpoolctl can), changing it only when it differs from the last
    setting: raising it wakes BLAS's worker threads, which then spin for a while."""
    global _blas_threads
    if _blas_threads != n:
        for lib in _blas_libraries():
            lib.set_num_threads(n)
        _blas_threads = n


class _Fronts:
    """Hands out the bands [start, stop) of one segment from both ends, to at most two walkers.

    One walker takes bands down from the first, the other up from the last, until they meet: a
    walker that starts late (its core busy with other work) just gets fewer bands, and each walker's
    bands are consecutive, so a DepthwiseBlock's line buffer carries over from one band to the next.
    """

    def __init__(self, start: int, stop: int):
        self.next_down, self.next_up = start, stop - 1
        self.lock = threading.Lock()

    def take(self, downward: bool) -> int | None:
        with self.lock:
            if self.next_down > self.next_up:
                return None
            if downward:
                self.next_down += 1
                return self.next_down - 1
            self.next_up -= 1
            return self.next_up + 1


class _Abort(Exception):
    """Raised in a walker waiting for rows that another walker failed to compute."""


class _Call:
    """One call of a plan on several threads ("walkers"): which bands are taken and which are done.

    Every walker runs through all the steps of the plan (`walk`). In each step, walker 2k takes the
    bands of segment k from the top down and walker 2k + 1 from the bottom up (_Fronts). A band waits
    only until the rows it reads are written (`needs`, `_rows_ready`): the top rows of the next step
    need only the top rows of this one, so a walker goes on to the next step without waiting for the
    other to finish this one, and the walkers meet only where their rows touch. (A barrier after every
    step would cost a wake-up of a sleeping thread per step: 50-250 us on a virtual machine.)

    One rule keeps the arena safe: a walker starts step i only when steps 0 .. i-2 are finished, and
    allocate_slots keeps a value's slot until the step after its last reader (Plan(lag=1)).
    Steps without bands (pooling, hidden states, DeepLab's pooled branch) run whole on walker 0, once
    what they read is done.
    """

    def __init__(self, plan: "Plan", views: dict, context: dict):
        self.plan, self.views, self.context = plan, views, context
        self.changed = threading.Condition()
        steps = plan.steps
        self.fronts = [[_Fronts(a, b) for a, b in step.segments] for step in steps]
        self.down = [[a for a, _ in step.segments] for step in steps]   # per segment: bands [a, down) done
        self.up = [[b for _, b in step.segments] for step in steps]     # ... and bands [up, b) done
        self.left = [len(step.bands) if step.bands else 1 for step in steps]   # bands (or whole steps) not done
        self.finished = 0                                                # steps [0, finished) are done
        self.error: BaseException | None = None
        self.walking = 0                                                 # walkers inside walk()
        self.sleeping = 0                                                # walkers waiting on `changed`

    def _rows_ready(self, value: "Value", start: int, stop: int) -> bool:
        """Whether rows [start, stop) of `value` are written (its step's bands from either end)."""
        i = value.written
        if i < self.finished or self.left[i] == 0:
            return True
        step = self.plan.steps[i]
        if not step.bands or step.shares_channels:         # (then rows are done when the step is)
            return False
        for k, (a, b) in enumerate(step.segments):
            first, last = step.bands[a][0], step.bands[b - 1][1]          # the segment's rows
            lo, hi = max(start, first), min(stop, last)
            if lo >= hi:
                continue
            top = step.bands[self.down[i][k] - 1][1] if self.down[i][k] > a else first   # rows [first, top) done
            bottom = step.bands[self.up[i][k]][0] if self.up[i][k] < b else last        # rows [bottom, last) done
            if not (hi <= top or lo >= bottom or top >= bottom):
                return False
        return True

    def _wait(self, ready: Callable[[], bool]) -> None:
        if ready():                              # (the usual case: no lock, no wait)
            return
        # Poll for a while first (time.sleep(0) lets the GIL go each time): most waits are for a band
        # the other walker is about to finish, and a thread asleep on a lock takes 50-70 us to wake up.
        deadline = time.perf_counter() + SPIN_SECONDS
        while time.perf_counter() < deadline:
            time.sleep(0)
            if ready():
                return
        with self.changed:
            self.sleeping += 1
            try:
                while not ready():
                    if self.error is not None:
                        raise _Abort
                    self.changed.wait()
            finally:
                self.sleeping -= 1

    def _done(self, i: int, segment: int | None = None, band: int | None = None, downward: bool = True) -> None:
        with self.changed:
            if segment is not None:
                if downward:
                    self.down[i][segment] = band + 1
                else:
                    self.up[i][segment] = band
            self.left[i] -= 1
            while self.finished < len(self.left) and self.left[self.finished] == 0:
                self.finished += 1
            if self.sleeping:
                self.changed.notify_all()

    def steps_of(self, walker: int):
        """Walker `walker`'s share of every step, as a generator that yields a condition (a function
        returning True once the walker may go on) wherever it has to wait."""
        segment, downward = walker // 2, walker % 2 == 0
        for i, step in enumerate(self.plan.steps):
            if self.finished < i - 1:
                yield lambda: self.finished >= i - 1
            if not step.bands:
                if walker == 0:
                    if not all(self.finished > v.written for v in step.reads):
                        yield lambda: all(self.finished > v.written for v in step.reads)
                    step.run(self.views, self.context)
                    self._done(i)
                continue
            if segment >= len(step.segments):
                continue
            fronts = self.fronts[i][segment]
            while (band := fronts.take(downward)) is not None:
                for value, start, stop in step.needs(band):
                    if not self._rows_ready(value, start, stop):
                        yield lambda: self._rows_ready(value, start, stop)
                step.run_band(self.views, walker, band, downward)
                self._done(i, segment, band, downward)

    def walk(self, walker: int) -> None:
        """Walker `walker`'s share of every step on this thread (walker 0 is the calling thread)."""
        with self.changed:
            self.walking += 1
        try:
            for condition in self.steps_of(walker):
                self._wait(condition)
                if self.error is not None:
                    return
        except BaseException as error:         # noqa: BLE001 -- handed to walker 0, which re-raises it
            with self.changed:
                self.error = self.error or error
        finally:
            with self.changed:
                self.walking -= 1
                self.changed.notify_all()

    def run(self, walkers: int) -> None:
        """Walker 0 here, walkers 1 .. walkers-1 on the pool; returns when every step is done."""
        global _executor
        if walkers > 1:
            if _executor is None:
                _executor = ThreadPoolExecutor(max_workers=_num_threads - 1, thread_name_prefix="mobilenet_np")
            for walker in range(1, walkers):
                _executor.submit(self.walk, walker)
        self.walk(0)
        self._wait(lambda: self.finished == len(self.left) or self.error is not None)
        with self.changed:
            while self.error is not None and self.walking > 0:    # the arena is free once they are out
                self.changed.wait()
        if self.error is not None:
            raise self.error


def _split(length: int, parts: int) -> list[tuple[int, int]]:
    """[0, length) cut into `parts` near-equal consecutive (start, stop) ranges, none empty."""
    parts = max(1, min(parts, length))
    edges = [length * p // parts for p in range(parts + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _bands(stop: int, rows_per_band: int) -> list[tuple[int, int]]:
    """[0, stop) cut into bands of rows_per_band rows (the last one shorter)."""
    return [(r, min(r + rows_per_band, stop)) for r in range(0, stop, rows_per_band)]


def _segments(bands: int, threads: int) -> list[tuple[int, int]]:
    """The bands of a step cut into one segment per pair of walkers."""
    return _split(bands, -(-threads // 2)) if bands else []


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

    A step either runs whole, `run(views, context)`, or (`bands` not empty) band by band:
    `run_band(views, walker, band, downward)` writes output rows bands[band] = (start, stop), after
    the rows `needs(band)` lists are written; the walkers share the bands (_Call). `views` maps each
    Value to its array (N, H, W, C) in the arena, and "scratch" to the walkers' scratch buffers;
    `context` holds the call's "hidden_states" (a list, or None when not asked for).
    """

    reads: tuple[Value, ...] = ()
    writes: tuple[Value, ...] = ()
    scratch_values: int = 0         # per-walker scratch this step needs (in values of the plan's dtype)
    bands: list[tuple[int, int]] = []       # output rows of each band ([]: the step runs whole)
    segments: list[tuple[int, int]] = []    # the bands cut into one range per pair of walkers (_segments)
    shares_channels = False                 # True: each band writes some channels of every row

    def needs(self, band: int) -> list[tuple[Value, int, int]]:
        """(value, start, stop): the rows [start, stop) of values that band `band` reads."""
        raise NotImplementedError

    def run_band(self, views: dict, walker: int, band: int, downward: bool) -> None:
        raise NotImplementedError

    def run(self, views: dict, context: dict) -> None:
        raise NotImplementedError


def allocate_slots(values: list[Value], lag: int = 0) -> list[int]:
    """Give every value an arena slot so that no two live values share one; return the slot sizes.

    Linear scan in the order the values are written: take the free slot that fits best (or the
    largest free one, grown), else open a new slot. A slot is free again `lag` steps after the last
    step that reads its value (lag 1 with several walkers, which may be a step apart: see _Call), so
    the value a step writes never shares a slot with one it reads.
    """
    sizes: list[int] = []
    busy_until: list[int] = []                      # the last step that may still read the slot's value
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
        busy_until[slot] = max(value.last_read + lag, value.written)
    return sizes


class Plan:
    """The steps of one network for one input shape and dtype, and the arenas to run them in.

    An arena is one set of slot buffers plus per-walker scratch. A call borrows a free arena (or
    makes one), so two threads can run the same model at the same time.
    """

    def __init__(self, steps: list[Step], values: list[Value], dtype, finish: Callable, threads: int = 1):
        self.steps, self.dtype, self.finish, self.threads = steps, np.dtype(dtype), finish, threads
        self.values = [v for v in values if v.storage != "input"]
        self.inputs = [v for v in values if v.storage == "input"]
        for i, step in enumerate(steps):
            for value in step.reads:
                value.last_read = max(value.last_read, i)
        if any(len(step.segments) > -(-threads // 2) for step in steps):
            raise ValueError(f"fast path: a step has more segments than {threads} walkers can take")
        self.slot_sizes = allocate_slots(self.values, lag=1 if threads > 1 else 0)
        self.scratch_values = max([s.scratch_values for s in steps] + [0])
        self._free_arenas: list[dict] = []
        self._lock = threading.Lock()

    def nbytes(self) -> int:
        """Bytes of one arena: the activations' slots and the walkers' scratch."""
        return (sum(self.slot_sizes) + self.threads * self.scratch_values) * self.dtype.itemsize

    def _new_arena(self):
        slots = [np.empty(size, self.dtype) for size in self.slot_sizes]
        views = {v: v.view(slots[v.slot]) for v in self.values}
        views["scratch"] = [np.empty(self.scratch_values, self.dtype) for _ in range(self.threads)]
        return views

    def run(self, pixel_values: np.ndarray, output_hidden_states: bool):
        with self._lock:
            views = self._free_arenas.pop() if self._free_arenas else None
        if views is None:
            views = self._new_arena()
        pixels = pixel_values.astype(self.dtype, copy=False).transpose(0, 2, 3, 1)   # (N, H, W, C) view
        views.update({v: pixels for v in self.inputs})
        context = {"hidden_states": [] if output_hidden_states else None}
        _set_blas_threads(1 if self.threads > 1 else _num_threads)
        try:
            _run_steps(self, views, context)
            return self.finish(views, context)
        finally:
            for v in self.inputs:
                views.pop(v)
            with self._lock:
                self._free_arenas.append(views)


def _run_steps(plan: Plan, views: dict, context: dict) -> None:
    """Run every step of the plan: on plan.threads walkers (_Call), or in order on this thread."""
    _Call(plan, views, context).run(plan.threads)


# --------------------------------------------------------------------------------------------------
# the kernels
# --------------------------------------------------------------------------------------------------

def _activation(name: str | None, dtype) -> Callable[[np.ndarray, np.ndarray], None]:
    """The layer's activation (modeling_utils.ACTIVATIONS, as in the readable path) as f(x, out=y).

    f(y, y) works in place; None (a linear layer) copies, or does nothing in place.
    """
    if name is None:
        return lambda x, y: None if x is y else np.copyto(y, x)
    function = ACTIVATIONS[name]
    zero, six = dtype.type(0), dtype.type(6)
    if function is ops.relu6:
        return lambda x, y: _clip(x, zero, six, out=y)
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
            context["hidden_states"].append(_nchw(views[self.value]))


class MatMul(Step):
    """A 1x1 convolution: (N*H*W, C_in) @ (C_in, C_out), then + bias, activation, + residual.

    The output rows are cut into bands of about GEMM_BAND_BYTES, which the walkers share: a band's
    matrix product and its epilogue run back to back, while the band is in cache. On a small map,
    each walker computes all rows for a share of the output channels instead.

    weight: (C_in, C_out). bias: (C_out,), or a Value (N, 1, 1, C_out) holding one bias per image
    (the DeepLab projection, see PooledProjectionBias).
    """

    def __init__(self, x: Value, out: Value, weight: np.ndarray, bias, activation: str | None,
                 residual: Value | None = None, threads: int = 1):
        self.x, self.out, self.weight, self.bias, self.residual = x, out, weight, bias, residual
        self.reads = (x,) + tuple(v for v in (residual, bias) if isinstance(v, Value))
        self.writes = (out,)
        self.activation = _activation(activation, weight.dtype)
        n, h, w, c_out = out.shape
        rows_per_band = max(1, GEMM_BAND_BYTES // (n * w * c_out * weight.itemsize))
        if threads > 1:
            rows_per_band = min(rows_per_band, -(-h // threads))      # a band for every walker
        self.bands, self.channels = _bands(h, rows_per_band), None
        if threads > 1 and h < CHANNEL_SHARE_ROWS * threads:       # a small map: shared by output channels
            self.shares_channels, self.channels = True, _split(c_out, threads)
            self.bands = [(0, h)] * len(self.channels)
            self.shares = [np.ascontiguousarray(weight[:, a:b]) for a, b in self.channels]
        self.segments = _segments(len(self.bands), threads)

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


@dataclasses.dataclass
class Band:
    """How a DepthwiseBlock's thread gets the line buffer ready for one band of output rows.

    Line buffer row 0 holds padded input row `origin`; padded rows are the input rows shifted by the
    top padding, the padding rows being zeros.
    """

    origin: int
    keep: tuple[slice, slice] | None       # rows the thread's previous band left, to move: (from, to)
    zeros: list[slice]                     # buffer rows that are padding
    fills: list[tuple[slice, slice]]       # input rows of x, and the buffer rows they go to


class DepthwiseBlock(Step):
    """[1x1 expand] -> k x k depthwise -> [1x1 project] [+ residual], one band of output rows at a time.

    This is MobileNetV2's inverted residual block (and, without the project, MobileNetV1's pointwise
    layer followed by its next depthwise layer; with neither, a lone depthwise layer). Each walker has
    a line buffer: the padded rows of the depthwise layer's input that the current band reads, zero
    padding included (rows and columns). For a band of output rows, a walker
      1. fills its line buffer: the rows the previous band left there are kept (moved to its top),
         the new ones are the expanded input rows (x @ W_expand + bias, activation) or, without
         an expand layer, x's rows; padding rows and columns are zeros;
      2. runs the depthwise layer, channels-last, as one einsum over a strided view of the buffer:
         out[n, y, x, c] = sum over i, j of buffer[n, y*s + i*d, x*s + j*d, c] * w[i, j, c]
         (with small channel counts, over whole rows: the view and the weights then run along
         (x, c) flattened, the weights repeated along the row); then bias and activation;
      3. projects the band (@ W_project + bias [activation] [+ the block input]) straight into
         the output rows.
    The expanded and depthwise tensors are never stored whole, and the band stays in cache from one
    layer to the next. On a small map (share_channels), each walker computes the whole map for a
    share of the channels instead.
    """

    def __init__(self, layer: ConvLayer, x: Value, out: Value, weight: np.ndarray, bias: np.ndarray, flat: bool,
                 padding: tuple[int, int, int, int], expand: Pointwise | None = None,
                 project: Pointwise | None = None, residual: bool = False, threads: int = 1,
                 share_channels: bool = False):
        """weight: (k, k, C), or with `flat` (k, k, W_out * C) (see PlanBuilder.depthwise_weights).

        share_channels (with an expand layer, without a project layer, not flat): one band per walker,
        each the whole map for a share of the depthwise channels: its expand columns, depthwise weights
        and output channels.
        """
        self.x, self.out, self.bias, self.expand, self.project, self.residual = x, out, bias, expand, project, residual
        self.reads, self.writes = (x,), (out,)
        self.activation = _activation(layer.activation, weight.dtype)
        n, h, w, _ = x.shape
        _, h_out, w_out, _ = out.shape
        c = layer.in_channels                                                    # the depthwise channels
        self.k, self.s, self.d = layer.kernel_size, layer.stride, layer.dilation
        top, bottom, self.left, right = padding
        self.top, self.height, self.width, self.w_out = top, h, w, w_out
        self.weight, self.flat = weight, flat

        rows_per_band = max(1, BAND_BYTES // (n * w_out * c * weight.itemsize), -(-BAND_MIN_PIXELS // (n * w_out)))
        if threads > 1:
            rows_per_band = min(rows_per_band, -(-h_out // threads))  # a band for every walker
        self.bands, self.channels = _bands(h_out, rows_per_band), None
        if share_channels:
            self.shares_channels, self.channels, rows_per_band = True, _split(c, threads), h_out
            self.bands = [(0, h_out)] * len(self.channels)
            c = max(b - a for a, b in self.channels)            # the line buffer's channels
            # each share's depthwise weights: (k, k, C_share), or flat (repeated along the row)
            self.flat = _flattens(self.s, weight, w_out)
            share_taps = [np.ascontiguousarray(weight[:, :, a:b]) for a, b in self.channels]
            self.shares = [(np.ascontiguousarray(expand.weight[:, a:b]), expand.bias[a:b],
                            _along_row(taps, w_out) if self.flat else taps, bias[a:b])
                           for (a, b), taps in zip(self.channels, share_taps)]
        self.segments = _segments(len(self.bands), threads)
        padded = [self._padded_rows(y0, y1) for y0, y1 in self.bands]
        # Besides the rows of one band, the line buffer has room for twice the rows two bands share,
        # so that moving those back to its start (_band) costs at most half a band's new rows.
        span = max(b - a for a, b in padded)
        self.buffer_rows = span + 2 * max(0, span - rows_per_band * self.s)
        # A walker going down starts at a segment's first band and continues from the band above;
        # one going up starts at its last band, from the band below (_Call).
        self.down, self.up = [None] * len(padded), [None] * len(padded)
        for a, b in self.segments:
            for walk, downward in ((range(a, b), True), (reversed(range(a, b)), False)):
                bands, held = (self.down, self.up)[not downward], None
                for i in walk:
                    bands[i] = self._band(held, padded[i], downward)
                    held = (bands[i].origin, padded[i]) if not self.channels else None   # (another share)
        # the input rows each band reads (its padded rows, less the padding)
        self.input_rows = [(max(0, a - top), min(h, b - top)) for a, b in padded]
        self.buffer_shape = (n, self.buffer_rows, self.left + w + right, c)      # padded input rows
        self.expanded_shape = (n, span, w, c) if expand is not None else (0,)   # expand output, pre-activation
        self.band_shape = (n, min(rows_per_band, h_out), w_out, c)              # depthwise output, when projected
        shapes = (self.buffer_shape, self.expanded_shape) + ((self.band_shape,) if project or self.channels else ())
        sizes = [int(np.prod(shape)) for shape in shapes]
        ends = np.cumsum(sizes).tolist()
        self.scratch_parts = [(end - size, end, shape) for size, end, shape in zip(sizes, ends, shapes)]
        self.scratch_values = ends[-1]

    def _padded_rows(self, first_row: int, stop_row: int) -> tuple[int, int]:
        """The padded input rows [first, stop) under the kernel windows of output rows [first_row, stop_row)."""
        return first_row * self.s, (stop_row - 1) * self.s + (self.k - 1) * self.d + 1

    def _band(self, held, need: tuple[int, int], downward: bool) -> Band:
        """Line buffer bookkeeping for a band that reads padded rows `need`.

        `held`: (origin, rows) of the thread's previous band: the padded row at buffer row 0 and
        the rows it read, which are in the buffer (None: a first band). If `need` fits in the
        buffer as it is placed, the band only fills its new rows; otherwise the buffer is placed
        again so that `need` starts at its top (walking down) or ends at its bottom (walking up),
        and the rows both bands read are moved.
        """
        origin, have = held if held else (None, (0, 0))
        if origin is None or need[0] < origin or need[1] > origin + self.buffer_rows:
            origin = need[0] if downward else need[1] - self.buffer_rows
        kept = (max(have[0], need[0]), min(have[1], need[1]))
        keep = None
        if kept[1] > kept[0]:
            new = [(need[0], kept[0]), (kept[1], need[1])]            # above and below what is kept
            if held[0] != origin:
                keep = (slice(kept[0] - held[0], kept[1] - held[0]), slice(kept[0] - origin, kept[1] - origin))
        else:
            new = [need]
        zeros, fills = [], []
        image = (self.top, self.top + self.height)                    # padded rows that are input rows
        for a, b in new:
            for z0, z1 in ((a, min(b, image[0])), (max(a, image[1]), b)):
                if z1 > z0:
                    zeros.append(slice(z0 - origin, z1 - origin))
            f0, f1 = max(a, image[0]), min(b, image[1])
            if f1 > f0:
                fills.append((slice(f0 - self.top, f1 - self.top), slice(f0 - origin, f1 - origin)))
        return Band(origin, keep, zeros, fills)

    def _scratch(self, views: dict, walker: int, channels: int | None = None) -> list[np.ndarray]:
        """The walker's line buffer, expand output and (when projected or shared by channels) depthwise
        band, in its scratch; with `channels`, each for that many channels (contiguous). Made once per
        arena (kept in `views`)."""
        parts = views.get((self, walker, channels))
        if parts is None:
            flat = views["scratch"][walker]
            parts = views[(self, walker, channels)] = [
                flat[start: start + math.prod(shape[:-1]) * (channels or shape[-1])].reshape(
                    shape[:-1] + (channels or shape[-1],)) for start, _, shape in self.scratch_parts]
        return parts

    def _windows(self, buffer: np.ndarray, first: int, rows: int) -> np.ndarray:
        """The depthwise layer's input windows of `rows` output rows, read from buffer row `first`.

        (N, rows, W_out, C, k, k), or with `flat` weights (N, rows, W_out * C, k, k):
        windows[n, y, x, c, i, j] = buffer[n, first + y*s + i*d, x*s + j*d, c]
        """
        n, _, _, c = buffer.shape
        batch, row, column, item = buffer.strides
        s, d = self.s, self.d
        if self.flat:       # stride 1: (x, c) flattened is one axis of unit stride
            shape, strides = (n, rows, self.w_out * c, self.k, self.k), (batch, row, item, d * row, d * column)
        else:
            shape = (n, rows, self.w_out, c, self.k, self.k)
            strides = (batch, s * row, s * column, item, d * row, d * column)
        # (np.lib.stride_tricks.as_strided does the same, ten times slower)
        return np.ndarray(shape, buffer.dtype, buffer, first * row, strides)

    def needs(self, band):
        return [(self.x, *self.input_rows[band])]

    def run_band(self, views, walker, band_index, downward):
        x, out = views[self.x], views[self.out]
        left, width = self.left, self.width
        band = (self.down if downward else self.up)[band_index]
        y0, y1 = self.bands[band_index]
        weight, bias, expand_weight, expand_bias = self.weight, self.bias, None, None
        if self.channels:                                   # this walker's share of the channels
            expand_weight, expand_bias, weight, bias = self.shares[band_index]
        buffer, expanded, *band_out = self._scratch(views, walker, bias.size if self.channels else None)
        if band.keep is not None:
            np.copyto(buffer[:, band.keep[1]], buffer[:, band.keep[0]])
        for rows in band.zeros:
            buffer[:, rows].fill(0)
        for x_rows, rows in band.fills:
            buffer[:, rows, :left].fill(0)
            buffer[:, rows, left + width:].fill(0)
            interior = buffer[:, rows, left: left + width]
            if self.expand is None:
                np.copyto(interior, x[:, x_rows])
            else:
                linear = expanded[:, : rows.stop - rows.start]
                self.expand.linear(x[:, x_rows], linear, expand_weight, expand_bias)
                self.expand.activation(linear, interior)
        # the depthwise output: straight into the output rows, or into the band buffer (to be projected,
        # or, for a share of the channels, to be put into its channels of the output)
        depthwise = band_out[0][:, : y1 - y0] if band_out else out[:, y0:y1]
        target = depthwise.reshape(depthwise.shape[0], y1 - y0, -1) if self.flat else depthwise
        subscripts = "nyfij,ijf->nyf" if self.flat else "nyxcij,ijc->nyxc"
        _einsum(subscripts, self._windows(buffer, y0 * self.s - band.origin, y1 - y0), weight, out=target)
        np.add(depthwise, bias, out=depthwise)
        if self.channels:
            self.activation(depthwise, out[:, y0:y1, :, slice(*self.channels[band_index])])
            return
        self.activation(depthwise, depthwise)
        if self.project is not None:
            y = out[:, y0:y1]
            self.project.linear(depthwise, y)
            self.project.activation(y, y)
            if self.residual:
                np.add(y, x[:, y0:y1], out=y)


class Im2col(Step):
    """Gather every output pixel's k x k x C_in receptive field into one row (for the stem).

    cols[n, y, x, (i, j, c)] = x[n, y*s + i*d - top, x*s + j*d - left, c], 0 where that is padding.
    cols is stored planar, (k*k*C_in, N, H_out, W_out): each (i, j, c) column is written as a whole
    image plane (one band of its rows) from a strided plane of the input, and the matrix product
    reads it transposed.
    """

    def __init__(self, layer: ConvLayer, x: Value, cols: Value, padding: tuple[int, int, int, int],
                 itemsize: int, threads: int = 1):
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
        # Bands of about GEMM_BAND_BYTES, not one per walker: each band is a hundred small copies, and
        # (for the stem) the other walkers are still waking up.
        self.bands = _bands(h_out, max(1, GEMM_BAND_BYTES // (n * w_out * row_length * itemsize)))
        self.segments = _segments(len(self.bands), threads)

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
                in_rows = _tap_slice(in_r0 + (a + y0 - r0) * self.s, b - a, self.s)
                np.copyto(planes[:, :, a:b, c0:c1], x[:, :, in_rows, _tap_slice(in_c0, c1 - c0, self.s)])


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
        self.pool_activation(branch, branch)
        out = views[self.out][:, 0, 0]                                                  # (N, 256)
        np.matmul(branch, self.projection_weight, out=out)
        np.add(out, self.projection_bias, out=out)


# --------------------------------------------------------------------------------------------------
# building a plan from a model
# --------------------------------------------------------------------------------------------------

def _flattens(stride: int, taps: np.ndarray, w_out: int) -> bool:
    """Whether depthwise weights `taps` (k, k, C) run flat: stride 1 and repeated along the row within TILE_BYTES."""
    return stride == 1 and taps.nbytes * w_out <= TILE_BYTES


def _along_row(taps: np.ndarray, w_out: int) -> np.ndarray:
    """(k, k, C) depthwise weights repeated along an output row: (k, k, W_out * C), for the flat einsum."""
    k, c = taps.shape[0], taps.shape[-1]
    return np.ascontiguousarray(np.broadcast_to(taps[:, :, None, :], (k, k, w_out, c))).reshape(k, k, w_out * c)


def _gemm_weight(weight: np.ndarray) -> np.ndarray:
    """(C_out, C_in, 1, 1) 1x1 conv weights -> (C_in, C_out), the right operand of the product."""
    return np.ascontiguousarray(weight[:, :, 0, 0].T)


class PlanBuilder:
    """Turns layer descriptions into steps on symbolic Values (shapes only), in execution order."""

    def __init__(self, params: dict[str, np.ndarray], dtype, threads: int = 1):
        self.params, self.dtype = params, np.dtype(dtype)
        self.steps: list[Step] = []
        self.values: list[Value] = []
        self.threads = threads                      # the walkers (1: BLAS threads the products itself)
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
        return self._shared(("gemm", layer.name), lambda: _gemm_weight(weight)), bias

    def depthwise_weights(self, layer: ConvLayer, w_out: int, may_flatten: bool = True
                          ) -> tuple[np.ndarray, np.ndarray, bool]:
        """A depthwise layer's (weights, bias, flat) as DepthwiseBlock uses them: weights (k, k, C), or,
        `flat` (stride 1, small enough: TILE_BYTES), (k, k, W_out * C), each tap's repeated along the row."""
        weight, bias = self.folded(layer)
        taps = self._shared(("depthwise", layer.name),
                            lambda: np.ascontiguousarray(weight[:, 0].transpose(1, 2, 0)))   # (k, k, C)
        if may_flatten and _flattens(layer.stride, taps, w_out):
            return self._shared(("depthwise", layer.name, w_out), lambda: _along_row(taps, w_out)), bias, True
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
            self.add(MatMul(x, out, *self.gemm_weights(layer), layer.activation, residual, self.threads))
        elif layer.groups == 1 and residual is None:
            k = layer.kernel_size
            cols = self.value((n, h_out, w_out, k * k * c), storage="planar")
            self.add(Im2col(layer, x, cols, layer.padding(h, w), self.dtype.itemsize, self.threads))
            weight, bias = self.folded(layer)
            # rows of the weight matrix in the order of cols' columns: (i, j, c)
            matrix = self._shared(("im2col", layer.name), lambda: np.ascontiguousarray(
                weight.transpose(2, 3, 1, 0).reshape(k * k * c, layer.out_channels)))
            self.add(MatMul(cols, out, matrix, bias, layer.activation, None, self.threads))
        else:
            raise ValueError(f"fast path: {layer.name} ({layer.kind}, groups={layer.groups}"
                             f"{', + residual' if residual else ''}) is not supported")
        return out

    def pointwise(self, layer: ConvLayer | None) -> Pointwise | None:
        if layer is None:
            return None
        return Pointwise(*self.gemm_weights(layer), _activation(layer.activation, self.dtype))

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
                          and h_out < CHANNEL_SHARE_ROWS * self.threads)
        self.add(DepthwiseBlock(depthwise, x, out, *self.depthwise_weights(depthwise, w_out, not share_channels),
                                depthwise.padding(h, w), self.pointwise(expand), self.pointwise(project), residual,
                                self.threads, share_channels))
        return out

    def global_avg_pool(self, x: Value) -> Value:
        out = self.value((x.shape[0], 1, 1, x.shape[-1]))
        self.add(GlobalAveragePool(x, out))
        return out


def _mobilenet_v1_backbone(b: PlanBuilder, backbone, x: Value, hidden_states: bool) -> Value:
    x = b.conv(backbone.conv_stem, x)                     # (N, H/2, W/2, 32a)
    layers = backbone.layer                               # 26 layers, each one hidden state
    if hidden_states:                                     # every output is kept
        for layer in layers:
            x = b.conv(layer, x)
            b.hidden_state(x)
        return x
    # Otherwise each pointwise layer runs as the "expand" of the depthwise layer after it, as in a
    # MobileNetV2 block: its output rows go straight into that layer's line buffer, never stored whole.
    x = b.depthwise_block(layers[0], x)                   # (N, H/2, W/2, 32a)
    for pointwise, depthwise in zip(layers[1:-1:2], layers[2::2]):
        x = b.depthwise_block(depthwise, x, expand=pointwise)
    return b.conv(layers[-1], x)                          # (N, H/32, W/32, 1024a)


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
    projection_weight, projection_bias = b.gemm_weights(projection)              # (512, 256)
    branch_channels = conv_pool.out_channels                                     # concat order: [branch, aspp]
    image_bias = b.value((n, 1, 1, projection.out_channels))
    b.add(PooledProjectionBias(pooled, image_bias, *b.gemm_weights(conv_pool), conv_pool.activation,
                               projection_weight[:branch_channels], projection_bias))
    x = b.value((n, h, w, projection.out_channels))
    b.add(MatMul(aspp, x, projection_weight[branch_channels:], image_bias,
                 projection.activation, None, b.threads))                     # (N, h, w, 256)
    return b.conv(model.classifier, x)                                           # (N, h, w, num_labels)


def _nchw(array: np.ndarray) -> np.ndarray:
    """A new (N, C, H, W) array from an (N, H, W, C) one: a copy, since the arena will be reused.

    (np.ascontiguousarray would not do: with H = W = 1 the transposed view is already contiguous.)
    """
    return array.transpose(0, 3, 1, 2).copy()


def build_plan(model, input_shape: tuple[int, ...], dtype, hidden_states: bool = False) -> Plan:
    """The fast plan of `model` for pixel values of shape (N, C, H, W) computed in `dtype`.

    `hidden_states`: whether the plan keeps every hidden state (MobileNetV1's layers then run one
    step each, every output stored whole). The plan has set_num_threads walkers, BLAS on one thread;
    without threadpoolctl (BLAS's threads cannot be set) it has one walker and BLAS threads each
    matrix product itself.
    """
    threads = _num_threads if _blas_libraries() else 1
    return _build_plan(model, input_shape, dtype, hidden_states, threads)


def _build_plan(model, input_shape, dtype, hidden_states: bool, threads: int) -> Plan:
    from .deeplabv3 import MobileNetV2ForSemanticSegmentation
    from .mobilenet_v1 import MobileNetV1ForImageClassification, MobileNetV1Model
    from .mobilenet_v2 import MobileNetV2ForImageClassification, MobileNetV2Model

    b = PlanBuilder(model.params, dtype, threads)
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
    return Plan(b.steps, b.values, dtype, finish, threads)


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
