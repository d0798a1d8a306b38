"""One image in, one record out: the network's answer on it, what the report is made of.

An `EvaluationSpec` (plain strings, so it can be sent to worker processes and dask workers) says
what to run; an `Evaluator` built from it loads the network(s) once and turns samples into records:

  classification  {"image", "label", "top": [top-5 class ids, best first]}
  segmentation    {"image", "label": None, "confusion": [[t, p, pixels], ...], "ignored": pixels}
                  (the nonzero entries of this image's confusion matrix; mask pixels 255 are ignored;
                  without masks, only {"image", "label": None} and the agreement fields)
  --against       + {"top1", "other_top1", "positions", "agreeing", "max_abs_diff", "sum_abs_diff", "values"}
  failure         {"image", "label", "error": "one-line message"}   (unreadable image, missing mask, ...)

The steps are the pipelines' own (mobilenet_np.pipelines): read the image as transformers'
load_image does, the image processor stored with the weights, the network, and for segmentation the
processor's post-processing (logits resized bilinearly to the image's size, then argmax per pixel).
Ranking uses the logits (ties: lower id first). Agreement compares the raw logits of the network,
(num_labels,) or (num_labels, h, w), in float64: `positions` is 1 per image for classification and
h * w for segmentation, `agreeing` how many of them have the same argmax class.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from ..errors import ConfigError, ImageError, MobileNetError
from ..image_processing import load_image
from ..networks.base import PreTrainedModel
from ..pipelines import architecture_name, pipeline
from ..registry import ARCHITECTURES
from ..fast import EngineSettings
from ..networks import load
from .labels import Sample
from .metrics import VOC_IGNORE_INDEX, confusion_matrix, top_k_classes

TOP_K = 5
WEIGHTS_SUFFIXES = (".h5", ".hdf5")
# registry task of the architecture -> (this module's task, the pipeline's task)
TASKS = {"image-classification": ("classification", "image-classification"),
         "semantic-segmentation": ("segmentation", "image-segmentation")}


def task_of(model) -> tuple[str, str]:
    """("classification" | "segmentation", the pipeline task) of a loaded model; a base model is a ConfigError."""
    name = architecture_name(model)              # (an integer network runs its float architecture's graph)
    if ARCHITECTURES[name].task in TASKS:
        return TASKS[ARCHITECTURES[name].task]
    source = (getattr(model, "metadata", None) or {}).get("path", "model")
    raise ConfigError(f"{source}: holds a {name}, which has no classifier; expected an image-classification or "
                      "semantic-segmentation network")


def against_kind(path) -> str:
    """How --against OTHER is read: "weights" (.h5), "npz", "safetensors", or "npy" (a folder of .npy files)."""
    path = Path(path)
    if path.is_dir():
        return "npy"
    if not path.is_file():
        raise ConfigError(f"{path}: no such file or folder to compare against (expected weights .h5, .npz, "
                          ".safetensors or a folder of .npy files)")
    suffix = path.suffix.lower()
    if suffix in WEIGHTS_SUFFIXES:
        return "weights"
    if suffix in (".npz", ".safetensors"):
        return suffix[1:]
    raise ConfigError(f"{path}: cannot compare against a {suffix or 'suffix-less'} file (expected weights .h5, "
                      ".npz, .safetensors or a folder of .npy files)")


@dataclass(frozen=True)
class EvaluationSpec:
    """What to evaluate: the weights file, the task, and the optional masks folder and --against source."""

    weights: str
    task: str                        # "classification" | "segmentation"
    masks: str | None = None         # segmentation: folder of class-id PNG masks
    against: str | None = None       # weights file, .npz, .safetensors or folder of .npy logits
    against_kind: str | None = None  # see against_kind()
    threads: int | None = None       # the fast engine's walkers (None: its default); 1 in worker processes


def reference_names(key: str) -> list[str]:
    """The names an image's logits may have in a port's outputs: key, key without suffix, file name, stem."""
    path = PurePosixPath(key)
    names = [key, path.with_suffix("").as_posix(), path.name, path.stem]
    return list(dict.fromkeys(names))


class ReferenceLogits:
    """A port's logits, looked up by image: a folder of .npy files, an .npz or a .safetensors file."""

    def __init__(self, path, kind: str):
        self.path, self.kind = Path(path), kind
        self.archive = None
        if kind == "npz":
            self.archive = np.load(self.path, allow_pickle=False)
            self.names = set(self.archive.files)
        elif kind == "safetensors":
            from safetensors import safe_open                 # optional: the `weights` extra
            self.archive = safe_open(str(self.path), framework="np")
            self.names = set(self.archive.keys())

    def __call__(self, key: str) -> np.ndarray:
        for name in reference_names(key):
            if self.kind == "npy":
                candidate = self.path / f"{name}.npy"
                if candidate.is_file():
                    return np.load(candidate, allow_pickle=False)
            elif name in self.names:
                return self.archive[name] if self.kind == "npz" else self.archive.get_tensor(name)
        raise ImageError(f"{key}: no logits for this image in {self.path} (looked for "
                         f"{', '.join(reference_names(key))}{'.npy' if self.kind == 'npy' else ''})")


