"""A plan: the steps (kernels) of one network for one input shape and dtype, on Values in an arena.

A Value is a planned activation (shape only); a Step reads and writes Values, whole or band by band;
`allocate_slots` packs the Values into reusable arena slots; `Plan.run` binds an arena and runs the
steps. Also here: the two pieces of arithmetic every kernel shares, BatchNorm folding and the taps of
a convolution that reach real (not padding) pixels.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Callable

import numpy as np

from .. import ops
from ..layers import ConvLayer
from .settings import EngineSettings
from .threads import run_walkers


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


def tap_slice(first_input: int, count: int, stride: int) -> slice:
    """The `count` input indices first_input, first_input + stride, ..."""
    return slice(first_input, first_input + (count - 1) * stride + 1, stride)


def nchw(array: np.ndarray) -> np.ndarray:
    """A new (N, C, H, W) array from an (N, H, W, C) one: a copy, since the arena will be reused.

    (np.ascontiguousarray would not do: with H = W = 1 the transposed view is already contiguous.)
    """
    return array.transpose(0, 3, 1, 2).copy()

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
    the rows `needs(band)` lists are written; the walkers share the bands (threads.Walkers). `views` maps each
    Value to its array (N, H, W, C) in the arena, and "scratch" to the walkers' scratch buffers;
    `context` holds the call's "hidden_states" (a list, or None when not asked for).
    """

    reads: tuple[Value, ...] = ()
    writes: tuple[Value, ...] = ()
    scratch_values: int = 0         # per-walker scratch this step needs (in values of the plan's dtype)
    bands: list[tuple[int, int]] = []       # output rows of each band ([]: the step runs whole)
    segments: list[tuple[int, int]] = []    # the bands cut into one range per pair of walkers (threads.walker_segments)
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
    step that reads its value (lag 1 with several walkers, which may be a step apart: see threads.Walkers), so
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

    def __init__(self, steps: list[Step], values: list[Value], dtype, finish: Callable,
                 settings: EngineSettings = EngineSettings(threads=1)):
        self.steps, self.dtype, self.finish, self.settings = steps, np.dtype(dtype), finish, settings
        self.threads = threads = settings.threads
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

    def run(self, pixel_values: np.ndarray, output_hidden_states: bool, run_steps: Callable = run_walkers):
        """The plan's result (see `finish`) for (N, C, H, W) pixel values. `run_steps(plan, views, context)`
        runs the steps: the walkers by default, anything that runs them all (tests) otherwise."""
        with self._lock:
            views = self._free_arenas.pop() if self._free_arenas else None
        if views is None:
            views = self._new_arena()
        pixels = pixel_values.astype(self.dtype, copy=False).transpose(0, 2, 3, 1)   # (N, H, W, C) view
        views.update({v: pixels for v in self.inputs})
        context = {"hidden_states": [] if output_hidden_states else None}
        try:
            run_steps(self, views, context)
            return self.finish(views, context)
        finally:
            for v in self.inputs:
                views.pop(v)
            with self._lock:
                self._free_arenas.append(views)
