"""The fast inference engine: a network's layer descriptions, run as a plan of channels-last NumPy kernels.

The readable path (mobilenet_np/networks/) runs every layer the way the papers draw it: pad, convolve
in NCHW, BatchNorm, activation, each step a new array. This engine runs the very same layers faster,
with the same results up to float rounding (tests/test_fast.py checks it against the readable path
and against transformers). `model(x)` uses it unless a `record` callback is given, `fast=False` is
passed or `model.reference` is True.

1. BatchNorm is folded into the convolution once per set of weights (plan.fold_batch_norm):
       BN(conv(x, w) + b) = conv(x, w * scale) + (b * scale + shift)
   with scale = gamma / sqrt(var + eps) and shift = beta - mean * scale, read off ops.batch_norm.
2. Activations are channels-last (N, H, W, C). A pointwise (1x1) convolution is then one matrix
   product (N*H*W, C_in) @ (C_in, C_out) (kernels.MatMul), and a depthwise convolution one np.einsum
   over a strided view of its input, with no temporary arrays (depthwise.DepthwiseBlock).
3. An inverted residual block (expand -> depthwise -> project, + residual) runs as one step, a band
   of output rows at a time: the expanded rows a band needs go to a small per-walker line buffer
   that also holds the zero padding, the band is convolved and projected straight into the output
   rows. MobileNetV1 runs the same way, each pointwise layer as the "expand" of the depthwise layer
   after it (builder.build_plan reads this off the network's Graph).
4. Every activation lives in a preallocated arena, reused from layer to layer and from call to call
   (plan.allocate_slots); ufuncs write in place with out=, outputs are copied out at the end.
5. Threads: EngineSettings.threads walkers (threads.py) each walk all the steps, waiting only for the
   rows a band reads. During a call BLAS runs on one thread (its own worker threads would spin ~100 ms
   after each product and fight the walkers); its thread count is restored when the call returns.

Files: settings (the knobs), threads (walkers), plan (values, steps, arena, BatchNorm folding),
kernels and depthwise (the steps), builder (Graph -> plan). `PlanCache` below keeps a model's plans.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict

import numpy as np
from threadpoolctl import ThreadpoolController

from ..layers import Graph
from .builder import PlanBuilder, build_plan
from .plan import Plan, allocate_slots, batch_norm_affine, fold_batch_norm, tap_ranges
from .settings import EngineSettings, available_cores

__all__ = ["EngineSettings", "PlanCache", "Plan", "PlanBuilder", "build_plan", "batch_norm_affine",
           "fold_batch_norm", "tap_ranges", "allocate_slots", "available_cores", "blas_on_one_thread"]

_blas_controller: ThreadpoolController | None = None
_blas_lock = threading.Lock()
_blas_depth = 0                    # calls inside blas_on_one_thread (several threads may run models at once)
_blas_saved: list[tuple] = []      # (library controller, its thread count before the first of them)


@contextlib.contextmanager
def blas_on_one_thread():
    """BLAS on one thread for the duration of the block, then its previous thread count again.

    (threadpoolctl's controllers of the BLAS libraries NumPy loaded; nested and concurrent uses count
    in, so the count is restored when the last one leaves.)
    """
    global _blas_controller, _blas_depth
    with _blas_lock:
        if _blas_controller is None:
            _blas_controller = ThreadpoolController().select(user_api="blas")
        if _blas_depth == 0:
            _blas_saved[:] = [(lib, lib.num_threads) for lib in _blas_controller.lib_controllers]
            for lib, threads in _blas_saved:
                if threads != 1:
                    lib.set_num_threads(1)
        _blas_depth += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_depth -= 1
            if _blas_depth == 0:
                for lib, threads in _blas_saved:
                    if threads != 1:
                        lib.set_num_threads(threads)


class PlanCache:
    """A model's plans, one per (input shape, dtype, hidden states, settings, weights version).

    The plans hold BatchNorm-folded copies of the weights. The key has the version of the model's
    ParameterDict (bumped by every write through it, see networks/base.py), so changed weights give a
    new plan; at most settings.max_plans are kept, least recently used dropped first.
    """

    def __init__(self):
        self.plans: OrderedDict = OrderedDict()
        self.lock = threading.Lock()

    @staticmethod
    def dtype_of(params: dict[str, np.ndarray], pixel_values: np.ndarray) -> np.dtype:
        """The pixel values' and the float weights' dtypes promoted together (float32 or float64)."""
        return np.result_type(pixel_values.dtype, *[v.dtype for v in params.values() if v.dtype.kind == "f"])

    def get(self, graph: Graph, params, input_shape, dtype, hidden_states: bool, settings: EngineSettings) -> Plan:
        version = getattr(params, "version", None)
        weights = version if version is not None else tuple((k, id(v)) for k, v in params.items())
        key = (tuple(input_shape), np.dtype(dtype).str, hidden_states, settings, id(params), weights)
        with self.lock:
            plan = self.plans.pop(key, None)
        if plan is None:
            plan = build_plan(graph, params, input_shape, dtype, hidden_states, settings)
        with self.lock:
            self.plans[key] = plan                  # most recently used last
            while len(self.plans) > settings.max_plans:
                self.plans.popitem(last=False)
        return plan

    def run(self, graph: Graph, params, pixel_values: np.ndarray, output_hidden_states: bool,
            settings: EngineSettings) -> dict:
        """The engine's result dict (builder.build_plan) for checked (N, C, H, W) pixel values."""
        plan = self.get(graph, params, pixel_values.shape, self.dtype_of(params, pixel_values),
                        output_hidden_states, settings)
        with blas_on_one_thread():
            return plan.run(pixel_values, output_hidden_states)

    def __len__(self) -> int:
        return len(self.plans)

    def clear(self) -> None:
        """Drop the plans (folded weights and arenas)."""
        with self.lock:
            self.plans.clear()
