"""The comparison of two golden references, tensor by tensor, and its reports (a table, JSON).

Either side is a golden file opened with mobilenet_np.formats.golden.open_golden (any format) or one
held in memory (golden.Golden): all that is used is `names`, `shape(name)`, `read(name)`, `attrs` and
`label`. The tensors are read one pair at a time and compared in pieces, so comparing two 3 GB files
takes about as much memory as their two largest tensors. mobilenet_np.formats.golden re-exports all of
this; docs/golden_format.md defines the metrics and the JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from .. import tables
from .golden_io import GoldenError
from .golden_io import listing as _some

# Default tolerances of `compare`: an element is out of tolerance when |cand - ref| > atol + rtol * |ref|.
# They accept float32 rounding (PyTorch vs NumPy, float32 vs float64) through whole MobileNets, trained
# or random, and still catch a BatchNorm epsilon of 1e-5 instead of 1e-3; docs/golden_format.md shows the
# errors they were chosen from.
DEFAULT_RTOL = 1e-3
DEFAULT_ATOL = 1e-3


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
    the tensors cannot be compared (missing on one side, different shapes); `hint` says what a shape
    mismatch looks like (NHWC_HINT).
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
    hint: str | None = None
    unit: str = ""                   # "LSB" when both tensors are integer codes: errors count code steps

    @property
    def is_problem(self) -> bool:
        return self.status in PROBLEM_STATUSES


CHUNK_ELEMENTS = 1 << 18     # compare_tensors works on pieces of this many elements (2 MB in float64)
NHWC_HINT = "looks NHWC: transpose to NCHW"


def compare_tensors(reference: np.ndarray, candidate: np.ndarray, rtol: float, atol: float,
                    chunk: int = CHUNK_ELEMENTS) -> dict[str, Any]:
    """The error metrics of `candidate` against `reference` (same shape), computed in float64.

    An element is out of tolerance when |cand - ref| > atol + rtol * |ref| (NaN always is). The tensors
    are walked in pieces of at most `chunk` elements (`candidate` may be a transposed view), so the
    float64 temporaries stay small whatever the tensors' size.
    """
    if np.shape(reference) != np.shape(candidate):
        raise GoldenError(f"compare_tensors: shapes {np.shape(reference)} and {np.shape(candidate)} differ")
    size = int(np.size(reference))
    if size == 0:
        return {"max_abs_error": 0.0, "max_rel_error": 0.0, "num_out_of_tolerance": 0,
                "out_of_tolerance_fraction": 0.0, "cosine_similarity": 1.0}
    max_abs, scale, num_out, finite, aa, bb, ab = 0.0, 0.0, 0, True, 0.0, 0.0, 0.0
    for ref, cand in _pieces(np.asarray(reference), np.asarray(candidate), chunk):
        with np.errstate(invalid="ignore"):         # inf - inf and 0 * inf give NaN: an answer here, not a bug
            error = np.abs(cand - ref)
            num_out += int(np.count_nonzero(~(error <= atol + rtol * np.abs(ref))))   # ~(<=): NaN counts as out
        max_abs = float(np.max([max_abs, error.max()]))    # np.max: NaN once any piece has NaN
        scale = float(np.max([scale, np.abs(ref).max()]))
        finite = finite and bool(np.isfinite(ref).all() and np.isfinite(cand).all())
        if finite:
            aa, bb, ab = aa + float(ref @ ref), bb + float(cand @ cand), ab + float(ref @ cand)
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    return {"max_abs_error": max_abs, "max_rel_error": max_rel, "num_out_of_tolerance": num_out,
            "out_of_tolerance_fraction": num_out / size,
            "cosine_similarity": _cosine(aa, bb, ab) if finite else float("nan")}


def _pieces(reference: np.ndarray, candidate: np.ndarray, chunk: int):
    """Matching pieces (flat float64, at most `chunk` elements) of two arrays of one shape, in C order.

    The trailing axes that fit in `chunk` stay whole; the axis before them is cut in steps.
    """
    shape = reference.shape
    if reference.ndim == 0:
        yield reference.reshape(1).astype(np.float64), candidate.reshape(1).astype(np.float64)
        return
    axis, inner = reference.ndim, 1            # axes axis.. fit in one piece of `inner` elements
    while axis > 0 and inner * shape[axis - 1] <= chunk:
        axis, inner = axis - 1, inner * shape[axis - 1]
    if axis == 0:
        yield np.asarray(reference, np.float64).ravel(), np.asarray(candidate, np.float64).ravel()
        return
    step = max(1, chunk // inner)
    for outer in np.ndindex(*shape[:axis - 1]):
        for start in range(0, shape[axis - 1], step):
            where = outer + (slice(start, start + step),)
            yield np.asarray(reference[where], np.float64).ravel(), np.asarray(candidate[where], np.float64).ravel()


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """sum(a * b) / sqrt(sum(a^2) * sum(b^2)) of two flat float64 arrays.

    1 when both are all zeros, 0 when only one is, NaN when either holds NaN or Inf.
    """
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("nan")
    return _cosine(float(a @ a), float(b @ b), float(a @ b))


def _cosine(aa: float, bb: float, ab: float) -> float:
    if aa == 0 or bb == 0:
        return 1.0 if aa == bb else 0.0
    return min(1.0, ab / np.sqrt(aa * bb))        # one square root: exactly 1.0 for equal tensors


def channels_last(shape: tuple[int, ...]) -> tuple[int, ...]:
    """(N, C, H, W) -> (N, H, W, C): the shape an NHWC port writes for an NCHW tensor (other ranks: as is)."""
    return (shape[0], *shape[2:], shape[1]) if len(shape) >= 3 else tuple(shape)


def provenance_warnings(reference: dict[str, Any], candidate: dict[str, Any]) -> list[str]:
    """Lines saying that two golden files were not made from the same weights, input or architecture."""
    warnings = []
    for key, what in (("architecture", "architectures"), ("weights_sha256", "weights")):
        if reference.get(key) and candidate.get(key) and reference[key] != candidate[key]:
            warnings.append(f"warning: the files were made from different {what} ({key} "
                            f"{str(reference[key])[:16]} vs {str(candidate[key])[:16]})")
    inputs = [{k: v for k, v in attrs["input"].items() if k != "path"} if isinstance(attrs.get("input"), dict)
              else None for attrs in (reference, candidate)]
    if None not in inputs and inputs[0] != inputs[1]:
        differ = sorted(k for k in set(inputs[0]) | set(inputs[1]) if inputs[0].get(k) != inputs[1].get(k))
        warnings.append(f"warning: the files were made from different inputs (input attribute differs in "
                        f"{', '.join(differ)})")
    return warnings


@dataclass
class Comparison:
    """The comparison of two golden files, one row per tensor, in the reference's network order.

    Tensors only the candidate has come last, in the candidate's order. With only_common, tensors
    on one side only get no row; `not_compared` lists them.
    """

    reference: Golden
    candidate: Golden
    rtol: float
    atol: float
    rows: list[TensorComparison]
    only_common: bool = False
    layout: str = "nchw"
    warnings: list[str] = field(default_factory=list)
    not_compared: dict[str, list[str]] = field(default_factory=dict)
    lsb: int = 0

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
        hints = {row.hint for row in self.rows if row.hint}
        return "cannot compare " + "; ".join(parts) + "".join(f" ({hint}, or pass --layout nhwc)" for hint in hints)


LAYOUTS = ("nchw", "nhwc")


def quantization_of(golden: Golden, name: str) -> dict[str, Any] | None:
    """The scale and zero point a golden file stores for integer tensor `name` (its "quantization"
    attribute: {name: {"scale": [...], "zero_point": [...], "axis": k or null}}), or None."""
    table = golden.attrs.get("quantization") or {}
    return table.get(name) if isinstance(table, dict) else None


def dequantized(codes: np.ndarray, quantization: dict[str, Any]) -> np.ndarray:
    """real = scale * (code - zero_point), per tensor or per channel along `axis`, in float64."""
    scale = np.asarray(quantization["scale"], np.float64)
    zero_point = np.asarray(quantization["zero_point"], np.float64)
    axis = quantization.get("axis")
    if axis is not None and scale.size > 1:
        shape = [1] * codes.ndim
        shape[axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    return scale * (codes.astype(np.float64) - zero_point)


def _integer(array: np.ndarray) -> bool:
    return array.dtype.kind in "iu"


def compare_goldens(reference: Golden, candidate: Golden, rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL,
                    only_common: bool = False, layout: str = "nchw", lsb: int = 0) -> Comparison:
    """Compare every tensor of `candidate` with the tensor of the same name in `reference`.

    Integer tensors on both sides (the codes of an integer-only network) are compared in LSB: an element
    is out of tolerance when |cand - ref| > lsb code steps (0 by default: bit-exact expected). An integer
    tensor against a float one is dequantized first with the scale and zero point its file stores, then
    compared with rtol and atol.

    Either may be in memory (Golden) or an open file (GoldenFile): the tensors are read one pair at a
    time. only_common: compare the names both have, list the others in `not_compared`. layout "nhwc":
    the candidate's tensors of rank >= 3 are channels-last and are transposed to NCHW to be compared.
    """
    if isinstance(lsb, bool) or not isinstance(lsb, int) or lsb < 0:
        raise GoldenError(f"the LSB tolerance must be an int >= 0, got {lsb!r}")
    if not (rtol >= 0 and atol >= 0):
        raise GoldenError(f"tolerances must be >= 0, got rtol={rtol}, atol={atol}")
    if layout not in LAYOUTS:
        raise GoldenError(f"layout {layout!r}, expected one of {', '.join(LAYOUTS)}")
    candidate_names, reference_names = set(candidate.names), set(reference.names)
    rows: list[TensorComparison] = []
    for name in reference.names:
        ref_shape = tuple(reference.shape(name))
        if name not in candidate_names:
            if not only_common:
                rows.append(TensorComparison(len(rows), name, MISSING_IN_CANDIDATE, ref_shape, None))
            continue
        cand_shape = tuple(candidate.shape(name))
        expected = channels_last(ref_shape) if layout == "nhwc" else ref_shape
        if cand_shape != expected:
            hint = NHWC_HINT if layout == "nchw" and len(ref_shape) >= 3 and cand_shape == channels_last(ref_shape) \
                else None
            rows.append(TensorComparison(len(rows), name, SHAPE_MISMATCH, ref_shape, cand_shape, hint=hint))
            continue
        cand = candidate.read(name)
        if layout == "nhwc" and cand.ndim >= 3:
            cand = np.moveaxis(cand, -1, 1)                 # (N, H, W, C) -> (N, C, H, W), a view
        ref = reference.read(name)
        unit = ""
        if _integer(ref) and _integer(cand):
            metrics, unit = compare_tensors(ref, cand, 0.0, float(lsb)), "LSB"      # exact in float64 below 2^53
        else:
            for side, golden in (("reference", reference), ("candidate", candidate)):
                array = ref if side == "reference" else cand
                if _integer(array) and quantization_of(golden, name) is not None:
                    array = dequantized(array, quantization_of(golden, name))
                    ref, cand = (array, cand) if side == "reference" else (ref, array)
            metrics = compare_tensors(ref, cand, rtol, atol)
        status = OK if metrics["num_out_of_tolerance"] == 0 else OUT_OF_TOLERANCE
        rows.append(TensorComparison(len(rows), name, status, ref_shape, cand_shape, unit=unit, **metrics))
    only_in_candidate = [name for name in candidate.names if name not in reference_names]
    if not only_common:
        rows += [TensorComparison(len(rows) + i, name, MISSING_IN_REFERENCE, None, tuple(candidate.shape(name)))
                 for i, name in enumerate(only_in_candidate)]
    not_compared = {"only_in_reference": [n for n in reference.names if n not in candidate_names],
                    "only_in_candidate": only_in_candidate} if only_common else {}
    return Comparison(reference, candidate, rtol, atol, rows, only_common, layout,
                      provenance_warnings(reference.attrs, candidate.attrs), not_compared, lsb)


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
            "hint": row.hint,
            "unit": row.unit or None,
        })
    return {
        "format": COMPARE_JSON_FORMAT,
        "format_version": COMPARE_JSON_VERSION,
        "reference": _file_summary(comparison.reference),
        "candidate": _file_summary(comparison.candidate),
        "rtol": comparison.rtol,
        "atol": comparison.atol,
        "lsb": comparison.lsb,
        "passed": comparison.passed,
        "first_divergence": first.name if first else None,
        "num_tensors": len(comparison.rows),
        "num_out_of_tolerance": sum(row.status == OUT_OF_TOLERANCE for row in comparison.rows),
        "problems": [{"name": row.name, "status": row.status} for row in comparison.problems],
        "warnings": comparison.warnings,
        "only_common": comparison.only_common,
        "layout": comparison.layout,
        "not_compared": comparison.not_compared or None,
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
        status = row.status + (f" ({row.hint})" if row.hint else "")
        out = "-" if row.num_out_of_tolerance is None else \
            f"{row.num_out_of_tolerance} ({100 * row.out_of_tolerance_fraction:.3g}%)"
        rows.append((">>" if row is first else "", str(row.index), row.name, shape_text,
                     _number(row.max_abs_error, ".0f") + " LSB" if row.unit else _number(row.max_abs_error, ".2e"),
                     _number(row.max_rel_error, ".2e"), out,
                     _number(row.cosine_similarity, ".8f"), status))
    return tables.format_table(header, rows, align="lrllrrrrl", rule=False)


def summary_lines(comparison: Comparison) -> Iterable[str]:
    """What a person reads first: the files, the tolerances, the verdict and the first divergence."""
    ref, cand = comparison.reference, comparison.candidate
    yield f"reference: {ref.label} ({ref.attrs.get('producer', '?')}, {ref.attrs.get('dtype', '?')})"
    yield f"candidate: {cand.label} ({cand.attrs.get('producer', '?')}, {cand.attrs.get('dtype', '?')})"
    yield f"tolerance: |candidate - reference| <= {comparison.atol:g} + {comparison.rtol:g} * |reference|" + \
        (" (candidate transposed from NHWC)" if comparison.layout == "nhwc" else "") + \
        (f"; integer codes: |candidate - reference| <= {comparison.lsb} LSB"
         if any(row.unit for row in comparison.rows) else "")
    for side, names in (comparison.not_compared or {}).items():
        if names:
            yield (f"not compared (--only-common): {len(names)} tensors {side.replace('_', ' ')} "
                   f"({_some(names, 3)})")
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
