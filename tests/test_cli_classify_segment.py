"""`mobilenet-np classify` and `mobilenet-np segment`: tables, the JSON of docs/cli.md, files, errors.

The numbers themselves are checked against transformers in test_pipelines.py; here the commands must
print exactly what the pipelines compute, write the mask / overlay PNGs that hold it, resolve
--model through the cache, and turn bad input into one line on stderr with exit status 2.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import transformers
from PIL import Image

import mobilenet_np
from mobilenet_np.cli import main
from mobilenet_np.cli.segment import OVERLAY_OPACITY, overlay_image, voc_palette
from mobilenet_np.pipelines import pipeline

from torch_reference import numpy_twin, random_transformers_model

SEGMENTATION_LABELS = {0: "background", 1: "aeroplane", 2: "bicycle", 3: "bird"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Small random classification and segmentation weights, and a few images."""
    folder = tmp_path_factory.mktemp("cli")
    classifier = mobilenet_np.MobileNetV2ForImageClassification(mobilenet_np.MobileNetV2Config(
        depth_multiplier=0.35, image_size=64, id2label={i: f"kind {i}" for i in range(7)}), seed=1)
    classifier.save_pretrained(folder / "classifier.h5", image_processor={
        "size": {"shortest_edge": 72}, "crop_size": {"height": 64, "width": 64}, "image_processor_type": "MobileNetV2ImageProcessor"})
    segmenter = mobilenet_np.MobileNetV2ForSemanticSegmentation(mobilenet_np.MobileNetV2Config(
        depth_multiplier=0.35, image_size=65, id2label=SEGMENTATION_LABELS), seed=0)
    segmenter.save_pretrained(folder / "segmenter.h5")
    rng = np.random.default_rng(0)
    images = folder / "images"
    images.mkdir()
    for name, size in [("a.png", (80, 60)), ("b.bmp", (50, 90))]:
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(images / name)
    (images / "notes.txt").write_text("not an image, and not picked from the folder")
    other = folder / "c.png"
    Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(other)
    return {"classifier": folder / "classifier.h5", "segmenter": folder / "segmenter.h5", "folder": images,
            "image": other}


def run_cli(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def assert_fails(capsys, argv, *fragments):
    """The command exits with status 2 and one line on stderr that contains every fragment."""
    status, _, err = run_cli(capsys, *argv)
    one_line_error(status, err, *fragments)


def one_line_error(status, err, *fragments):
    """Exit status 2 and one line on stderr (a progress bar before it is erased with a carriage return)."""
    assert status == 2
    assert err.count("\n") == 1 and err.endswith("\n"), err
    message = err.rstrip("\n").split("\r")[-1]  # what a terminal shows
    assert message.startswith("mobilenet-np "), err
    for fragment in fragments:
        assert str(fragment) in message, (fragment, message)


# --------------------------------------------------------------------------------------------------
# help
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command, options", [
    ("classify", ["--weights", "--model", "--top-k", "--json"]),
    ("segment", ["--weights", "--model", "--out", "--overlay", "--json", "--force"]),
])
def test_help(capsys, command, options):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(option in out for option in options)


def test_console_script_lists_the_commands():
    script = shutil.which("mobilenet-np")
    if script is None:
        pytest.skip("the mobilenet-np console script is not installed (pip install -e .)")
    out = subprocess.run([script, "--help"], capture_output=True, text=True, check=True).stdout
    assert "classify" in out and "segment" in out


# --------------------------------------------------------------------------------------------------
# classify
# --------------------------------------------------------------------------------------------------

def test_classify_json_is_what_the_pipeline_computes(capsys, files):
    status, out, err = run_cli(capsys, "classify", files["folder"], files["image"], "--weights", files["classifier"],
                               "--top-k", 3, "--json")
    assert status == 0
    document = json.loads(out)
    assert document["command"] == "classify" and document["weights"] == str(files["classifier"])
    assert document["model"] is None and document["top_k"] == 3
    assert document["architecture"] == "MobileNetV2ForImageClassification"
    expected_images = [files["folder"] / "a.png", files["folder"] / "b.bmp", files["image"]]
    assert [r["image"] for r in document["results"]] == [str(p) for p in expected_images]
    classifier = pipeline("image-classification", model=files["classifier"])
    for result, path in zip(document["results"], expected_images):
        expected = classifier(str(path), top_k=3)
        assert [p["label"] for p in result["predictions"]] == [p["label"] for p in expected]
        assert [p["score"] for p in result["predictions"]] == [p["score"] for p in expected]
        assert [p["rank"] for p in result["predictions"]] == [1, 2, 3]
        assert all(p["label"] == f"kind {p['class_id']}" for p in result["predictions"])
    assert "classify" in err  # the progress bar of 3 images is on stderr, not in the JSON


