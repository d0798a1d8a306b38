"""Pipelines: image in, labels or masks out, in the format of transformers' pipelines.

    classifier = mobilenet_np.pipeline("image-classification", model="mobilenet_v2_1.0_224.h5")
    classifier("cat.png", top_k=3)        # [{"label": "tabby, tabby cat", "score": 0.71}, ...]
    classifier(["a.png", "b.png"])        # one such list per image

    segmenter = mobilenet_np.pipeline("image-segmentation", model="deeplabv3_mobilenet_v2_1.0_513.h5")
    segmenter("bird.png")                 # [{"score": None, "label": "bird", "mask": <PIL image, mode L>}, ...]

`model` may be anything `from_pretrained` reads (an .h5 file, a transformers checkpoint folder, a Hub
id in huggingface_hub's cache) or a loaded model; images may be paths, http(s) URLs, PIL images or arrays.

Each pipeline is: read the image (transformers' `load_image`: EXIF orientation, RGB) -> image
processor -> network -> post-processing. The image processor is the one stored in the weights file
(model.metadata["image_processor"], the checkpoint's preprocessor_config.json), else the defaults
of the architecture with the crop at config.image_size and the shortest edge 32 pixels longer (the
rule every published MobileNet / DeepLab checkpoint follows: 224 -> 256, 192 -> 224, 513 -> 545).

Integer networks (an `import-tflite --quantized` file, mobilenet_np/quantized/network.py) run in the
same pipelines. Their class scores are the graph's own SOFTMAX output dequantized (`probabilities`:
multiples of 1/256, exactly what the TFLite file outputs) when the default softmax is asked for, else
computed from the dequantized logits; segmentation post-processes the dequantized logits as for a
float model (the graph's own label map at the network's input size is `outputs.labels`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from . import ops
from .errors import ConfigError
from .auto import load_pretrained
from .image_processing import MobileNetV1ImageProcessor, image_processor_class, load_image
from .outputs import SemanticSegmenterOutput
from .quantized.network import QuantizedModel
from .registry import ARCHITECTURES


def architecture_name(model) -> str:
    """The registry architecture of a model: its class name, or the float architecture an integer network runs."""
    return model.architecture if isinstance(model, QuantizedModel) else type(model).__name__


def image_processor_for(model) -> MobileNetV1ImageProcessor:
    """The image processor of a model: the stored preprocessor config, else defaults from model.config."""
    cls = image_processor_class(architecture_name(model))
    stored = (getattr(model, "metadata", None) or {}).get("image_processor") or {}
    if stored:
        return cls.from_dict(stored)
    return cls.for_image_size(model.config.image_size)


class Pipeline:
    """A model, its image processor, and the pre/post-processing of one task. Call it on images."""

    task: ClassVar[str] = ""
    architecture_task: ClassVar[str] = ""   # the registry task of the models it runs

    def __init__(self, model, image_processor: MobileNetV1ImageProcessor | None = None):
        architecture = ARCHITECTURES.get(architecture_name(model))
        if architecture is None or architecture.task != self.architecture_task:
            source = (getattr(model, "metadata", None) or {}).get("path", "model")
            runs = " or ".join(a.name for a in ARCHITECTURES.values() if a.task == self.architecture_task)
            raise ConfigError(f"{source}: task {self.task!r} needs a {runs} model, got a {architecture_name(model)}")
        self.model = model
        self.image_processor = image_processor or image_processor_for(model)

    def __call__(self, inputs=None, images=None, **kwargs):
        """One image -> its result; a list of images -> a list of results (as transformers).

        The images are `inputs` or, as transformers also accepts, `images=`.
        """
        if (inputs is None) == (images is None):
            raise ConfigError(f"{self.task} pipeline: give the images once, as the first argument or as images=")
        inputs = images if inputs is None else inputs
        if isinstance(inputs, (list, tuple)):
            return [self.run_one(image, **kwargs) for image in inputs]
        return self.run_one(inputs, **kwargs)

    def run_one(self, image, **kwargs):
        raise NotImplementedError

    @property
    def id2label(self) -> dict[int, str]:
        return self.model.config.id2label


class ImageClassificationPipeline(Pipeline):
    """Image -> [{"label", "score"}] for the top_k classes, best first (transformers' format)."""

    task = "image-classification"
    architecture_task = "image-classification"

    def scores(self, image, function_to_apply: str | None = None) -> np.ndarray:
        """The (num_labels,) class scores of one image (softmax by default; sigmoid for a single label)."""
        if not isinstance(image, np.ndarray):  # arrays go to the processor as they are, as in transformers
            image = load_image(image)
        pixel_values = self.image_processor(image)["pixel_values"]           # (1, 3, H, W)
        outputs = self.model(pixel_values)
        logits = outputs.logits[0]                                            # (num_labels,)
        function = function_to_apply or ("sigmoid" if len(logits) == 1 else "softmax")
        if function == "softmax" and getattr(outputs, "probabilities", None) is not None:
            return outputs.probabilities[0]                                   # an integer network's own SOFTMAX
        if function == "softmax":
            return ops.softmax(logits)
        if function == "sigmoid":
            return 1.0 / (1.0 + np.exp(-logits))
        if function == "none":
            return logits
        raise ConfigError(f"function_to_apply must be 'softmax', 'sigmoid' or 'none', got {function_to_apply!r}")

    def run_one(self, image, top_k: int | None = 5, function_to_apply: str | None = None) -> list[dict[str, Any]]:
        scores = self.scores(image, function_to_apply)
        return [{"label": self.id2label[i], "score": float(scores[i])} for i in ranked_classes(scores, top_k)]


def ranked_classes(scores: np.ndarray, top_k: int | None) -> list[int]:
    """Class ids by decreasing score (ties: lower id first, as transformers' stable sort); the first top_k.

    top_k None keeps every class; a top_k above the number of classes is the number of classes.
    """
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise ConfigError(f"top_k must be a positive int, got {top_k!r}")
    order = np.argsort(-scores, kind="stable")
    return [int(i) for i in order[:top_k]]


class ImageSegmentationPipeline(Pipeline):
    """Image -> one {"score": None, "label", "mask"} per class present; mask: mode "L", 255 on the class."""

    task = "image-segmentation"
    architecture_task = "semantic-segmentation"

    def class_map(self, image) -> np.ndarray:
        """The (H, W) int64 class id of every pixel of an image (path or PIL image), at the image's own size."""
        image = load_image(image)
        pixel_values = self.image_processor(image)["pixel_values"]           # (1, 3, H', W')
        logits = self.model(pixel_values).logits                              # (1, num_labels, h, w)
        outputs = SemanticSegmenterOutput(logits=logits)
        return self.image_processor.post_process_semantic_segmentation(outputs, [(image.height, image.width)])[0]

    def run_one(self, image, subtask: str | None = None) -> list[dict[str, Any]]:
        """`subtask`: None or "semantic" (transformers' names; the only kind these models compute)."""
        from PIL import Image
        if subtask not in (None, "semantic"):
            raise ConfigError(f"image-segmentation: subtask {subtask!r} is not supported, expected 'semantic' or None "
                              "(DeepLabV3 segments semantically)")
        class_map = self.class_map(image)
        return [{"score": None, "label": self.id2label[int(c)],
                 "mask": Image.fromarray(np.where(class_map == c, 255, 0).astype(np.uint8))}  # mode "L"
                for c in np.unique(class_map)]


TASKS: dict[str, type[Pipeline]] = {
    ImageClassificationPipeline.task: ImageClassificationPipeline,
    ImageSegmentationPipeline.task: ImageSegmentationPipeline,
}


def pipeline(task: str, model, image_processor: MobileNetV1ImageProcessor | None = None) -> Pipeline:
    """A pipeline for `task` ("image-classification" or "image-segmentation").

    `model`: a loaded mobilenet_np model, or what `from_pretrained` reads: a weights file, a
    transformers checkpoint folder, a Hub id in huggingface_hub's cache. `image_processor`: overrides
    the processor stored with the weights.
    """
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}, expected one of {sorted(TASKS)}")
    if isinstance(model, (str, Path)):
        model = load_pretrained(model)
    return TASKS[task](model, image_processor)
