"""Time mobilenet_np's fast path against transformers' PyTorch eager model (and ONNX Runtime), same weights.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench.py            # the full run
    python benchmarks/bench.py --quick --networks mobilenet_v2_224 --batches 1        # a quick look

(Some machines set OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, which select a slower OpenBLAS kernel for a
current NumPy: unset both for this command only. The kernel OpenBLAS picked is printed and saved.)

What it does, in one process:
  * builds each network in transformers with random weights (He-normal convolutions, random BatchNorm
    statistics, as the tests do) and copies the weights into mobilenet_np; ONNX Runtime gets the same
    model through torch.onnx.export (when onnxruntime is installed);
  * gives every engine the same number of threads (--threads, default 2): torch.set_num_threads,
    model.engine = EngineSettings(threads=...) (mobilenet_np's walkers; BLAS on one thread each), ORT
    intra_op_num_threads;
  * times the engines interleaved (A B C, B C A, C A B, ... so each follows each other equally
    often), with a short pause between runs so that spinning worker threads of the previous engine
    have gone to sleep; reports the median and the quartiles of each;
  * measures the peak memory of each engine in its own fresh subprocess (see `memory_child`): the
    peak resident set size during the first inferences minus the resident set size just before
    them, after a warm-up on a small image (which loads the libraries' code), so it counts what
    inference allocates: activations, workspaces, caches, and for mobilenet_np its folded weights
    and arena; the weights of the model and the input are in the baseline for every engine.

It prints a table and writes benchmarks/results/<machine>.json. The machine's other load is printed
(os.getloadavg) before and after, since shared machines are noisy.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mobilenet_np  # noqa: E402
from mobilenet_np.fast import EngineSettings  # noqa: E402
from mobilenet_np.fileio import atomic_output  # noqa: E402
from mobilenet_np.summary import summarize  # noqa: E402

# name -> (architecture, config, image size); the published google/* checkpoints' configs at depth 1.0
NETWORKS = {
    "mobilenet_v1_224": ("MobileNetV1ForImageClassification", dict(num_labels=1001), 224),
    "mobilenet_v2_224": ("MobileNetV2ForImageClassification", dict(num_labels=1001), 224),
    "deeplabv3_513": ("MobileNetV2ForSemanticSegmentation", dict(num_labels=21, output_stride=8), 513),
}
ENGINES = ("mobilenet_np", "torch", "onnxruntime")
PEAK_GFLOPS = 300.0            # this machine's float32 peak (2 cores), for the arithmetic bound
PAUSE_SECONDS = float(os.environ.get("BENCH_PAUSE", "0.005"))  # before each timed run, see time_interleaved
WARMUP_SIZE = 64               # memory children warm up on a (1, 3, 64, 64) image first


# --------------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------------

def torch_model(architecture: str, config: dict, seed: int = 0):
    """A transformers model in eval mode with He-normal conv weights and random BatchNorm statistics.

    (PyTorch's default init would leave BatchNorm at mean 0, var 1 and shrink activations towards
    denormal numbers deep in the network, which are slow on every engine and would make a poor benchmark.)
    """
    import torch
    import transformers
    cls = getattr(transformers, architecture)
    torch.manual_seed(seed)
    model = cls(cls.config_class(**config)).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.normal_(0.0, (2.0 / m.weight[0].numel()) ** 0.5, generator=g)
            elif isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return model


def numpy_twin(model, architecture: str):
    """The mobilenet_np model with the transformers model's config and weights."""
    cls = getattr(mobilenet_np, architecture)
    twin = cls(cls.config_class.from_dict(model.config.to_dict()), seed=None)
    twin.load_state_dict({k: v.detach().numpy().copy() for k, v in model.state_dict().items()})
    return twin


def numpy_model(architecture: str, config: dict, threads: int):
    """A mobilenet_np model with its own random weights (memory children: no torch in the process),
    its fast engine on `threads` walkers."""
    cls = getattr(mobilenet_np, architecture)
    model = cls(cls.config_class(**config), seed=0)
    model.engine = EngineSettings(threads=threads)
    return model


