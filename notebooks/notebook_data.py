"""What the notebooks share: where the real images, labels and weights are, and how to get a model.

Real data lives beside the checkout, in ../shared/data (set MOBILENET_NP_SHARED_DATA to use another
folder). When it is there, a notebook imports a real TFLite or Keras checkpoint into a temporary folder
with weights_tools and loads it with mobilenet_np. When it is not, the notebook tries the Hugging Face
Hub (weights_tools.hub: download and convert a published transformers checkpoint, once, into the
mobilenet-np cache). When that fails too (offline), it falls back to random weights (and a synthetic
image), and says loudly that its predictions mean nothing: everything that compares mobilenet_np with
PyTorch still holds, since both get the same random weights.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

import mobilenet_np

NOTEBOOKS = Path(__file__).resolve().parent
SHARED_DATA = Path(os.environ.get("MOBILENET_NP_SHARED_DATA", NOTEBOOKS.parent.parent / "shared" / "data"))

# The real checkpoints the notebooks use, in ../shared/data (see SOURCES.md there): the file, its
# label file, the closest published transformers checkpoint on the Hub, and the architecture of the
# file, so that a random stand-in has the same shapes.
CHECKPOINTS = {
    "keras_mobilenet_v1_0.25_224": dict(
        file="weights/keras/mobilenet_v1_0.25_224.h5", labels="labels/imagenet_labels.txt",
        hub="google/mobilenet_v1_0.75_192",
        architecture="MobileNetV1ForImageClassification",
        config=dict(depth_multiplier=0.25, image_size=224, num_labels=1000)),
    "mobilenet_v1_0.5_160": dict(
        file="weights/tflite/mobilenet_v1_0.5_160_quant.tflite", labels="labels/imagenet_labels.txt",
        hub="google/mobilenet_v1_0.75_192",
        architecture="MobileNetV1ForImageClassification",
        config=dict(depth_multiplier=0.5, image_size=160, num_labels=1001)),
    "mobilenet_v2_1.0_224": dict(
        file="weights/tflite/mobilenet_v2_1.0_224_quant.tflite", labels="labels/imagenet_labels.txt",
        hub="google/mobilenet_v2_1.0_224",
        architecture="MobileNetV2ForImageClassification",
        config=dict(depth_multiplier=1.0, image_size=224, num_labels=1001)),
    "deeplabv3_mnv2_pascal": dict(
        file="weights/tflite/deeplabv3_mnv2_pascal_quant.tflite", labels="labels/pascal_voc_segmentation_labels.txt",
        hub="google/deeplabv3_mobilenet_v2_1.0_513",
        architecture="MobileNetV2ForSemanticSegmentation",
        config=dict(depth_multiplier=1.0, image_size=513, output_stride=16, num_labels=21)),
}


def shared_data() -> Path | None:
    """The real data folder, or None when it is absent."""
    return SHARED_DATA if SHARED_DATA.is_dir() else None


@dataclasses.dataclass
class Checkpoint:
    """A model and where its weights came from."""

    model: mobilenet_np.networks.base.PreTrainedModel
    real: bool          # False: random weights, predictions are meaningless
    source: str         # a one-line description, printed by the notebooks

    def describe(self) -> str:
        if self.real:
            return f"Real weights: {self.source}"
        return (f"NOTE: RANDOM WEIGHTS ({self.source}).\n"
                "The predictions below are meaningless; the comparisons with PyTorch still hold.")


def random_model(architecture: str, seed: int = 0, **config):
    """A mobilenet_np model with seeded random weights (see networks.base.random_parameters)."""
    cls = mobilenet_np.networks.model_class(architecture)
    return cls(cls.config_class(**config), seed=seed)


def load_checkpoint(name: str) -> Checkpoint:
    """Real weights for CHECKPOINTS[name]: the shared-data file, else the Hub, else random weights.

    The shared-data file is imported with weights_tools into a temporary folder and loaded (the same
    two steps a user runs on the command line); the folder is deleted once the weights are in memory.
    The model's `metadata["image_processor"]` says how its images must be prepared.
    """
    spec = CHECKPOINTS[name]
    data = shared_data()
    reasons = []
    if data is None:
        reasons.append(f"{SHARED_DATA} is absent")
    elif not (data / spec["file"]).is_file():
        reasons.append(f"{data / spec['file']} is absent")
    else:
        labels = data / spec["labels"] if (data / spec["labels"]).is_file() else None
        with tempfile.TemporaryDirectory(prefix="mobilenet_np_") as workdir:
            imported = _import_file(data / spec["file"], labels, Path(workdir))
        if not isinstance(imported, str):
            return Checkpoint(imported, True, f"{spec['file']} imported with weights_tools")
        reasons.append(imported)
    try:
        from weights_tools.hub import resolve
        return Checkpoint(mobilenet_np.load(resolve(spec["hub"])), True, f"{spec['hub']} from the Hugging Face Hub")
    except mobilenet_np.MobileNetError as e:
        reasons.append(str(e).split(";")[0])
    model = random_model(spec["architecture"], **spec["config"])
    return Checkpoint(model, False, f"{name} architecture, seed 0; " + "; ".join(reasons))


def _import_file(path: Path, labels: Path | None, workdir: Path):
    """Import a TFLite or Keras file into workdir and load it; a string saying why not on failure."""
    try:
        if path.suffix == ".tflite":
            from weights_tools.import_tflite import import_tflite as importer
        else:
            from weights_tools.import_keras import import_keras as importer
    except ImportError as e:
        return f"the weights_tools importer is not available ({e})"
    out = workdir / (path.stem + ".h5")
    importer(path, out, labels=labels)
    return mobilenet_np.load(out)          # reads every tensor into memory


def transformers_twin(model):
    """The transformers (PyTorch) model with the same architecture, config and weights as `model`."""
    import torch
    import transformers

    architecture = type(model).__name__
    torch_class = getattr(transformers, architecture)
    config = torch_class.config_class.from_dict(model.config.to_dict())
    with torch.device("meta"):          # no memory and no random init: every tensor is replaced below
        torch_model = torch_class(config)
    state_dict = {k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()}   # copies
    torch_model.load_state_dict(state_dict, strict=True, assign=True)
    return torch_model.eval()


# --------------------------------------------------------------------------------------------------
# images and labels
# --------------------------------------------------------------------------------------------------

def load_image(name: str) -> tuple[Image.Image, bool]:
    """(image, real): images/<name> from the shared data, or a synthetic stand-in of the same kind."""
    data = shared_data()
    if data is not None and (data / "images" / name).is_file():
        return Image.open(data / "images" / name).convert("RGB"), True
    image, _ = synthetic_scene()
    return image, False


def load_mask(name: str) -> np.ndarray:
    """A ground-truth mask as a bool (H, W) array (True = object), real or synthetic."""
    data = shared_data()
    if data is not None and (data / "images" / name).is_file():
        return np.asarray(Image.open(data / "images" / name).convert("L")) > 0
    _, mask = synthetic_scene()
    return mask


def synthetic_scene(size: int = 513) -> tuple[Image.Image, np.ndarray]:
    """A smooth background with a bright ellipse on it, and the ellipse's mask (the offline stand-in)."""
    y, x = np.mgrid[0:size, 0:size] / (size - 1)                                   # (size, size) each
    mask = ((x - 0.55) / 0.25) ** 2 + ((y - 0.45) / 0.18) ** 2 < 1
    rgb = np.stack([0.3 + 0.4 * y, 0.5 + 0.3 * x, 0.7 - 0.3 * y], axis=-1)         # (size, size, 3)
    rgb[mask] = (0.9, 0.6, 0.2)
    return Image.fromarray((rgb * 255).astype(np.uint8)), mask


def load_labels(name: str, num_labels: int) -> list[str]:
    """labels/<name> (one label a line) from the shared data, or LABEL_0 .. LABEL_{n-1}."""
    data = shared_data()
    if data is not None and (data / "labels" / name).is_file():
        labels = (data / "labels" / name).read_text().splitlines()
        if len(labels) == num_labels:
            return labels
    return [f"LABEL_{i}" for i in range(num_labels)]