def test_classify_table(capsys, files):
    status, out, err = run_cli(capsys, "classify", files["image"], "--weights", files["classifier"])
    assert status == 0 and err == ""  # one image: no progress bar
    lines = out.splitlines()
    assert lines[0] == str(files["image"])
    assert lines[1].split() == ["rank", "class", "score", "label"]
    expected = pipeline("image-classification", model=files["classifier"])(str(files["image"]))
    rows = [line.split(maxsplit=3) for line in lines[3:]]
    assert [row[3] for row in rows] == [p["label"] for p in expected]
    assert [float(row[2]) for row in rows] == [round(p["score"], 4) for p in expected]


def test_classify_errors(capsys, files, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    # an unreadable image among good ones: reported on stderr and skipped, the others printed, exit status 1
    status, out, err = run_cli(capsys, "classify", files["image"], bad, "--weights", files["classifier"])
    assert status == 1 and out.splitlines()[0] == str(files["image"]) and str(bad) not in out
    assert [line for line in err.splitlines() if str(bad) in line][0].endswith("(skipped)")
    assert_fails(capsys, ["classify", tmp_path / "missing.png", "--weights", files["classifier"]],
                   "missing.png", "no such image")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_fails(capsys, ["classify", empty, "--weights", files["classifier"]], empty, "no image")
    assert_fails(capsys, ["classify", files["image"], "--weights", files["segmenter"]],
                   files["segmenter"], "ForImageClassification")
    assert_fails(capsys, ["classify", files["image"], "--weights", tmp_path / "none.h5"], "none.h5")
    for argv in [["--top-k", "0"], [], ["--model", "a/b"]]:  # bad K; no weights; both --weights and --model
        weights = [] if argv == [] else ["--weights", str(files["classifier"])]
        with pytest.raises(SystemExit) as e:
            main(["classify", str(files["image"])] + weights + argv)
        assert e.value.code == 2
    capsys.readouterr()


def test_model_from_a_prepared_cache(capsys, files, tmp_path, monkeypatch):
    monkeypatch.setenv("MOBILENET_NP_CACHE", str(tmp_path))
    cached = tmp_path / "acme--tiny_mobilenet.h5"
    shutil.copy(files["classifier"], cached)
    status, out, _ = run_cli(capsys, "classify", files["image"], "--model", "acme/tiny_mobilenet", "--json")
    assert status == 0
    document = json.loads(out)
    assert document["weights"] == str(cached) and document["model"] == "acme/tiny_mobilenet"
    _, direct, _ = run_cli(capsys, "classify", files["image"], "--weights", files["classifier"], "--json")
    assert document["results"] == json.loads(direct)["results"]
    assert_fails(capsys, ["classify", files["image"], "--model", "not a hub id"], "Hub id")


def test_model_offline_and_not_cached_says_how_to_pass_weights(files, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), MOBILENET_NP_CACHE=str(tmp_path / "cache"))
    result = subprocess.run([sys.executable, "-m", "mobilenet_np", "classify", str(files["image"]),
                             "--model", "google/mobilenet_v2_1.0_224"], capture_output=True, text=True, env=env)
    assert result.stdout == ""
    one_line_error(result.returncode, result.stderr, "google/mobilenet_v2_1.0_224", "offline", "--weights",
                   tmp_path / "cache" / "google--mobilenet_v2_1.0_224.h5")