class Evaluator:
    """The network(s) of a spec, loaded once; `record(sample)` evaluates one image."""

    def _load(self, path):
        model = load(path)
        if self.spec.threads is not None and isinstance(model, PreTrainedModel):   # the float fast engine
            model.engine = EngineSettings(threads=self.spec.threads)
        return model

    def __init__(self, spec: EvaluationSpec):
        self.spec = spec
        model = self._load(spec.weights)
        self.task, pipeline_task = task_of(model)
        if self.task != spec.task:
            raise ConfigError(f"{spec.weights}: holds a {self.task} network, expected {spec.task}")
        self.pipe = pipeline(pipeline_task, model)
        self.num_labels = model.config.num_labels
        self.other = None
        self.reference = None
        if spec.against_kind == "weights":
            other = self._load(spec.against)
            if task_of(other)[0] != self.task or other.config.num_labels != self.num_labels:
                raise ConfigError(f"{spec.against}: holds a {type(other).__name__} with {other.config.num_labels} "
                                  f"classes, expected a {self.task} network with {self.num_labels} like {spec.weights}")
            self.other = pipeline(pipeline_task, other)
        elif spec.against_kind is not None:
            self.reference = ReferenceLogits(spec.against, spec.against_kind)

    # -- the network ----------------------------------------------------------------------------------
    @staticmethod
    def logits(pipe, image) -> np.ndarray:
        """The network's logits of one RGB PIL image: (num_labels,) or (num_labels, h, w)."""
        pixel_values = pipe.image_processor(image)["pixel_values"]         # (1, 3, H, W)
        return pipe.model(pixel_values).logits[0]

    def class_map(self, image, logits: np.ndarray) -> np.ndarray:
        """(H, W) class ids at the image's size: the segmentation pipeline's post-processing of `logits`."""
        return self.pipe.image_processor.post_process_semantic_segmentation(
            {"logits": logits[None]}, [(image.height, image.width)])[0]

    # -- one image ------------------------------------------------------------------------------------
    def record(self, sample: Sample) -> dict:
        """The record of one image (module docstring); a failure of the project's kind becomes an error record."""
        try:
            image = load_image(sample.path)
            logits = self.logits(self.pipe, image)
            if self.task == "classification":
                result = {"image": sample.key, "label": sample.label,
                          "top": [int(c) for c in top_k_classes(logits[None], TOP_K)[0]]}
            else:
                result = {"image": sample.key, "label": None}
                if self.spec.masks is not None:
                    mask = self.read_mask(sample, (image.height, image.width))
                    confusion = confusion_matrix(mask, self.class_map(image, logits), self.num_labels,
                                                 VOC_IGNORE_INDEX)
                    t, p = np.nonzero(confusion)
                    result["confusion"] = [[int(a), int(b), int(confusion[a, b])] for a, b in zip(t, p)]
                    result["ignored"] = int(np.count_nonzero(mask == VOC_IGNORE_INDEX))
            if self.other is not None or self.reference is not None:
                result.update(self.agreement(sample, image, logits))
            return result
        except MobileNetError as e:
            return {"image": sample.key, "label": sample.label, "error": str(e)}

    def agreement(self, sample: Sample, image, logits: np.ndarray) -> dict:
        """How the other network's (or the port's) logits of this image differ from ours."""
        if self.other is not None:
            other = self.logits(self.other, image)
        else:
            other = np.asarray(self.reference(sample.key))
            if other.ndim == logits.ndim + 1 and other.shape[0] == 1:
                other = other[0]                                           # a batch of one
        if other.shape != logits.shape or other.dtype.kind != "f":
            raise ImageError(f"{sample.key}: the logits compared against have shape {other.shape} dtype {other.dtype}, "
                             f"expected float {logits.shape}")
        ours, theirs = logits.astype(np.float64), other.astype(np.float64)
        if not np.all(np.isfinite(theirs)):
            raise ImageError(f"{sample.key}: the logits compared against contain NaN or Inf")
        difference = np.abs(ours - theirs)
        top, other_top = ours.argmax(axis=0), theirs.argmax(axis=0)        # () or (h, w)
        return {"top1": int(top.flat[0]) if top.ndim == 0 else None,
                "other_top1": int(other_top.flat[0]) if other_top.ndim == 0 else None,
                "positions": int(top.size), "agreeing": int(np.count_nonzero(top == other_top)),
                "max_abs_diff": float(difference.max()), "sum_abs_diff": float(difference.sum()),
                "values": int(difference.size)}

    def read_mask(self, sample: Sample, size: tuple[int, int]) -> np.ndarray:
        """The (H, W) class-id mask of an image: MASKS/<key with .png>, else MASKS/<stem>.png."""
        folder = Path(self.spec.masks)
        candidates = [folder / PurePosixPath(sample.key).with_suffix(".png"), folder / f"{Path(sample.key).stem}.png"]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            raise ImageError(f"{sample.key}: no mask {candidates[0]}")
        try:
            with Image.open(path) as picture:
                mode, mask = picture.mode, np.array(picture)
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageError(f"{path}: cannot be read as a mask ({str(e).splitlines()[0][:120]})") from None
        if mode not in ("P", "L", "I", "I;16"):
            raise ImageError(f"{path}: mask of mode {mode}, expected a palette or grayscale PNG of class ids")
        mask = mask.astype(np.int64)
        if mask.shape != size:
            raise ImageError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]}, the image is {size[1]}x{size[0]}")
        bad = (mask >= self.num_labels) & (mask != VOC_IGNORE_INDEX)
        if bad.any():
            raise ImageError(f"{path}: mask holds class {int(mask[bad].max())}, the model has {self.num_labels} "
                             f"classes (and {VOC_IGNORE_INDEX} = ignored)")
        return mask

