"""The fast engine (mobilenet_np/fast/) against the readable path and against transformers.

The fast path computes the same function in another order (BatchNorm folded into the weights,
channels-last, bands on threads), so results agree up to float rounding. Errors are measured as in
test_networks.py, relative to the scale of the reference tensor: max |fast - reference| / max |reference|.

Tolerances:
  * float32: 1e-4 (measured up to ~1.5e-5 against transformers and against the readable path);
  * float64: 1e-10 (measured up to ~2e-14): the folded weights are computed in float64 and rounded once.

The kernels are checked one layer at a time over every geometry a ConvLayer can have (kernel,
stride, dilation, both paddings, sizes down to 1 pixel), with the band and thread settings shrunk so
that tiny inputs are cut into many bands on several threads; the networks are checked end to end on
random configs. No test here measures time (benchmarks/bench.py does).
"""

from __future__ import annotations

import random
import threading

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings, strategies as st

import mobilenet_np
from threadpoolctl import threadpool_info, threadpool_limits

from mobilenet_np import fast, ops
from mobilenet_np.errors import ConfigError
from mobilenet_np.fast import EngineSettings
from mobilenet_np.fast.depthwise import DepthwiseBlock
from mobilenet_np.fast.kernels import clip, einsum
from mobilenet_np.fast.plan import Value, nchw
from mobilenet_np.fast.threads import Walkers
from mobilenet_np.layers import ConvLayer
from mobilenet_np.networks.base import random_parameters

from torch_reference import numpy_twin, random_transformers_model, torch_outputs

FLOAT32_RTOL = 1e-4
FLOAT64_RTOL = 1e-10


def relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    assert ours.shape == reference.shape, f"shape {ours.shape} != reference {reference.shape}"
    assert ours.dtype == reference.dtype, f"dtype {ours.dtype} != reference {reference.dtype}"
    scale = float(np.max(np.abs(reference)))
    return float(np.max(np.abs(ours - reference))) / max(scale, 1e-30)


def assert_outputs_close(ours, reference, rtol: float, what: str) -> None:
    """Every field of two output objects (hidden states included) within rtol; reference may be torch's."""
    assert list(ours.keys()) == list(reference.keys()), what
    for name in ours.keys():
        pairs = zip(ours[name], reference[name]) if name == "hidden_states" else [(ours[name], reference[name])]
        for i, (a, b) in enumerate(pairs):
            b = b.numpy() if isinstance(b, torch.Tensor) else b
            error = relative_error(a, b)
            assert error <= rtol, f"{what}: {name}[{i}] relative error {error:.3g} > {rtol:g}"


def tiny_bands(rows: int = 1, threads: int = 3, tile: bool = True) -> EngineSettings:
    """Settings that cut even tiny layers into bands of `rows` rows on `threads` walkers, so every
    splitting path runs (`tile`: whether stride-1 depthwise weights may be repeated along the row)."""
    return EngineSettings(threads=threads, band_bytes=1, gemm_band_bytes=64,    # one row, a few pixels per GEMM band
                          band_min_pixels=rows,                                  # ... or `rows` rows of 1-pixel images
                          tile_bytes=1 << 30 if tile else 0)


def walks_meeting_at(meeting: float):
    """A deterministic scheduler (Plan.run's run_steps): step by step, in each segment of bands, walker 2k
    goes down from the first band and walker 2k + 1 up from the last, meeting at `meeting` (0..1) of the way."""
    def run_steps(plan, views, context):
        for step in plan.steps:
            if not step.bands:
                step.run(views, context)
            for k, (a, b) in enumerate(step.segments):
                middle = a + round(meeting * (b - a)) if 2 * k + 1 < plan.threads else b
                for band in range(a, middle):
                    step.run_band(views, 2 * k, band, True)
                for band in reversed(range(middle, b)):
                    step.run_band(views, 2 * k + 1, band, False)
    return run_steps


# --------------------------------------------------------------------------------------------------
# the pieces
# --------------------------------------------------------------------------------------------------

@given(in_size=st.integers(1, 20), kernel=st.integers(1, 5), stride=st.integers(1, 3), dilation=st.integers(1, 3),
       pad_before=st.integers(0, 6), pad_after=st.integers(0, 6))
def test_tap_ranges_list_exactly_the_outputs_that_read_real_pixels(in_size, kernel, stride, dilation, pad_before,
                                                                   pad_after):
    out_size = ops.conv_output_size(in_size, kernel, stride, pad_before + pad_after, dilation)
    assume(out_size >= 1)
    for k, (first, stop, first_input) in enumerate(fast.tap_ranges(in_size, out_size, kernel, stride, dilation,
                                                                    pad_before)):
        inside = [o for o in range(out_size) if 0 <= o * stride + k * dilation - pad_before < in_size]
        assert list(range(first, stop)) == inside
        if inside:
            assert first_input == inside[0] * stride + k * dilation - pad_before


