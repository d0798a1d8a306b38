"""Golden references: every intermediate tensor of one run, written to HDF5, and the comparison of two runs.

A port of MobileNet to C, Rust, JS or a microcontroller is checked layer by layer: run the port and a
reference on the same input, write every intermediate tensor under its transformers module path
(e.g. "mobilenet_v2.layer.3.conv_3x3.normalization"), and compare the two files tensor by tensor in
network order. The first tensor that diverges names the layer with the bug.

The file layout is documented in docs/golden_format.md (for readers and writers in other languages):

    /                       root attributes: format "mobilenet-np-golden", format_version 1, producer,
                            architecture, config (JSON), weights_source, weights_sha256, dtype,
                            input (JSON), library_versions (JSON), layout "NCHW"
    /tensors/<name>         one dataset per recorded tensor, NCHW, with an int attribute `index`:
                            its position in network order (0 = pixel_values)

Three producers write it: `mobilenet-np golden` (this package, float32 or float64),
`python -m weights_tools golden-torch` (transformers + PyTorch, through forward hooks) and any port.
`mobilenet-np compare` reads two of them.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .. import tables
from ..errors import MobileNetError
from ..fileio import atomic_output, file_sha256, open_hdf5  # noqa: F401  (file_sha256: part of this API)

FORMAT_NAME = "mobilenet-np-golden"
FORMAT_VERSION = 1
TENSORS_GROUP = "tensors"
INDEX_ATTRIBUTE = "index"
JSON_ATTRIBUTES = ("config", "input", "library_versions")  # root attributes holding a JSON document
DTYPES = {"float32": np.float32, "float64": np.float64}

# Default tolerances of `compare`: an element is out of tolerance when |cand - ref| > atol + rtol * |ref|.
# They accept float32 rounding (PyTorch vs NumPy, float32 vs float64) through whole MobileNets, trained
# or random, and still catch a BatchNorm epsilon of 1e-5 instead of 1e-3; docs/golden_format.md shows the
# errors they were chosen from.
DEFAULT_RTOL = 1e-3
DEFAULT_ATOL = 1e-3


class GoldenError(MobileNetError, ValueError):
    """A golden file is unreadable or malformed, or two golden files cannot be compared tensor by tensor."""


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
# the file
# --------------------------------------------------------------------------------------------------

@dataclass
class Golden:
    """The content of a golden file: tensors in network order and the root attributes (JSON ones decoded)."""

    tensors: dict[str, np.ndarray]
    attrs: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def label(self) -> str:
        """How to name this file in messages: its path, or its producer."""
        return str(self.path) if self.path else str(self.attrs.get("producer", "golden"))


def save_golden(path, tensors: dict[str, np.ndarray], attrs: dict[str, Any], overwrite: bool = False) -> Path:
    """Write a golden file atomically. `tensors` must be in network order; dict/list attrs become JSON.

    `format` and `format_version` are written here; everything else in `attrs` is stored as given.
    """
    import h5py

    if not tensors:
        raise GoldenError(f"{path}: no tensors to write")
    for name in tensors:
        if not name or "/" in name or name in (".", ".."):
            raise GoldenError(f"{path}: tensor name {name!r} cannot be an HDF5 dataset name (no '/', not empty)")
    path = Path(path)
    with atomic_output(path, overwrite=overwrite) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT_NAME
            f.attrs["format_version"] = FORMAT_VERSION
            for key, value in attrs.items():
                f.attrs[key] = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value
            # track_order: h5py and H5Literate(H5_INDEX_CRT_ORDER) list the datasets in network order;
            # the `index` attribute says the same for readers that cannot ask for creation order.
            group = f.create_group(TENSORS_GROUP, track_order=True)
            for index, (name, tensor) in enumerate(tensors.items()):
                dataset = group.create_dataset(name, data=np.asarray(tensor))
                dataset.attrs[INDEX_ATTRIBUTE] = np.int64(index)
    return path


def _decode(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def read_golden(path) -> Golden:
    """Read and check a golden file; any problem raises one GoldenError naming the file and the field."""
    import h5py

    path = Path(path)
    f = open_hdf5(path, GoldenError, "golden file")
    try:
        with f:
            attrs = {key: _decode(value) for key, value in f.attrs.items()}
            if attrs.get("format") != FORMAT_NAME:
                raise GoldenError(f"{path}: root attribute 'format' is {attrs.get('format')!r}, expected {FORMAT_NAME!r}")
            version = attrs.get("format_version")
            if not isinstance(version, int) or version != FORMAT_VERSION:
                raise GoldenError(f"{path}: format_version {version!r} is not supported (this mobilenet_np reads "
                                  f"version {FORMAT_VERSION})")
            for key in JSON_ATTRIBUTES:
                if isinstance(attrs.get(key), str):
                    try:
                        attrs[key] = json.loads(attrs[key])
                    except json.JSONDecodeError as e:
                        raise GoldenError(f"{path}: root attribute {key!r} is not valid JSON ({e})") from None
            group = f.get(TENSORS_GROUP)
            if not isinstance(group, h5py.Group):
                raise GoldenError(f"{path}: no group /{TENSORS_GROUP} with the recorded tensors")
            indexed = [_read_dataset(path, name, dataset) for name, dataset in group.items()]
    except GoldenError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:  # truncated or damaged HDF5
        raise GoldenError(f"{path}: damaged golden file ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})") from None
    if not indexed:
        raise GoldenError(f"{path}: /{TENSORS_GROUP} holds no tensors")
    indexed.sort(key=lambda item: item[0])
    indices = [index for index, _, _ in indexed]
    if indices != list(range(len(indexed))):
        raise GoldenError(f"{path}: the '{INDEX_ATTRIBUTE}' attributes of /{TENSORS_GROUP}/* must be 0 .. "
                          f"{len(indexed) - 1}, each once; got {_some(sorted(indices))}")
    return Golden({name: tensor for _, name, tensor in indexed}, attrs, path)


def _read_dataset(path: Path, name: str, dataset) -> tuple[int, str, np.ndarray]:
    import h5py

    where = f"{path}: /{TENSORS_GROUP}/{name}"
    if not isinstance(dataset, h5py.Dataset):
        raise GoldenError(f"{where} is not a dataset")
    index = _decode(dataset.attrs.get(INDEX_ATTRIBUTE))
    if not isinstance(index, int):
        raise GoldenError(f"{where} has no integer attribute '{INDEX_ATTRIBUTE}' (its position in network order)")
    tensor = np.asarray(dataset[()])
    if tensor.dtype.kind not in "fiu":
        raise GoldenError(f"{where} has dtype {tensor.dtype}, expected a real number type (float32, float64)")
    return index, name, tensor


def _some(items: list, limit: int = 6) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


# --------------------------------------------------------------------------------------------------
# comparison
# --------------------------------------------------------------------------------------------------

OK = "ok"
OUT_OF_TOLERANCE = "out_of_tolerance"
MISSING_IN_CANDIDATE = "missing_in_candidate"
MISSING_IN_REFERENCE = "missing_in_reference"
SHAPE_MISMATCH = "shape_mismatch"
PROBLEM_STATUSES = (MISSING_IN_CANDIDATE, MISSING_IN_REFERENCE, SHAPE_MISMATCH)


@dataclass
class TensorComparison:
    """How far one candidate tensor is from the reference tensor of the same name.

    max_rel_error is max|cand - ref| / max|ref|: the largest error relative to the tensor's scale (an
    element-wise ratio would blow up on the many exact zeros after ReLU). The metrics are None when
    the tensors cannot be compared (missing on one side, different shapes).
    """

    index: int
    name: str
    status: str
    shape: tuple[int, ...] | None
    candidate_shape: tuple[int, ...] | None
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    num_out_of_tolerance: int | None = None
    out_of_tolerance_fraction: float | None = None
    cosine_similarity: float | None = None

    @property
    def is_problem(self) -> bool:
        return self.status in PROBLEM_STATUSES


def compare_tensors(reference: np.ndarray, candidate: np.ndarray, rtol: float, atol: float) -> dict[str, Any]:
    """The error metrics of `candidate` against `reference` (same shape), computed in float64.

    An element is out of tolerance when |cand - ref| > atol + rtol * |ref| (NaN always is).
    """
    ref = np.asarray(reference, dtype=np.float64).ravel()
    cand = np.asarray(candidate, dtype=np.float64).ravel()
    if ref.size == 0:
        return {"max_abs_error": 0.0, "max_rel_error": 0.0, "num_out_of_tolerance": 0,
                "out_of_tolerance_fraction": 0.0, "cosine_similarity": 1.0}
    with np.errstate(invalid="ignore"):             # inf - inf and 0 * inf give NaN: an answer here, not a bug
        error = np.abs(cand - ref)
        num_out = int(np.count_nonzero(~(error <= atol + rtol * np.abs(ref))))   # ~(<=): NaN counts as out
    max_abs = float(error.max())                              # NaN when any element is NaN
    scale = float(np.abs(ref).max())
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    return {"max_abs_error": max_abs, "max_rel_error": max_rel, "num_out_of_tolerance": num_out,
            "out_of_tolerance_fraction": num_out / ref.size, "cosine_similarity": cosine_similarity(ref, cand)}


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """sum(a * b) / sqrt(sum(a^2) * sum(b^2)) of two flat float64 arrays.

    1 when both are all zeros, 0 when only one is, NaN when either holds NaN or Inf.
    """
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("nan")
    aa, bb = float(a @ a), float(b @ b)
    if aa == 0 or bb == 0:
        return 1.0 if aa == bb else 0.0
    return min(1.0, float(a @ b) / np.sqrt(aa * bb))        # one square root: exactly 1.0 for equal tensors


@dataclass
class Comparison:
    """The comparison of two golden files, one row per tensor, in the reference's network order.

    Tensors only the candidate has come last, in the candidate's order.
    """

    reference: Golden
    candidate: Golden
    rtol: float
    atol: float
    rows: list[TensorComparison]

    @property
    def first_divergence(self) -> TensorComparison | None:
        """The first tensor, in network order, with elements out of tolerance."""
        return next((row for row in self.rows if row.status == OUT_OF_TOLERANCE), None)

    @property
    def problems(self) -> list[TensorComparison]:
        """Tensors that could not be compared: missing on one side or with different shapes."""
        return [row for row in self.rows if row.is_problem]

    @property
    def passed(self) -> bool:
        return all(row.status == OK for row in self.rows)

    def problem_message(self) -> str:
        """One line naming every tensor that could not be compared."""
        parts = []
        for status, what in ((MISSING_IN_CANDIDATE, f"missing in {self.candidate.label}"),
                             (MISSING_IN_REFERENCE, f"missing in {self.reference.label}"),
                             (SHAPE_MISMATCH, "with different shapes")):
            names = [row.name for row in self.rows if row.status == status]
            if names:
                parts.append(f"{len(names)} tensors {what} ({_some(names, 3)})")
        return "cannot compare " + "; ".join(parts)


def compare_goldens(reference: Golden, candidate: Golden, rtol: float = DEFAULT_RTOL,
                    atol: float = DEFAULT_ATOL) -> Comparison:
    """Compare every tensor of `candidate` with the tensor of the same name in `reference`."""
    if not (rtol >= 0 and atol >= 0):
        raise GoldenError(f"tolerances must be >= 0, got rtol={rtol}, atol={atol}")
    rows = []
    for name, ref in reference.tensors.items():
        index = len(rows)
        cand = candidate.tensors.get(name)
        if cand is None:
            rows.append(TensorComparison(index, name, MISSING_IN_CANDIDATE, ref.shape, None))
        elif cand.shape != ref.shape:
            rows.append(TensorComparison(index, name, SHAPE_MISMATCH, ref.shape, cand.shape))
        else:
            metrics = compare_tensors(ref, cand, rtol, atol)
            status = OK if metrics["num_out_of_tolerance"] == 0 else OUT_OF_TOLERANCE
            rows.append(TensorComparison(index, name, status, ref.shape, cand.shape, **metrics))
    for name, cand in candidate.tensors.items():
        if name not in reference.tensors:
            rows.append(TensorComparison(len(rows), name, MISSING_IN_REFERENCE, None, cand.shape))
    return Comparison(reference, candidate, rtol, atol, rows)


# --------------------------------------------------------------------------------------------------
# reports: a table for people, JSON for programs (schema in docs/golden_format.md)
# --------------------------------------------------------------------------------------------------

COMPARE_JSON_FORMAT = "mobilenet-np-compare"
COMPARE_JSON_VERSION = 1


def _finite_or_none(value):
    return value if value is None or np.isfinite(value) else None


def _file_summary(golden: Golden) -> dict[str, Any]:
    attrs = golden.attrs
    return {"path": str(golden.path) if golden.path else None, "producer": attrs.get("producer"),
            "architecture": attrs.get("architecture"), "dtype": attrs.get("dtype"),
            "weights_sha256": attrs.get("weights_sha256"), "num_tensors": len(golden.tensors)}


def comparison_to_json(comparison: Comparison) -> dict[str, Any]:
    """The comparison as a JSON-ready dict (stable keys; non-finite numbers become null)."""
    first = comparison.first_divergence
    tensors = []
    for row in comparison.rows:
        tensors.append({
            "index": row.index,
            "name": row.name,
            "status": row.status,
            "shape": list(row.shape) if row.shape is not None else None,
            "candidate_shape": list(row.candidate_shape) if row.candidate_shape is not None else None,
            "max_abs_error": _finite_or_none(row.max_abs_error),
            "max_rel_error": _finite_or_none(row.max_rel_error),
            "num_out_of_tolerance": row.num_out_of_tolerance,
            "out_of_tolerance_fraction": row.out_of_tolerance_fraction,
            "cosine_similarity": _finite_or_none(row.cosine_similarity),
        })
    return {
        "format": COMPARE_JSON_FORMAT,
        "format_version": COMPARE_JSON_VERSION,
        "reference": _file_summary(comparison.reference),
        "candidate": _file_summary(comparison.candidate),
        "rtol": comparison.rtol,
        "atol": comparison.atol,
        "passed": comparison.passed,
        "first_divergence": first.name if first else None,
        "num_tensors": len(comparison.rows),
        "num_out_of_tolerance": sum(row.status == OUT_OF_TOLERANCE for row in comparison.rows),
        "problems": [{"name": row.name, "status": row.status} for row in comparison.problems],
        "tensors": tensors,
    }


def _number(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_table(comparison: Comparison) -> str:
    """A fixed-width table, one row per tensor in network order; '>>' marks the first divergence."""
    header = ("", "#", "tensor", "shape", "max abs err", "max rel err", "out of tol", "cosine", "status")
    first = comparison.first_divergence
    rows = []
    for row in comparison.rows:
        shape = row.shape if row.shape is not None else row.candidate_shape
        shape_text = "x".join(map(str, shape)) if shape else "scalar"
        if row.status == SHAPE_MISMATCH:
            shape_text += " vs " + "x".join(map(str, row.candidate_shape))
        out = "-" if row.num_out_of_tolerance is None else \
            f"{row.num_out_of_tolerance} ({100 * row.out_of_tolerance_fraction:.3g}%)"
        rows.append((">>" if row is first else "", str(row.index), row.name, shape_text,
                     _number(row.max_abs_error, ".2e"), _number(row.max_rel_error, ".2e"), out,
                     _number(row.cosine_similarity, ".8f"), row.status))
    return tables.format_table(header, rows, align="lrllrrrrl", rule=False)


def summary_lines(comparison: Comparison) -> Iterable[str]:
    """What a person reads first: the files, the tolerances, the verdict and the first divergence."""
    ref, cand = comparison.reference, comparison.candidate
    yield f"reference: {ref.label} ({ref.attrs.get('producer', '?')}, {ref.attrs.get('dtype', '?')})"
    yield f"candidate: {cand.label} ({cand.attrs.get('producer', '?')}, {cand.attrs.get('dtype', '?')})"
    yield f"tolerance: |candidate - reference| <= {comparison.atol:g} + {comparison.rtol:g} * |reference|"
    n_out = sum(row.status == OUT_OF_TOLERANCE for row in comparison.rows)
    first = comparison.first_divergence
    if comparison.passed:
        yield f"all {len(comparison.rows)} tensors within tolerance"
    else:
        if first is not None:
            yield (f"{n_out} of {len(comparison.rows)} tensors out of tolerance; first divergence: {first.name} "
                   f"(#{first.index}, max abs error {first.max_abs_error:.3g})")
        if comparison.problems:
            yield comparison.problem_message()
