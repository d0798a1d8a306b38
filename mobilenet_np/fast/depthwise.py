"""MobileNet's inverted residual block as one fast kernel: [1x1 expand] -> depthwise -> [1x1 project]
[+ residual], one band of output rows at a time through a per-walker line buffer.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..layers import ConvLayer
from .kernels import Pointwise, activation_function, along_row, einsum, flattens
from .plan import Step, Value
from .settings import EngineSettings
from .threads import row_bands, split_range, walker_segments


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
                 project: Pointwise | None = None, residual: bool = False, settings: EngineSettings = EngineSettings(threads=1),
                 share_channels: bool = False):
        """weight: (k, k, C), or with `flat` (k, k, W_out * C) (see PlanBuilder.depthwise_weights).

        share_channels (with an expand layer, without a project layer, not flat): one band per walker,
        each the whole map for a share of the depthwise channels: its expand columns, depthwise weights
        and output channels.
        """
        threads = settings.threads
        self.x, self.out, self.bias, self.expand, self.project, self.residual = x, out, bias, expand, project, residual
        self.reads, self.writes = (x,), (out,)
        self.activation = activation_function(layer.activation, weight.dtype)
        n, h, w, _ = x.shape
        _, h_out, w_out, _ = out.shape
        c = layer.in_channels                                                    # the depthwise channels
        self.k, self.s, self.d = layer.kernel_size, layer.stride, layer.dilation
        top, bottom, self.left, right = padding
        self.top, self.height, self.width, self.w_out = top, h, w, w_out
        self.weight, self.flat = weight, flat

        rows_per_band = max(1, settings.band_bytes // (n * w_out * c * weight.itemsize), -(-settings.band_min_pixels // (n * w_out)))
        if threads > 1:
            rows_per_band = min(rows_per_band, -(-h_out // threads))  # a band for every walker
        self.bands, self.channels = row_bands(h_out, rows_per_band), None
        if share_channels:
            self.shares_channels, self.channels, rows_per_band = True, split_range(c, threads), h_out
            self.bands = [(0, h_out)] * len(self.channels)
            c = max(b - a for a, b in self.channels)            # the line buffer's channels
            # each share's depthwise weights: (k, k, C_share), or flat (repeated along the row)
            self.flat = flattens(self.s, weight, w_out, settings)
            share_taps = [np.ascontiguousarray(weight[:, :, a:b]) for a, b in self.channels]
            self.shares = [(np.ascontiguousarray(expand.weight[:, a:b]), expand.bias[a:b],
                            along_row(taps, w_out) if self.flat else taps, bias[a:b])
                           for (a, b), taps in zip(self.channels, share_taps)]
        self.segments = walker_segments(len(self.bands), threads)
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
        einsum(subscripts, self._windows(buffer, y0 * self.s - band.origin, y1 - y0), weight, out=target)
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