@given(lifetimes=st.lists(st.tuples(st.integers(1, 100), st.integers(0, 4)), min_size=1, max_size=30))
def test_allocate_slots_never_shares_a_slot_between_live_values(lifetimes):
    """Value i is written by step i and read until step i + extra; sizes are random."""
    values = [Value((size,), written=i, last_read=i + extra) for i, (size, extra) in enumerate(lifetimes)]
    sizes = fast.allocate_slots(values)
    for a in values:
        assert sizes[a.slot] >= a.size
        for b in values:
            if a is not b and a.slot == b.slot:
                assert a.last_read < b.written or b.last_read < a.written, (a, b)
    assert sum(sizes) <= sum(v.size for v in values)


def test_c_entry_points_compute_exactly_what_np_clip_and_np_einsum_do():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 7, 3)).astype(np.float32) * 8
    ours, public = np.empty_like(x), np.empty_like(x)
    clip(x, np.float32(0), np.float32(6), out=ours)
    np.clip(x, np.float32(0), np.float32(6), out=public)
    np.testing.assert_array_equal(ours, public)
    windows, weights = rng.standard_normal((2, 4, 21, 3, 3)), rng.standard_normal((3, 3, 21))
    np.testing.assert_array_equal(einsum("nyfij,ijf->nyf", windows, weights),
                                  np.einsum("nyfij,ijf->nyf", windows, weights))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_folded_batch_norm_equals_conv_then_batch_norm(dtype):
    layer = ConvLayer("layer", 6, 5, 3, stride=2, bias=True, norm_eps=1e-3, activation=None, tf_padding=True)
    params = {k: v.astype(dtype) for k, v in random_parameters(layer.parameter_shapes(), seed=1).items()}
    x = np.random.default_rng(0).standard_normal((2, 6, 9, 8)).astype(dtype)
    weight, bias = fast.fold_batch_norm(layer, params, dtype)
    assert weight.dtype == bias.dtype == dtype
    folded = ops.conv2d(ops.pad_tf_same(x, 3, 2), weight, bias, stride=2)
    error = relative_error(folded, layer(x, params))
    assert error <= (FLOAT32_RTOL if dtype == np.float32 else FLOAT64_RTOL), error


layer_geometries = st.fixed_dictionaries({
    "kernel_size": st.integers(1, 5), "stride": st.integers(1, 3), "dilation": st.integers(1, 3),
    "depthwise": st.booleans(), "tf_padding": st.booleans(), "bias": st.booleans(),
    "batch_norm": st.booleans(), "activation": st.sampled_from([None, "relu", "relu6"]),
})


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(geometry=layer_geometries, batch=st.integers(1, 3), channels=st.integers(1, 12), height=st.integers(1, 11),
       width=st.integers(1, 11), float64=st.booleans(), pool=st.booleans(), tile=st.booleans(),
       seed=st.integers(0, 2**16))
def test_each_kernel_equals_the_readable_conv_layer(geometry, batch, channels, height, width, float64,
                                                    pool, tile, seed):
    """One ConvLayer through PlanBuilder.conv (Depthwise, MatMul or Im2col + MatMul) vs ConvLayer.__call__."""
    g = dict(geometry)
    depthwise = g.pop("depthwise")
    assume(not (depthwise and channels == 1))                 # that is a plain convolution, drawn anyway
    layer = ConvLayer("layer", channels, channels if depthwise else 7, g.pop("kernel_size"),
                      groups=channels if depthwise else 1,
                      norm_eps=1e-3 if g.pop("batch_norm") else None, **g)
    assume(min(layer.output_size(height, width)) >= 1)
    dtype = np.float64 if float64 else np.float32
    params = {k: v.astype(dtype) for k, v in random_parameters(layer.parameter_shapes(), seed).items()}
    x = np.random.default_rng(seed).standard_normal((batch, channels, height, width)).astype(dtype)

    settings = tiny_bands(threads=3 if pool else 1, tile=tile)
    builder = fast.PlanBuilder(params, dtype, settings)
    out = builder.conv(layer, builder.input(x.shape))
    plan = fast.Plan(builder.steps, builder.values, dtype, lambda views, context: nchw(views[out]), settings)
    ours = plan.run(x, output_hidden_states=False)
    error = relative_error(ours, layer(x, params))
    assert error <= (FLOAT64_RTOL if float64 else FLOAT32_RTOL), f"{layer}: relative error {error:.3g}"


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kernel_size=st.integers(1, 5), stride=st.integers(1, 3), dilation=st.integers(1, 4), tf_padding=st.booleans(),
       with_expand=st.booleans(), with_project=st.booleans(), residual=st.booleans(), batch=st.integers(1, 2),
       channels=st.integers(2, 6), expanded=st.integers(2, 9), height=st.integers(1, 14), width=st.integers(1, 9),
       rows=st.integers(1, 4), threads=st.integers(1, 3), meeting=st.none() | st.floats(0, 1),
       float64=st.booleans(), seed=st.integers(0, 2**16))
