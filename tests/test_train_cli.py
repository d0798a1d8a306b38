"""`mobilenet-np train` end to end on a tiny image folder: outputs, logs, the weights file that classify,
pipelines, `weights_tools export` and transformers accept, --resume == uninterrupted, --skip-bad."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import mobilenet_np
from mobilenet_np.cli import main

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """2 classes x 6 images of 40x36 px: red-ish stripes vs blue-ish blobs."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for c, channel in (("blue", 2), ("red", 0)):
        (root / c).mkdir()
        for i in range(6):
            image = rng.integers(0, 90, (36, 40, 3), dtype=np.uint8)
            image[..., channel] += 150
            Image.fromarray(image).save(root / c / f"{i}.png")
    return root


ARGS = ["--arch", "mobilenet_v2", "--depth-multiplier", "0.35", "--image-size", "32", "--val-fraction", "0.25",
        "--epochs", "3", "--batch-size", "3", "--lr", "0.02", "--dropout", "0.1", "--flip", "--crop-padding", "2",
        "--ema", "0.9", "--checkpoint-every", "2", "--no-progress", "--json"]


def train(capsys, *argv):
    status = main(["train", *map(str, argv)])
    out, err = capsys.readouterr()
    return status, out, err


def tensors(path):
    return dict(mobilenet_np.load(path).params)


def test_train_writes_a_normal_weights_file_and_logs(capsys, folder, tmp_path):
    status, out, err = train(capsys, "--train", folder, "--out", tmp_path / "run", *ARGS)
    assert status == 0, err
    result = json.loads(out)
    assert result["finished"] and result["step"] == result["total_steps"] == 9       # 9 items / batch 3, 3 epochs
    assert [row["epoch"] for row in result["epochs"]] == [1, 2, 3]
    assert {"val_accuracy", "ema_val_accuracy", "train_loss"} <= set(result["epochs"][-1])
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == ["checkpoint.npz", "curves.png", "log.csv", "log.json", "model.h5", "model_ema.h5"]
    assert len((tmp_path / "run" / "log.csv").read_text().splitlines()) == 4

    model = mobilenet_np.load(tmp_path / "run" / "model.h5")
    assert model.config.id2label == {0: "blue", 1: "red"}
    image = folder / "red" / "0.png"
    assert main(["classify", str(image), "--weights", str(tmp_path / "run" / "model.h5"), "--json"]) == 0
    predictions = json.loads(capsys.readouterr().out)["results"][0]["predictions"]
    scores = mobilenet_np.pipeline("image-classification", model=str(tmp_path / "run" / "model.h5"))(str(image))
    assert {p["label"] for p in predictions} == {s["label"] for s in scores} == {"blue", "red"}

    # back to a transformers checkpoint; transformers computes the same logits
    from weights_tools.__main__ import main as tools
    assert tools(["export", str(tmp_path / "run" / "model.h5"), str(tmp_path / "hf"), "--no-progress"]) == 0
    capsys.readouterr()
    reloaded = transformers.AutoModelForImageClassification.from_pretrained(tmp_path / "hf").eval()
    processor = mobilenet_np.MobileNetV2ImageProcessor.from_dict(model.metadata["image_processor"])
    x = processor(str(image))["pixel_values"]
    with torch.no_grad():
        expected = reloaded(torch.from_numpy(x)).logits.numpy()
    assert np.allclose(model(x).logits, expected, rtol=1e-4, atol=1e-4)


def test_resume_equals_the_uninterrupted_run(capsys, folder, tmp_path):
    assert train(capsys, "--train", folder, "--out", tmp_path / "whole", *ARGS)[0] == 0
    status, out, _ = train(capsys, "--train", folder, "--out", tmp_path / "parts", *ARGS, "--stop-after", "5")
    assert status == 0 and not json.loads(out)["finished"] and not (tmp_path / "parts" / "model.h5").exists()
    status, out, err = train(capsys, "--resume", tmp_path / "parts" / "checkpoint.npz", "--no-progress", "--json")
    assert status == 0, err
    assert json.loads(out)["finished"]
    for name in ("model.h5", "model_ema.h5"):
        whole, parts = tensors(tmp_path / "whole" / name), tensors(tmp_path / "parts" / name)
        assert all(np.array_equal(whole[k], parts[k]) for k in whole), name
    strip = lambda path: [{k: v for k, v in row.items() if k != "seconds"}
                          for row in json.loads(path.read_text())["epochs"]]
    assert strip(tmp_path / "whole" / "log.json") == strip(tmp_path / "parts" / "log.json")


