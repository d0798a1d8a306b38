"""The transformers user's front door: the model-doc examples run with only the import changed.

The examples of transformers' model docs (MobileNet V1 and V2: "AutoModel"; DeepLabV3: the
MobileNetV2ForSemanticSegmentation.forward docstring) are kept here as the docs write them. Each runs
twice, as written and with `from transformers import` replaced by `from mobilenet_np import`, on the
same random-weight checkpoints (BatchNorm statistics randomised), saved by transformers' save_pretrained
into a huggingface_hub cache laid out in a temporary folder (offline: the Hub is unreachable here).
The images the examples download come from a stand-in for the network. Tolerances: logits within
1e-4 of the largest logit; predicted labels (class and per-pixel argmax) identical.

Then what the examples rest on: `from_pretrained` / Auto classes on every kind of source, the
processor's call forms (images=, return_tensors), return_dict=False, save_pretrained keeping what
was loaded, and the pipelines' images= / subtask / URL inputs.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mobilenet_np
from mobilenet_np import (AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification,
                          AutoModelForSemanticSegmentation, BatchFeature, MobileNetV1Config,
                          MobileNetV1ForImageClassification, MobileNetV1ImageProcessor, MobileNetV2Config,
                          MobileNetV2ForImageClassification, MobileNetV2ForSemanticSegmentation,
                          MobileNetV2ImageProcessor, MobileNetV2Model)
from mobilenet_np.errors import ConfigError, ConversionError, ImageError, WeightsError
from mobilenet_np.formats.weights import read_weights

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
huggingface_hub = pytest.importorskip("huggingface_hub")
requests = pytest.importorskip("requests")

from conftest import SHARED_DATA  # noqa: E402
from torch_reference import random_transformers_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RELATIVE_TOLERANCE = 1e-4
COMMIT = "0123456789abcdef0123456789abcdef01234567"

# Hub id -> (architecture, config (the published one's architecture fields), preprocessor settings)
HUB_MODELS = {
    "google/mobilenet_v1_1.0_224": ("MobileNetV1ForImageClassification",
                                    {"depth_multiplier": 1.0, "image_size": 224, "num_labels": 1001},
                                    {"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224}}),
    "google/mobilenet_v2_1.4_224": ("MobileNetV2ForImageClassification",
                                    {"depth_multiplier": 1.4, "image_size": 224, "num_labels": 1001},
                                    {"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224}}),
    "google/deeplabv3_mobilenet_v2_1.0_513": ("MobileNetV2ForSemanticSegmentation",
                                              {"depth_multiplier": 1.0, "image_size": 513, "num_labels": 21,
                                               "output_stride": 8},
                                              {"size": {"shortest_edge": 545},
                                               "crop_size": {"height": 513, "width": 513}}),
}

# -- the examples, as transformers' docs write them ------------------------------------------------

# docs/source/en/model_doc/mobilenet_v1.md, "AutoModel"
MOBILENET_V1_EXAMPLE = '''\
import torch
import requests
from PIL import Image
from transformers import AutoModelForImageClassification, AutoImageProcessor

image_processor = AutoImageProcessor.from_pretrained(
    "google/mobilenet_v1_1.0_224",
)
model = AutoModelForImageClassification.from_pretrained(
    "google/mobilenet_v1_1.0_224",
)

url = "https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/pipeline-cat-chonk.jpeg"
image = Image.open(requests.get(url, stream=True).raw)
inputs = image_processor(image, return_tensors="pt")

with torch.no_grad():
  logits = model(**inputs).logits
predicted_class_id = logits.argmax(dim=-1).item()

class_labels = model.config.id2label
predicted_class_label = class_labels[predicted_class_id]
print(f"The predicted class label is: {predicted_class_label}")
'''

# docs/source/en/model_doc/mobilenet_v2.md, "AutoModel"
MOBILENET_V2_EXAMPLE = MOBILENET_V1_EXAMPLE.replace("google/mobilenet_v1_1.0_224", "google/mobilenet_v2_1.4_224")

# src/transformers/models/mobilenet_v2/modeling_mobilenet_v2.py, MobileNetV2ForSemanticSegmentation.forward
# (a doctest: its `>>> ` and `... ` prompts removed; doctests run with torch already imported)
DEEPLABV3_EXAMPLE = '''\
from transformers import AutoImageProcessor, MobileNetV2ForSemanticSegmentation
from PIL import Image
from huggingface_hub.utils import httpx
from io import BytesIO

url = "http://images.cocodataset.org/val2017/000000039769.jpg"
with httpx.stream("GET", url) as response:
    image = Image.open(BytesIO(response.read()))

image_processor = AutoImageProcessor.from_pretrained("google/deeplabv3_mobilenet_v2_1.0_513")
model = MobileNetV2ForSemanticSegmentation.from_pretrained("google/deeplabv3_mobilenet_v2_1.0_513")

inputs = image_processor(images=image, return_tensors="pt")

with torch.no_grad():
    outputs = model(**inputs)

# logits are of shape (batch_size, num_labels, height, width)
logits = outputs.logits
'''

EXAMPLES = {"mobilenet_v1": MOBILENET_V1_EXAMPLE, "mobilenet_v2": MOBILENET_V2_EXAMPLE,
            "deeplabv3": DEEPLABV3_EXAMPLE}


def with_mobilenet_np(example: str) -> str:
    """The example with its one transformers import pointed at mobilenet_np (and nothing else changed)."""
    assert example.count("from transformers import ") == 1 and "transformers." not in example
    return example.replace("from transformers import ", "from mobilenet_np import ")


# -- fixtures ---------------------------------------------------------------------------------------

def example_image(path: Path) -> Path:
    """The shared cat photo when present, else a smooth made-up picture (the examples only need an image)."""
    cat = SHARED_DATA / "images" / "cat.bmp"
    if cat.is_file():
        return cat
    y, x = np.mgrid[0:300, 0:400]
    picture = np.stack([x * 255 // 400, y * 255 // 300, (x + y) * 255 // 700], axis=-1).astype(np.uint8)
    Image.fromarray(picture).save(path)
    return path


def hub_snapshot(cache: Path, repo_id: str) -> Path:
    """The snapshot folder of `repo_id` in a huggingface_hub cache: models--ORG--NAME/{refs/main, snapshots/COMMIT}."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return repo / "snapshots" / COMMIT


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A huggingface_hub cache with the three examples' checkpoints (random weights); id -> (torch model, folder)."""
    cache = tmp_path_factory.mktemp("hub")
    built = {}
    for seed, (repo_id, (architecture, config, settings)) in enumerate(HUB_MODELS.items()):
        labels = {i: f"{repo_id.split('/')[1]} class {i}" for i in range(config["num_labels"])}
        model = random_transformers_model(architecture, seed=seed, id2label=labels, **config)
        processor_class = (transformers.MobileNetV1ImageProcessorPil if "V1" in architecture
                           else transformers.MobileNetV2ImageProcessorPil)
        folder = hub_snapshot(cache, repo_id)
        model.save_pretrained(folder)
        processor_class(**settings).save_pretrained(folder)
        built[repo_id] = (model, folder)
    return cache, built


