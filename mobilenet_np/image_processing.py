"""Image processors: images -> pixel values, equal to transformers' MobileNetV1/V2ImageProcessorPil.

The published MobileNet checkpoints expect (N, 3, H, W) float32 pixel values made like this:

    image (any size, RGB)
      -> resize so that the shortest edge is size["shortest_edge"] (256), PIL bilinear, aspect kept
      -> center crop crop_size (224 x 224; zero padding when the image is smaller)
      -> rescale: * rescale_factor (1/255)                   values in [0, 1]
      -> normalize: (x - image_mean) / image_std (0.5, 0.5)   values in [-1, 1]

Resizing is Pillow's antialiased resampling, written in NumPy (`ops.resize_image`) and equal to
transformers' PIL backend bit for bit; cropping, rescaling and normalizing are NumPy too. `from_dict` reads a transformers preprocessor_config.json;
`from_pretrained` the one stored with pretrained weights (an .h5 file, a checkpoint folder, a Hub id).

`processor(images, return_tensors="np")` returns a BatchFeature (a dict with attribute access, as
transformers'): "np" stacks the images into one (N, 3, H, W) float32 array (the default here),
"pt" makes it a torch tensor, None leaves a list of (3, H, W) arrays (transformers' default).

Images may be paths, http(s) URLs (fetched with urllib), PIL images or NumPy arrays ((H, W, C) or (C, H, W), uint8 or float, C in 1, 3, 4;
(H, W) grayscale; a 4-D array is a batch). Everything is converted to RGB first:
  * paths are read as transformers' `load_image` reads them: EXIF orientation applied, then PIL's
    convert("RGB") (alpha dropped, palette expanded, CMYK and 16-bit converted by Pillow);
  * PIL images and arrays as transformers' `convert_to_rgb` does: transparency composited onto white,
    grayscale repeated into 3 channels.
Bad images raise ImageError with a one-line message naming the image and what was expected.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from . import ops
from .configuration_utils import image_size_pair
from .errors import ConfigError, ImageError, ShapeError
from .formats.transformers_checkpoint import read_pretrained
from .formats.weights import WeightsFile
from .registry import ARCHITECTURES

IMAGENET_STANDARD_MEAN = (0.5, 0.5, 0.5)
IMAGENET_STANDARD_STD = (0.5, 0.5, 0.5)
PIL_BILINEAR = 2  # PIL.Image.Resampling.BILINEAR, the value stored in preprocessor_config.json files
CONFIG_IMAGE_SIZE = 224          # transformers' MobileNet configs' default image_size
SHORTEST_EDGE_MARGIN = 32        # published checkpoints resize the shortest edge to the crop + 32 (224 -> 256)
URL_TIMEOUT_SECONDS = 30.0       # downloading an image given by URL
MAX_URL_BYTES = 64 << 20         # an image file larger than this is refused before it is decoded
RETURN_TENSORS = (None, "np", "pt")


# --------------------------------------------------------------------------------------------------
# reading images
# --------------------------------------------------------------------------------------------------

def _pil():
    from PIL import Image, ImageOps
    return Image, ImageOps


def _bomb_error(name: str, error: Exception) -> ImageError:
    Image, _ = _pil()
    return ImageError(f"{name}: refused as a possible decompression bomb ({error}); expected an image of at most "
                      f"{Image.MAX_IMAGE_PIXELS} pixels")


def _safely_loaded(image, name: str):
    """`image` with its pixels read; Pillow's decoding problems (truncated data, bombs) -> ImageError."""
    Image, _ = _pil()
    with warnings.catch_warnings():
        # Pillow warns between MAX_IMAGE_PIXELS and twice that, and raises above: both are refused here.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise _bomb_error(name, e) from None
        except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt pixel data
            raise ImageError(f"{name}: damaged image data ({_first_line(e)}); expected a complete image file") from None
    return image


