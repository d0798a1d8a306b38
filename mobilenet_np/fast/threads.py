"""The fast engine's threads: "walkers" that each run through every step of a plan, sharing its bands.

NumPy releases the GIL inside ufuncs, einsum and matrix products, so two Python threads can keep two
cores busy. Every walker runs through all the steps (`Walkers`): walker 2k takes the bands of
segment k of each step from the top down, walker 2k + 1 from the bottom up (`_Fronts`), and a band
waits only until the rows it reads are written. The threads thus meet only where their rows touch,
instead of at a barrier after every layer (each barrier costs a wake-up of a sleeping thread:
50-250 us on a virtual machine). `run_walkers(plan, views, context)` is the scheduler the plans use;
tests pass their own (e.g. the walkers' generators driven in a random interleaving on one thread).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    """A process-wide pool of at least `workers` threads for walkers 1, 2, ... (walker 0 is the caller's)."""
    with _pools_lock:
        for size, pool in _pools.items():
            if size >= workers:
                return pool
        pool = _pools[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mobilenet_np")
        return pool


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


class Walkers:
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
        deadline = time.perf_counter() + self.plan.settings.spin_seconds
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
        """Walker 0 here, walkers 1 .. walkers-1 on the shared pool; returns when every step is done."""
        if walkers > 1:
            pool = _pool(walkers - 1)
            for walker in range(1, walkers):
                pool.submit(self.walk, walker)
        self.walk(0)
        self._wait(lambda: self.finished == len(self.left) or self.error is not None)
        with self.changed:
            while self.error is not None and self.walking > 0:    # the arena is free once they are out
                self.changed.wait()
        if self.error is not None:
            raise self.error


def split_range(length: int, parts: int) -> list[tuple[int, int]]:
    """[0, length) cut into `parts` near-equal consecutive (start, stop) ranges, none empty."""
    parts = max(1, min(parts, length))
    edges = [length * p // parts for p in range(parts + 1)]
    return list(zip(edges[:-1], edges[1:]))


def row_bands(stop: int, rows_per_band: int) -> list[tuple[int, int]]:
    """[0, stop) cut into bands of rows_per_band rows (the last one shorter)."""
    return [(r, min(r + rows_per_band, stop)) for r in range(0, stop, rows_per_band)]


def walker_segments(bands: int, threads: int) -> list[tuple[int, int]]:
    """The bands of a step cut into one segment per pair of walkers."""
    return split_range(bands, -(-threads // 2)) if bands else []


def run_walkers(plan, views: dict, context: dict) -> None:
    """The default scheduler: every step of the plan on plan.threads walkers (one: in order, here)."""
    Walkers(plan, views, context).run(plan.threads)
