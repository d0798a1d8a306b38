"""The five architectures mobilenet-np knows: the one list every other module reads.

An architecture's name is the transformers class name, stored as such in weights and golden files.
Its family is the transformers `model_type` (which config class, which image processor); its task
says what the head computes. Lower modules (file formats, image processing) read this table by
name; `mobilenet_np.networks.model_class(name)` turns a name into the class that implements it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Architecture:
    name: str          # transformers class name, e.g. "MobileNetV2ForImageClassification"
    family: str        # "mobilenet_v1" or "mobilenet_v2" (= config.model_type)
    task: str          # "backbone", "image-classification" or "semantic-segmentation"
    module: str        # the file of mobilenet_np/networks/ that defines it

    @property
    def config_class_name(self) -> str:
        return "MobileNetV1Config" if self.family == "mobilenet_v1" else "MobileNetV2Config"

    @property
    def image_processor_name(self) -> str:
        return "MobileNetV1ImageProcessor" if self.family == "mobilenet_v1" else "MobileNetV2ImageProcessor"


ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in [
    Architecture("MobileNetV1Model", "mobilenet_v1", "backbone", "mobilenet_v1"),
    Architecture("MobileNetV1ForImageClassification", "mobilenet_v1", "image-classification", "mobilenet_v1"),
    Architecture("MobileNetV2Model", "mobilenet_v2", "backbone", "mobilenet_v2"),
    Architecture("MobileNetV2ForImageClassification", "mobilenet_v2", "image-classification", "mobilenet_v2"),
    Architecture("MobileNetV2ForSemanticSegmentation", "mobilenet_v2", "semantic-segmentation", "deeplabv3"),
]}
FAMILIES = ("mobilenet_v1", "mobilenet_v2")

# What a weights file's tensors are, and so which path runs it: "float" (the transformers state_dict:
# the readable path, the fast engine, training) or "integer" (a quantized TFLite network: uint8 / int8
# weights, int32 biases, every tensor's scale and zero point; TFLite's reference integer kernels,
# mobilenet_np/quantized/network.py). Both run the same architecture's layer descriptions.
NUMERICS = ("float", "integer")


def architecture(name: str) -> Architecture:
    """The entry of `name`; KeyError (with the known names) for anything else."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise KeyError(f"unknown architecture {name!r}, expected one of {sorted(ARCHITECTURES)}") from None


def base_architecture(name: str) -> str:
    """The backbone architecture a head architecture's weights also load into (transformers' rule)."""
    return "MobileNetV1Model" if ARCHITECTURES[name].family == "mobilenet_v1" else "MobileNetV2Model"