def _decode(file, name: str, is_empty):
    """Image.open(file) with every pixel read; any problem -> ImageError naming `name` (is_empty() tells why)."""
    Image, _ = _pil()
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(file)
        except FileNotFoundError:
            raise ImageError(f"{name}: no such image file") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise _bomb_error(name, e) from None
        except Image.UnidentifiedImageError:
            what = "an empty file" if is_empty() else "not an image Pillow can read"
            raise ImageError(f"{name}: {what}; expected an image file (PNG, JPEG, BMP, ...)") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageError(f"{name}: cannot be read as an image ({_first_line(e)})") from None
    return _safely_loaded(image, name)


def open_image(path):
    """Open an image file with Pillow and read all its pixels; any problem -> ImageError naming the file."""
    path = Path(path)
    if path.is_dir():
        raise ImageError(f"{path}: is a folder, expected an image file")
    return _decode(path, str(path), lambda: path.stat().st_size == 0)


def is_url(image) -> bool:
    return isinstance(image, str) and image.startswith(("http://", "https://"))


def open_url(url: str, timeout: float = URL_TIMEOUT_SECONDS):
    """Download an image with urllib (standard library) and decode it; any problem -> one-line ImageError naming the URL."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data = response.read(MAX_URL_BYTES + 1)
    except urllib.error.HTTPError as e:
        raise ImageError(f"{url}: cannot be downloaded (HTTP {e.code} {e.reason})") from None
    except (urllib.error.URLError, OSError, ValueError) as e:  # no network, DNS, timeout, refused, bad URL
        reason = getattr(e, "reason", None) or e
        raise ImageError(f"{url}: cannot be downloaded ({_first_line(reason)}); offline? download the image "
                         "and pass its file path") from None
    if len(data) > MAX_URL_BYTES:
        raise ImageError(f"{url}: larger than {MAX_URL_BYTES} bytes, expected an image file")
    return _decode(io.BytesIO(data), url, lambda: not data)


def load_image(image, name: str | None = None):
    """A path, http(s) URL or PIL image as an RGB PIL image, as transformers' `load_image` makes it (pipelines use this).

    EXIF orientation is applied, then PIL's convert("RGB"): alpha is dropped (not composited),
    palettes are expanded, 16-bit values are clipped to 255 by Pillow.
    """
    Image, ImageOps = _pil()
    if is_url(image):
        name = image
        image = open_url(image)
    elif isinstance(image, (str, Path)):
        name = str(image)
        image = open_image(image)
    elif isinstance(image, Image.Image):
        image = _safely_loaded(image, name or _pil_name(image))
    else:
        raise ImageError(f"{name or 'image'}: got a {type(image).__name__}, expected a file path or a PIL image, or an http(s) URL")
    return ImageOps.exif_transpose(image).convert("RGB")


def _pil_name(image) -> str:
    return getattr(image, "filename", "") or f"PIL image ({image.mode}, {image.width}x{image.height})"


def _first_line(error: Exception) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0][:160]


def pil_to_rgb_array(image) -> np.ndarray:
    """A PIL image as (H, W, 3) uint8 RGB, transparency composited onto white (transformers' convert_to_rgb)."""
    Image, _ = _pil()
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.array(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.array(image.convert("RGB"))


def array_to_rgb(array: np.ndarray, name: str) -> np.ndarray:
    """A checked image array (H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4 -> (3, H, W), same dtype.

    The channel axis is guessed as transformers guesses it: first if its size is 1, 3 or 4, else last.
    One channel is repeated three times; a fourth (alpha) channel is composited onto white.
    """
    if array.dtype != np.uint8 and array.dtype.kind != "f":
        raise ImageError(f"{name}: array has dtype {array.dtype}, expected uint8 (0..255) or float")
    if array.ndim not in (2, 3):
        raise ImageError(f"{name}: array has shape {array.shape}, expected (H, W), (H, W, C) or (C, H, W)")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise ImageError(f"{name}: array contains NaN or Inf, expected finite pixel values")
    if 0 in array.shape:
        raise ImageError(f"{name}: array has shape {array.shape}, an empty image")
    if array.ndim == 2:
        array = array[None]                                              # (1, H, W)
    elif array.shape[0] not in (1, 3, 4):
        if array.shape[-1] not in (1, 3, 4):
            raise ImageError(f"{name}: array has shape {array.shape}, expected 1, 3 or 4 channels "
                             "(first or last axis)")
        array = np.moveaxis(array, -1, 0)                                # (C, H, W)
    channels = array.shape[0]
    if channels == 1:
        return np.repeat(array, 3, axis=0)                               # (3, H, W)
    if channels == 4:
        return _composite_on_white(array, name)                          # (3, H, W)
    return array


def _composite_on_white(rgba: np.ndarray, name: str) -> np.ndarray:
    """(4, H, W) RGBA -> (3, H, W): alpha * rgb + (1 - alpha) * white, rounded for uint8 (as transformers)."""
    if rgba.dtype.kind == "f" and (rgba.min() < 0.0 or rgba.max() > 1.0):
        raise ImageError(f"{name}: float RGBA array has values in [{rgba.min()}, {rgba.max()}], expected [0, 1]")
    white = 255 if rgba.dtype == np.uint8 else 1.0
    alpha = rgba[3:4] / white
    composite = alpha * rgba[:3] + (1 - alpha) * white
    return np.round(composite).astype(np.uint8) if white == 255 else composite.astype(rgba.dtype)


# --------------------------------------------------------------------------------------------------
# the steps, on one (3, H, W) image
# --------------------------------------------------------------------------------------------------

def shortest_edge_size(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
    """(new_height, new_width) with the shorter side = shortest_edge; the longer side scaled and truncated."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = shortest_edge, int(shortest_edge * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def _float_to_uint8_for_pil(image: np.ndarray, name: str) -> tuple[np.ndarray, bool]:
    """A float image as uint8 for Pillow, and whether it was scaled by 255 (transformers' rule).

    Integer-valued floats in [0, 255] are taken as they are; other floats must be in [0, 1] and
    are scaled by 255 and truncated. The caller scales back by 1/255 after resizing.
    """
    if np.allclose(image, np.trunc(image)):
        if image.min() < 0 or image.max() > 255:
            raise ImageError(f"{name}: float pixel values in [{image.min()}, {image.max()}], expected [0, 255] or [0, 1]")
        return image.astype(np.uint8), False
    if image.min() < 0 or image.max() > 1:
        raise ImageError(f"{name}: float pixel values in [{image.min()}, {image.max()}], expected [0, 1] or "
                         "whole numbers in [0, 255]")
    return rescale(image, 255).astype(np.uint8), True


def resize(image: np.ndarray, size: tuple[int, int], resample: int, name: str = "image") -> np.ndarray:
    """(3, H, W) -> (3, size[0], size[1]) with Pillow's resampling filter `resample` (2 = bilinear).

    `ops.resize_image` is Pillow's algorithm written in NumPy, equal to Pillow bit for bit.

    uint8 stays uint8. Float images go through uint8 (see `_float_to_uint8_for_pil`), as in transformers.
    """
    scaled = False
    if image.dtype != np.uint8:
        image, scaled = _float_to_uint8_for_pil(image, name)
    try:
        resized = ops.resize_image(np.moveaxis(image, 0, -1), size, resample)  # (h, w, 3): Pillow's algorithm
    except ShapeError as e:                                                     # (the op's own error, named)
        raise ShapeError(f"{name}: {e}") from None
    resized = np.moveaxis(resized, -1, 0)                                       # (3, h, w)
    return rescale(resized, 1 / 255) if scaled else resized


def center_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """(C, H, W) -> (C, height, width), the middle of the image.

    A side shorter than the crop is first zero-padded to the crop size (the extra pixel of an odd
    padding goes to the top / left), then the crop starts at (size - crop) // 2, as in transformers.
    """
    _, h, w = image.shape
    pad_h, pad_w = max(height - h, 0), max(width - w, 0)
    if pad_h or pad_w:
        padded = np.zeros((image.shape[0], h + pad_h, w + pad_w), dtype=image.dtype)  # (C, max(H, height), ...)
        top, left = math.ceil(pad_h / 2), math.ceil(pad_w / 2)
        padded[:, top:top + h, left:left + w] = image
        image, (_, h, w) = padded, padded.shape
    top, left = (h - height) // 2, (w - width) // 2
    return image[:, top:top + height, left:left + width]                # (C, height, width)


def rescale(image: np.ndarray, factor: float) -> np.ndarray:
    """image * factor, computed in float64 and stored as float32 (transformers' order of rounding)."""
    return (image.astype(np.float64) * factor).astype(np.float32)


def normalize(image: np.ndarray, mean, std) -> np.ndarray:
    """(C, H, W) -> (x - mean[c]) / std[c] per channel, in the image's float dtype (float32 for integers)."""
    if image.dtype.kind != "f":
        image = image.astype(np.float32)
    mean = np.asarray(mean, dtype=image.dtype)[:, None, None]           # (C, 1, 1)
    std = np.asarray(std, dtype=image.dtype)[:, None, None]
    return (image - mean) / std


# --------------------------------------------------------------------------------------------------
# the processors
# --------------------------------------------------------------------------------------------------

class BatchFeature(dict):
    """transformers' BatchFeature: the processor's outputs by key (`inputs["pixel_values"]`) or by
    attribute (`inputs.pixel_values`); `model(**inputs)` passes them on as keywords."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"BatchFeature has no {name!r}, it has {sorted(self)}") from None

    def to(self, *args, **kwargs) -> BatchFeature:
        """torch tensors moved or cast with `tensor.to(*args, **kwargs)` (a device, a dtype); arrays and lists as they are."""
        return BatchFeature({k: (v.to(*args, **kwargs) if hasattr(v, "to") else v) for k, v in self.items()})


def _torch_tensor(array: np.ndarray):
    """return_tensors="pt": the array as a torch tensor (torch is optional, imported only here)."""
    try:
        import torch
    except ImportError:
        raise ConfigError('return_tensors="pt" needs torch, which is not installed (pip install torch), '
                          'or use return_tensors="np"') from None
    return torch.from_numpy(array)


@dataclasses.dataclass
class MobileNetV1ImageProcessor:
    """transformers' MobileNetV1ImageProcessor (PIL backend): same fields, defaults and pixel values.

    `processor(images)` -> BatchFeature {"pixel_values": (N, 3, crop_height, crop_width) float32} (`return_tensors`:
    "np", "pt" or None, see `preprocess`).
    `do_convert_rgb`: None / True convert every image to RGB (module docstring); False accepts only
    3-channel images (transformers' default, None, does not convert and fails on other images).
    """

    do_resize: bool = True
    size: dict = dataclasses.field(default_factory=lambda: {"shortest_edge": 256})
    resample: int = PIL_BILINEAR
    do_center_crop: bool = True
    crop_size: dict = dataclasses.field(default_factory=lambda: {"height": 224, "width": 224})
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple = IMAGENET_STANDARD_MEAN
    image_std: tuple = IMAGENET_STANDARD_STD
    do_convert_rgb: bool | None = None

    model_input_names: ClassVar[list[str]] = ["pixel_values"]

    def __post_init__(self):
        self.size = _size_dict(self.size, "size", shortest_edge_for_int=True)
        self.crop_size = _size_dict(self.crop_size, "crop_size", shortest_edge_for_int=False)
        if set(self.crop_size) != {"height", "width"}:
            raise ConfigError(f"image processor field 'crop_size' must have 'height' and 'width', got {self.crop_size}")
        from PIL import Image
        valid = sorted(int(r) for r in Image.Resampling)
        if isinstance(self.resample, bool) or self.resample not in valid:
            raise ConfigError(f"image processor field 'resample' must be a PIL resampling filter {valid}, "
                              f"got {self.resample!r}")
        self.resample = int(self.resample)
        if not _is_number(self.rescale_factor):
            raise ConfigError(f"image processor field 'rescale_factor' must be a number, got {self.rescale_factor!r}")
        self.image_mean = _per_channel(self.image_mean, "image_mean")
        self.image_std = _per_channel(self.image_std, "image_std")
        if any(s == 0 for s in self.image_std):
            raise ConfigError(f"image processor field 'image_std' must not contain 0, got {list(self.image_std)}")
        for flag in ("do_resize", "do_center_crop", "do_rescale", "do_normalize"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"image processor field {flag!r} must be true or false, got {getattr(self, flag)!r}")

    # -- dicts ----------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, revision: str | None = None, **overrides):
        """The image processor stored with pretrained weights, as transformers' `from_pretrained`.

        `pretrained_model_name_or_path`: a mobilenet-np .h5 file, a transformers checkpoint folder
        (its preprocessor_config.json) or model.safetensors, or a Hub id in huggingface_hub's cache.
        `overrides` replace fields, e.g. `do_center_crop=False`.
        """
        return cls.from_weights_file(read_pretrained(pretrained_model_name_or_path, revision), **overrides)

    @classmethod
    def from_weights_file(cls, stored: WeightsFile, **overrides):
        """The processor of weights read by formats.transformers_checkpoint.read_pretrained: the one stored,
        else `for_image_size` of the stored config's image_size; then `overrides`."""
        cls._check_fields(overrides, "from_pretrained")
        if stored.image_processor:
            return cls.from_dict({**stored.image_processor, **overrides})
        default = cls.for_image_size(stored.config.get("image_size", CONFIG_IMAGE_SIZE))
        return dataclasses.replace(default, **overrides) if overrides else default

    @classmethod
    def for_image_size(cls, image_size):
        """The processor of the published checkpoints for a network input of `image_size` (an int or
        (height, width)): center crop at that size after resizing the shortest edge to 32 pixels more
        (224 -> 256, 160 -> 192, 513 -> 545)."""
        height, width = image_size_pair(image_size)
        return cls(size={"shortest_edge": min(height, width) + SHORTEST_EDGE_MARGIN},
                   crop_size={"height": height, "width": width})

    @classmethod
    def _check_fields(cls, options: dict, where: str) -> None:
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in options if k not in names]
        if unknown:
            raise ConfigError(f"{cls.__name__}.{where}: unknown option {unknown[0]!r}, expected return_tensors "
                              f"or one of the fields {names}")

    @classmethod
    def from_dict(cls, processor_dict: dict[str, Any]):
        """From a transformers preprocessor_config.json dict; keys this processor does not use are ignored."""
        if not isinstance(processor_dict, dict):
            raise ConfigError(f"an image processor config must be a JSON object, got {type(processor_dict).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in processor_dict.items() if k in names and v is not None})

    @classmethod
    def from_json_file(cls, path):
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such preprocessor config file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: not a JSON preprocessor config ({_first_line(e)})") from None
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        """A transformers preprocessor_config.json dict."""
        d = dataclasses.asdict(self)
        d["image_mean"], d["image_std"] = list(self.image_mean), list(self.image_std)
        d["image_processor_type"] = type(self).__name__
        if d["do_convert_rgb"] is None:
            del d["do_convert_rgb"]
        return d

    # -- processing -----------------------------------------------------------------------------------
    def __call__(self, images, return_tensors: str | None = "np", **overrides) -> BatchFeature:
        return self.preprocess(images, return_tensors=return_tensors, **overrides)

    def preprocess(self, images, return_tensors: str | None = "np", **overrides) -> BatchFeature:
        """One image or a list of them -> BatchFeature {"pixel_values": ...} (transformers' preprocess).

        return_tensors "np": one (N, 3, H, W) float32 array (this library's default); "pt": the same
        as a torch tensor; None: a list of N (3, H, W) float32 arrays (transformers' default), which
        may differ in size. `overrides` replace fields for this call only, e.g. `do_center_crop=False`.
        """
        if return_tensors not in RETURN_TENSORS:
            raise ConfigError(f"return_tensors must be one of {RETURN_TENSORS}, got {return_tensors!r}")
        self._check_fields(overrides, "preprocess")
        processor = dataclasses.replace(self, **overrides) if overrides else self
        batch = [processor.process_one(image, name).astype(np.float32) for image, name in _flat_images(images)]
        if return_tensors is None:
            return BatchFeature(pixel_values=batch)                                 # N x (3, H, W)
        shapes = {x.shape for x in batch}
        if len(shapes) > 1:
            raise ImageError(f"the images have different sizes after preprocessing {sorted(shapes)}; "
                             "expected one size (use do_center_crop=True, one image at a time, or return_tensors=None)")
        pixel_values = np.stack(batch)                                              # (N, 3, H, W)
        if return_tensors == "pt":
            pixel_values = _torch_tensor(pixel_values)
        return BatchFeature(pixel_values=pixel_values)

    def process_one(self, image, name: str = "image") -> np.ndarray:
        """One image (path, PIL image or array) -> (3, H, W) pixel values (float32 unless all steps are off)."""
        x = self.to_rgb_array(image, name)                                  # (3, H, W) uint8 or float
        if self.do_resize:
            x = resize(x, self.resize_output_size(*x.shape[1:]), self.resample, name)
        if self.do_center_crop:
            x = center_crop(x, self.crop_size["height"], self.crop_size["width"])
        if self.do_rescale:
            x = rescale(x, self.rescale_factor)
        if self.do_normalize:
            x = normalize(x, self.image_mean, self.image_std)
        return x

    def to_rgb_array(self, image, name: str = "image") -> np.ndarray:
        """A path, PIL image or array -> (3, H, W) RGB array (uint8, or float for float arrays)."""
        Image, _ = _pil()
        if isinstance(image, (str, Path)):
            array = np.array(load_image(image))                             # (H, W, 3) uint8
        elif isinstance(image, Image.Image):
            image = _safely_loaded(image, name)
            if self.do_convert_rgb is False and image.mode != "RGB":
                raise ImageError(f"{name}: PIL image of mode {image.mode}, expected RGB (do_convert_rgb is False)")
            array = pil_to_rgb_array(image)                                 # (H, W, 3) uint8
        elif isinstance(image, np.ndarray):
            if self.do_convert_rgb is False and not (image.ndim == 3 and 3 in (image.shape[0], image.shape[-1])):
                raise ImageError(f"{name}: array of shape {image.shape}, expected 3 channels (do_convert_rgb is False)")
            return array_to_rgb(image, name)
        else:
            raise ImageError(f"{name}: got a {type(image).__name__}, expected a file path, a PIL image or a numpy array")
        return np.moveaxis(array, -1, 0)                                    # (3, H, W)

    def resize_output_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) an image of this size is resized to."""
        if "shortest_edge" in self.size:
            return shortest_edge_size(height, width, self.size["shortest_edge"])
        return self.size["height"], self.size["width"]


@dataclasses.dataclass
class MobileNetV2ImageProcessor(MobileNetV1ImageProcessor):
    """transformers' MobileNetV2ImageProcessor (PIL backend): V1's steps, plus semantic segmentation output.

    `do_reduce_labels` is kept for round trips of preprocessor_config.json; it only changes
    segmentation-map *labels* (training data), which mobilenet_np does not process.
    """

    do_reduce_labels: bool = False

    def post_process_semantic_segmentation(self, outputs, target_sizes=None) -> list[np.ndarray]:
        """Segmentation logits -> one (H, W) int64 class-id map per image.

        `outputs`: a SemanticSegmenterOutput (or anything with `.logits` / ["logits"]), logits (N, C, h, w).
        `target_sizes`: None (maps at the logits' size) or N (height, width) pairs; the logits are
        resized bilinearly (align_corners=False) to each size before the argmax over classes.
        """
        logits = np.asarray(outputs["logits"] if isinstance(outputs, dict) else outputs.logits)
        if logits.ndim != 4:
            raise ImageError(f"segmentation logits have shape {logits.shape}, expected (N, num_labels, h, w)")
        if target_sizes is None:
            return [x.argmax(axis=0) for x in logits]                           # N x (h, w)
        if len(target_sizes) != len(logits):
            raise ImageError(f"got {len(target_sizes)} target sizes for {len(logits)} images, expected one per image")
        maps = []
        for x, size in zip(logits, target_sizes):
            resized = ops.interpolate_bilinear(x[None], tuple(int(s) for s in size), align_corners=False)  # (1, C, H, W)
            maps.append(resized[0].argmax(axis=0))                              # (H, W)
        return maps


IMAGE_PROCESSORS = {cls.__name__: cls for cls in (MobileNetV1ImageProcessor, MobileNetV2ImageProcessor)}
# transformers 5 names its backends with a suffix; the stored "image_processor_type" may carry one.
BACKEND_SUFFIXES = ("Fast", "Pil")


def image_processor_class(name: str | None) -> type[MobileNetV1ImageProcessor]:
    """The processor class for an architecture name (registry.ARCHITECTURES) or an image_processor_type
    (`MobileNetV1ImageProcessor`, also with a backend suffix); MobileNetV2's for anything else."""
    if name in ARCHITECTURES:
        name = ARCHITECTURES[name].image_processor_name
    for suffix in BACKEND_SUFFIXES:
        if name and name.endswith(suffix) and name[: -len(suffix)] in IMAGE_PROCESSORS:
            name = name[: -len(suffix)]
    return IMAGE_PROCESSORS.get(name, MobileNetV2ImageProcessor)


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------

def _flat_images(images) -> list[tuple[Any, str]]:
    """One image, a list of images or a 4-D array batch -> [(image, name for messages)]."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise ImageError("got an empty list of images, expected at least one image")
        return [(image, _name(image, i)) for i, image in enumerate(images)]
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return [(image, f"array batch image {i}") for i, image in enumerate(images)]
    return [(images, _name(images, None))]


def _name(image, index: int | None) -> str:
    from PIL import Image
    if isinstance(image, (str, Path)):
        return str(image)
    where = "" if index is None else f" {index}"
    if isinstance(image, Image.Image):
        return f"image{where} ({_pil_name(image)})"
    if isinstance(image, np.ndarray):
        return f"array image{where}"
    return f"image{where}"


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _size_dict(size, field: str, shortest_edge_for_int: bool) -> dict[str, int]:
    """transformers' size forms: {"shortest_edge": n}, {"height": h, "width": w}, an int or an (h, w) pair."""
    if isinstance(size, int) and not isinstance(size, bool):
        size = {"shortest_edge": size} if shortest_edge_for_int else {"height": size, "width": size}
    elif isinstance(size, (list, tuple)) and len(size) == 2:
        size = {"height": size[0], "width": size[1]}
    if not isinstance(size, dict) or set(size) not in ({"shortest_edge"}, {"height", "width"}):
        raise ConfigError(f"image processor field {field!r} must be {{'shortest_edge': n}} or "
                          f"{{'height': h, 'width': w}}, got {size!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size.values()):
        raise ConfigError(f"image processor field {field!r} must hold positive ints, got {size!r}")
    return dict(size)


def _per_channel(values, field: str) -> tuple[float, float, float]:
    """A number or 3 numbers -> a 3-tuple (one per RGB channel)."""
    if _is_number(values):
        values = (values,) * 3
    if not isinstance(values, (list, tuple)) or len(values) != 3 or not all(_is_number(v) for v in values):
        raise ConfigError(f"image processor field {field!r} must be a number or 3 numbers, got {values!r}")
    return tuple(float(v) for v in values)
