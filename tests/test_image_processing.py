"""Image processors (mobilenet_np/image_processing.py) against transformers' PIL-backend processors.

Tolerance: none. Both sides resize with the same Pillow call on the same uint8 pixels and do the crop,
the float64 -> float32 rescale and the float32 normalize in the same order, so pixel values must be
bit-identical; the tests use np.testing.assert_array_equal (which also checks shape).

transformers' processors only convert images to RGB with do_convert_rgb=True (their default, None,
fails on non-RGB images), so PIL images and arrays are compared against do_convert_rgb=True; paths go
through transformers' load_image on both sides.
"""

import json
import warnings

import numpy as np
import pytest
import torch
import transformers
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from PIL import Image

import mobilenet_np
from mobilenet_np.errors import ImageError
from mobilenet_np.image_processing import MobileNetV1ImageProcessor, MobileNetV2ImageProcessor

PAIRS = {  # ours -> transformers'
    MobileNetV1ImageProcessor: transformers.MobileNetV1ImageProcessorPil,
    MobileNetV2ImageProcessor: transformers.MobileNetV2ImageProcessorPil,
}
# Preprocessor settings to draw from: the published ones (MobileNet 224 / 192, DeepLab 513), a crop
# larger than the resized image (zero padding), a fixed (height, width) resize and bicubic resampling.
SETTINGS = [
    {},
    {"size": {"shortest_edge": 224}, "crop_size": {"height": 192, "width": 192}},
    {"size": {"shortest_edge": 545}, "crop_size": {"height": 513, "width": 513}},
    {"size": {"shortest_edge": 100}, "crop_size": {"height": 128, "width": 161}},
    {"size": {"height": 180, "width": 121}, "crop_size": {"height": 99, "width": 150}},
    {"resample": 3, "crop_size": {"height": 97, "width": 97}},
    {"do_center_crop": False, "size": {"shortest_edge": 64}},
]
MODES = ["L", "RGB", "RGBA", "P", "I;16", "CMYK"]
MAX_RESIZED_PIXELS = 8_000_000  # keeps extreme aspect ratios (1 x 600 -> 256 x 153600) out of the time budget


def processors(cls, setting):
    theirs = PAIRS[cls](**setting)
    return cls(**setting), theirs


def theirs_pixels(processor, image, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return processor(image, return_tensors="np", **kwargs)["pixel_values"]


def random_image(mode: str, height: int, width: int, seed: int) -> Image.Image:
    """A random image of `mode`; 16-bit images use the full 0..65535 range (Pillow clips it for RGB)."""
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    rgba = Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8), "RGBA")
    if mode == "P":  # a palette image with a transparent colour, as GIFs and PNGs have
        image = rgba.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
        image.info["transparency"] = 3
        return image
    return rgba.convert(mode)


def resized_pixels(setting, height, width):
    size = setting.get("size", {"shortest_edge": 256})
    if "height" in size:
        return size["height"] * size["width"]
    short, long = min(height, width), max(height, width)
    return size["shortest_edge"] * int(size["shortest_edge"] * long / short)


# --------------------------------------------------------------------------------------------------
# equal to transformers
# --------------------------------------------------------------------------------------------------

def test_fields_and_defaults_are_transformers_ones():
    for ours_cls, theirs_cls in PAIRS.items():
        ours, theirs = ours_cls(), theirs_cls()
        for field in ["do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
                      "do_normalize", "image_mean", "image_std", "do_convert_rgb"]:
            value = getattr(theirs, field)
            value = dict(value) if field in ("size", "crop_size") else value
            value = {k: v for k, v in value.items() if v is not None} if isinstance(value, dict) else value
            assert getattr(ours, field) == value, field
    assert MobileNetV2ImageProcessor().do_reduce_labels == transformers.MobileNetV2ImageProcessorPil().do_reduce_labels


@settings(max_examples=60)  # cheap examples: more of the mode x size x setting space
@given(mode=st.sampled_from(MODES), height=st.integers(1, 600), width=st.integers(1, 600),
       setting=st.sampled_from(SETTINGS), cls=st.sampled_from(list(PAIRS)), seed=st.integers(0, 2**16))
def test_pil_images_and_paths_equal_transformers(tmp_path_factory, mode, height, width, setting, cls, seed):
    assume(resized_pixels(setting, height, width) <= MAX_RESIZED_PIXELS)
    ours, theirs = processors(cls, setting)
    image = random_image(mode, height, width, seed)
    expected = theirs_pixels(theirs, image, do_convert_rgb=True)
    np.testing.assert_array_equal(ours(image)["pixel_values"], expected)
    # The same image from a file (CMYK is not a PNG mode: TIFF), read by transformers' load_image.
    path = tmp_path_factory.mktemp("images") / ("image.tiff" if mode == "CMYK" else "image.png")
    image.save(path)
    np.testing.assert_array_equal(ours(str(path))["pixel_values"], theirs_pixels(theirs, str(path)))


