"""Golden references: every intermediate tensor of one run, written to a file, and the comparison of two runs.

A port of MobileNet to C, Rust, JS or a microcontroller is checked layer by layer: run the port and a
reference on the same input, write every intermediate tensor under its transformers module path
(e.g. "mobilenet_v2.layer.3.conv_3x3.normalization"), and compare the two files tensor by tensor in
network order. The first tensor that diverges names the layer with the bug.

The file is HDF5, npz, safetensors or a flat binary (docs/golden_format.md, for readers and writers in
other languages); in HDF5:

    /                       root attributes: format "mobilenet-np-golden", format_version 1, producer,
                            architecture, config (JSON), weights_source, weights_sha256, dtype,
                            input (JSON), library_versions (JSON), layout "NCHW"
    /tensors/<name>         one dataset per recorded tensor, NCHW, with an int attribute `index`:
                            its position in network order (0 = pixel_values)

and the other formats hold the same attributes as their metadata. Tensors are written as the network
computes them (GoldenWriter, a `record` callback) and read one at a time (open_golden), so neither side
holds a whole file in memory. Here: recording and the file; golden_io: the four formats;
golden_compare: the comparison and its reports (re-exported here).

Three producers write it: `mobilenet-np golden` (this package, float32 or float64),
`python -m weights_tools golden-torch` (transformers + PyTorch, through forward hooks) and any port.
`mobilenet-np compare` reads two of them.
"""

from __future__ import annotations

import fnmatch
import json
import platform
import re
import sys
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from ..fileio import file_sha256  # noqa: F401  (part of this API: the weights_sha256 attribute)
from . import golden_io
from .golden_compare import (  # noqa: F401  (the comparison is part of this module's API)
    CHUNK_ELEMENTS, DEFAULT_ATOL, DEFAULT_RTOL, LAYOUTS, MISSING_IN_CANDIDATE, MISSING_IN_REFERENCE, NHWC_HINT, OK, OUT_OF_TOLERANCE,
    PROBLEM_STATUSES, SHAPE_MISMATCH, Comparison, TensorComparison, channels_last, compare_goldens, compare_tensors,
    comparison_to_json, cosine_similarity, format_table, provenance_warnings, summary_lines)
from .golden_io import GoldenError
from .golden_io import listing as _some

FORMAT_NAME = "mobilenet-np-golden"
FORMAT_VERSION = 1
INPUT_NAME = "pixel_values"            # the input: always recorded, always first
TENSORS_GROUP, INDEX_ATTRIBUTE = golden_io.TENSORS_GROUP, golden_io.INDEX_ATTRIBUTE   # the HDF5 layout
JSON_ATTRIBUTES = ("config", "input", "library_versions", "quantization")  # root attributes holding JSON
DTYPES = {"float32": np.float32, "float64": np.float64}



# --------------------------------------------------------------------------------------------------
# inputs and recording
# --------------------------------------------------------------------------------------------------

SEEDED_INPUT_GENERATOR = "numpy.random.default_rng(seed).uniform(-1, 1, (N, C, H, W)) as float32"


def seeded_pixel_values(seed: int, height: int, width: int, num_channels: int = 3, batch_size: int = 1,
                        dtype=np.float32) -> np.ndarray:
    """Random pixel values (N, C, H, W) in [-1, 1), the range of MobileNet's normalized images.

    The values are drawn in float32 and then cast to `dtype`, so a float32 run and a float64 run of the
    same seed see exactly the same input (every float32 is a float64). `golden-torch` calls this too,
    so the same seed gives the same input on both sides.
    """
    if height < 1 or width < 1 or num_channels < 1 or batch_size < 1:
        raise GoldenError(f"seeded input needs positive sizes, got (N, C, H, W) = "
                          f"({batch_size}, {num_channels}, {height}, {width})")
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, size=(batch_size, num_channels, height, width)).astype(np.float32)  # (N, C, H, W)
    return x.astype(dtype)


def seeded_input(seed: int, height: int, width: int, num_channels: int = 3, dtype=np.float32):
    """(pixel values (1, C, H, W), the `input` attribute describing them) for `--seed`."""
    pixel_values = seeded_pixel_values(seed, height, width, num_channels, dtype=dtype)
    info = {"source": "seed", "seed": int(seed), "generator": SEEDED_INPUT_GENERATOR,
            "shape": list(pixel_values.shape)}
    return pixel_values, info