def test_depthwise_block_equals_its_layers_one_after_the_other(kernel_size, stride, dilation, tf_padding,
                                                              with_expand, with_project, residual, batch, channels,
                                                              expanded, height, width, rows, threads, meeting,
                                                              float64, seed):
    """[expand ->] depthwise [-> project] [+ x], band by band with a line buffer, vs the readable layers.

    The bands are handed out by the real scheduler (meeting=None), or deterministically so that both
    walking directions of the line buffer run whatever the timing of the threads."""
    dw_channels = expanded if with_expand else channels
    expand = ConvLayer("expand", channels, dw_channels, 1, activation="relu6") if with_expand else None
    depthwise = ConvLayer("depthwise", dw_channels, dw_channels, kernel_size, stride, dilation, groups=dw_channels,
                          tf_padding=tf_padding, activation="relu6")
    project = ConvLayer("project", dw_channels, channels, 1, activation=None) if with_project else None
    assume(min(depthwise.output_size(height, width)) >= 1)
    residual = residual and with_project and depthwise.output_size(height, width) == (height, width)
    layers = [layer for layer in (expand, depthwise, project) if layer is not None]
    dtype = np.float64 if float64 else np.float32
    shapes = {k: v for layer in layers for k, v in layer.parameter_shapes().items()}
    params = {k: v.astype(dtype) for k, v in random_parameters(shapes, seed).items()}
    x = np.random.default_rng(seed).standard_normal((batch, channels, height, width)).astype(dtype)

    expected = x
    for layer in layers:
        expected = layer(expected, params)
    if residual:
        expected = expected + x
    settings = tiny_bands(rows, threads)
    builder = fast.PlanBuilder(params, dtype, settings)
    out = builder.depthwise_block(depthwise, builder.input(x.shape), expand, project, residual)
    assert [type(step) for step in builder.steps] == [DepthwiseBlock]
    plan = fast.Plan(builder.steps, builder.values, dtype, lambda views, context: nchw(views[out]), settings)
    if meeting is None:
        ours = plan.run(x, output_hidden_states=False)
    else:
        ours = plan.run(x, output_hidden_states=False, run_steps=walks_meeting_at(meeting))
    error = relative_error(ours, expected)
    assert error <= (FLOAT64_RTOL if float64 else FLOAT32_RTOL), f"relative error {error:.3g}"


# --------------------------------------------------------------------------------------------------
# the networks
# --------------------------------------------------------------------------------------------------

@st.composite
def network_cases(draw):
    """(architecture, transformers config kwargs, input shape, dtype) over the config space."""
    architecture = draw(st.sampled_from(["MobileNetV1Model", "MobileNetV1ForImageClassification", "MobileNetV2Model",
                                         "MobileNetV2ForImageClassification", "MobileNetV2ForSemanticSegmentation"]))
    config = {"depth_multiplier": draw(st.sampled_from([0.25, 0.35, 0.5, 0.75])),
              "tf_padding": draw(st.booleans()), "hidden_act": draw(st.sampled_from(["relu6", "relu"]))}
    if architecture.startswith("MobileNetV2"):
        config["output_stride"] = draw(st.sampled_from([8, 16, 32] if "Segmentation" not in architecture else [8, 16]))
        config["first_layer_is_expansion"] = draw(st.booleans())
    if architecture.endswith(("Classification", "Segmentation")):
        config["num_labels"] = draw(st.integers(0 if "Classification" in architecture else 1, 12))
    shape = (draw(st.integers(1, 3)), 3, draw(st.integers(1, 70)), draw(st.integers(1, 70)))
    return architecture, config, shape, draw(st.sampled_from([np.float32, np.float64]))


