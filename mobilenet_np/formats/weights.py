"""The mobilenet-np weights file: HDF5, one dataset per transformers state_dict key.

The schema is written down in docs/weights_format.md, for readers in other languages. In short:

    /                      root attributes (all strings are UTF-8; JSON ones hold a JSON document)
      format               "mobilenet-np-weights"   (strings: fixed-length UTF-8)
      format_version       1
      architecture         "MobileNetV1ForImageClassification" | "MobileNetV2ForImageClassification" |
                           "MobileNetV2ForSemanticSegmentation" | "MobileNetV1Model" | "MobileNetV2Model"
      config               JSON: the transformers config.json dict
      id2label             JSON: {"0": "background", ...}
      image_processor      JSON: the transformers preprocessor_config.json dict ({} when unknown)
      provenance           JSON: {"source", "source_sha256": {file: sha256}, "converter", "converter_version", ...}
    /tensors/<key>         one dataset per state_dict key, PyTorch layout (conv weights OIHW), float32
                           or float64; `...num_batches_tracked` are int64 scalars
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import WeightsError
from ..fileio import atomic_output, open_hdf5
from ..registry import ARCHITECTURES

FORMAT_NAME = "mobilenet-np-weights"
FORMAT_VERSION = 1
TENSORS_GROUP = "tensors"


@dataclass
class WeightsFile:
    """Everything a weights file holds, read and checked."""

    path: Path
    architecture: str
    config: dict[str, Any]
    tensors: dict[str, np.ndarray]
    id2label: dict[int, str] = field(default_factory=dict)
    image_processor: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION


def _string_attribute(f, name: str, text: str) -> None:
    """A fixed-length UTF-8 string attribute. Fixed, not variable-length: its bytes are stored with the
    attribute itself, so a reader never follows a heap pointer that a damaged file could corrupt
    (HDF5 can loop forever on a corrupted variable-length string)."""
    import h5py

    data = text.encode("utf-8")
    f.attrs.create(name, data=data, dtype=h5py.string_dtype("utf-8", max(len(data), 1)))


def save_weights(path, tensors: dict[str, np.ndarray], architecture: str, config: dict[str, Any], *,
                 image_processor: dict[str, Any] | None = None, provenance: dict[str, Any] | None = None,
                 overwrite: bool = False) -> Path:
    """Write a weights file atomically (a temporary file beside `path`, then a rename)."""
    import h5py

    if architecture not in ARCHITECTURES:
        raise WeightsError(f"{path}: unknown architecture {architecture!r}, expected one of {sorted(ARCHITECTURES)}")
    id2label = {str(k): v for k, v in config.get("id2label", {}).items()}
    path = Path(path)
    with atomic_output(path, overwrite=overwrite) as tmp:
        # libver v108: attributes over 64 KiB (the config with 1001 labels) go to dense storage.
        with h5py.File(tmp, "w", libver=("v108", "latest")) as f:
            _string_attribute(f, "format", FORMAT_NAME)
            f.attrs["format_version"] = FORMAT_VERSION
            _string_attribute(f, "architecture", architecture)
            _string_attribute(f, "config", json.dumps(config, sort_keys=True))
            _string_attribute(f, "id2label", json.dumps(id2label))
            _string_attribute(f, "image_processor", json.dumps(image_processor or {}, sort_keys=True))
            _string_attribute(f, "provenance", json.dumps(provenance or {}, sort_keys=True))
            group = f.create_group(TENSORS_GROUP)
            for key, value in tensors.items():
                group.create_dataset(key, data=np.asarray(value))
    return path


# A damaged file can declare an attribute or a tensor of any size; reading it would allocate that much.
MAX_ATTRIBUTE_BYTES = 64 << 20
MAX_TENSOR_BYTES = 1 << 30


def _attribute(attrs, name: str, path: Path):
    """attrs[name], or None when absent; refuses sizes no weights file has (damaged headers)."""
    if name not in attrs:
        return None
    declared = attrs.get_id(name)
    nbytes = int(np.prod(declared.shape or (), dtype=np.float64)) * declared.dtype.itemsize
    if nbytes > MAX_ATTRIBUTE_BYTES:
        raise WeightsError(f"{path}: root attribute {name!r} declares {nbytes} bytes (damaged file?)")
    return attrs[name]


def _json_attribute(attrs, name: str, path: Path, required: bool = True):
    value = _attribute(attrs, name, path)
    if value is None:
        if required:
            raise WeightsError(f"{path}: missing root attribute {name!r} (not a {FORMAT_NAME} file?)")
        return {}
    try:
        return json.loads(value.decode() if isinstance(value, bytes) else str(value))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightsError(f"{path}: root attribute {name!r} is not valid JSON ({e})") from None


def read_weights(path) -> WeightsFile:
    """Read and check a weights file; any problem raises one WeightsError naming the file."""
    import h5py

    path = Path(path)
    f = open_hdf5(path, WeightsError, "weights file")
    try:
        with f:
            attrs = f.attrs
            fmt = _attribute(attrs, "format", path)
            fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
            if fmt != FORMAT_NAME:
                raise WeightsError(f"{path}: root attribute 'format' is {fmt!r}, expected {FORMAT_NAME!r}")
            version = _attribute(attrs, "format_version", path)
            if not isinstance(version, (int, np.integer)) or int(version) != FORMAT_VERSION:
                version = int(version) if isinstance(version, np.integer) else version  # 2, not np.int64(2)
                raise WeightsError(f"{path}: format_version {version!r} is not supported (this mobilenet_np reads "
                                   f"version {FORMAT_VERSION}); upgrade mobilenet-np or re-convert the weights")
            architecture = _attribute(attrs, "architecture", path)
            architecture = architecture.decode() if isinstance(architecture, bytes) else architecture
            if architecture not in ARCHITECTURES:
                raise WeightsError(f"{path}: root attribute 'architecture' is {architecture!r}, "
                                   f"expected one of {sorted(ARCHITECTURES)}")
            config = _json_attribute(attrs, "config", path)
            if not isinstance(config, dict):
                raise WeightsError(f"{path}: root attribute 'config' must be a JSON object")
            id2label = _json_attribute(attrs, "id2label", path, required=False)
            image_processor = _json_attribute(attrs, "image_processor", path, required=False)
            provenance = _json_attribute(attrs, "provenance", path, required=False)
            group = f.get(TENSORS_GROUP)
            if not isinstance(group, h5py.Group):
                raise WeightsError(f"{path}: no group /{TENSORS_GROUP} with the weight tensors")
            tensors = {}
            for key, dataset in group.items():
                if not isinstance(dataset, h5py.Dataset):
                    raise WeightsError(f"{path}: /{TENSORS_GROUP}/{key} is not a dataset")
                name = key.decode("utf-8", "replace") if isinstance(key, bytes) else key  # damaged names
                if dataset.size * dataset.dtype.itemsize > MAX_TENSOR_BYTES:
                    raise WeightsError(f"{path}: /{TENSORS_GROUP}/{name} declares shape {dataset.shape} "
                                       f"({dataset.size * dataset.dtype.itemsize} bytes), more than any weight tensor")
                tensors[name] = dataset[()]
    except WeightsError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:  # truncated or damaged HDF5
        raise WeightsError(f"{path}: damaged weights file ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})") from None
    return WeightsFile(path, architecture, config, tensors, {int(k): v for k, v in id2label.items()}
                       if isinstance(id2label, dict) else {}, image_processor or {}, provenance or {})
