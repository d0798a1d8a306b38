"""mobilenet-np: MobileNet V1, MobileNet V2 and DeepLabV3 in readable NumPy, equal to transformers.

    import mobilenet_np
    model = mobilenet_np.load("mobilenet_v2_1.0_224.h5")      # the architecture stored in the file
    logits = model(pixel_values).logits                        # pixel_values: (N, 3, H, W) float32

transformers' front door works too, with only the import changed:

    from mobilenet_np import AutoImageProcessor, AutoModelForImageClassification
    processor = AutoImageProcessor.from_pretrained("mobilenet_v2.h5")   # or a checkpoint folder, a Hub id
    model = AutoModelForImageClassification.from_pretrained("mobilenet_v2.h5")
    logits = model(**processor(images=image, return_tensors="np")).logits
"""

from .auto import (AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification,
                   AutoModelForSemanticSegmentation)
from .errors import (ConfigError, ConversionError, ImageError, MobileNetError, OutputExistsError, ShapeError,
                     WeightsError)
from .image_processing import BatchFeature, MobileNetV1ImageProcessor, MobileNetV2ImageProcessor
from .networks import load
from .networks.deeplabv3 import MobileNetV2ForSemanticSegmentation
from .networks.mobilenet_v1 import MobileNetV1Config, MobileNetV1ForImageClassification, MobileNetV1Model
from .networks.mobilenet_v2 import MobileNetV2Config, MobileNetV2ForImageClassification, MobileNetV2Model
from .pipelines import pipeline

__version__ = "0.1.0"

__all__ = [
    "MobileNetV1Config", "MobileNetV1Model", "MobileNetV1ForImageClassification",
    "MobileNetV2Config", "MobileNetV2Model", "MobileNetV2ForImageClassification",
    "MobileNetV2ForSemanticSegmentation", "load",
    "MobileNetError", "ShapeError", "ConfigError", "WeightsError", "ImageError", "ConversionError",
    "OutputExistsError",
    "MobileNetV1ImageProcessor", "MobileNetV2ImageProcessor", "BatchFeature", "pipeline",
    "AutoConfig", "AutoImageProcessor", "AutoModel", "AutoModelForImageClassification",
    "AutoModelForSemanticSegmentation",
]
