"""transformers' Auto classes: the config, image processor or model that pretrained weights hold.

    processor = AutoImageProcessor.from_pretrained("google/mobilenet_v2_1.0_224")  # Hub cache, folder or .h5
    model = AutoModelForImageClassification.from_pretrained("google/mobilenet_v2_1.0_224")
    inputs = processor(images=image, return_tensors="np")
    model(**inputs).logits                                                          # (1, 1001)

The source is read once (formats/transformers_checkpoint.py: read_pretrained) and the class chosen
from what it stores, through registry.py: an HDF5 file's architecture, or a checkpoint's config.json
"architectures" (else its "model_type" and the head its tensors have). The Auto class then asks for a
task: AutoModel gives the backbone (a head's backbone too, its head dropped, as transformers does);
AutoModelForImageClassification and AutoModelForSemanticSegmentation refuse weights of another task
rather than add a head with random weights.
"""

from __future__ import annotations

from typing import ClassVar

from .configuration_utils import PretrainedConfig
from .errors import ConfigError, WeightsError
from .formats.transformers_checkpoint import read_pretrained
from .formats.weights import WeightsFile
from .image_processing import MobileNetV1ImageProcessor, image_processor_class
from .networks import model_class
from .networks.base import PreTrainedModel
from .registry import ARCHITECTURES


def load_pretrained(pretrained_model_name_or_path, revision: str | None = None) -> PreTrainedModel:
    """The model a source stores, as its own architecture (`mobilenet_np.load` for every from_pretrained source)."""
    stored = read_pretrained(pretrained_model_name_or_path, revision)
    return model_class(stored.architecture).from_weights_file(stored)


class AutoConfig:
    """`AutoConfig.from_pretrained(source, **overrides)`: MobileNetV1Config or MobileNetV2Config, as stored."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, revision: str | None = None,
                        **overrides) -> PretrainedConfig:
        stored = read_pretrained(pretrained_model_name_or_path, revision)
        return model_class(stored.architecture).config_class.from_weights_file(stored, **overrides)


class AutoImageProcessor:
    """`AutoImageProcessor.from_pretrained(source, **overrides)`: the family's processor with the stored settings
    (a DeepLab file's 513 crop, a 160-pixel network's 160 crop; see ImageProcessor.from_weights_file)."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, revision: str | None = None,
                        **overrides) -> MobileNetV1ImageProcessor:
        stored = read_pretrained(pretrained_model_name_or_path, revision)
        return image_processor_class(stored.architecture).from_weights_file(stored, **overrides)


class AutoModel:
    """`AutoModel.from_pretrained(source)`: the backbone (MobileNetV1Model / MobileNetV2Model) of any weights."""

    task: ClassVar[str] = "backbone"   # the registry task of the models this class gives

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, revision: str | None = None) -> PreTrainedModel:
        stored = read_pretrained(pretrained_model_name_or_path, revision)
        return model_class(cls.architecture_for(stored)).from_weights_file(stored)

    @classmethod
    def from_config(cls, config: PretrainedConfig, seed: int | None = 0) -> PreTrainedModel:
        """A model of this task for `config`, with random weights drawn from `seed` (transformers' from_config)."""
        for architecture in ARCHITECTURES.values():
            if architecture.family == getattr(config, "model_type", None) and architecture.task == cls.task:
                return model_class(architecture.name)(config, seed=seed)
        raise ConfigError(f"{cls.__name__}.from_config: no {cls.task} model for a {type(config).__name__}")

    @classmethod
    def architecture_for(cls, stored: WeightsFile) -> str:
        """The architecture this class makes of the stored one: the backbone of any of them."""
        return next(a.name for a in ARCHITECTURES.values()
                    if a.family == ARCHITECTURES[stored.architecture].family and a.task == cls.task)


class _AutoModelForTask(AutoModel):
    """An Auto class for one head: the stored architecture when it has that head, else a WeightsError."""

    @classmethod
    def architecture_for(cls, stored: WeightsFile) -> str:
        if ARCHITECTURES[stored.architecture].task != cls.task:
            raise WeightsError(f"{stored.path}: holds a {stored.architecture}, not a {cls.task} model "
                               f"(AutoModel.from_pretrained loads its backbone)")
        return stored.architecture


class AutoModelForImageClassification(_AutoModelForTask):
    """MobileNetV1ForImageClassification or MobileNetV2ForImageClassification, as stored."""

    task = "image-classification"


class AutoModelForSemanticSegmentation(_AutoModelForTask):
    """MobileNetV2ForSemanticSegmentation (DeepLabV3) weights."""

    task = "semantic-segmentation"
