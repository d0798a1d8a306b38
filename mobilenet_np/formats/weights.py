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

Format version 2 adds integer networks (a quantized TFLite graph imported with --quantized):

      numerics             "float" | "integer"      (version 2 only; version 1 files are "float")
    /tensors/<key>         integer files: the weights as uint8 / int8 codes (PyTorch layout), biases int32
    /quantization/<name>   one empty group per quantized tensor (a weight, a bias, or an activation under
                           its transformers module path), its attributes:
        dtype              "uint8" | "int8" | "int32" | "int64"
        scale              float32 (K,)   real = scale * (q - zero_point); K = 1, or one per channel
        zero_point         int64 (K,)     (an index tensor, ARG_MAX's labels: int64, scale 1, zero point 0)
        axis               int64: -1 per tensor, else the per-channel axis in PyTorch layout
        op                 the TFLite op that computes the tensor ("" for weights and the network input)
        options            JSON: that op's options as the integer network needs them
        source             int64 (T,): the TFLite tensor indices that hold these codes

Float files are still written as version 1 (readable by version-1 readers); integer files as version 2.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import WeightsError
from ..fileio import atomic_output, open_hdf5
from ..registry import ARCHITECTURES, NUMERICS

FORMAT_NAME = "mobilenet-np-weights"
FORMAT_VERSION = 1                  # what float files are written as
QUANTIZED_FORMAT_VERSION = 2        # integer files (and the newest version this module reads)
READABLE_VERSIONS = (1, 2)
TENSORS_GROUP = "tensors"
QUANTIZATION_GROUP = "quantization"
QUANTIZED_DTYPES = ("uint8", "int8", "int32", "int64")


@dataclass(frozen=True, eq=False)
class TensorQuantization:
    """How one integer tensor of an integer network is encoded, and which TFLite op computes it.

    real = scale * (q - zero_point), per tensor (axis None, one scale) or per channel along `axis`
    (PyTorch layout). An index tensor (ARG_MAX's labels) is int64 with scale 1 and zero point 0.
    """

    dtype: str                                   # "uint8", "int8", "int32" or "int64"
    scale: np.ndarray                            # float32 (K,)
    zero_point: np.ndarray                       # int64 (K,)
    axis: int | None = None
    op: str = ""                                 # e.g. "CONV_2D"; "" for weights and the network input
    options: dict = field(default_factory=dict)  # e.g. {"activation": "relu6", "padding": "same"}
    source: tuple[int, ...] = ()                 # TFLite tensor indices holding these codes


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
    numerics: str = "float"
    quantization: dict[str, TensorQuantization] = field(default_factory=dict)   # integer files only


def _string_attribute(f, name: str, text: str) -> None:
    """A fixed-length UTF-8 string attribute. Fixed, not variable-length: its bytes are stored with the
    attribute itself, so a reader never follows a heap pointer that a damaged file could corrupt
    (HDF5 can loop forever on a corrupted variable-length string)."""
    import h5py

    data = text.encode("utf-8")
    f.attrs.create(name, data=data, dtype=h5py.string_dtype("utf-8", max(len(data), 1)))


def save_weights(path, tensors: dict[str, np.ndarray], architecture: str, config: dict[str, Any], *,
                 image_processor: dict[str, Any] | None = None, provenance: dict[str, Any] | None = None,
                 overwrite: bool = False, quantization: dict[str, TensorQuantization] | None = None) -> Path:
    """Write a weights file atomically (a temporary file beside `path`, then a rename).

    With `quantization` (an integer network) the file is format version 2, numerics "integer"."""
    import h5py

    if quantization:
        for name, q in quantization.items():
            _check_quantization(name, q, path)
    if architecture not in ARCHITECTURES:
        raise WeightsError(f"{path}: unknown architecture {architecture!r}, expected one of {sorted(ARCHITECTURES)}")
    id2label = {str(k): v for k, v in config.get("id2label", {}).items()}
    path = Path(path)
    with atomic_output(path, overwrite=overwrite) as tmp:
        # libver v108: attributes over 64 KiB (the config with 1001 labels) go to dense storage.
        with h5py.File(tmp, "w", libver=("v108", "latest")) as f:
            _string_attribute(f, "format", FORMAT_NAME)
            f.attrs["format_version"] = QUANTIZED_FORMAT_VERSION if quantization else FORMAT_VERSION
            if quantization:
                _string_attribute(f, "numerics", "integer")
            _string_attribute(f, "architecture", architecture)
            _string_attribute(f, "config", json.dumps(config, sort_keys=True))
            _string_attribute(f, "id2label", json.dumps(id2label))
            _string_attribute(f, "image_processor", json.dumps(image_processor or {}, sort_keys=True))
            _string_attribute(f, "provenance", json.dumps(provenance or {}, sort_keys=True))
            group = f.create_group(TENSORS_GROUP)
            for key, value in tensors.items():
                group.create_dataset(key, data=np.asarray(value))
            if quantization:
                records = f.create_group(QUANTIZATION_GROUP)
                for name, q in quantization.items():
                    record = records.create_group(name)
                    _string_attribute(record, "dtype", q.dtype)
                    record.attrs["scale"] = np.asarray(q.scale, np.float32)
                    record.attrs["zero_point"] = np.asarray(q.zero_point, np.int64)
                    record.attrs["axis"] = np.int64(-1 if q.axis is None else q.axis)
                    _string_attribute(record, "op", q.op)
                    _string_attribute(record, "options", json.dumps(q.options, sort_keys=True))
                    record.attrs["source"] = np.asarray(q.source, np.int64)
    return path


def _check_quantization(name: str, q: TensorQuantization, path) -> TensorQuantization:
    """The record as stored (float32 scales, int64 zero points), or a WeightsError naming the tensor."""
    where = f"{path}: /{QUANTIZATION_GROUP}/{name}"
    if q.dtype not in QUANTIZED_DTYPES:
        raise WeightsError(f"{where}: dtype {q.dtype!r}, expected one of {list(QUANTIZED_DTYPES)}")
    scale, zero_point = np.asarray(q.scale), np.asarray(q.zero_point)
    if scale.ndim != 1 or not scale.size or zero_point.shape != scale.shape or scale.dtype.kind != "f" \
            or zero_point.dtype.kind not in "iu":
        raise WeightsError(f"{where}: scale and zero_point must be 1-D float / integer arrays of one length, "
                           f"got {scale.dtype} {scale.shape} and {zero_point.dtype} {zero_point.shape}")
    if not np.all(np.isfinite(scale)) or not np.all(scale > 0):
        raise WeightsError(f"{where}: scales must be finite and positive")
    if q.axis is None and scale.size != 1:
        raise WeightsError(f"{where}: {scale.size} scales with axis {q.axis} (one scale per tensor, or an axis "
                           "for per-channel scales)")
    if not isinstance(q.options, dict):
        raise WeightsError(f"{where}: options must be a JSON object")
    return TensorQuantization(q.dtype, scale.astype(np.float32), zero_point.astype(np.int64), q.axis, q.op,
                              dict(q.options), tuple(int(i) for i in q.source))


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
            if not isinstance(version, (int, np.integer)) or int(version) not in READABLE_VERSIONS:
                version = int(version) if isinstance(version, np.integer) else version  # 3, not np.int64(3)
                raise WeightsError(f"{path}: format_version {version!r} is not supported (this mobilenet_np reads "
                                   f"versions {', '.join(map(str, READABLE_VERSIONS))}); upgrade mobilenet-np or "
                                   "re-convert the weights")
            version = int(version)
            numerics = "float"
            if version >= 2:
                numerics = _attribute(attrs, "numerics", path)
                numerics = numerics.decode() if isinstance(numerics, bytes) else numerics
                if numerics not in NUMERICS:
                    raise WeightsError(f"{path}: root attribute 'numerics' is {numerics!r}, expected one of {list(NUMERICS)}")
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
            quantization = _read_quantization(f, path) if numerics == "integer" else {}
    except WeightsError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:  # truncated or damaged HDF5
        raise WeightsError(f"{path}: damaged weights file ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})") from None
    return WeightsFile(path, architecture, config, tensors, {int(k): v for k, v in id2label.items()}
                       if isinstance(id2label, dict) else {}, image_processor or {}, provenance or {},
                       version, numerics, quantization)


def _read_quantization(f, path: Path) -> dict[str, TensorQuantization]:
    """The /quantization records of an integer file, each checked."""
    import h5py

    group = f.get(QUANTIZATION_GROUP)
    if not isinstance(group, h5py.Group) or not len(group):
        raise WeightsError(f"{path}: an integer weights file needs the /{QUANTIZATION_GROUP} group of its tensors' "
                           "scales and zero points")
    records = {}
    for name, record in group.items():
        where = f"/{QUANTIZATION_GROUP}/{name}"
        if not isinstance(record, h5py.Group):
            raise WeightsError(f"{path}: {where} is not a group")
        attrs = record.attrs
        missing = [a for a in ("dtype", "scale", "zero_point", "axis") if a not in attrs]
        if missing:
            raise WeightsError(f"{path}: {where} has no attribute {missing[0]!r}")
        text = lambda key: (lambda v: v.decode() if isinstance(v, bytes) else str(v))(attrs.get(key, b""))  # noqa: E731
        try:
            options = json.loads(text("options") or "{}")
        except json.JSONDecodeError as e:
            raise WeightsError(f"{path}: {where}: attribute 'options' is not valid JSON ({e})") from None
        axis = int(attrs["axis"])
        q = TensorQuantization(text("dtype"), np.atleast_1d(attrs["scale"]), np.atleast_1d(attrs["zero_point"]),
                               None if axis < 0 else axis, text("op"), options,
                               tuple(np.atleast_1d(attrs.get("source", np.zeros(0, np.int64))).tolist()))
        records[name] = _check_quantization(name, q, path)
    return records