@settings(max_examples=60)
@given(case=network_cases(), small_bands=st.booleans(), seed=st.integers(0, 2**16))
def test_fast_path_equals_readable_path_and_transformers(case, small_bands, seed):
    """The default call (the fast path), with its usual bands or with bands of one row on 3 threads."""
    architecture, config, shape, dtype = case
    torch_model = random_transformers_model(architecture, seed, **config)
    model = numpy_twin(torch_model, architecture)
    if dtype == np.float64:
        model, torch_model = model.astype(np.float64), torch_model.double()
    x = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    rtol = FLOAT64_RTOL if dtype == np.float64 else FLOAT32_RTOL

    if small_bands:
        model.engine = tiny_bands()
    ours = model(x, output_hidden_states=True)                      # the default call: the fast path
    without_hidden_states = model(x)                                # (MobileNetV1 fuses more without them)
    for name in without_hidden_states.keys():
        assert relative_error(without_hidden_states[name], ours[name]) <= rtol, name
    assert_outputs_close(ours, model(x, output_hidden_states=True, fast=False), rtol, f"{architecture} vs readable")
    assert_outputs_close(ours, torch_outputs(torch_model, x), rtol, f"{architecture} vs transformers")


@pytest.mark.parametrize("architecture, config, size", [
    ("MobileNetV1ForImageClassification", dict(num_labels=1001), 224),
    ("MobileNetV2ForImageClassification", dict(num_labels=1001), 224),
    ("MobileNetV2ForSemanticSegmentation", dict(num_labels=21, output_stride=8), 257),
])
def test_published_sizes_match_transformers(architecture, config, size):
    """The benchmarked networks at full width (DeepLab at 257 rather than 513, to keep the suite quick)."""
    torch_model = random_transformers_model(architecture, 0, **config)
    model = numpy_twin(torch_model)
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    assert_outputs_close(model(x, output_hidden_states=True), torch_outputs(torch_model, x), FLOAT32_RTOL, architecture)


def random_interleaving(seed: int):
    """A scheduler for Plan.run: the walkers' generators (Walkers.steps_of) driven on this thread,
    each time one walker, chosen at random among those whose condition holds, running until it has
    to wait; the arena filled with NaN first. A band that reads rows its `needs` did not declare, or
    a slot reused while a walker a step behind still reads it, then reads NaN or stale values, unless
    the order happens to save it; over many random orders, it does not."""
    def run_steps(plan, views, context):
        for array in [views[v] for v in plan.values] + views["scratch"]:
            array[...] = np.nan
        call, choose = Walkers(plan, views, context), random.Random(seed)
        walkers = {w: call.steps_of(w) for w in range(plan.threads)}
        conditions = {w: (lambda: True) for w in walkers}          # (not started yet)
        while walkers:
            runnable = [w for w in walkers if conditions[w]()]
            assert runnable, "deadlock: no walker can go on"
            w = choose.choice(runnable)
            try:
                conditions[w] = next(walkers[w])                    # runs until it has to wait
            except StopIteration:
                del walkers[w]
        assert call.finished == len(plan.steps)
    return run_steps


@settings(max_examples=60, deadline=None)
@given(architecture=st.sampled_from(["MobileNetV1ForImageClassification", "MobileNetV2ForImageClassification",
                                     "MobileNetV2ForSemanticSegmentation"]),
       hidden_states=st.booleans(), threads=st.integers(2, 4),
       shape=st.tuples(st.integers(1, 2), st.just(3), st.integers(9, 40), st.integers(9, 40)),
       seed=st.integers(0, 2**16))
def test_walkers_read_only_rows_already_written(architecture, hidden_states, threads, shape, seed):
    """Every step's `needs` and the arena's slot lifetimes, over random interleavings of the walkers."""
    model = small_model(architecture)
    x = pixels(seed, shape)
    expected = model(x, output_hidden_states=hidden_states, fast=False)
    plan = fast.build_plan(model.graph(), model.params, x.shape, np.float32, hidden_states,
                           tiny_bands(rows=1, threads=threads))
    result = plan.run(x, output_hidden_states=hidden_states, run_steps=random_interleaving(seed))
    assert_outputs_close(model.outputs_from(result, hidden_states), expected, FLOAT32_RTOL, architecture)


def test_an_error_in_a_walker_reaches_the_caller_and_leaves_the_plan_usable():
    model = small_model("MobileNetV1ForImageClassification")
    x = pixels()
    expected = model(x, fast=False).logits
    plan = fast.build_plan(model.graph(), model.params, x.shape, np.float32, settings=tiny_bands(rows=1, threads=2))
    step = next(step for step in plan.steps[3:] if step.bands)
    run_band = step.run_band

    def failing(views, walker, band, downward):
        raise ArithmeticError(f"band {band} failed on walker {walker}")
    step.run_band = failing
    with pytest.raises(ArithmeticError, match="failed on walker"):
        plan.run(x, output_hidden_states=False)
    step.run_band = run_band
    assert relative_error(plan.run(x, output_hidden_states=False)["logits"], expected) <= FLOAT32_RTOL


