"""Time mobilenet_np's integer path against the LiteRT interpreter, and against mobilenet_np's float fast path.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_integer.py          # the full run
    python benchmarks/bench_integer.py --networks mobilenet_v2_224 --rounds 5                 # a quick look

(As for benchmarks/bench.py: unset OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE for this command only.)
On a 2-core machine shared with other jobs, use --threads 1 as well: with 2 threads, an engine whose
threads wait for each other (OpenBLAS, ruy, XNNPACK) runs several times slower while another process
holds a core (measured here: the integer path 150-200 ms alone, ~700 ms beside one busy process).

The networks are the real uint8 files in ../shared/data: MobileNetV2 1.0-224 and DeepLabV3-MobileNetV2
513 (output stride 16). Each file is imported twice with weights_tools: `--quantized` (the integer
network, mobilenet_np/quantized) and plain (its float emulation: the same weights dequantized, run by
the float fast path, mobilenet_np/fast). Engines, all on the same photo in one process:

    numpy_integer     QuantizedModel on the input's uint8 codes (TFLite's reference kernels in NumPy)
    litert_ref        the interpreter with OpResolverType.BUILTIN_REF (the reference kernels, C++)
    litert_auto       the interpreter's default, OpResolverType.AUTO (optimized kernels + XNNPACK)
    litert_optimized  OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES (optimized kernels, no XNNPACK)
    numpy_float       the float import on the fast path (float pixel values)

Every engine gets the same thread count (--threads, default 2): BLAS through threadpoolctl (the
integer path's GEMMs), the interpreter's num_threads, the fast path's EngineSettings(threads=...). The
engines are timed interleaved with their order rotated every round (bench.time_interleaved), after
warm-up runs; the table gives the median and quartiles of >= 5 runs each. The interpreters read the
input codes with set_tensor inside the timed call, the integer path takes the same codes, the float
path the float pixel values. Prints a table and writes
benchmarks/results/<machine>_integer_<threads>threads.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import mobilenet_np  # noqa: E402
from mobilenet_np.fast import EngineSettings  # noqa: E402
from mobilenet_np.fileio import atomic_output  # noqa: E402
from mobilenet_np.image_processing import load_image  # noqa: E402
from mobilenet_np.pipelines import image_processor_for  # noqa: E402
from weights_tools.import_tflite import import_tflite  # noqa: E402

from bench import machine_info, results_path, quartiles, time_interleaved, wait_until_quiet  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
NETWORKS = {   # name -> (file, photo, rounds)
    "mobilenet_v2_224": ("weights/tflite/mobilenet_v2_1.0_224_quant.tflite", "images/cat.bmp", 15),
    "deeplabv3_513": ("weights/tflite/deeplabv3_mnv2_pascal_quant.tflite", "images/bird_segmentation.bmp", 7),
}
ENGINES = ("numpy_integer", "litert_ref", "litert_auto", "litert_optimized", "numpy_float")
AIM = 3.0      # the integer path's aim: within 3x of the float fast path


def interpreter_runner(path: Path, resolver_name: str, codes_nhwc: np.ndarray, threads: int):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    resolver = {"litert_ref": OpResolverType.BUILTIN_REF, "litert_auto": OpResolverType.AUTO,
                "litert_optimized": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}[resolver_name]
    it = Interpreter(model_path=str(path), experimental_op_resolver_type=resolver, num_threads=threads)
    it.allocate_tensors()
    index = it.get_input_details()[0]["index"]

    def run():
        it.set_tensor(index, codes_nhwc)
        it.invoke()
    return run


def benchmark_network(name: str, engines: list[str], threads: int, rounds: int, workdir: Path) -> list[dict]:
    file, photo, default_rounds = NETWORKS[name]
    path = SHARED / file
    import_tflite(path, workdir / f"{name}_integer.h5", quantized=True)
    import_tflite(path, workdir / f"{name}_float.h5")
    integer = mobilenet_np.load(workdir / f"{name}_integer.h5")
    floating = mobilenet_np.load(workdir / f"{name}_float.h5")
    floating.engine = EngineSettings(threads=threads)
    pixel_values = image_processor_for(integer)(load_image(SHARED / photo))["pixel_values"]   # (1, 3, H, W)
    codes = integer.input_codes(pixel_values, lambda n, v: None).values                      # uint8 NCHW
    codes_nhwc = np.ascontiguousarray(codes.transpose(0, 2, 3, 1))
    runners = {}
    for engine in engines:
        if engine == "numpy_integer":
            runners[engine] = lambda: integer(codes)
        elif engine == "numpy_float":
            runners[engine] = lambda: floating(pixel_values)
        else:
            runners[engine] = interpreter_runner(path, engine, codes_nhwc, threads)
    times = time_interleaved(runners, rounds or default_rounds, warmup=2)
    return [{"network": name, "file": path.name, "engine": engine, "threads": threads, **quartiles(times[engine])}
            for engine in engines]


def format_table(results: list[dict]) -> str:
    lines = ["| network | engine | median ms | quartiles ms | runs | x float fast path |", "|---|---|---|---|---|---|"]
    for network in dict.fromkeys(r["network"] for r in results):
        rows = {r["engine"]: r for r in results if r["network"] == network}
        reference = rows.get("numpy_float", {}).get("median_ms")
        for engine, r in rows.items():
            ratio = f"{r['median_ms'] / reference:.1f}" if reference else "—"
            lines.append(f"| {network} | {engine} | {r['median_ms']:.1f} | {r['q1_ms']:.1f}–{r['q3_ms']:.1f} | "
                         f"{r['runs']} | {ratio} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--networks", nargs="+", choices=list(NETWORKS), default=list(NETWORKS))
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, help="timed runs per engine (default 15 for V2, 7 for DeepLab; >= 5)")
    parser.add_argument("--wait-quiet", type=float, metavar="LOAD",
                        help="first wait (up to --wait-max seconds) until the 1-minute load average is below LOAD")
    parser.add_argument("--wait-max", type=float, default=1800.0)
    parser.add_argument("--output", type=Path,
                        help="JSON file (default benchmarks/results/<machine>_integer_<threads>threads.json)")
    parser.add_argument("--force", action="store_true", help="replace an existing JSON file")
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 5:
        parser.error("--rounds must be at least 5 (the table reports medians)")
    missing = [n for n in args.networks if not (SHARED / NETWORKS[n][0]).is_file()]
    if missing:
        print(f"{SHARED} lacks the files of {', '.join(missing)}", file=sys.stderr)
        return 2
    info = machine_info()
    try:
        import ai_edge_litert
        info["ai_edge_litert"] = getattr(ai_edge_litert, "__version__", "unknown")
    except ImportError:
        print("ai-edge-litert is not installed: timing the NumPy engines only", file=sys.stderr)
        args.engines = [e for e in args.engines if not e.startswith("litert")]
    output = results_path(args.output, info, f"_integer_{args.threads}threads", args.force)
    if output is None:
        return 2
    from threadpoolctl import threadpool_limits
    threadpool_limits(args.threads, user_api="blas")        # the integer path's GEMMs; the fast path sets its own
    if args.wait_quiet is not None:
        waited = wait_until_quiet(args.wait_quiet, args.wait_max)
        print(f"waited {waited:.0f} s for a load average below {args.wait_quiet}", flush=True)
    load_before = os.getloadavg()
    print(f"{info['cpu']}, {info['cores']} cores; numpy {info['numpy']}, BLAS {info.get('blas')}; "
          f"threads {args.threads}; load average {load_before}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_integer_") as workdir:
        for network in args.networks:
            results += benchmark_network(network, args.engines, args.threads, args.rounds, Path(workdir))
            print(format_table([r for r in results if r["network"] == network]), flush=True)
    table = format_table(results)
    load_after = os.getloadavg()
    print(f"\n{table}\nload average before {load_before}, after {load_after}")
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(output, overwrite=True) as temporary:
        temporary.write_text(json.dumps({"machine": info, "threads": args.threads, "aim_x_float": AIM,
                                         "load_before": load_before, "load_after": load_after,
                                         "results": results, "table": table}, indent=2) + "\n")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    warnings.filterwarnings("ignore", message="IProgress not found")
    sys.exit(main())
