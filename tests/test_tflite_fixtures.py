"""The committed TF2/Keras-style fixtures in tests/fixtures/tflite (written by weights_tools.make_tflite_fixtures).

* The folder holds exactly the files fixtures.json lists, with the recorded sizes and sha256.
* Every .tflite loads in the LiteRT interpreter with the reference kernels (BUILTIN_REF) and runs on a
  random input; its op sequence (read by the interpreter here, not by the generator's code), tensor count
  and I/O quantization are the manifest's; the generator's full description (every op's shapes, dtypes,
  quantization and options) reads back the same. So a regenerated file whose style changed fails here.
* The style each file claims holds: float files have no quantized tensor; integer files have int8
  activations, symmetric per-channel int8 weights (axis 0 for CONV_2D / FULLY_CONNECTED, 3 for
  DEPTHWISE_CONV_2D, zero points 0), int32 per-channel biases, and QUANTIZE ops at both ends exactly when
  their I/O is uint8.
* The Keras 2 .h5 and the Keras 3 .weights.h5 of each model hold the same arrays (h5py only).
* The float .tflite files compute what Keras computed: the outputs the generator recorded on two seeded images
  (keras_outputs.npz, no TensorFlow needed) and, with TensorFlow installed (else skipped), the Keras model
  rebuilt from the committed Keras files on two other images. (Importing TensorFlow takes 5-15 s.)
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from weights_tools.make_tflite_fixtures import (ARCHITECTURES, OUTPUT_IMAGES_SEED, describe_tflite, images,
                                                keras_model_from_fixtures)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tflite"
MANIFEST = json.loads((FIXTURES / "fixtures.json").read_text())
TFLITE = sorted(name for name, f in MANIFEST["files"].items() if f["kind"] == "tflite")
FLOAT_TFLITE = [name for name in TFLITE if MANIFEST["files"][name]["style"] == "float"]
KERAS_PAIRS = sorted({name.rsplit(".weights.h5", 1)[0] for name in MANIFEST["files"] if name.endswith(".weights.h5")})

# float32 TFLite (reference kernels) vs Keras (TensorFlow's kernels), same weights: summation order only.
# Measured max |difference| of the softmax probabilities on 8 images: 4.7e-5 (V1), 2.5e-5 (V2).
FLOAT_PROB_ATOL = 2e-4
WEIGHT_OPS = {"CONV_2D": 0, "FULLY_CONNECTED": 0, "DEPTHWISE_CONV_2D": 3}  # op -> per-channel axis of its weights


def interpreter(name: str) -> Interpreter:
    it = Interpreter(model_path=str(FIXTURES / name), experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    it.allocate_tensors()
    return it


def random_input(detail: dict, rng) -> np.ndarray:
    """A random input for the interpreter's input `detail`: uniform [-1, 1] floats or the whole integer range."""
    shape, dtype = detail["shape"], detail["dtype"]
    if dtype == np.float32:
        return rng.uniform(-1.0, 1.0, shape).astype(np.float32)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)


def test_folder_matches_manifest():
    on_disk = {p.name for p in FIXTURES.iterdir()} - {"fixtures.json"}
    assert on_disk, f"no fixtures in {FIXTURES}"
    assert on_disk == set(MANIFEST["files"])
    for name, entry in MANIFEST["files"].items():
        data = (FIXTURES / name).read_bytes()
        assert len(data) == entry["bytes"], name
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], f"{name} changed since fixtures.json was written"


@pytest.mark.parametrize("name", TFLITE)
def test_fixture_runs_with_reference_kernels(name):
    entry = MANIFEST["files"][name]
    it = interpreter(name)
    (inp,), (out,) = it.get_input_details(), it.get_output_details()
    assert list(inp["shape"]) == [1, entry["image_size"], entry["image_size"], 3]
    assert list(out["shape"]) == [1, entry["classes"]]
    rng = np.random.default_rng(0)
    outputs = []
    for _ in range(2):
        it.set_tensor(inp["index"], random_input(inp, rng))
        it.invoke()
        outputs.append(it.get_tensor(out["index"]).copy())
    # softmax probabilities (dequantized): they sum to one (up to 1000 half-steps of 1/256 when quantized)
    scale, zero = out["quantization"]
    probs = [(o.astype(np.float64) - zero) * scale if scale else o.astype(np.float64) for o in outputs]
    for p in probs:
        assert np.all(p >= 0) and abs(p.sum() - 1.0) < (1e-5 if out["dtype"] == np.float32 else 0.1)
    assert not np.array_equal(outputs[0], outputs[1]), "the output does not depend on the input"


@pytest.mark.parametrize("name", TFLITE)
def test_op_sequence_is_the_manifests(name):
    entry = MANIFEST["files"][name]
    it = interpreter(name)
    ops = [op["op_name"] for op in it._get_ops_details()]
    assert ops == entry["op_list"]
    assert dict(Counter(ops)) == entry["op_counts"]
    assert len(it.get_tensor_details()) == entry["tensor_count"]
    for detail, recorded in ((it.get_input_details()[0], entry["input"]), (it.get_output_details()[0], entry["output"])):
        assert np.dtype(detail["dtype"]).name == recorded["dtype"]
        scale, zero = detail["quantization"]
        if "quantization" in recorded:
            assert (np.float32(scale), zero) == (np.float32(recorded["quantization"]["scale"]),
                                                 recorded["quantization"]["zero_point"])
        else:
            assert (scale, zero) == (0.0, 0)