# --------------------------------------------------------------------------------------------------
# how the fast path is chosen, cached and shared
# --------------------------------------------------------------------------------------------------

def small_model(architecture="MobileNetV2ForImageClassification"):
    cls = getattr(mobilenet_np, architecture)
    return cls(cls.config_class(depth_multiplier=0.25, num_labels=5), seed=3)


def pixels(seed=0, shape=(2, 3, 33, 29)):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_readable_path_is_taken_when_asked_or_recording():
    model = small_model()
    readable = [model(pixels(), fast=False).logits, model(pixels(), record=lambda name, tensor: None).logits]
    model.reference = True
    readable.append(model(pixels()).logits)
    assert len(model.plans) == 0                                   # no plan was built: the fast path never ran
    fast_logits = model(pixels(), fast=True).logits
    assert len(model.plans) == 1
    for logits in readable:
        np.testing.assert_array_equal(logits, readable[0])
        assert relative_error(fast_logits, logits) <= FLOAT32_RTOL


def test_outputs_are_fresh_arrays_and_the_arena_is_reused():
    model = small_model("MobileNetV2Model")
    first = model(pixels(0), output_hidden_states=True)
    kept = [first.last_hidden_state.copy()] + [h.copy() for h in first.hidden_states]
    model(pixels(1), output_hidden_states=True)                    # same shape: same plan, same arena
    assert len(model.plans) == 1
    for before, after in zip(kept, [first.last_hidden_state, *first.hidden_states]):
        np.testing.assert_array_equal(before, after)


def test_weights_stay_writeable_and_every_change_through_the_model_is_noticed():
    model = small_model()
    model(pixels())
    key = "mobilenet_v2.layer.2.conv_3x3.normalization.running_var"

    def agrees():
        return relative_error(model(pixels()).logits, model(pixels(), fast=False).logits) <= FLOAT32_RTOL

    before = model(pixels()).logits
    model.params[key][0] = 5.0                                     # in place: writeable ...
    model.params.mark_changed()                                    # ... and announced (optimizers do this)
    assert agrees() and not np.array_equal(model(pixels()).logits, before)
    model.params[key] = model.params[key] * 3.0                    # a new array: noticed
    assert agrees()
    mine = small_model().state_dict() | {key: np.full_like(model.params[key], 0.5)}
    model.load_state_dict(mine)
    assert agrees()
    assert all(array.flags.writeable for array in mine.values())   # the caller's arrays are still theirs
    mine[key][...] = 7.0
    assert not np.any(model.params[key] == 7.0)                    # the model holds its own copies


def test_blas_threads_are_restored_after_a_call():
    model = small_model()
    with threadpool_limits(limits=2, user_api="blas"):
        before = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
        model(pixels())
        after = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    assert after == before and before


def test_input_dtype_and_weight_dtype_promote_as_in_the_readable_path():
    model = small_model()
    assert model(pixels()).logits.dtype == np.float32
    assert model(pixels().astype(np.float64)).logits.dtype == np.float64          # float64 pixels
    model64 = model.astype(np.float64)
    ours, readable = model64(pixels()).logits, model64(pixels(), fast=False).logits   # float64 weights
    assert ours.dtype == readable.dtype == np.float64
    assert relative_error(ours, readable) <= FLOAT64_RTOL


def test_thread_counts_give_the_same_result():
    model = small_model("MobileNetV2ForSemanticSegmentation")
    x = pixels(shape=(2, 3, 65, 47))
    reference = model(x, fast=False).logits
    for n in (1, 2, 3):
        model.engine = EngineSettings(threads=n)
        assert relative_error(model(x).logits, reference) <= FLOAT32_RTOL, n
        assert len(model.plans) <= model.engine.max_plans
    with pytest.raises(ConfigError, match="threads"):
        EngineSettings(threads=0)


def test_concurrent_calls_on_one_model_each_get_their_own_arena():
    model = small_model()
    inputs = [pixels(seed) for seed in range(4)]
    expected = [model(x, fast=False).logits for x in inputs]
    results: dict[int, np.ndarray] = {}

    def run(i):
        for _ in range(3):
            results[i] = model(inputs[i]).logits

    workers = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for i in range(4):
        assert relative_error(results[i], expected[i]) <= FLOAT32_RTOL, i