def test_model_converted_from_the_hub_cache_when_offline(capsys, files, tmp_path):
    """A checkpoint in huggingface_hub's cache is converted into the mobilenet-np cache, without network."""
    snapshot = tmp_path / "hf" / "hub" / "models--acme--tiny_mobilenet" / "snapshots" / ("0" * 40)
    model = random_transformers_model("MobileNetV2ForImageClassification", seed=3,
                                                      depth_multiplier=0.35, image_size=32, num_labels=4)
    model.save_pretrained(snapshot)
    settings = {"size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 32}}
    transformers.MobileNetV2ImageProcessorPil(**settings).save_pretrained(snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), MOBILENET_NP_CACHE=str(tmp_path / "cache"))
    command = [sys.executable, "-m", "mobilenet_np", "classify", str(files["image"]), "--model", "acme/tiny_mobilenet",
               "--json"]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    cached = tmp_path / "cache" / "acme--tiny_mobilenet.h5"
    assert json.loads(result.stdout)["weights"] == str(cached)
    assert mobilenet_np.load(cached).metadata["provenance"]["source"] == "acme/tiny_mobilenet"
    twin = pipeline("image-classification", model=numpy_twin(model),
                    image_processor=mobilenet_np.MobileNetV2ImageProcessor(**settings))
    expected = twin(str(files["image"]))
    assert [p["label"] for p in json.loads(result.stdout)["results"][0]["predictions"]] == [p["label"] for p in expected]


# --------------------------------------------------------------------------------------------------
# segment
# --------------------------------------------------------------------------------------------------

def test_segment_writes_mask_overlay_and_json(capsys, files, tmp_path):
    mask_path, overlay_path = tmp_path / "mask.png", tmp_path / "overlay.png"
    status, out, _ = run_cli(capsys, "segment", files["image"], "--weights", files["segmenter"], "--out", mask_path,
                             "--overlay", overlay_path, "--json")
    assert status == 0
    image = np.asarray(Image.open(files["image"]).convert("RGB"))                  # (H, W, 3)
    class_map = pipeline("image-segmentation", model=files["segmenter"]).class_map(str(files["image"]))
    ids, counts = np.unique(class_map, return_counts=True)
    assert 0 in ids and len(ids) >= 2  # this seed shows background and other classes: both overlay rules are used

    mask = Image.open(mask_path)
    assert mask.mode == "P" and mask.size == (image.shape[1], image.shape[0])
    np.testing.assert_array_equal(np.asarray(mask), class_map)
    assert mask.getpalette()[:3 * 4] == voc_palette()[:4].ravel().tolist()

    overlay = np.asarray(Image.open(overlay_path))
    assert overlay.shape == image.shape
    # A small image has no legend: every pixel is the image, tinted with its class colour unless background.
    tinted = np.round((1 - OVERLAY_OPACITY) * image + OVERLAY_OPACITY * voc_palette()[class_map]).astype(np.uint8)
    np.testing.assert_array_equal(overlay, np.where((class_map == 0)[..., None], image, tinted))

    document = json.loads(out)
    assert document["mask"] == str(mask_path) and document["overlay"] == str(overlay_path)
    assert (document["width"], document["height"]) == (image.shape[1], image.shape[0])
    assert document["architecture"] == "MobileNetV2ForSemanticSegmentation"
    shares = {c["class_id"]: c for c in document["classes"]}
    assert sorted(shares) == ids.tolist()
    for class_id, count in zip(ids, counts):
        assert shares[class_id]["pixels"] == count and shares[class_id]["label"] == SEGMENTATION_LABELS[class_id]
        assert shares[class_id]["share"] == count / class_map.size
    assert [c["pixels"] for c in document["classes"]] == sorted(counts.tolist(), reverse=True)


def test_overlay_legend_on_a_large_image():
    image = Image.fromarray(np.full((300, 400, 3), 200, dtype=np.uint8))
    class_map = np.zeros((300, 400), dtype=np.int64)
    class_map[150:, 200:] = 3
    shares = [{"class_id": 0, "label": "background"}, {"class_id": 3, "label": "bird"}]
    overlay = np.asarray(overlay_image(image, class_map, shares, background={0}))
    legend = overlay[:40, :100]
    assert (legend < 100).any() and tuple(voc_palette()[3]) in {tuple(p) for p in legend.reshape(-1, 3)}
    np.testing.assert_array_equal(overlay[100:150], 200)                  # untinted background, no legend here
    tint = np.round(0.5 * 200 + 0.5 * voc_palette()[3])                   # the bird's colour over grey 200
    np.testing.assert_array_equal(overlay[200:, 300:], np.broadcast_to(tint, (100, 100, 3)))


