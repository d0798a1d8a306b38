"""Keras 3 `.weights.h5` files import as the Keras 2 `.h5` files of the same models do (tests/fixtures/tflite).

The fixture generator saved each Keras model both ways; the two imports must give the same tensors
(array for array), the same architecture and config, and a damaged Keras 3 file a ConversionError.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

import mobilenet_np
from mobilenet_np.errors import ConversionError
from weights_tools.import_keras import import_keras

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tflite"
PAIRS = [("keras_mobilenet_v1_0.25_96.h5", "MobileNetV1ForImageClassification"),
         ("keras_mobilenet_v2_0.35_96_notop.h5", "MobileNetV2Model")]


@pytest.mark.parametrize("keras2, architecture", PAIRS)
def test_keras3_weights_import_as_the_keras2_file(tmp_path, keras2, architecture):
    keras3 = keras2.replace(".h5", ".weights.h5")
    a = mobilenet_np.load(import_keras(FIXTURES / keras2, tmp_path / "keras2.h5"))
    b = mobilenet_np.load(import_keras(FIXTURES / keras3, tmp_path / "keras3.h5"))
    assert type(a).__name__ == type(b).__name__ == architecture
    assert a.config.to_dict() == b.config.to_dict()
    assert a.params.keys() == b.params.keys()
    for key in a.params:
        assert np.array_equal(a.params[key], b.params[key]), key
    assert b.metadata["provenance"]["source_format"].startswith("Keras 3 .weights.h5")
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 96, 96)).astype(np.float32)
    out_a, out_b = a(x), b(x)
    first = "logits" if architecture.endswith("Classification") else "last_hidden_state"
    assert np.array_equal(out_a[first], out_b[first])


def test_a_damaged_keras3_file_raises_conversion_error(tmp_path):
    source = tmp_path / "damaged.weights.h5"
    shutil.copy(FIXTURES / "keras_mobilenet_v1_0.25_96.weights.h5", source)
    with h5py.File(source, "a") as f:
        f["layers"].create_group("lstm").create_group("vars").create_dataset("0", data=np.zeros(3))
    with pytest.raises(ConversionError, match=r"layers/lstm \(lstm\) has weights"):
        import_keras(source, tmp_path / "out.h5")
    with h5py.File(source, "a") as f:
        del f["layers/lstm"]
        del f["layers/conv2d/vars/0"]
    with pytest.raises(ConversionError, match=r"conv2d/vars holds \[\], expected|conv1"):
        import_keras(source, tmp_path / "out.h5")
    assert not (tmp_path / "out.h5").exists()