@pytest.fixture
def offline_hub(hub, monkeypatch, tmp_path):
    """The Hub cache above, offline, for this process (huggingface_hub read its environment when imported),
    and a stand-in for the network that serves the example image for any URL."""
    cache, built = hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    image = example_image(tmp_path / "picture.png")
    requested = []

    class Response:
        def __init__(self, url):
            requested.append(url)
            self.raw = io.BytesIO(image.read_bytes())

        def read(self):
            return self.raw.getvalue()

    monkeypatch.setattr(requests, "get", lambda url, **kwargs: Response(url))
    monkeypatch.setattr(huggingface_hub.utils.httpx, "stream",
                        lambda method, url, **kwargs: contextlib.nullcontext(Response(url)))
    return built, requested


def run_example(source: str) -> dict:
    namespace = {"torch": torch}          # doctests run with torch imported
    exec(compile(source, "<example>", "exec"), namespace)
    return namespace


def relative_error(ours, reference) -> float:
    ours, reference = np.asarray(ours, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    return float(np.max(np.abs(ours - reference)) / np.max(np.abs(reference)))


# -- 5. the model-doc examples --------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2"])
def test_classification_example_runs_with_only_the_import_changed(name, offline_hub, capsys):
    _, requested = offline_hub
    reference = run_example(EXAMPLES[name])
    printed_reference = capsys.readouterr().out
    ours = run_example(with_mobilenet_np(EXAMPLES[name]))
    printed_ours = capsys.readouterr().out
    assert type(ours["model"]).__module__.startswith("mobilenet_np")
    assert type(ours["logits"]) is torch.Tensor and ours["logits"].shape == reference["logits"].shape == (1, 1001)
    assert relative_error(ours["logits"], reference["logits"]) < RELATIVE_TOLERANCE
    assert ours["predicted_class_id"] == reference["predicted_class_id"]
    assert printed_ours == printed_reference and printed_ours.startswith("The predicted class label is: ")
    assert len(requested) == 2


def test_deeplabv3_example_runs_with_only_the_import_changed(offline_hub):
    reference = run_example(EXAMPLES["deeplabv3"])
    ours = run_example(with_mobilenet_np(EXAMPLES["deeplabv3"]))
    assert isinstance(ours["model"], MobileNetV2ForSemanticSegmentation)
    assert ours["inputs"]["pixel_values"].shape == (1, 3, 513, 513)      # the checkpoint's 513 crop
    assert type(ours["logits"]) is torch.Tensor and ours["logits"].shape == reference["logits"].shape == (1, 21, 65, 65)
    assert relative_error(ours["logits"], reference["logits"]) < RELATIVE_TOLERANCE
    assert torch.equal(ours["logits"].argmax(dim=1), reference["logits"].argmax(dim=1))


def test_hub_id_through_the_huggingface_cache_from_the_environment(hub, tmp_path):
    """HF_HUB_CACHE and HF_HUB_OFFLINE=1 set before Python starts, as a user would; no stand-ins."""
    cache, _ = hub
    code = """if True:
        import json, sys
        from mobilenet_np import AutoConfig, AutoImageProcessor, AutoModelForSemanticSegmentation
        source = "google/deeplabv3_mobilenet_v2_1.0_513"
        model = AutoModelForSemanticSegmentation.from_pretrained(source)
        processor = AutoImageProcessor.from_pretrained(source)
        config = AutoConfig.from_pretrained(source)
        try:
            AutoConfig.from_pretrained("google/not_in_the_cache")
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
        print(json.dumps({"model": type(model).__name__, "crop": processor.crop_size, "stride": config.output_stride,
                          "provenance": model.metadata["provenance"], "error": error}))
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "home")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["model"] == "MobileNetV2ForSemanticSegmentation" and found["stride"] == 8
    assert found["crop"] == {"height": 513, "width": 513}
    assert found["provenance"] == {"source": "google/deeplabv3_mobilenet_v2_1.0_513", "source_type": "huggingface_hub",
                                   "source_revision": COMMIT}
    error = found["error"]
    assert error.startswith("ConversionError: google/not_in_the_cache:") and "\n" not in error
    assert "HF_HUB_OFFLINE=1" in error and str(cache) in error and "run once online" in error


# -- small checkpoints for the rest -----------------------------------------------------------------
# (their processors' shortest edges differ from for_image_size's rule, so that a stored one is told apart)

SMALL = {
    "v1": ("MobileNetV1ForImageClassification", {"depth_multiplier": 0.25, "image_size": 160, "num_labels": 5},
           MobileNetV1ImageProcessor(size={"shortest_edge": 170}, crop_size={"height": 160, "width": 160})),
    "v2": ("MobileNetV2ForImageClassification", {"depth_multiplier": 0.35, "image_size": 64, "num_labels": 7},
           MobileNetV2ImageProcessor(size={"shortest_edge": 80}, crop_size={"height": 64, "width": 64})),
    "deeplab": ("MobileNetV2ForSemanticSegmentation", {"depth_multiplier": 0.35, "image_size": 65, "num_labels": 4},
                MobileNetV2ImageProcessor(size={"shortest_edge": 70}, crop_size={"height": 65, "width": 65})),
}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """name -> (torch model, checkpoint folder written by transformers with its preprocessor_config.json)."""
    built = {}
    for seed, (name, (architecture, config, processor)) in enumerate(SMALL.items()):
        folder = tmp_path_factory.mktemp(name)
        labels = {i: f"{name} label {i}" for i in range(config["num_labels"])}
        model = random_transformers_model(architecture, seed=10 + seed, id2label=labels, **config)
        model.save_pretrained(folder)
        (folder / "preprocessor_config.json").write_text(json.dumps(processor.to_dict()))
        built[name] = (model, folder)
    return built


def assert_same_weights(model, torch_model):
    expected = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    assert list(model.state_dict()) == list(expected)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, expected[key], err_msg=key)


def test_every_kind_of_source_gives_the_same_model(small, tmp_path):
    torch_model, folder = small["v2"]
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    shutil.copy(folder / "config.json", bin_folder)
    torch.save(torch_model.state_dict(), bin_folder / "pytorch_model.bin")   # read with weights_only=True
    from_folder = MobileNetV2ForImageClassification.from_pretrained(folder)
    from_folder.save_pretrained(tmp_path / "model.h5")
    sources = [folder, str(folder / "model.safetensors"), bin_folder, bin_folder / "pytorch_model.bin",
               tmp_path / "model.h5"]
    for source in sources:
        for model in (MobileNetV2ForImageClassification.from_pretrained(source),
                      AutoModelForImageClassification.from_pretrained(source)):
            assert type(model) is MobileNetV2ForImageClassification, source
            assert_same_weights(model, torch_model)
            assert model.config.id2label == torch_model.config.id2label
        config = AutoConfig.from_pretrained(source)
        assert isinstance(config, MobileNetV2Config) and config == MobileNetV2Config.from_pretrained(source)
        assert config.depth_multiplier == 0.35 and config.num_labels == 7
    backbone = AutoModel.from_pretrained(folder)
    assert type(backbone) is MobileNetV2Model
    assert_same_weights(backbone, torch_model.mobilenet_v2)


def test_auto_classes_follow_the_registry_and_refuse_another_task(small, tmp_path):
    _, folder = small["v1"]
    assert type(AutoModel.from_pretrained(folder)).__name__ == "MobileNetV1Model"
    assert type(AutoConfig.from_pretrained(folder)) is MobileNetV1Config
    assert type(AutoImageProcessor.from_pretrained(folder)) is MobileNetV1ImageProcessor
    with pytest.raises(WeightsError, match="holds a MobileNetV1ForImageClassification, not a semantic-segmentation"):
        AutoModelForSemanticSegmentation.from_pretrained(folder)
    with pytest.raises(WeightsError, match="cannot be loaded as a MobileNetV2ForImageClassification"):
        MobileNetV2ForImageClassification.from_pretrained(folder)
    with pytest.raises(ConfigError, match="not a MobileNetV2Config"):
        MobileNetV2Config.from_pretrained(folder)
    _, deeplab = small["deeplab"]
    with pytest.raises(WeightsError, match="not a image-classification model|not an image-classification"):
        AutoModelForImageClassification.from_pretrained(deeplab)
    # config.json without "architectures": model_type and the tensors' head decide.
    copy = Path(shutil.copytree(deeplab, tmp_path / "no_architectures"))
    config = json.loads((copy / "config.json").read_text())
    del config["architectures"]
    (copy / "config.json").write_text(json.dumps(config))
    assert type(AutoModelForSemanticSegmentation.from_pretrained(copy)) is MobileNetV2ForSemanticSegmentation
    random = AutoModelForSemanticSegmentation.from_config(MobileNetV2Config(num_labels=3, image_size=33), seed=1)
    assert type(random) is MobileNetV2ForSemanticSegmentation
    with pytest.raises(ConfigError, match="no semantic-segmentation model"):
        AutoModelForSemanticSegmentation.from_config(MobileNetV1Config())


def test_the_stored_processor_comes_with_the_weights(small, tmp_path):
    """DeepLab files crop 65 here (513 for the published ones), the V1-160 file 160: not the 224 of the defaults."""
    for name, crop in [("v1", 160), ("deeplab", 65)]:
        _, folder = small[name]
        model = AutoModel.from_pretrained(folder) if name == "v1" else AutoModelForSemanticSegmentation.from_pretrained(folder)
        model.save_pretrained(tmp_path / f"{name}.h5")
        for source in (folder, tmp_path / f"{name}.h5"):
            processor = AutoImageProcessor.from_pretrained(source)
            assert processor.crop_size == {"height": crop, "width": crop}
            assert processor == type(processor).from_pretrained(source) == SMALL[name][2]
        assert AutoImageProcessor.from_pretrained(folder, do_center_crop=False).do_center_crop is False
    # Weights stored without a processor: the published rule for the config's image size.
    torch_model, folder = small["v1"]
    model = MobileNetV1ForImageClassification.from_pretrained(folder)
    model.metadata = {}
    model.save_pretrained(tmp_path / "bare.h5")
    assert read_weights(tmp_path / "bare.h5").image_processor == {}
    assert AutoImageProcessor.from_pretrained(tmp_path / "bare.h5") == MobileNetV1ImageProcessor(
        size={"shortest_edge": 192}, crop_size={"height": 160, "width": 160})


def test_save_pretrained_keeps_labels_processor_and_provenance(small, tmp_path):
    torch_model, folder = small["deeplab"]
    model = MobileNetV2ForSemanticSegmentation.from_pretrained(folder)
    model.save_pretrained(tmp_path / "first.h5")
    first = read_weights(tmp_path / "first.h5")
    assert first.id2label == torch_model.config.id2label
    assert first.image_processor == SMALL["deeplab"][2].to_dict()
    assert first.provenance == {"source": str(folder.resolve()), "source_type": "local_folder"}
    again = mobilenet_np.load(tmp_path / "first.h5")
    again.save_pretrained(tmp_path / "second.h5")
    second = read_weights(tmp_path / "second.h5")
    assert (second.id2label, second.image_processor, second.provenance) == \
        (first.id2label, first.image_processor, first.provenance)
    again.save_pretrained(tmp_path / "third.h5", provenance={"source": "trained here"})
    assert read_weights(tmp_path / "third.h5").provenance == {"source": "trained here"}


def test_missing_sources_say_so_in_one_line(tmp_path):
    with pytest.raises(WeightsError, match="no such file or folder") as error:
        AutoModel.from_pretrained(tmp_path / "absent.h5")
    assert "\n" not in str(error.value)
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConversionError, match="needs its config.json beside it"):
        AutoModel.from_pretrained(tmp_path / "model.safetensors")
    with pytest.raises(ConversionError, match="config.json: missing"):
        AutoConfig.from_pretrained(tmp_path)


# -- 1. the processor's call forms ----------------------------------------------------------------

def test_processor_call_forms_match_transformers_batch_feature(small):
    _, folder = small["v2"]
    ours = MobileNetV2ImageProcessor.from_pretrained(folder)
    theirs = transformers.MobileNetV2ImageProcessorPil.from_pretrained(folder)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8))
    for return_tensors in ["np", "pt", None]:
        got = ours(images=image, return_tensors=return_tensors)
        expected = theirs(images=image, return_tensors=return_tensors)
        assert isinstance(got, BatchFeature) and isinstance(got, dict) and list(got) == list(expected)
        assert type(got.pixel_values) is type(expected.pixel_values)
        if return_tensors is None:
            assert len(got.pixel_values) == len(expected.pixel_values) == 1
        np.testing.assert_array_equal(np.asarray(got.pixel_values[0]), np.asarray(expected.pixel_values[0]))
        assert got.to("cpu").keys() == got.keys()
    assert got.pixel_values[0].dtype == np.float32
    np.testing.assert_array_equal(ours(image)["pixel_values"], ours.preprocess([image], return_tensors="np").pixel_values)
    with pytest.raises(ConfigError, match="return_tensors must be one of"):
        ours(image, return_tensors="tf")
    with pytest.raises(ConfigError, match="unknown option 'data_format'"):
        ours(image, data_format="channels_first")
    with pytest.raises(AttributeError, match="has no 'labels'"):
        got.labels


def test_return_dict_false_and_keyword_pixel_values_match_transformers(small):
    torch_model, folder = small["v1"]
    model = AutoModelForImageClassification.from_pretrained(folder)
    pixel_values = np.random.default_rng(1).standard_normal((2, 3, 160, 160)).astype(np.float32)
    with torch.no_grad():
        expected = torch_model(pixel_values=torch.from_numpy(pixel_values), output_hidden_states=True, return_dict=False)
    got = model(pixel_values=pixel_values, output_hidden_states=True, return_dict=False)
    assert type(got) is tuple and len(got) == len(expected) == 2
    assert relative_error(got[0], expected[0]) < RELATIVE_TOLERANCE
    assert len(got[1]) == len(expected[1])
    in_torch = model(pixel_values=torch.from_numpy(pixel_values), output_hidden_states=True, return_dict=False)
    assert type(in_torch[0]) is torch.Tensor and all(type(h) is torch.Tensor for h in in_torch[1])
    np.testing.assert_array_equal(in_torch[0].numpy(), got[0])
    assert type(model(pixel_values).logits) is np.ndarray


# -- 3. pipelines: models by path or Hub id, images=, subtask, URLs ----------------------------------

@contextlib.contextmanager
def serving(folder: Path):
    """A web server on 127.0.0.1 serving `folder` (the online case, without the internet)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_pipelines_take_checkpoints_images_keyword_subtask_and_urls(small, tmp_path):
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (80, 100, 3), dtype=np.uint8))
    image.save(tmp_path / "picture.png")
    _, deeplab = small["deeplab"]
    segmenter = mobilenet_np.pipeline("image-segmentation", model=deeplab)
    by_path = segmenter(str(tmp_path / "picture.png"))
    semantic = segmenter(images=str(tmp_path / "picture.png"), subtask="semantic")
    assert [s["label"] for s in semantic] == [s["label"] for s in by_path]
    with pytest.raises(ConfigError, match="subtask 'instance' is not supported"):
        segmenter(image, subtask="instance")
    with serving(tmp_path) as url:
        from_url = segmenter(f"{url}/picture.png")
        with pytest.raises(ImageError, match=f"{url}/absent.png: cannot be downloaded \\(HTTP 404"):
            segmenter(f"{url}/absent.png")
    assert [s["label"] for s in from_url] == [s["label"] for s in by_path]
    for a, b in zip(from_url, by_path):
        np.testing.assert_array_equal(np.asarray(a["mask"]), np.asarray(b["mask"]))
    # Offline (nothing listens on the port): one line naming the URL and what to do.
    closed = "http://127.0.0.1:9/cat.png"
    with pytest.raises(ImageError) as error:
        mobilenet_np.pipeline("image-classification", model=small["v1"][1])(closed)
    message = str(error.value)
    assert message.startswith(f"{closed}: cannot be downloaded (") and "pass its file path" in message
    assert "\n" not in message
    with pytest.raises(ConfigError, match="give the images once"):
        segmenter(image, images=image)
