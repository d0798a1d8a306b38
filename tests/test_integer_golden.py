"""Golden files of integer-only networks: codes with their scales and zero points, compared in LSB."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from mobilenet_np.cli import main as np_main
from mobilenet_np.formats import golden
from weights_tools.__main__ import main as tools_main

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "tflite" / "keras_mobilenet_v2_0.35_96_int8_uint8io.tflite"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("integer_golden")
    assert tools_main(["import-tflite", str(FIXTURE), str(folder / "int.h5"), "--quantized"]) == 0
    assert tools_main(["import-tflite", str(FIXTURE), str(folder / "float.h5")]) == 0
    return folder


def test_an_integer_golden_holds_codes_and_their_quantization(weights, tmp_path, capsys):
    out = tmp_path / "int.h5"
    assert np_main(["golden", "--weights", str(weights / "int.h5"), "--seed", "1", "--out", str(out)]) == 0
    reference = golden.read_golden(out)
    assert reference.attrs["dtype"] == "integer"
    codes = {name: t for name, t in reference.tensors.items() if t.dtype.kind in "iu"}
    assert len(codes) > 30
    missing = [name for name in codes if name not in reference.attrs["quantization"]]
    assert not missing, missing                    # every recorded tensor can be dequantized
    np.testing.assert_equal(golden.read_golden(out).tensors, reference.tensors)      # deterministic

    port = tmp_path / "port.h5"                    # a "port" one code step off in one layer
    changed = next(name for name, t in codes.items() if t.ndim == 4 and t.dtype == np.int8)
    with h5py.File(out, "r") as source, h5py.File(port, "w") as target:
        for key, value in source.attrs.items():
            target.attrs[key] = value
        for name in source["tensors"]:
            source.copy(source["tensors"][name], target.require_group("tensors"), name)
        data = target["tensors"][changed][()]
        data.flat[7] = data.flat[7] + 1 if data.flat[7] < 127 else data.flat[7] - 1
        target["tensors"][changed][...] = data
    capsys.readouterr()
    assert np_main(["compare", str(out), str(port)]) == 1
    table = capsys.readouterr().out
    assert f"first divergence: {changed}" in table and "1 LSB" in table
    assert np_main(["compare", str(out), str(port), "--lsb", "1"]) == 0


def test_the_float_import_is_compared_with_the_integer_codes_dequantized(weights, tmp_path, capsys):
    """The float emulation of the same file against the integer reference: dequantized, within a few scale steps."""
    ints, floats = tmp_path / "int.h5", tmp_path / "float.h5"
    assert np_main(["golden", "--weights", str(weights / "int.h5"), "--seed", "2", "--out", str(ints)]) == 0
    assert np_main(["golden", "--weights", str(weights / "float.h5"), "--seed", "2", "--out", str(floats)]) == 0
    comparison = golden.compare_goldens(golden.read_golden(ints), golden.read_golden(floats), rtol=0, atol=1.0,
                                        only_common=True)
    rows = {row.name: row for row in comparison.rows}
    common = [name for name, row in rows.items() if row.shape and len(row.shape) == 4]
    assert len(common) > 10
    # the first layers agree to within a couple of quantization steps of the activations (~6/255 for ReLU6)
    first = rows[common[1]]
    assert first.unit == "" and first.max_abs_error < 0.2, (first.name, first.max_abs_error)
