"""The training data pipeline (mobilenet_np/training/data.py): sources, bad data, augmentation, order.

The property everything rests on: a training batch holds exactly the pixel values the image processor
(and so `mobilenet-np classify`) computes for the same image; checked on real files of odd sizes.
"""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from hypothesis import given, strategies as st
from PIL import Image

from mobilenet_np.image_processing import MobileNetV1ImageProcessor, MobileNetV2ImageProcessor
from mobilenet_np.trainer import data as D


def processor(size=32, cls=MobileNetV2ImageProcessor):
    return cls(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def write_image(path, size=(37, 50), seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    shape = (size[0], size[1], 3) if mode == "RGB" else size
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return path


@pytest.mark.parametrize("mode, cls", [("RGB", MobileNetV2ImageProcessor), ("L", MobileNetV1ImageProcessor)])
def test_batches_hold_the_processors_pixel_values(tmp_path, mode, cls):
    folder = tmp_path / "data"
    for c in ("cat", "dog"):
        (folder / c).mkdir(parents=True)
        for i in range(2):
            write_image(folder / c / f"{i}.png", size=(37 + i, 50 - 3 * i), seed=i + 7 * len(c), mode=mode)
    p = processor(24, cls)
    dataset = D.load_dataset(folder, p)
    assert dataset.classes == ["cat", "dog"] and dataset.targets.tolist() == [0, 0, 1, 1]
    for image, name in zip(dataset.images, dataset.names):
        expected = p(name)["pixel_values"]                                   # (1, 3, 24, 24)
        assert np.array_equal(D.pixel_values(image[None], p, 3), expected), name


def test_idx_files_and_resizing_the_whole_stack(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8), np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    header = lambda a: bytes([0, 0, 8, a.ndim]) + np.array(a.shape, dtype=">i4").tobytes()
    (tmp_path / "fashion-mnist").mkdir()
    with gzip.open(tmp_path / "fashion-mnist" / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(header(images) + images.tobytes())
    (tmp_path / "fashion-mnist" / "train-labels-idx1-ubyte").write_bytes(header(labels) + labels.tobytes())
    dataset = D.load_dataset(tmp_path / "fashion-mnist" / "train", processor(32))
    assert dataset.images.shape == (5, 1, 32, 32) and dataset.targets.tolist() == [3, 1, 4, 1, 5]
    assert dataset.classes[0] == "T-shirt/top"
    for i in range(5):                                   # one resize of the stack == one resize per image
        assert np.array_equal(D.pixel_values(dataset.images[i:i + 1], processor(32), 3),
                              processor(32)(Image.fromarray(images[i]))["pixel_values"])
    with pytest.raises(D.DataError, match=r"train-images-idx3-ubyte\.gz\[0\]: label 3 out of range, expected 0..0"):
        D.load_dataset(tmp_path / "fashion-mnist" / "train", processor(32), num_labels=1)
    (tmp_path / "fashion-mnist" / "train-labels-idx1-ubyte").write_bytes(header(labels) + labels.tobytes()[:3])
    with pytest.raises(D.DataError, match="train-labels-idx1-ubyte: 3 bytes of data for shape"):
        D.load_dataset(tmp_path / "fashion-mnist" / "train", processor(32))


def test_unreadable_image_is_named_or_skipped(tmp_path):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        write_image(tmp_path / c / "good.png")
    (tmp_path / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(D.DataError, match=r"b/broken\.png: .*image"):
        D.load_dataset(tmp_path, processor())
    dataset = D.load_dataset(tmp_path, processor(), skip_bad=True)
    assert len(dataset) == 2 and dataset.skipped[0][0].endswith("broken.png")
    with pytest.raises(D.DataError, match="2 classes, but the model has num_labels=1"):
        D.load_dataset(tmp_path, processor(), num_labels=1, skip_bad=True)


def test_csv_rows_labels_and_errors(tmp_path):
    for i in range(3):
        write_image(tmp_path / f"{i}.png", seed=i)
    (tmp_path / "ok.csv").write_text("file,label\n0.png,dog\n1.png,cat\n2.png,dog\n")
    dataset = D.load_dataset(tmp_path / "ok.csv", processor())
    assert dataset.classes == ["cat", "dog"] and dataset.targets.tolist() == [1, 0, 1]
    (tmp_path / "ids.csv").write_text("0.png,0\n1.png,7\n")
    with pytest.raises(D.DataError, match=r"ids\.csv:2 \(1\.png\): label 7 out of range, expected 0..2"):
        D.load_dataset(tmp_path / "ids.csv", processor(), num_labels=3)
    (tmp_path / "missing.csv").write_text("0.png,0\nnope.png,1\n")
    with pytest.raises(D.DataError, match=r"missing\.csv:2 \(nope\.png\): .*nope\.png: no such image file"):
        D.load_dataset(tmp_path / "missing.csv", processor())
    assert len(D.load_dataset(tmp_path / "missing.csv", processor(), skip_bad=True)) == 1
    (tmp_path / "columns.csv").write_text("0.png\n")
    with pytest.raises(D.DataError, match=r"columns\.csv:1: expected 2 columns"):
        D.load_dataset(tmp_path / "columns.csv", processor())


def test_npz_arrays_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "u8.npz", x=rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8), y=np.array([0, 1, 2, 3]))
    with pytest.raises(D.DataError, match=r"u8\.npz\[3\]: label 3 out of range, expected 0..2"):
        D.load_dataset(tmp_path / "u8.npz", processor(), num_labels=3)
    dataset = D.load_dataset(tmp_path / "u8.npz", processor(), num_labels=3, skip_bad=True)
    assert len(dataset) == 3 and dataset.skipped[0][0].endswith("u8.npz[3]")
    floats = rng.random((2, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "f.npz", x=floats, y=np.array([0, 1]))
    assert np.array_equal(D.load_dataset(tmp_path / "f.npz", processor()).images[:, 0], np.rint(floats * 255))
    np.savez(tmp_path / "range.npz", x=floats * 2, y=np.array([0, 1]))
    with pytest.raises(D.DataError, match=r"range\.npz: float images must be finite and in \[0, 1\]"):
        D.load_dataset(tmp_path / "range.npz", processor())
    np.savez(tmp_path / "noy.npz", x=floats)
    with pytest.raises(D.DataError, match=r"noy\.npz: no array 'y'"):
        D.load_dataset(tmp_path / "noy.npz", processor())
    with pytest.raises(D.DataError, match="not a dataset"):
        D.load_dataset(tmp_path / "absent", processor())


def test_segmentation_folder_and_bad_masks(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rng = np.random.default_rng(1)
    for i, size in enumerate([(40, 48), (33, 33)]):
        write_image(tmp_path / "images" / f"{i}.jpg", size=size, seed=i)
        Image.fromarray(rng.integers(0, 3, size, dtype=np.uint8), "L").save(tmp_path / "masks" / f"{i}.png")
    dataset = D.load_dataset(tmp_path, processor(32), num_labels=3)
    assert dataset.task == "semantic-segmentation" and dataset.targets.shape == (2, 32, 32)
    mask = np.array(Image.open(tmp_path / "masks" / "0.png"))               # nearest resize keeps class ids
    assert set(np.unique(dataset.targets[0])) <= set(np.unique(mask))
    Image.fromarray(np.full((10, 12), 7, np.uint8), "L").save(tmp_path / "masks" / "1.png")
    with pytest.raises(D.DataError, match=r"masks/1\.png: mask is 12x10, its image 1\.jpg is 33x33"):
        D.load_dataset(tmp_path, processor(32), num_labels=3)
    Image.fromarray(np.full((33, 33), 7, np.uint8), "L").save(tmp_path / "masks" / "1.png")
    with pytest.raises(D.DataError, match=r"masks/1\.png: class ids \[7\] out of range, expected 0..2 or 255"):
        D.load_dataset(tmp_path, processor(32), num_labels=3)
    assert len(D.load_dataset(tmp_path, processor(32), num_labels=3, skip_bad=True)) == 1


@given(n=st.integers(1, 4), c=st.sampled_from([1, 3]), h=st.integers(1, 9), w=st.integers(1, 9),
       padding=st.integers(0, 4), flip=st.booleans(), segmentation=st.booleans(), seed=st.integers(0, 2**16))
def test_augment_equals_its_loop_twin(n, c, h, w, padding, flip, segmentation, seed):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, c, h, w), dtype=np.uint8)
    targets = rng.integers(0, 5, (n, h, w) if segmentation else n)
    augmentation = D.Augmentation(padding, flip)
    fast = D.augment(images, targets, augmentation, np.random.default_rng(seed))
    naive = D.augment_naive(images, targets, augmentation, np.random.default_rng(seed))
    assert np.array_equal(fast[0], naive[0]) and np.array_equal(fast[1], naive[1])
    assert images.shape == fast[0].shape and targets.shape == fast[1].shape


def test_augment_moves_and_mirrors():
    images = np.arange(2 * 1 * 3 * 4, dtype=np.uint8).reshape(2, 1, 3, 4)
    out, _ = D.augment(images, np.zeros(2, np.int64), D.Augmentation(0, True), np.random.default_rng(3))
    flipped = [np.array_equal(o, i[..., ::-1]) for o, i in zip(out, images)]
    assert all(f or np.array_equal(o, i) for f, o, i in zip(flipped, out, images))
    draws = [D.augment(images, np.zeros(2, np.int64), D.Augmentation(2, False), np.random.default_rng(s))[0]
             for s in range(8)]
    assert any(not np.array_equal(d, images) for d in draws)                # some crop moved the image


def test_order_batches_and_split():
    a = D.batch_indices(10, 3, epoch=0, seed=1)
    assert len(a) == 3 and all(len(b) == 3 for b in a) and len(set(np.concatenate(a))) == 9   # last partial dropped
    assert all(np.array_equal(x, y) for x, y in zip(a, D.batch_indices(10, 3, epoch=0, seed=1)))
    assert not np.array_equal(np.concatenate(a), np.concatenate(D.batch_indices(10, 3, epoch=1, seed=1)))
    assert np.array_equal(np.concatenate(D.batch_indices(10, 3, 0, 1, shuffle=False)), np.arange(9))
    with pytest.raises(D.DataError, match="batch size 11 is larger than the 10 training items"):
        D.batch_indices(10, 11, 0, 0)
    dataset = D.Dataset(np.zeros((10, 1, 2, 2), np.uint8), np.arange(10) % 2, ["a", "b"],
                        [str(i) for i in range(10)], "x")
    rest, held = D.split(dataset, 0.3, seed=0)
    assert len(held) == 3 and sorted(rest.names + held.names, key=int) == dataset.names
