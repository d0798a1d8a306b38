"""Measure mobilenet_np's integer networks against the LiteRT interpreter's three kinds of kernels.

    python benchmarks/integer_vs_interpreter.py                   # the shared files, cat/bird/bird_segmentation
    python benchmarks/integer_vs_interpreter.py --random 5        # and 5 random-uniform inputs per file

For every file (the uint8 MobileNetV2 1.0-224, MobileNetV1 0.5-160 and DeepLabV3-513 in ../shared/data,
and the int8 TFLite fixtures in tests/fixtures/tflite) it imports the integer network
(`import-tflite --quantized`), runs it on each input and measures:

* bit-exactness: every tensor mobilenet_np records against the same tensor of the interpreter with
  the reference kernels (OpResolverType.BUILTIN_REF, experimental_preserve_all_tensors), in LSB;
* end to end: the final output of the default interpreter (AUTO: optimized kernels + XNNPACK) and of
  the optimized kernels without delegate (BUILTIN_WITHOUT_DEFAULT_DELEGATES) against BUILTIN_REF:
  max |diff| and number of differing codes of the probabilities and of the logits (the SOFTMAX input),
  same top-1; for DeepLab the label map (pixels whose class differs);
* op by op on identical inputs: each op of the AUTO / no-delegate interpreter is recomputed with
  mobilenet_np's reference kernels on that interpreter's own input tensors and compared with its output
  (so a difference belongs to that op alone, not to the ops before it): share of differing codes per
  op class (op and fused activation) and the largest difference. Convolutions are also recomputed with
  the `rounding="ruy_upward"` teaching switch (ties upward in both rounding steps, the optimized
  kernels' rounding): `differ_from_ruy_upward` counts the codes that this model fails to explain.

Prints tables and writes benchmarks/results/<machine>_interpreters.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import mobilenet_np  # noqa: E402
from mobilenet_np.fileio import atomic_output  # noqa: E402
from mobilenet_np.image_processing import load_image  # noqa: E402
from mobilenet_np.pipelines import image_processor_for  # noqa: E402
from mobilenet_np.quantized import ops  # noqa: E402
from mobilenet_np.quantized.fixedpoint import QuantParams  # noqa: E402
from weights_tools.import_tflite import import_tflite  # noqa: E402

from bench import machine_info, results_path  # noqa: E402

from ai_edge_litert.interpreter import Interpreter, OpResolverType  # noqa: E402

warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")

SHARED = ROOT.parent / "shared" / "data"
FIXTURES = ROOT / "tests" / "fixtures" / "tflite"
FILES = {
    "mobilenet_v2_1.0_224_quant": SHARED / "weights/tflite/mobilenet_v2_1.0_224_quant.tflite",
    "mobilenet_v1_0.5_160_quant": SHARED / "weights/tflite/mobilenet_v1_0.5_160_quant.tflite",
    "deeplabv3_mnv2_pascal_quant": SHARED / "weights/tflite/deeplabv3_mnv2_pascal_quant.tflite",
    "keras_mobilenet_v2_0.35_96_int8_uint8io": FIXTURES / "keras_mobilenet_v2_0.35_96_int8_uint8io.tflite",
    "keras_mobilenet_v1_0.25_96_int8_uint8io": FIXTURES / "keras_mobilenet_v1_0.25_96_int8_uint8io.tflite",
    "keras_mobilenet_v1_0.25_96_int8_int8io": FIXTURES / "keras_mobilenet_v1_0.25_96_int8_int8io.tflite",
    "keras_mobilenet_v1_0.25_112_int8_uint8io": FIXTURES / "keras_mobilenet_v1_0.25_112_int8_uint8io.tflite",
}
IMAGES = ("cat.bmp", "bird.bmp", "bird_segmentation.bmp")
RESOLVERS = {"AUTO": OpResolverType.AUTO, "NO_DELEGATE": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
             "REF": OpResolverType.BUILTIN_REF}
# Keras' batch-size arithmetic (int32, not quantized), and the nodes XNNPACK replaces ops with (the
# replaced ops stay in the node list with their tensors, which is what is compared).
SKIPPED_OPS = ("SHAPE", "STRIDED_SLICE", "PACK", "DELEGATE")


def nchw(array: np.ndarray) -> np.ndarray:
    return array.transpose(0, 3, 1, 2) if array.ndim == 4 else array


def interpreter(path: Path, resolver: str, codes: np.ndarray, preserve: bool) -> Interpreter:
    it = Interpreter(model_path=str(path), experimental_op_resolver_type=RESOLVERS[resolver],
                     experimental_preserve_all_tensors=preserve, num_threads=1)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], codes.transpose(0, 2, 3, 1).copy())
    it.invoke()
    return it


class OpRunner:
    """Recomputes one interpreter op with mobilenet_np's kernels on the interpreter's own input tensors."""

    def __init__(self, model):
        self.model = model
        self.record_of = {}
        for name, q in model.quantization.items():
            for index in q.source:
                self.record_of.setdefault(int(index), name)
        self.layers = {layer.name: layer for layer in model.conv_layers()}
        self.ruy = None         # the last conv op recomputed with rounding="ruy_upward"

    def params(self, it: Interpreter, index: int) -> QuantParams:
        """The (per-tensor) scale and zero point the interpreter holds for tensor `index`."""
        details = self.details[index]
        p = details["quantization_parameters"]
        return QuantParams(p["scales"], p["zero_points"])

    def conv_parts(self, name):
        model = self.model
        if name == "classifier":
            return (model.tensors["classifier.weight"][:, :, None, None], model.tensors["classifier.bias"],
                    model.params["classifier.weight"], 1, 1)
        layer, key = self.layers[name], f"{name}.convolution"
        return (model.tensors[f"{key}.weight"], model.tensors[f"{key}.bias"], model.params[f"{key}.weight"],
                layer.stride, layer.dilation)

    def run(self, it: Interpreter, op: dict):
        """(op class, ours, theirs) for one op, or None for ops without arithmetic on codes."""
        kind = op["op_name"]
        if kind in SKIPPED_OPS:
            return None
        out = int(op["outputs"][0])
        name = self.record_of.get(out)
        record = self.model.quantization.get(name)
        options = record.options if record is not None else {}
        inputs = [nchw(it.get_tensor(int(i))) for i in op["inputs"] if i >= 0]
        theirs = nchw(it.get_tensor(out))
        p = lambda k: self.params(it, int(op["inputs"][k]))  # noqa: E731
        y_params = self.params(it, out) if theirs.dtype in (np.uint8, np.int8) else None
        activation = options.get("activation", "none")
        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            weight, bias, w_params, stride, dilation = self.conv_parts(name)
            fn = ops.depthwise_conv2d if kind == "DEPTHWISE_CONV_2D" else ops.conv2d
            x = inputs[0]
            ours = fn(x, weight, bias, p(0), w_params, y_params, stride=stride, padding=options["padding"],
                      dilation=dilation, activation=activation)
            # The optimized kernels' rounding (ties upward in both steps), to explain their differences.
            self.ruy = fn(x, weight, bias, p(0), w_params, y_params, stride=stride, padding=options["padding"],
                          dilation=dilation, activation=activation, rounding="ruy_upward").reshape(theirs.shape)
            return f"{kind} {activation}", ours.reshape(theirs.shape), theirs
        if kind == "FULLY_CONNECTED":
            weight, bias, w_params, _, _ = self.conv_parts(name)
            x = inputs[0].reshape(inputs[0].shape[0], -1)
            ours = ops.fully_connected(x, weight[:, :, 0, 0], bias, p(0), w_params, y_params, activation)
            return kind, ours.reshape(theirs.shape), theirs
        if kind == "ADD":
            return kind, ops.add(inputs[0], inputs[1], p(0), p(1), y_params, activation), theirs
        if kind == "AVERAGE_POOL_2D":
            ours = ops.average_pool2d(inputs[0], p(0), kernel_size=options["kernel_size"], stride=options["stride"],
                                      padding=options["padding"], activation=activation)
            return kind, ours, theirs
        if kind == "MEAN":
            return kind, ops.mean(inputs[0], p(0), y_params, axis=(2, 3), keepdims=True).reshape(theirs.shape), theirs
        if kind == "SOFTMAX":
            return kind, ops.softmax(inputs[0], p(0), options.get("beta", 1.0)), theirs
        if kind == "RESHAPE":
            return kind, inputs[0].reshape(theirs.shape), theirs
        if kind == "RESIZE_BILINEAR":
            ours = ops.resize_bilinear(inputs[0], theirs.shape[2:], options["align_corners"],
                                       options["half_pixel_centers"])
            return kind, ours, theirs
        if kind == "QUANTIZE":
            ours = ops.requantize(inputs[0], p(0), y_params, theirs.dtype)
            return f"QUANTIZE {inputs[0].dtype}->{theirs.dtype}", ours, theirs
        if kind == "CONCATENATION":
            codes = [x for x in inputs]
            ours = ops.concatenation(codes, [p(k) for k in range(len(codes))], y_params, axis=1)
            return kind, ours, theirs
        if kind == "ARG_MAX":
            x = inputs[0]
            return kind, ops.arg_max(x, axis=1, output_dtype=theirs.dtype), theirs
        if kind == "PAD":
            paddings = it.get_tensor(int(op["inputs"][1]))[[0, 3, 1, 2]]          # NHWC pairs -> NCHW
            return kind, ops.pad(inputs[0], paddings, y_params), theirs
        raise ValueError(f"no mobilenet_np kernel for {kind}")

    def per_op(self, it: Interpreter) -> dict:
        self.details = {d["index"]: d for d in it.get_tensor_details()}
        classes = defaultdict(lambda: {"ops": 0, "elements": 0, "differ": 0, "max_diff": 0})
        for op in it._get_ops_details():
            result = self.run(it, op)
            if result is None:
                continue
            cls, ours, theirs = result
            diff = np.abs(ours.astype(np.int64) - theirs.astype(np.int64))
            c = classes[cls]
            if self.ruy is not None:
                c["differ_from_ruy_upward"] = c.get("differ_from_ruy_upward", 0) + int((self.ruy != theirs).sum())
                self.ruy = None
            c["ops"] += 1
            c["elements"] += int(diff.size)
            c["differ"] += int((diff > 0).sum())
            c["max_diff"] = max(c["max_diff"], int(diff.max()))
        return dict(classes)


def final_outputs(model, rec: dict, it: Interpreter, ref: Interpreter) -> dict:
    """The interpreter's final output against BUILTIN_REF's (the same input codes)."""
    out = it.get_output_details()[0]["index"]
    theirs, reference = it.get_tensor(out).astype(np.int64), ref.get_tensor(out).astype(np.int64)
    diff = np.abs(theirs - reference)
    result = {"output_max_diff": int(diff.max()), "output_differ": int((diff > 0).sum()), "output_size": int(diff.size)}
    if model.task == "semantic-segmentation":
        result["label_pixels_differ"] = result["output_differ"]
        result["label_share_differ"] = result["output_differ"] / diff.size
    else:
        result["same_top1"] = bool(theirs.argmax() == reference.argmax())
    return result


def logits_of(model, it: Interpreter) -> np.ndarray:
    index = model.quantization["classifier"].source[-1]
    return it.get_tensor(index).astype(np.int64)


def measure_file(name: str, path: Path, inputs: list[tuple[str, object]], workdir: Path) -> dict:
    out = workdir / f"{name}.h5"
    import_tflite(path, out, quantized=True)
    model = mobilenet_np.load(out)
    processor = image_processor_for(model)
    runner = OpRunner(model)
    report = {"file": path.name, "architecture": model.architecture, "inputs": []}
    for label, source in inputs:
        if isinstance(source, Path):
            pixel_values = processor(load_image(source))["pixel_values"]
        else:
            size = (model.config.image_size,) * 2
            pixel_values = np.random.default_rng(source).uniform(-1, 1, (1, 3) + size).astype(np.float32)
        rec = {}
        start = time.perf_counter()
        model(pixel_values, record=lambda n, v: rec.__setitem__(n, v))
        seconds = time.perf_counter() - start
        codes = rec["pixel_values"]
        ref = interpreter(path, "REF", codes, preserve=True)
        tensors = elements = differ = largest = 0
        for record_name, values in rec.items():
            if record_name not in model.quantization:
                continue
            for index in model.quantization[record_name].source:
                theirs = nchw(ref.get_tensor(index)).reshape(values.shape)
                diff = np.abs(theirs.astype(np.int64) - values.astype(np.int64))
                tensors, elements = tensors + 1, elements + values.size
                differ, largest = differ + int((diff > 0).sum()), max(largest, int(diff.max()))
        entry = {"input": label, "numpy_seconds": seconds,
                 "vs_ref": {"tensors": tensors, "elements": elements, "differ": differ, "max_diff": largest}}
        for resolver in ("AUTO", "NO_DELEGATE"):
            # Intermediate tensors (the logits) are only readable with preserve_all_tensors; the final
            # output is also taken from a normal run, and both must agree.
            kept = interpreter(path, resolver, codes, preserve=True)
            plain = interpreter(path, resolver, codes, preserve=False)
            result = final_outputs(model, rec, kept, ref)
            out = kept.get_output_details()[0]["index"]
            result["preserve_all_tensors_changes_output"] = bool(
                np.any(kept.get_tensor(out) != plain.get_tensor(plain.get_output_details()[0]["index"])))
            if model.task != "semantic-segmentation":
                diff = np.abs(logits_of(model, kept) - logits_of(model, ref))
                result.update(logits_max_diff=int(diff.max()), logits_differ=int((diff > 0).sum()),
                              logits_size=int(diff.size))
            result["per_op"] = runner.per_op(kept)
            entry[resolver] = result
        entry["REF_per_op"] = runner.per_op(ref)            # a check of the check: must be all 0
        report["inputs"].append(entry)
        print(f"  {name} / {label}: {tensors} tensors vs REF, {differ} differ (max {largest}); "
              f"AUTO output max {entry['AUTO']['output_max_diff']} ({entry['AUTO']['output_differ']} codes), "
              f"no-delegate max {entry['NO_DELEGATE']['output_max_diff']} ({entry['NO_DELEGATE']['output_differ']})",
              flush=True)
    return report


def per_op_table(reports: dict) -> str:
    """Share of differing codes per op class, op by op on identical inputs, summed over the inputs."""
    lines = ["| file | op class | ops | AUTO (XNNPACK) | no delegate | REF (check) |", "|---|---|---|---|---|---|"]
    for name, report in reports.items():
        totals = {}
        for entry in report["inputs"]:
            for resolver, per_op in (("AUTO", entry["AUTO"]["per_op"]), ("NO_DELEGATE", entry["NO_DELEGATE"]["per_op"]),
                                     ("REF", entry["REF_per_op"])):
                for cls, c in per_op.items():
                    t = totals.setdefault(cls, {}).setdefault(resolver, {"ops": 0, "elements": 0, "differ": 0,
                                                                         "max_diff": 0})
                    t["ops"] = c["ops"]
                    t["elements"] += c["elements"]
                    t["differ"] += c["differ"]
                    t["max_diff"] = max(t["max_diff"], c["max_diff"])

        def cell(t):
            if t["differ"] == 0:
                return "0"
            share = 100 * t["differ"] / t["elements"]
            if share < 0.01:
                return f"{t['differ']} of {t['elements']:,} (max {t['max_diff']})"
            return f"{share:.3f} % (max {t['max_diff']})"
        for cls, by in sorted(totals.items()):
            lines.append(f"| {name} | {cls} | {by['AUTO']['ops']} | {cell(by['AUTO'])} | {cell(by['NO_DELEGATE'])} | "
                         f"{cell(by['REF'])} |")
    return "\n".join(lines)


def final_table(reports: dict) -> str:
    lines = ["| file | input | vs REF: tensors, differing codes | AUTO vs REF: output max / count (logits max / count) "
             "| no delegate vs REF | top-1 same (AUTO, no delegate) |", "|---|---|---|---|---|---|"]
    for name, report in reports.items():
        for e in report["inputs"]:
            def cell(r):
                if "label_pixels_differ" in r:
                    return f"{r['label_pixels_differ']} px ({100 * r['label_share_differ']:.2f} %)"
                return (f"{r['output_max_diff']} / {r['output_differ']} "
                        f"({r['logits_max_diff']} / {r['logits_differ']} of {r['logits_size']})")
            same = "—" if "same_top1" not in e["AUTO"] else f"{e['AUTO']['same_top1']}, {e['NO_DELEGATE']['same_top1']}"
            lines.append(f"| {name} | {e['input']} | {e['vs_ref']['tensors']}, {e['vs_ref']['differ']} | "
                         f"{cell(e['AUTO'])} | {cell(e['NO_DELEGATE'])} | {same} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", nargs="+", choices=list(FILES), default=list(FILES))
    parser.add_argument("--random", type=int, default=0, help="also this many random-uniform inputs (seeds 0..N-1)")
    parser.add_argument("--output", type=Path, help="JSON file (default benchmarks/results/<machine>_interpreters.json)")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    info = machine_info()
    output = results_path(args.output, info, "_interpreters", args.force)
    if output is None:
        return 2
    images = [(image, SHARED / "images" / image) for image in IMAGES if (SHARED / "images" / image).is_file()]
    inputs = images + [(f"random {seed}", seed) for seed in range(args.random)]
    reports = {}
    with tempfile.TemporaryDirectory(prefix="integer_vs_interpreter_") as workdir:
        for name in args.files:
            if not FILES[name].is_file():
                print(f"  {name}: {FILES[name]} is absent, skipped")
                continue
            reports[name] = measure_file(name, FILES[name], inputs, Path(workdir))
    import ai_edge_litert
    tables = final_table(reports) + "\n\n" + per_op_table(reports)
    print(tables)
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(output, overwrite=True) as temporary:
        temporary.write_text(json.dumps({"machine": info, "ai_edge_litert": getattr(ai_edge_litert, "__version__", "?"),
                                         "files": reports, "tables": tables}, indent=1) + "\n")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