@given(shape=st.sampled_from(["HWC", "CHW", "HW1"]), channels=st.sampled_from([1, 3, 4]),
       dtype=st.sampled_from(["uint8", "float01", "float255"]), height=st.integers(5, 300),
       width=st.integers(5, 300), setting=st.sampled_from(SETTINGS[:4]), seed=st.integers(0, 2**16))
def test_numpy_arrays_equal_transformers(shape, channels, dtype, height, width, setting, seed):
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, (height, width, channels)).astype(np.uint8)
    if dtype == "float01":
        array = array.astype(np.float32) / 255
    elif dtype == "float255":
        array = array.astype(np.float64)
    if shape == "CHW":
        array = np.moveaxis(array, -1, 0)
    elif shape == "HW1":
        array = array[..., :1]
    ours, theirs = processors(MobileNetV2ImageProcessor, setting)
    if dtype == "float255" and array.shape[0 if shape == "CHW" else -1] == 4:  # float alpha must be in [0, 1]: both refuse
        with pytest.raises(ValueError):
            theirs_pixels(theirs, array, do_convert_rgb=True)
        with pytest.raises(ImageError, match="expected \\[0, 1\\]"):
            ours(array)
        return
    expected = theirs_pixels(theirs, array, do_convert_rgb=True)
    np.testing.assert_array_equal(ours(array)["pixel_values"], expected)


def test_batches_and_options_equal_transformers():
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(300, 200), (64, 500)]]
    ours, theirs = MobileNetV2ImageProcessor(), transformers.MobileNetV2ImageProcessorPil()
    pixel_values = ours(images)["pixel_values"]
    assert pixel_values.shape == (2, 3, 224, 224) and pixel_values.dtype == np.float32
    np.testing.assert_array_equal(pixel_values, theirs_pixels(theirs, images))
    batch = np.stack([np.asarray(image.resize((50, 40))) for image in images])           # (2, 40, 50, 3)
    np.testing.assert_array_equal(ours(batch)["pixel_values"], theirs_pixels(theirs, batch))
    for options in [{"do_resize": False}, {"do_normalize": False}, {"do_rescale": False}, {"do_center_crop": False},
                    {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}]:
        np.testing.assert_array_equal(ours(images[0], **options)["pixel_values"],
                                      theirs_pixels(theirs, images[0], **options), err_msg=str(options))
    float_image = rng.random((30, 40, 3))  # floats in [0, 1] go through uint8 for the PIL resize, as in transformers
    np.testing.assert_array_equal(ours(float_image, do_rescale=False)["pixel_values"],
                                  theirs_pixels(theirs, float_image, do_rescale=False))


def test_exif_orientation_is_applied_to_files(tmp_path):
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (60, 90, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.png"
    image.save(path, exif=exif)
    ours = MobileNetV2ImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    theirs = transformers.MobileNetV2ImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    pixel_values = ours(str(path))["pixel_values"]
    np.testing.assert_array_equal(pixel_values, theirs_pixels(theirs, str(path)))
    # The image was turned upright (90 x 60 -> 60 x 90), so it differs from the unrotated one.
    assert not np.array_equal(pixel_values, ours(image)["pixel_values"])


def test_real_images_with_published_preprocessor_configs(shared_data):
    for config_path in sorted((shared_data / "hf_configs").glob("*/preprocessor_config.json")):
        config = json.loads(config_path.read_text())
        cls = MobileNetV1ImageProcessor if "V1" in config["image_processor_type"] else MobileNetV2ImageProcessor
        ours = cls.from_dict(config)
        theirs = PAIRS[cls](**{k: v for k, v in config.items() if k != "image_processor_type"})
        for image_path in sorted((shared_data / "images").glob("*.bmp")):
            np.testing.assert_array_equal(ours(str(image_path))["pixel_values"],
                                          theirs_pixels(theirs, str(image_path)), err_msg=f"{config_path} {image_path}")


def test_from_dict_of_the_deeplab_config(shared_data):
    config = json.loads((shared_data / "hf_configs/google__deeplabv3_mobilenet_v2_1.0_513/preprocessor_config.json")
                        .read_text())
    processor = mobilenet_np.MobileNetV2ImageProcessor.from_dict(config)
    assert processor.size == {"shortest_edge": 545} and processor.crop_size == {"height": 513, "width": 513}
    assert processor.resample == 2 and processor.image_mean == (0.5, 0.5, 0.5)
    assert MobileNetV2ImageProcessor.from_dict(processor.to_dict()) == processor
    assert {k: v for k, v in processor.to_dict().items() if k != "do_reduce_labels"} == config


def test_post_process_semantic_segmentation_equals_transformers():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 9, 11)).astype(np.float32)              # (N, num_labels, h, w)
    theirs = transformers.MobileNetV2ImageProcessorPil()
    outputs = transformers.modeling_outputs.SemanticSegmenterOutput(logits=torch.from_numpy(logits))
    target_sizes = [(37, 50), (9, 11)]
    expected = [m.numpy() for m in theirs.post_process_semantic_segmentation(outputs, target_sizes=target_sizes)]
    scores = [torch.nn.functional.interpolate(torch.from_numpy(logits[i:i + 1]), size=s, mode="bilinear",
                                              align_corners=False)[0].numpy() for i, s in enumerate(target_sizes)]
    ours = MobileNetV2ImageProcessor().post_process_semantic_segmentation(
        mobilenet_np.outputs.SemanticSegmenterOutput(logits=logits), target_sizes=target_sizes)
    for mine, theirs_map, score in zip(ours, expected, scores):
        assert mine.shape == theirs_map.shape
        # float32 rounding may differ in the last bit: a pixel may only disagree where two classes tie within 1e-5.
        top2 = np.sort(score, axis=0)[-2:]
        assert np.all((mine == theirs_map) | (top2[1] - top2[0] < 1e-5))
        assert np.mean(mine == theirs_map) > 0.999
    unresized = MobileNetV2ImageProcessor().post_process_semantic_segmentation({"logits": logits})
    np.testing.assert_array_equal(np.stack(unresized), logits.argmax(axis=1))