def test_segment_table_and_no_overlay(capsys, files, tmp_path):
    status, out, _ = run_cli(capsys, "segment", files["image"], "--weights", files["segmenter"], "--out",
                             tmp_path / "mask.png")
    assert status == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["mask.png"]
    lines = out.splitlines()
    assert lines[1].split() == ["class", "label", "pixels", "share"]
    shares = [float(line.split()[-1].rstrip("%")) for line in lines[3:]]
    assert abs(sum(shares) - 100) < 0.02 * len(shares)


def test_segment_does_not_replace_files_without_force(capsys, files, tmp_path):
    mask_path, overlay_path = tmp_path / "mask.png", tmp_path / "overlay.png"
    overlay_path.write_text("keep me")
    argv = ["segment", files["image"], "--weights", files["segmenter"], "--out", mask_path, "--overlay", overlay_path]
    assert_fails(capsys, argv, overlay_path, "exists already")
    assert overlay_path.read_text() == "keep me" and not mask_path.exists()  # refused before writing anything
    assert run_cli(capsys, *argv, "--force")[0] == 0
    assert Image.open(overlay_path).mode == "RGB" and Image.open(mask_path).mode == "P"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary files left


def test_segment_errors(capsys, files, tmp_path):
    base = ["segment", files["image"], "--weights", files["segmenter"]]
    assert_fails(capsys, [*base, "--out", tmp_path / "mask.jpg"], "mask.jpg", ".png")
    assert_fails(capsys, [*base, "--out", tmp_path / "m.png", "--overlay", tmp_path / "m.png"],
                   "different files")
    assert_fails(capsys, [*base, "--out", tmp_path / "no" / "m.png"], tmp_path / "no")
    assert_fails(capsys, ["segment", files["image"], "--weights", files["classifier"], "--out",
                            tmp_path / "m.png"], "ForSemanticSegmentation")
    bad = tmp_path / "bad.bmp"
    bad.write_bytes(b"")
    assert_fails(capsys, ["segment", bad, "--weights", files["segmenter"], "--out",
                            tmp_path / "m.png"], bad, "empty file")
    assert not (tmp_path / "m.png").exists()
    with pytest.raises(SystemExit):  # --out is required
        main(["segment", str(files["image"]), "--weights", str(files["segmenter"])])
    capsys.readouterr()


# --------------------------------------------------------------------------------------------------
# real weights (skipped when the importers or ../shared/data are absent)
# --------------------------------------------------------------------------------------------------

def test_classify_real_keras_weights_finds_the_cat(capsys, shared_data, tmp_path):
    import_keras = pytest.importorskip("weights_tools.import_keras")
    weights = import_keras.import_keras(shared_data / "weights/keras/mobilenet_v1_0.25_224.h5", tmp_path / "k.h5",
                                        labels=shared_data / "labels/imagenet_labels.txt")
    status, out, _ = run_cli(capsys, "classify", shared_data / "images/cat.bmp", "--weights", weights, "--json")
    assert status == 0
    best = json.loads(out)["results"][0]["predictions"][0]
    assert "cat" in best["label"], best


def test_segment_real_deeplab_finds_the_bird(capsys, shared_data, tmp_path):
    import_tflite = pytest.importorskip("weights_tools.import_tflite")
    weights = import_tflite.import_tflite(shared_data / "weights/tflite/deeplabv3_mnv2_pascal_quant.tflite",
                                          tmp_path / "deeplab.h5",
                                          labels=shared_data / "labels/pascal_voc_segmentation_labels.txt")
    mask_path = tmp_path / "mask.png"
    status, out, _ = run_cli(capsys, "segment", shared_data / "images/bird_segmentation.bmp", "--weights", weights,
                             "--out", mask_path, "--overlay", tmp_path / "overlay.png", "--json")
    assert status == 0
    labels = [c["label"] for c in json.loads(out)["classes"]]
    assert labels[:2] == ["background", "bird"]
    predicted = np.asarray(Image.open(mask_path)) == 3                               # VOC class 3: bird
    truth = np.asarray(Image.open(shared_data / "images/bird_segmentation_mask.bmp")) > 0
    iou = (predicted & truth).sum() / (predicted | truth).sum()
    assert iou > 0.8, iou  # measured 0.873 with the quantized DeepLabV3 (the ground truth is hand-drawn)
