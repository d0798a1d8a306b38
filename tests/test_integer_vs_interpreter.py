"""benchmarks/integer_vs_interpreter.py, the measurement behind docs/integer.md, on a committed int8 fixture.

* every tensor mobilenet_np records equals the interpreter's BUILTIN_REF tensor (0 LSB);
* the op-by-op recomputation finds 0 differences on BUILTIN_REF (a check of the check: each op's
  dispatch to mobilenet_np's kernels is right), and at most 1 LSB on the AUTO / no-delegate interpreters,
  with nonzero differences on AUTO's ReLU6 convs (so the comparison does compare); the no-delegate
  convs are reproduced exactly by the ties-upward rounding;
* a planted 1-code change in an interpreter tensor is found by the op-by-op comparison.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import mobilenet_np
from weights_tools.import_tflite import import_tflite

pytest.importorskip("ai_edge_litert")

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "tflite" / "keras_mobilenet_v2_0.35_96_int8_uint8io.tflite"


@pytest.fixture(scope="module")
def measure():
    spec = importlib.util.spec_from_file_location("integer_vs_interpreter", ROOT / "benchmarks" / "integer_vs_interpreter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def report(measure, tmp_path_factory):
    return measure.measure_file("fixture", FIXTURE, [("random 0", 0)], tmp_path_factory.mktemp("ivi"))


def test_bit_exact_against_builtin_ref(report):
    entry = report["inputs"][0]
    assert entry["vs_ref"]["tensors"] == 68          # every record's TFLite tensors, QUANTIZE ends included
    assert entry["vs_ref"]["differ"] == 0 and entry["vs_ref"]["max_diff"] == 0


def test_op_by_op_comparison(report):
    entry = report["inputs"][0]
    ref = entry["REF_per_op"]
    assert sum(c["ops"] for c in ref.values()) == 67            # every op of the graph but the shape arithmetic
    assert all(c["differ"] == 0 for c in ref.values())
    for resolver in ("AUTO", "NO_DELEGATE"):
        assert all(c["max_diff"] <= 1 for c in entry[resolver]["per_op"].values())
        assert not entry[resolver]["preserve_all_tensors_changes_output"]
    assert entry["AUTO"]["per_op"]["CONV_2D relu6"]["differ"] > 0                # XNNPACK's float requantization
    assert entry["NO_DELEGATE"]["per_op"]["CONV_2D relu6"]["differ"] == 0         # ties-up: clamped away
    # The optimized kernels' convs differ on the linear layers only, and the ties-upward rounding
    # (rounding="ruy_upward") reproduces every one of their codes.
    no_delegate = entry["NO_DELEGATE"]["per_op"]
    assert no_delegate["CONV_2D none"]["differ"] > 0
    assert all(c["differ_from_ruy_upward"] == 0 for cls, c in no_delegate.items() if "CONV" in cls)


def test_planted_difference_is_found(measure, tmp_path):
    out = import_tflite(FIXTURE, tmp_path / "fixture.h5", quantized=True)
    model = mobilenet_np.load(out)
    rec = {}
    x = np.random.default_rng(1).uniform(-1, 1, (1, 3, 96, 96)).astype(np.float32)
    model(x, record=lambda n, v: rec.__setitem__(n, v))
    it = measure.interpreter(FIXTURE, "REF", rec["pixel_values"], preserve=True)

    class Planted:                       # the interpreter, with one code of one conv output changed by 1
        def __init__(self, inner, index):
            self.inner, self.index = inner, index

        def get_tensor(self, i):
            t = self.inner.get_tensor(i)
            if i == self.index:
                t = t.copy()
                t.flat[0] = t.flat[0] + 1 if t.flat[0] < 127 else t.flat[0] - 1
            return t

        def __getattr__(self, name):
            return getattr(self.inner, name)

    index = model.quantization["mobilenet_v2.layer.5.reduce_1x1"].source[0]
    per_op = measure.OpRunner(model).per_op(Planted(it, index))
    assert per_op["CONV_2D none"]["differ"] >= 1
    assert sum(c["differ"] for c in per_op.values()) >= 1
