"""Pipelines (mobilenet_np/pipelines.py) against transformers' pipelines on the same weights.

Each reference is a small random transformers model saved with its image processor (save_pretrained),
converted to HDF5 by `weights_tools.convert.convert_checkpoint`; both pipelines then read the same
checkpoint. Tolerances: labels and their order equal; scores within 1e-5 (float32 networks, NumPy vs
PyTorch summation order); segmentation masks equal pixel for pixel.
"""

import json
import warnings

import numpy as np
import pytest
import transformers
from PIL import Image

import mobilenet_np
from mobilenet_np.errors import ConfigError, ImageError
from mobilenet_np.pipelines import ImageClassificationPipeline, image_processor_for, pipeline, ranked_classes
from weights_tools.convert import convert_checkpoint

from torch_reference import random_transformers_model

SCORE_ATOL = 1e-5

# name -> (architecture, config, preprocessor settings)
CHECKPOINTS = {
    "v1": ("MobileNetV1ForImageClassification", {"depth_multiplier": 0.25, "image_size": 64, "num_labels": 10},
           {"size": {"shortest_edge": 72}, "crop_size": {"height": 64, "width": 64}}),
    "v2": ("MobileNetV2ForImageClassification", {"depth_multiplier": 0.35, "image_size": 64, "num_labels": 12},
           {"size": {"shortest_edge": 80}, "crop_size": {"height": 64, "width": 64}}),
    "v2_one_label": ("MobileNetV2ForImageClassification", {"depth_multiplier": 0.35, "image_size": 32, "num_labels": 1},
                     {"size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 32}}),
    "deeplab": ("MobileNetV2ForSemanticSegmentation", {"depth_multiplier": 0.35, "image_size": 65, "num_labels": 4},
                {"size": {"shortest_edge": 81}, "crop_size": {"height": 65, "width": 65}}),
}
PROCESSORS = {"MobileNetV1": transformers.MobileNetV1ImageProcessorPil,
              "MobileNetV2": transformers.MobileNetV2ImageProcessorPil}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """name -> (transformers pipeline, path of the converted HDF5 file)."""
    built = {}
    for seed, (name, (architecture, config, settings)) in enumerate(CHECKPOINTS.items()):
        folder = tmp_path_factory.mktemp(name)
        labels = {i: f"{name} class {i}" for i in range(config["num_labels"])}
        model = random_transformers_model(architecture, seed=seed, id2label=labels, **config)
        processor = PROCESSORS[architecture[:11]](**settings)
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        weights = convert_checkpoint(folder, folder / "weights.h5", progress=False)
        task = "image-segmentation" if "Segmentation" in architecture else "image-classification"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = transformers.pipeline(task, model=model, image_processor=processor)
        built[name] = (reference, weights)
    return built


def sample_images(tmp_path):
    """Images of several modes and sizes, as PIL images, a file path and a numpy array."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8))
    # Pipelines drop alpha (transformers' load_image), unlike the processor, which composites onto white.
    rgba = Image.fromarray(rng.integers(0, 256, (50, 130, 4), dtype=np.uint8), "RGBA")
    path = tmp_path / "image.png"
    rgba.save(path)
    return [rgb, rgb.convert("L").resize((100, 40)), rgba, rgb.convert("P"), str(path),
            np.asarray(rgb.resize((33, 77)))]


@pytest.mark.parametrize("name", ["v1", "v2", "v2_one_label"])
def test_image_classification_equals_transformers(checkpoints, tmp_path, name):
    reference, weights = checkpoints[name]
    classifier = mobilenet_np.pipeline("image-classification", model=weights)
    images = sample_images(tmp_path)
    every_label = reference(images, top_k=100)  # transformers' top_k keeps the first top_k of this ranking
    for top_k in [5, 1, 100]:
        ours, theirs = classifier(images, top_k=top_k), [ranking[:top_k] for ranking in every_label]
        assert len(ours) == len(theirs) == len(images)
        for mine, expected in zip(ours, theirs):
            assert [p["label"] for p in mine] == [p["label"] for p in expected]
            np.testing.assert_allclose([p["score"] for p in mine], [p["score"] for p in expected], atol=SCORE_ATOL)
            assert all(type(p["score"]) is float for p in mine)
    single = classifier(images[0])  # one image in, one list out; top_k defaults to 5 (capped at num_labels)
    assert [p["label"] for p in single] == [p["label"] for p in reference(images[0])]


def test_image_segmentation_equals_transformers(checkpoints, tmp_path):
    reference, weights = checkpoints["deeplab"]
    segmenter = pipeline("image-segmentation", model=mobilenet_np.load(weights))
    images = sample_images(tmp_path)[:5]  # transformers' segmentation pipeline takes paths and PIL images
    for image, ours, theirs in zip(images, segmenter(images), reference(images)):
        assert [s["label"] for s in ours] == [s["label"] for s in theirs]
        for mine, expected in zip(ours, theirs):
            assert mine["score"] is None and expected["score"] is None
            assert mine["mask"].mode == expected["mask"].mode == "L"
            np.testing.assert_array_equal(np.asarray(mine["mask"]), np.asarray(expected["mask"]))
        # Every pixel belongs to exactly one class: the masks tile the image.
        coverage = sum(np.asarray(s["mask"], dtype=np.int64) for s in ours)
        assert np.all(coverage == 255) and coverage.shape == np.asarray(expected["mask"]).shape
    with pytest.raises(ImageError, match="expected a file path or a PIL image"):
        segmenter(np.zeros((10, 10, 3), np.uint8))


def test_processor_comes_from_the_weights_file(checkpoints):
    _, weights = checkpoints["v2"]
    classifier = pipeline("image-classification", model=weights)
    assert classifier.image_processor == mobilenet_np.MobileNetV2ImageProcessor.from_dict(CHECKPOINTS["v2"][2])
    assert type(pipeline("image-classification", model=checkpoints["v1"][1]).image_processor) \
        is mobilenet_np.MobileNetV1ImageProcessor


def test_processor_defaults_from_config_reproduce_published_ones(shared_data):
    """Without a stored processor: crop = image_size, shortest edge = image_size + 32, as every published checkpoint."""
    folders = sorted((shared_data / "hf_configs").iterdir())
    assert len(folders) == 5
    for folder in folders:
        config = json.loads((folder / "config.json").read_text())
        published = json.loads((folder / "preprocessor_config.json").read_text())
        model_class = getattr(mobilenet_np, config["architectures"][0])
        model = model_class(model_class.config_class.from_dict(config), seed=None)
        processor = image_processor_for(model)
        assert processor.size == published["size"] and processor.crop_size == published["crop_size"], folder.name
        assert processor == type(processor).from_dict(published)


def test_random_model_without_stored_processor(tmp_path):
    model = mobilenet_np.MobileNetV2ForImageClassification(mobilenet_np.MobileNetV2Config(image_size=48, num_labels=3))
    model.save_pretrained(tmp_path / "w.h5")
    classifier = pipeline("image-classification", model=str(tmp_path / "w.h5"))
    assert classifier.image_processor.size == {"shortest_edge": 80}
    assert classifier.image_processor.crop_size == {"height": 48, "width": 48}
    result = classifier(np.zeros((60, 60, 3), np.uint8), top_k=None)
    assert sorted(p["label"] for p in result) == ["LABEL_0", "LABEL_1", "LABEL_2"]
    assert abs(sum(p["score"] for p in result) - 1) < 1e-6
    assert [p["score"] for p in result] == sorted((p["score"] for p in result), reverse=True)


def test_ties_keep_the_lower_class_first_as_transformers_stable_sort():
    scores = np.random.default_rng(0).integers(0, 3, 1000).astype(np.float32)  # many exact ties
    # transformers: a list of {"label", "score"} in class order, sorted by score with reverse=True (stable)
    expected = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)
    assert ranked_classes(scores, None) == expected
    assert ranked_classes(scores, 7) == expected[:7]


def test_errors(checkpoints):
    _, deeplab = checkpoints["deeplab"]
    with pytest.raises(ConfigError) as e:
        pipeline("image-classification", model=deeplab)
    assert str(deeplab) in str(e.value) and "ForImageClassification" in str(e.value)
    with pytest.raises(ConfigError, match="unknown task"):
        pipeline("object-detection", model=deeplab)
    with pytest.raises(mobilenet_np.WeightsError):
        pipeline("image-classification", model="missing.h5")
    classifier = ImageClassificationPipeline(mobilenet_np.load(checkpoints["v2"][1]))
    for top_k in [0, -1, 2.5, True]:
        with pytest.raises(ConfigError, match="top_k"):
            classifier(np.zeros((70, 70, 3), np.uint8), top_k=top_k)
    with pytest.raises(ConfigError, match="function_to_apply"):
        classifier(np.zeros((70, 70, 3), np.uint8), function_to_apply="relu")