def export_onnx(model, shape: tuple[int, ...], path: Path) -> Path:
    import torch
    with torch.no_grad():
        torch.onnx.export(model, (torch.zeros(shape),), str(path), input_names=["pixel_values"],
                          output_names=["logits"], opset_version=17, dynamo=False)
    return path


def onnx_session(path: Path, threads: int):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def engine_runner(engine: str, model, x: np.ndarray):
    """A zero-argument function running one inference of `engine` on x (the output is discarded)."""
    if engine == "mobilenet_np":
        return lambda: model(x)
    if engine == "torch":
        import torch
        xt = torch.from_numpy(x)

        def run():
            with torch.inference_mode():
                model(xt)
        return run
    if engine == "onnxruntime":
        return lambda: model.run(None, {"pixel_values": x})
    raise ValueError(engine)


def set_threads(threads: int) -> None:
    """The same number of threads for every engine (ORT's is set per session)."""
    import torch
    torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(threads, user_api="blas")
    except ImportError:
        pass


# --------------------------------------------------------------------------------------------------
# the machine
# --------------------------------------------------------------------------------------------------

def machine_info() -> dict:
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version(), "numpy": np.__version__,
            "env": {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS",
                                                "OPENBLAS_NUM_THREADS") if k in os.environ}}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        info["cpu"] = re.search(r"model name\s*:\s*(.*)", cpuinfo).group(1).strip()
        flags = re.search(r"flags\s*:\s*(.*)", cpuinfo).group(1).split()
        info["simd"] = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile") if f in flags]
    except (OSError, AttributeError):
        pass
    try:
        import threadpoolctl
        info["blas"] = [{k: lib.get(k) for k in ("internal_api", "version", "architecture", "threading_layer")}
                        for lib in threadpoolctl.threadpool_info() if lib.get("user_api") == "blas"]
    except ImportError:
        info["blas"] = "threadpoolctl not installed"
    for name in ("torch", "transformers", "onnxruntime"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            pass
    return info


def machine_slug(info: dict) -> str:
    return re.sub(r"[^a-z0-9]+", "-", f"{info['cpu']} {info['cores']}cores".lower()).strip("-")


def results_path(output: Path | None, info: dict, suffix: str, force: bool) -> Path | None:
    """Where a benchmark writes its JSON: `output`, or benchmarks/results/<machine><suffix>.json. None (after
    saying so on stderr) when the file exists and `force` is not given: results are never clobbered."""
    output = output or ROOT / "benchmarks" / "results" / f"{machine_slug(info)}{suffix}.json"
    if output.exists() and not force:
        print(f"{output} exists already (pass --force to replace it)", file=sys.stderr)
        return None
    return output


# --------------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------------

def time_interleaved(runners: dict, rounds: int, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds per run of each engine, the engines interleaved and their order rotated every round,
    each run after a PAUSE_SECONDS pause."""
    names = list(runners)
    for _ in range(warmup):
        for name in names:
            runners[name]()
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            time.sleep(PAUSE_SECONDS)
            start = time.perf_counter()
            runners[name]()
            times[name].append(time.perf_counter() - start)
    return times


# --------------------------------------------------------------------------------------------------
# memory: one fresh subprocess per engine, network and batch
# --------------------------------------------------------------------------------------------------

def _status_kib(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s*(\d+) kB", status, re.M).group(1))


def memory_child(engine: str, network: str, batch: int, threads: int, onnx_dir: str | None) -> dict:
    """Peak resident memory of inference, in this (fresh) process.

    Model and input are made, one inference on a small image loads the code the engine runs (and for
    mobilenet_np its plan for that size is then dropped), then the resident set size is read and
    the kernel's peak counter reset (/proc/self/clear_refs); the peak after 3 inferences, minus that
    baseline, is the memory the inference needed. For mobilenet_np, tracemalloc's peak of NumPy's
    allocations during one more (plan rebuilt) inference is reported as well.
    """
    architecture, config, size = NETWORKS[network]
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    small = np.zeros((1, 3, WARMUP_SIZE, WARMUP_SIZE), np.float32)
    if engine == "mobilenet_np":
        model = numpy_model(architecture, config, threads)
        model(small)
        model.plans.clear()
        run = engine_runner(engine, model, x)
    elif engine == "torch":
        import torch
        torch.set_num_threads(threads)
        model = torch_model(architecture, config)
        with torch.inference_mode():
            model(torch.from_numpy(small))
        run = engine_runner(engine, model, x)
    else:
        warm = onnx_session(Path(onnx_dir) / f"{network}_b1_small.onnx", threads)
        warm.run(None, {"pixel_values": small})
        del warm
        model = onnx_session(Path(onnx_dir) / f"{network}_b{batch}.onnx", threads)
        run = engine_runner(engine, model, x)
    gc.collect()
    baseline = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")            # reset the peak (VmHWM) to the current RSS
    for _ in range(3):
        run()
    result = {"peak_rss_delta_mb": (_status_kib("VmHWM") - baseline) / 1024, "baseline_rss_mb": baseline / 1024}
    if engine == "mobilenet_np":
        import tracemalloc
        model.plans.clear()
        gc.collect()
        tracemalloc.start()
        run()
        result["numpy_tracemalloc_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    return result


def measure_memory(engine: str, network: str, batch: int, threads: int, onnx_dir: str | None) -> dict:
    command = [sys.executable, __file__, "--memory-child", engine, network, str(batch), "--threads", str(threads)]
    if onnx_dir:
        command += ["--onnx-dir", onnx_dir]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------

def wait_until_quiet(load: float, longest: float) -> float:
    """Sleep until the 1-minute load average is below `load` (other work on a shared machine), at most `longest` s."""
    start = time.monotonic()
    while os.getloadavg()[0] >= load and time.monotonic() - start < longest:
        time.sleep(10)
    return time.monotonic() - start


def quartiles(seconds: list[float]) -> dict:
    q1, median, q3 = np.percentile(np.array(seconds) * 1e3, [25, 50, 75])
    return {"median_ms": float(median), "q1_ms": float(q1), "q3_ms": float(q3),
            "min_ms": float(min(seconds) * 1e3), "runs": len(seconds)}


def rounds_for(network: str, batch: int, quick: bool) -> int:
    base = {"mobilenet_v1_224": 40, "mobilenet_v2_224": 40, "deeplabv3_513": 12}[network]
    base = max(3, base // batch * 2) if batch > 1 else base
    return max(3, base // 4) if quick else base


def benchmark(args) -> dict:
    import torch
    set_threads(args.threads)
    has_ort = importlib.util.find_spec("onnxruntime") is not None
    engines = [e for e in args.engines if e != "onnxruntime" or has_ort]
    info = machine_info()
    results = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as onnx_dir:
        for network in args.networks:
            architecture, config, size = NETWORKS[network]
            reference = torch_model(architecture, config)
            twin = numpy_twin(reference, architecture)
            twin.engine = EngineSettings(threads=args.threads)
            macs = summarize(twin, size).total_macs
            if has_ort and "onnxruntime" in engines:
                export_onnx(reference, (1, 3, WARMUP_SIZE, WARMUP_SIZE), Path(onnx_dir) / f"{network}_b1_small.onnx")
            for batch in args.batches:
                x = np.random.default_rng(batch).standard_normal((batch, 3, size, size)).astype(np.float32)
                models = {"mobilenet_np": twin, "torch": reference}
                if "onnxruntime" in engines:
                    path = export_onnx(reference, x.shape, Path(onnx_dir) / f"{network}_b{batch}.onnx")
                    models["onnxruntime"] = onnx_session(path, args.threads)
                # the same answer from every engine, before timing anything
                with torch.inference_mode():
                    expected = reference(torch.from_numpy(x)).logits.numpy()
                for engine in engines:
                    if engine != "torch":
                        got = (twin(x).logits if engine == "mobilenet_np"
                               else models[engine].run(None, {"pixel_values": x})[0])
                        error = float(np.abs(got - expected).max() / np.abs(expected).max())
                        assert error < 1e-3, f"{engine} disagrees with transformers on {network}: {error:.3g}"
                runners = {e: engine_runner(e, models[e], x) for e in engines}
                rounds = rounds_for(network, batch, args.quick)
                times = time_interleaved({e: r for e, r in runners.items() if e != "onnxruntime"}, rounds)
                if "onnxruntime" in runners:
                    times.update(time_interleaved({"onnxruntime": runners["onnxruntime"]}, rounds))
                bound_ms = 2 * macs * batch / (PEAK_GFLOPS * 1e9) * 1e3
                for engine in engines:
                    row = {"network": network, "batch": batch, "engine": engine, **quartiles(times[engine]),
                           "arithmetic_bound_ms": bound_ms}
                    if not args.no_memory:
                        row.update(measure_memory(engine, network, batch, args.threads, onnx_dir))
                    results.append(row)
                    print(f"  {network} batch {batch} {engine}: median {row['median_ms']:.1f} ms "
                          f"(q1 {row['q1_ms']:.1f}, q3 {row['q3_ms']:.1f}), "
                          f"memory {row.get('peak_rss_delta_mb', float('nan')):.0f} MB", flush=True)
    return {"machine": info, "threads": args.threads, "peak_gflops_assumed": PEAK_GFLOPS,
            "load_average_before": load_before, "load_average_after": os.getloadavg(),
            "mobilenet_np_threads": args.threads, "quick": args.quick, "results": results}


def format_table(report: dict) -> str:
    rows = {(r["network"], r["batch"], r["engine"]): r for r in report["results"]}
    lines = ["| network | batch | mobilenet_np ms | torch eager ms | ratio | ONNX Runtime ms | np / ORT "
             "| bound ms | np / bound | peak MB np | torch | ORT |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for network, batch in dict.fromkeys((r["network"], r["batch"]) for r in report["results"]):
        ours, torch_row, ort = (rows.get((network, batch, e)) for e in ENGINES)

        def ms(row):
            return f"{row['median_ms']:.1f} ({row['q1_ms']:.1f}-{row['q3_ms']:.1f})" if row else "-"

        def mb(row):
            return f"{row['peak_rss_delta_mb']:.0f}" if row and "peak_rss_delta_mb" in row else "-"

        def ratio(a, b):
            return f"{a['median_ms'] / b['median_ms']:.2f}" if a and b else "-"
        bound = ours["arithmetic_bound_ms"] if ours else float("nan")
        lines.append(f"| {network} | {batch} | {ms(ours)} | {ms(torch_row)} | {ratio(ours, torch_row)} | {ms(ort)} "
                     f"| {ratio(ours, ort)} | {bound:.1f} | {ours['median_ms'] / bound:.1f} "
                     f"| {mb(ours)} | {mb(torch_row)} | {mb(ort)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--networks", nargs="+", choices=list(NETWORKS), default=list(NETWORKS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a quarter of the runs")
    parser.add_argument("--wait-quiet", type=float, metavar="LOAD",
                        help="first wait (up to --wait-max seconds) until the 1-minute load average is below LOAD")
    parser.add_argument("--wait-max", type=float, default=1800.0)
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--output", type=Path, help="JSON file (default benchmarks/results/<machine>.json)")
    parser.add_argument("--force", action="store_true", help="replace an existing JSON file")
    parser.add_argument("--memory-child", nargs=3, metavar=("ENGINE", "NETWORK", "BATCH"), help=argparse.SUPPRESS)
    parser.add_argument("--onnx-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.memory_child:
        engine, network, batch = args.memory_child
        print(json.dumps(memory_child(engine, network, int(batch), args.threads, args.onnx_dir)))
        return 0
    info = machine_info()
    output = results_path(args.output, info, "", args.force)
    if output is None:
        return 2
    if args.wait_quiet is not None:
        waited = wait_until_quiet(args.wait_quiet, args.wait_max)
        print(f"waited {waited:.0f} s for a load average below {args.wait_quiet}", flush=True)
    print(f"{info['cpu']}, {info['cores']} cores; numpy {info['numpy']}, BLAS {info.get('blas')}; "
          f"threads {args.threads}; load average {os.getloadavg()}", flush=True)
    report = benchmark(args)
    table = format_table(report)
    print(table)
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(output, overwrite=True) as temporary:
        temporary.write_text(json.dumps({**report, "table": table}, indent=2) + "\n")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
