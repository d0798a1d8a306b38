"""The fast engine's tuning knobs, as one explicit value: `model.engine = EngineSettings(threads=1)`.

Every number here was measured on the project's 2-core machine (docs/speed.md); the plan builder
reads them from the settings it is given, never from module globals, so tests and benchmarks pass
their own (e.g. bands of one row, to exercise the walkers' bookkeeping on tiny inputs).
"""

from __future__ import annotations

import dataclasses
import os

from ..errors import ConfigError


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), at most 8 walkers' worth."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(cores, 8)


@dataclasses.dataclass(frozen=True)
class EngineSettings:
    # Walker threads of one call (each walks every step, see threads.py); BLAS runs on one thread
    # during a call and gets its old thread count back after it.
    threads: int = dataclasses.field(default_factory=available_cores)
    # A band of a DepthwiseBlock (its depthwise output) or of a lone 1x1 layer (its matrix product's
    # output) is at most about this many bytes, a core's L2 cache here, so that it and its inputs stay
    # in cache. Bigger bands mean fewer NumPy calls, and with two walkers each call can cost a hand-over
    # of the GIL: on 2 cores, 2 MB bands ran MobileNetV1 12% faster than 256 KB ones ...
    band_bytes: int = 2 * 1024 * 1024
    gemm_band_bytes: int = 2 * 1024 * 1024
    # ... but a DepthwiseBlock band has at least this many pixels, so that its matrix products are not
    # too small for BLAS to run efficiently.
    band_min_pixels: int = 256
    # Stride-1 depthwise weights are repeated along the output row (one (W_out * C) vector per tap) when
    # that takes at most this many bytes: einsum then runs along (x, c) flattened, whole rows at a time,
    # instead of C values at a time (3x faster with C = 32; with large C the per-channel form is as fast).
    tile_bytes: int = 1024 * 1024
    # With several walkers, a block on a map of fewer than this many rows per walker is shared out by
    # channels rather than by rows, when it can be: splitting 14 rows in two, each half would also
    # expand the row next to it (14% more work) with half as many rows per product.
    channel_share_rows: int = 8
    # A walker that must wait polls this long before it sleeps on a lock (a sleeping thread takes
    # 50-70 us to wake up on this VM).
    spin_seconds: float = 300e-6
    # Plans kept per model (one per input shape, dtype and hidden-states choice), least recently used
    # dropped first.
    max_plans: int = 2

    def __post_init__(self):
        for name in ("threads", "band_bytes", "gemm_band_bytes", "band_min_pixels", "max_plans"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"EngineSettings field {name!r} must be an int >= 1, got {value!r}")
        for name in ("tile_bytes", "channel_share_rows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"EngineSettings field {name!r} must be an int >= 0, got {value!r}")
        if not isinstance(self.spin_seconds, (int, float)) or self.spin_seconds < 0:
            raise ConfigError(f"EngineSettings field 'spin_seconds' must be a number >= 0, got {self.spin_seconds!r}")