def test_readable_kernels_train_the_same_network(capsys, folder, tmp_path):
    """--readable-kernels runs training/backward.py instead of the channels-last kernels: in float64 the
    two runs end with the same weights and running statistics (1e-7 of each tensor's scale; measured
    1.5e-9). One epoch (3 steps) at 64x64: train-mode BatchNorm over the 12 values per channel of 3 images'
    last 2x2 maps multiplies round-off differences many times per step (docs/training.md), so longer runs
    on these tiny batches drift apart (at 32x32, 9 steps: 1e-2)."""
    for name, extra in (("fast", []), ("readable", ["--readable-kernels"])):
        status, _, err = train(capsys, "--train", folder, "--out", tmp_path / name, *ARGS, "--dtype", "float64",
                               "--epochs", "1", "--image-size", "64", *extra)
        assert status == 0, err
    assert json.loads((tmp_path / "readable" / "log.json").read_text())["settings"]["channels_last"] is False
    fast, readable = (np.load(tmp_path / name / "checkpoint.npz") for name in ("fast", "readable"))  # float64
    params = [k for k in readable.files if k.startswith("params/")]
    assert len(params) > 200 and all(readable[k].dtype in (np.float64, np.int64) for k in params)
    largest = max(float(np.max(np.abs(readable[k]))) for k in params)
    for k in params:                       # a floor for the structurally-zero biases (round-off on both sides)
        value = readable[k]
        assert np.max(np.abs(fast[k] - value)) <= max(1e-7 * np.max(np.abs(value)), 1e-12 * largest), k


def test_bad_data_is_named_or_skipped(capsys, folder, tmp_path):
    import shutil
    data = tmp_path / "data"
    shutil.copytree(folder, data)
    (data / "red" / "broken.png").write_bytes(b"not an image")
    status, out, err = train(capsys, "--train", data, "--out", tmp_path / "a", *ARGS)
    assert status == 2 and "broken.png" in err and err.count("\n") == 1
    status, out, err = train(capsys, "--train", data, "--out", tmp_path / "b", *ARGS, "--skip-bad")
    assert status == 0
    assert [s["item"].endswith("broken.png") for s in json.loads(out)["skipped"]] == [True]
    assert "skipped" in err and "broken.png" in err
    status, _, err = train(capsys, "--train", data, "--out", tmp_path / "b", *ARGS, "--skip-bad")
    assert status == 2 and "model.h5: exists already" in err


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for option in ("--arch", "--weights", "--resume", "--freeze", "--optimizer", "--schedule", "--ema", "--skip-bad",
                   "--bn-momentum", "--checkpoint-every"):
        assert option in out


def test_segmentation_from_image_and_mask_folders(capsys, tmp_path):
    """DeepLabV3 on an images/ + masks/ folder; `mobilenet-np segment` takes the result."""
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (tmp_path / "data" / sub).mkdir(parents=True)
    for i in range(8):
        image, mask = rng.integers(0, 255, (40, 44, 3), dtype=np.uint8), np.zeros((40, 44), np.uint8)
        mask[10:30, 5:25] = 1 + i % 2
        mask[0] = 255                                            # ignored pixels
        image[mask == 1], image[mask == 2] = (250, 0, 0), (0, 0, 250)
        Image.fromarray(image).save(tmp_path / "data" / "images" / f"{i}.png")
        Image.fromarray(mask, "L").save(tmp_path / "data" / "masks" / f"{i}.png")
    status, out, err = train(capsys, "--arch", "deeplabv3_mobilenet_v2", "--depth-multiplier", "0.25", "--image-size",
                             "32", "--train", tmp_path / "data", "--val-fraction", "0.25", "--epochs", "2",
                             "--batch-size", "3", "--lr", "0.01", "--dropout", "0", "--flip", "--crop-padding", "2",
                             "--out", tmp_path / "run", "--no-progress", "--json")
    assert status == 0, err
    row = json.loads(out)["epochs"][-1]
    assert {"val_accuracy", "val_mean_iou"} <= set(row)
    assert mobilenet_np.load(tmp_path / "run" / "model.h5").config.num_labels == 3
    assert main(["segment", str(tmp_path / "data" / "images" / "0.png"),
                 "--weights", str(tmp_path / "run" / "model.h5"),
                 "--out", str(tmp_path / "mask.png"), "--json"]) == 0
    assert (tmp_path / "mask.png").is_file()