# --------------------------------------------------------------------------------------------------
# bad images and bad settings: ImageError / ConfigError, one line, naming the file
# --------------------------------------------------------------------------------------------------

def write_png(path, size=(20, 20)):
    Image.fromarray(np.full((size[1], size[0], 3), 128, dtype=np.uint8)).save(path)
    return path


def _truncated(path, image_format):
    """An image file cut after its header: Pillow opens it but cannot read all the pixels."""
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)).save(path, image_format)
    path.write_bytes(path.read_bytes()[:5000])


@pytest.mark.parametrize("make, expected", [
    (lambda p: p.write_text("not an image"), "not an image"),
    (lambda p: p.write_bytes(b""), "empty file"),
    (lambda p: _truncated(p, "PNG"), "damaged"),
    (lambda p: _truncated(p, "BMP"), "damaged"),
])
def test_bad_image_files(tmp_path, make, expected):
    path = tmp_path / "bad.png"
    make(path)
    with pytest.raises(ImageError) as e:
        MobileNetV2ImageProcessor()(str(path))
    message = str(e.value)
    assert str(path) in message and expected in message and "\n" not in message


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageError, match="no such image file"):
        MobileNetV2ImageProcessor()(str(tmp_path / "missing.png"))
    with pytest.raises(ImageError, match="is a folder"):
        MobileNetV2ImageProcessor()(tmp_path)


@pytest.mark.parametrize("pixels", [1500, 3000])  # above the limit (Pillow warns) and above twice it (Pillow raises)
def test_decompression_bombs_are_refused(tmp_path, monkeypatch, pixels):
    path = write_png(tmp_path / "bomb.png", (pixels // 10, 10))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageError, match="decompression bomb") as e:
        MobileNetV2ImageProcessor()(str(path))
    assert str(path) in str(e.value)


@pytest.mark.parametrize("array, expected", [
    (np.full((10, 10, 3), np.nan, dtype=np.float32), "NaN or Inf"),
    (np.full((10, 10, 3), np.inf), "NaN or Inf"),
    (np.zeros((10, 10, 3), dtype=np.int64), "dtype int64"),
    (np.zeros((10, 10, 3), dtype=bool), "dtype bool"),
    (np.zeros((10, 10, 2), dtype=np.uint8), "1, 3 or 4 channels"),
    (np.zeros((10, 10, 5), dtype=np.uint8), "1, 3 or 4 channels"),
    (np.zeros(10, dtype=np.uint8), "expected (H, W)"),
    (np.zeros((1, 2, 3, 10, 10), dtype=np.uint8), "expected (H, W)"),
    (np.zeros((0, 10, 3), dtype=np.uint8), "empty"),
    (np.full((10, 10, 3), 300.5), "expected [0, 1]"),
    (np.full((10, 10, 4), 2.0), "expected [0, 1]"),
])
def test_bad_arrays(array, expected):
    with pytest.raises(ImageError) as e:
        MobileNetV2ImageProcessor()(array)
    assert expected in str(e.value) and "array image" in str(e.value) and "\n" not in str(e.value)


def test_bad_inputs_and_settings():
    with pytest.raises(ImageError, match="expected a file path, a PIL image or a numpy array"):
        MobileNetV2ImageProcessor()(42)
    with pytest.raises(ImageError, match="empty list"):
        MobileNetV2ImageProcessor()([])
    with pytest.raises(ImageError, match="different sizes"):
        MobileNetV2ImageProcessor(do_center_crop=False)([np.zeros((10, 20, 3), np.uint8), np.zeros((20, 10, 3), np.uint8)])
    with pytest.raises(ImageError, match="expected RGB"):
        MobileNetV2ImageProcessor(do_convert_rgb=False)(Image.new("L", (10, 10)))
    for bad in [{"size": {"longest_edge": 3}}, {"crop_size": {"shortest_edge": 3}}, {"resample": 99},
                {"image_std": [0.5, 0, 0.5]}, {"image_mean": [0.5]}, {"do_resize": "yes"}, {"size": {"shortest_edge": 0}}]:
        with pytest.raises(mobilenet_np.ConfigError):
            MobileNetV2ImageProcessor.from_dict(bad)