@pytest.mark.parametrize("name", TFLITE)
def test_full_description_reads_back(name):
    pytest.importorskip("tflite")
    recorded = {k: MANIFEST["files"][name][k] for k in ("op_counts", "op_list", "tensor_count", "input",
                                                        "input_shape_signature", "output", "ops")}
    assert json.loads(json.dumps(describe_tflite(FIXTURES / name))) == recorded


@pytest.mark.parametrize("name", TFLITE)
def test_quantization_style(name):
    style = MANIFEST["files"][name]["style"]
    ops = MANIFEST["files"][name]["ops"]
    tensors = [t for op in ops for t in op["inputs"] + op["outputs"]]
    if style == "float":
        assert all("quantization" not in t and t["dtype"] in ("float32", "int32") for t in tensors)
        return
    io_dtype = {"int8_uint8io": "uint8", "int8_int8io": "int8"}[style]
    first, last = ops[0], ops[-1]
    assert first["inputs"][0]["dtype"] == io_dtype and last["outputs"][0]["dtype"] == io_dtype
    assert (first["op"] == "QUANTIZE") == (last["op"] == "QUANTIZE") == (io_dtype == "uint8")
    inner = ops[1:-1] if io_dtype == "uint8" else ops
    for op in inner:
        for t in op["inputs"] + op["outputs"]:
            if t.get("constant") or t["dtype"] == "int32":
                continue
            assert t["dtype"] == "int8" and t["quantization"]["scheme"] == "per-tensor", (op["op"], t)
        if op["op"] in WEIGHT_OPS:
            weight, bias = op["inputs"][1], op["inputs"][2]
            channels = weight["shape"][WEIGHT_OPS[op["op"]]]
            assert weight["dtype"] == "int8" and weight["quantization"] == {
                **weight["quantization"], "scheme": "per-channel", "axis": WEIGHT_OPS[op["op"]],
                "channels": channels, "zero_points": [0]}
            assert bias["dtype"] == "int32" and bias["quantization"]["scheme"] == "per-channel"
            assert bias["quantization"]["channels"] == channels and bias["quantization"]["zero_points"] == [0]


@pytest.mark.parametrize("stem", KERAS_PAIRS)
def test_keras2_and_keras3_files_hold_the_same_arrays(stem):
    """The two layouts differ (layer names vs class-name counters) but must hold the same arrays."""
    def arrays(path):
        found = []
        with h5py.File(path, "r") as f:
            f.visititems(lambda _, obj: found.append(obj[()]) if isinstance(obj, h5py.Dataset) else None)
        return sorted(hashlib.sha256(np.ascontiguousarray(a).tobytes() + str(a.shape).encode()).hexdigest()
                      for a in found)

    keras2, keras3 = arrays(FIXTURES / f"{stem}.h5"), arrays(FIXTURES / f"{stem}.weights.h5")
    assert len(keras3) > 50 and keras2 == keras3
    with h5py.File(FIXTURES / f"{stem}.h5", "r") as f:  # the released Keras applications files' layout
        assert "layer_names" in f.attrs and ("conv_dw_1" in f or "block_1_depthwise" in f)


def float_outputs(name: str, x: np.ndarray) -> np.ndarray:
    it = interpreter(name)
    (inp,), (out,) = it.get_input_details(), it.get_output_details()
    result = []
    for image in x:
        it.set_tensor(inp["index"], image[None])
        it.invoke()
        result.append(it.get_tensor(out["index"])[0].copy())
    return np.stack(result)


@pytest.mark.parametrize("name", FLOAT_TFLITE)
def test_float_fixture_matches_recorded_keras_outputs(name):
    """Without TensorFlow: Keras' outputs recorded by the generator on two seeded images."""
    architecture = MANIFEST["files"][name]["architecture"]
    spec = ARCHITECTURES[architecture]
    expected = np.load(FIXTURES / "keras_outputs.npz")[architecture]
    got = float_outputs(name, images(spec, 2, spec["seed"] + OUTPUT_IMAGES_SEED))
    np.testing.assert_allclose(got, expected, rtol=0, atol=FLOAT_PROB_ATOL)
    assert np.array_equal(got.argmax(1), expected.argmax(1)) and expected.max() > 0.2  # a peaked softmax


@pytest.mark.parametrize("name", FLOAT_TFLITE)
def test_float_fixture_matches_keras(name):
    """With TensorFlow: the Keras model rebuilt from the committed Keras files, on other images."""
    pytest.importorskip("tensorflow", reason="the Keras side of this check needs TensorFlow")
    architecture = MANIFEST["files"][name]["architecture"]
    x = images(ARCHITECTURES[architecture], 2, 12345)
    expected = np.asarray(keras_model_from_fixtures(architecture, FIXTURES)(x, training=False))
    got = float_outputs(name, x)
    np.testing.assert_allclose(got, expected, rtol=0, atol=FLOAT_PROB_ATOL)
    assert np.array_equal(got.argmax(1), expected.argmax(1))