def golden_attributes(producer: str, architecture: str, config: dict[str, Any], weights_source: str,
                      weights_sha256: str, dtype: str, input_info: dict[str, Any],
                      versions: dict[str, str]) -> dict[str, Any]:
    """The root attributes of a golden file (docs/golden_format.md), apart from format and format_version."""
    return {"producer": producer, "architecture": architecture, "config": config,
            "weights_source": str(weights_source), "weights_sha256": weights_sha256, "dtype": dtype,
            "input": input_info, "library_versions": versions, "layout": "NCHW"}


class Recording:
    """A `record(name, tensor)` callback that keeps a copy of every tensor, in the order they come.

    Names must be unique: a name recorded twice means two modules share a path, and the golden file
    could not say which tensor it holds.
    """

    def __init__(self) -> None:
        self.tensors: dict[str, np.ndarray] = {}

    def __call__(self, name: str, tensor) -> None:
        if name in self.tensors:
            raise GoldenError(f"tensor {name!r} was recorded twice (every module path must be unique)")
        self.tensors[name] = np.array(tensor, copy=True)


def record_model(model, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
    """Run a mobilenet_np model once and return {module path: tensor} for every intermediate tensor."""
    recording = Recording()
    model(pixel_values, record=recording)
    return recording.tensors


def library_versions(*packages: str) -> dict[str, str]:
    """{"python": ..., package: version} for numpy, h5py, mobilenet-np and the `packages` asked for."""
    versions = {"python": platform.python_version()}
    for package in ("numpy", "h5py", "mobilenet-np", *packages):
        try:
            versions[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


# --------------------------------------------------------------------------------------------------
# the file: written tensor by tensor while the network runs, read tensor by tensor
# --------------------------------------------------------------------------------------------------

def layer_selector(patterns: Iterable[str] | None) -> Callable[[str], bool]:
    """name -> whether to record it: `pixel_values` always, other names when any pattern matches.

    A pattern is a shell glob matched against the whole module path ("mobilenet_v2.layer.*.conv_3x3",
    "*.normalization"), or `re:REGEX`, a Python regular expression searched anywhere in the path
    ("re:layer\\.1[0-5]$"). No patterns: every name.
    """
    patterns = list(patterns or [])
    if not patterns:
        return lambda name: True
    tests = []
    for pattern in patterns:
        if pattern.startswith("re:"):
            try:
                tests.append(re.compile(pattern[3:]).search)
            except re.error as e:
                raise GoldenError(f"--layers {pattern!r}: not a regular expression ({e})") from None
        else:
            tests.append(lambda name, glob=pattern: fnmatch.fnmatchcase(name, glob))
    return lambda name: name == INPUT_NAME or any(test(name) for test in tests)


class GoldenWriter:
    """A `record(name, tensor)` callback that writes each tensor to the golden file as it comes.

        with GoldenWriter("golden.npz", attrs) as record:
            model(pixel_values, record=record)

    The file is written under a temporary name and renamed when the `with` block ends without error;
    nothing is kept in memory (golden_io's writers). `layers` (patterns, see layer_selector) records a
    subset; a selection that matches nothing but the input is an error.
    """

    def __init__(self, path, attrs: dict[str, Any], file_format: str | None = None, overwrite: bool = False,
                 compression: str | None = None, layers: Iterable[str] | None = None) -> None:
        self.path = Path(path)
        self.patterns = list(layers or [])
        self.selected = layer_selector(self.patterns)
        self.seen: set[str] = set()
        metadata = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **attrs}
        self.file_format = file_format or golden_io.format_of(self.path)
        try:
            self.writer = golden_io.open_writer(self.path, self.file_format, metadata,
                                                overwrite=overwrite, compression=compression)
        except golden_io.TensorFileError as e:
            raise GoldenError(str(e)) from None

    def __call__(self, name: str, tensor) -> None:
        if name in self.seen:
            raise GoldenError(f"tensor {name!r} was recorded twice (every module path must be unique)")
        self.seen.add(name)
        if self.selected(name):
            try:
                self.writer.write(name, tensor)
            except golden_io.TensorFileError as e:
                raise GoldenError(str(e)) from None

    @property
    def names(self) -> list[str]:
        """The names written so far, in order."""
        return self.writer.names

    def __enter__(self) -> "GoldenWriter":
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        if kind is None and self.patterns and len(self.writer.names) <= 1:
            try:
                raise GoldenError(f"--layers {' '.join(self.patterns)}: matched none of the {len(self.seen)} tensors "
                                  f"(e.g. {_some(sorted(self.seen - {INPUT_NAME}), 3)})")
            except GoldenError:
                self.writer.__exit__(*sys.exc_info())
                raise
        try:
            return self.writer.__exit__(kind, error, traceback)
        except golden_io.TensorFileError as e:
            raise GoldenError(str(e)) from None


@dataclass
class Golden:
    """A golden reference in memory: tensors in network order and the root attributes (JSON ones decoded).

    It answers what an open file (GoldenFile) answers -- names, shape(name), read(name) -- so that
    compare_goldens takes either.
    """

    tensors: dict[str, np.ndarray]
    attrs: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def label(self) -> str:
        """How to name this file in messages: its path, or its producer."""
        return str(self.path) if self.path else str(self.attrs.get("producer", "golden"))

    @property
    def names(self) -> list[str]:
        return list(self.tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return np.shape(self.tensors[name])

    def read(self, name: str) -> np.ndarray:
        return np.asarray(self.tensors[name])


class GoldenFile(Golden):
    """An open golden file of any format (h5, npz, safetensors, bin): attrs and names now, tensors on read()."""

    def __init__(self, path) -> None:
        path = Path(path)
        if not path.is_file():
            raise GoldenError(f"{path}: no such golden file" + (" (it is a folder)" if path.is_dir() else ""))
        checked: dict[str, Any] = {}
        try:
            self.reader = golden_io.open_reader(path, check=lambda metadata: checked.update(
                _checked_attrs(path, metadata)))
        except GoldenError:
            raise
        except golden_io.TensorFileError as e:
            raise GoldenError(str(e)) from None
        super().__init__({}, checked, path)
        if not self.reader.names:
            self.close()
            raise GoldenError(f"{path}: holds no tensors" + (f" (no datasets in /{golden_io.TENSORS_GROUP})"
                                                              if self.reader.file_format == "h5" else ""))

    @property
    def names(self) -> list[str]:
        return self.reader.names

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.reader.shape(name))

    def read(self, name: str) -> np.ndarray:
        try:
            tensor = self.reader.read(name)
        except golden_io.TensorFileError as e:
            raise GoldenError(str(e)) from None
        if tensor.dtype.kind not in "fiu":
            raise GoldenError(f"{self.path}: tensor {name} has dtype {tensor.dtype}, expected a real number type "
                              "(float32, float64)")
        return tensor

    def close(self) -> None:
        self.reader.close()

    def __enter__(self) -> "GoldenFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _checked_attrs(path: Path, metadata: dict[str, Any]) -> dict[str, Any]:
    """The root attributes: format and version checked, JSON ones decoded (safetensors stores only strings)."""
    attrs = dict(metadata)
    if attrs.get("format") != FORMAT_NAME:
        raise GoldenError(f"{path}: root attribute 'format' is {attrs.get('format')!r}, expected {FORMAT_NAME!r}")
    version = attrs.get("format_version")
    if isinstance(version, str) and version.isdigit():
        version = attrs["format_version"] = int(version)
    if not isinstance(version, int) or version != FORMAT_VERSION:
        raise GoldenError(f"{path}: format_version {version!r} is not supported (this mobilenet_np reads "
                          f"version {FORMAT_VERSION})")
    for key in JSON_ATTRIBUTES:
        if isinstance(attrs.get(key), str):
            try:
                attrs[key] = json.loads(attrs[key])
            except json.JSONDecodeError as e:
                raise GoldenError(f"{path}: root attribute {key!r} is not valid JSON ({e})") from None
    return attrs


def open_golden(path) -> GoldenFile:
    """Open a golden file of any format; check its attributes; read tensors later, one at a time."""
    return GoldenFile(path)


def read_golden(path) -> Golden:
    """Read a whole golden file into memory (small files; compare_goldens reads one tensor at a time)."""
    with open_golden(path) as f:
        return Golden({name: f.read(name) for name in f.names}, f.attrs, f.path)


def save_golden(path, tensors: dict[str, np.ndarray], attrs: dict[str, Any], overwrite: bool = False,
                file_format: str | None = None, compression: str | None = None) -> Path:
    """Write a golden file atomically. `tensors` must be in network order; dict/list attrs become JSON.

    `format` and `format_version` are written here; everything else in `attrs` is stored as given.
    The format is `file_format` (h5, npz, safetensors, bin), else the file name's ending, else h5.
    """
    if not tensors:
        raise GoldenError(f"{path}: no tensors to write")
    with GoldenWriter(path, attrs, file_format, overwrite=overwrite, compression=compression) as record:
        for name, tensor in tensors.items():
            record(name, tensor)
    return Path(path)
