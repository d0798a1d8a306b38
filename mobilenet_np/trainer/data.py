"""Training data: datasets held in memory as uint8 images, seeded augmentation, and batches.

Every source becomes one `Dataset`: `images` (N, C, H, W) uint8 (C = 3, or 1 for grey sources, which
the batch turns into 3 equal channels), and `targets`: (N,) int64 class ids, or (N, H, W) int64 masks
(255 = ignored pixel) for segmentation. Images are brought to the training size ONCE, by the geometric
steps of the model's image processor (resize, centre crop: Pillow's bilinear filter, as `classify`
sees them later), then kept as uint8; a batch is then

    images[indices] -> random crop with padding, horizontal flip (seeded) -> rescale, normalise
    = the processor's float steps ((x * rescale_factor - mean) / std, in float32)  -> (B, 3, H, W)

so a trained network sees exactly the pixel values `mobilenet-np classify` gives it.

Sources (`load_dataset(source, ...)` picks by what `source` is):

    a folder of class folders         root/<class>/<image>   (classes sorted by name: ImageFolder)
    a folder with images/ and masks/  segmentation: masks/<stem>.png holds class ids (255 ignored)
    a .csv file                       rows "file,label" (file relative to the .csv; label an id or a
                                      class name; a header row "file,label" is allowed)
    a .npz file                       x: (N, H, W) or (N, H, W, C) uint8, or float in [0, 1];
                                      y: (N,) class ids or (N, H, W) masks; optional `classes`
    an IDX prefix                     PREFIX-images-idx3-ubyte[.gz] + PREFIX-labels-idx1-ubyte[.gz]
                                      (MNIST / Fashion-MNIST), e.g. /usr/share/datasets/fashion-mnist/train

Bad data (an unreadable image, a label out of range, a mask of another size than its image) raises
`DataError` naming the file; with `skip_bad=True` the item is left out and listed in
`dataset.skipped` as (item, reason) instead.

Randomness is counter-based, never a hidden global state: the order of epoch e is
`default_rng([seed, e]).permutation(N)`, the augmentation of batch b of epoch e draws from
`default_rng([seed, e, b])`. A run resumed at (epoch, batch) therefore continues exactly.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
from pathlib import Path

import numpy as np

from .. import ops
from ..errors import ImageError, MobileNetError
from ..image_processing import MobileNetV1ImageProcessor, center_crop, load_image, open_image

__all__ = ["DataError", "Dataset", "Augmentation", "load_dataset", "image_folder", "csv_dataset", "npz_dataset",
           "idx_dataset", "read_idx", "segmentation_folder", "to_training_size", "stack_to_training_size",
           "read_image", "split", "epoch_order", "batch_indices", "augment", "augment_naive", "pixel_values",
           "IGNORE_INDEX"]

IGNORE_INDEX = 255           # transformers' semantic_loss_ignore_index default: masks' "void" pixels
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
# Class names of IDX datasets, by the name of the folder that holds the files.
IDX_CLASSES = {"fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                 "Sneaker", "Bag", "Ankle boot"]}


class DataError(MobileNetError):
    """A dataset cannot be read: the file, row or item and what was expected."""


@dataclasses.dataclass
class Dataset:
    """Images and targets held in memory.

    images:  (N, C, H, W) uint8, C = 1 or 3
    targets: (N,) int64 class ids, or (N, H, W) int64 masks (IGNORE_INDEX = not counted)
    classes: the class names, index = class id
    names:   where each item came from (file path, or "file.npz[i]")
    skipped: (item, reason) of the items left out with skip_bad=True
    """

    images: np.ndarray
    targets: np.ndarray
    classes: list[str]
    names: list[str]
    source: str
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        n = len(self.images)
        if self.images.ndim != 4 or self.images.dtype != np.uint8 or self.images.shape[1] not in (1, 3):
            raise DataError(f"{self.source}: images must be (N, 1 or 3, H, W) uint8, got {self.images.dtype} "
                            f"{self.images.shape}")
        if len(self.targets) != n or len(self.names) != n:
            raise DataError(f"{self.source}: {n} images but {len(self.targets)} targets and {len(self.names)} names")
        if n == 0:
            raise DataError(f"{self.source}: holds no usable items" +
                            (f" ({len(self.skipped)} skipped: {self.skipped[0][0]}: {self.skipped[0][1]})"
                             if self.skipped else ""))

    @property
    def task(self) -> str:
        return "semantic-segmentation" if self.targets.ndim == 3 else "image-classification"

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices) -> "Dataset":
        indices = np.asarray(indices, dtype=np.int64)
        return Dataset(self.images[indices], self.targets[indices], list(self.classes),
                       [self.names[i] for i in indices], self.source, [])

    def fingerprint(self) -> str:
        """Size, shape and a checksum of the targets: a resumed run checks it is fed the same data."""
        checksum = int(np.sum(self.targets.astype(np.int64).ravel() * (np.arange(self.targets.size) % 9973 + 1)))
        return f"{len(self)}x{self.images.shape[1:]}:{checksum}"


# --------------------------------------------------------------------------------------------------
# the training size: the processor's resize and centre crop, kept in uint8
# --------------------------------------------------------------------------------------------------

def to_training_size(image: np.ndarray, processor: MobileNetV1ImageProcessor, resample: int | None = None,
                     name: str = "image") -> np.ndarray:
    """(C, H, W) uint8 -> (C, h, w) uint8 at the processor's output size: its resize (Pillow's filter
    `processor.resample`, or `resample`, e.g. 0 = nearest for masks) and centre crop, as `classify` does."""
    if processor.do_resize:
        size = processor.resize_output_size(*image.shape[1:])
        if size != image.shape[1:]:
            try:
                image = np.moveaxis(ops.resize_image(np.moveaxis(image, 0, -1), size,
                                                     processor.resample if resample is None else resample), -1, 0)
            except MobileNetError as e:
                raise DataError(f"{name}: {e}") from None
    if processor.do_center_crop:
        image = center_crop(image, processor.crop_size["height"], processor.crop_size["width"])
    return np.ascontiguousarray(image)


def stack_to_training_size(images: np.ndarray, processor, name: str) -> np.ndarray:
    """(N, C, H, W) uint8 of one size -> the training size, all images in one resize (planes stacked:
    the resize treats each plane alike, so this equals resizing image by image)."""
    n, c, h, w = images.shape
    sized = to_training_size(images.reshape(n * c, h, w), processor, name=name)   # (N * C, h', w')
    return sized.reshape(n, c, *sized.shape[1:])


# --------------------------------------------------------------------------------------------------
# the sources
# --------------------------------------------------------------------------------------------------

def read_image(path: Path, processor) -> np.ndarray:
    """An image file -> (3, h, w) uint8 at the training size; ImageError names the file."""
    rgb = np.moveaxis(np.array(load_image(path)), -1, 0)                 # (3, H, W) uint8
    return to_training_size(rgb, processor, name=str(path))


def _check_class_id(label: int, num_labels: int | None, where: str) -> None:
    if label < 0 or (num_labels is not None and label >= num_labels):
        raise DataError(f"{where}: label {label} out of range, expected 0..{(num_labels or 0) - 1}"
                        if num_labels else f"{where}: label {label} is negative")


def _finish(images, targets, classes, names, source, skipped, num_labels) -> Dataset:
    if num_labels is not None and classes and len(classes) > num_labels:
        raise DataError(f"{source}: {len(classes)} classes, but the model has num_labels={num_labels}")
    if not images:
        raise DataError(f"{source}: holds no usable items" +
                        (f" ({len(skipped)} skipped; first: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""))
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise DataError(f"{source}: images of different sizes after preprocessing {sorted(shapes)[:3]}; the image "
                        f"processor must centre-crop to one size")
    return Dataset(np.stack(images), np.asarray(np.stack(targets), dtype=np.int64), list(classes), names,
                   source, skipped)


def image_folder(root, processor, *, num_labels: int | None = None, skip_bad: bool = False) -> Dataset:
    """root/<class>/<image>: one class per sub-folder, classes sorted by folder name (torchvision's ImageFolder)."""
    root = Path(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class folders (expected root/<class>/<image files>)")
    images, targets, names, skipped = [], [], [], []
    for class_id, name in enumerate(classes):
        for path in sorted(p for p in (root / name).iterdir() if p.is_file() and not p.name.startswith(".")):
            try:
                _check_class_id(class_id, num_labels, str(path))
                images.append(read_image(path, processor))
            except (ImageError, DataError) as e:
                if not skip_bad:
                    raise DataError(str(e)) from None
                skipped.append((str(path), str(e)))
                continue
            targets.append(class_id)
            names.append(str(path))
    return _finish(images, targets, classes, names, str(root), skipped, num_labels)


def csv_dataset(path, processor, *, classes: list[str] | None = None, num_labels: int | None = None,
                skip_bad: bool = False) -> Dataset:
    """Rows "file,label": file relative to the .csv's folder, label a class id or a class name.

    Class names become ids in sorted order unless `classes` gives the list. A first row "file,label"
    (or any row whose label is the word "label") is a header."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            rows = [(n, row) for n, row in enumerate(csv.reader(f), start=1) if row and any(c.strip() for c in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot be read as a CSV file ({e})") from None
    if rows and len(rows[0][1]) >= 2 and rows[0][1][1].strip().lower() == "label":
        rows = rows[1:]
    bad = [(n, row) for n, row in rows if len(row) != 2]
    if bad:
        raise DataError(f"{path}:{bad[0][0]}: expected 2 columns 'file,label', got {len(bad[0][1])}")
    labels = [row[1].strip() for _, row in rows]
    numeric = all(label.lstrip("-").isdigit() for label in labels)
    if classes is None:
        classes = ([str(i) for i in range(max(int(x) for x in labels) + 1)] if numeric and labels
                   else sorted(set(labels)))
    index = {name: i for i, name in enumerate(classes)}
    images, targets, names, skipped = [], [], [], []
    for (n, (file, _)), label in zip(rows, labels):
        where = f"{path}:{n} ({file.strip()})"
        try:
            if numeric:
                class_id = int(label)
            elif label in index:
                class_id = index[label]
            else:
                raise DataError(f"{where}: unknown class {label!r}, expected one of {classes[:5]}")
            _check_class_id(class_id, num_labels if num_labels is not None else len(classes), where)
            images.append(read_image(path.parent / file.strip(), processor))
        except (ImageError, DataError) as e:
            if not skip_bad:
                raise DataError(str(e) if str(e).startswith(str(path)) else f"{where}: {e}") from None
            skipped.append((where, str(e)))
            continue
        targets.append(class_id)
        names.append(str(path.parent / file.strip()))
    return _finish(images, targets, classes, names, str(path), skipped, num_labels)


def _uint8_images(x: np.ndarray, where: str) -> np.ndarray:
    """(N, H, W) or (N, H, W, C) uint8 or float in [0, 1] -> (N, C, H, W) uint8."""
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise DataError(f"{where}: x must be (N, H, W) or (N, H, W, 1 or 3), got shape {x.shape}")
    if x.dtype.kind == "f":
        if not np.all(np.isfinite(x)) or x.min() < 0 or x.max() > 1:
            raise DataError(f"{where}: float images must be finite and in [0, 1], got [{np.nanmin(x)}, {np.nanmax(x)}]")
        x = np.rint(x * 255).astype(np.uint8)
    elif x.dtype != np.uint8:
        raise DataError(f"{where}: x must be uint8 or float in [0, 1], got {x.dtype}")
    return np.ascontiguousarray(np.moveaxis(x, -1, 1))


def _screen(images, targets, names, num_labels, source, skip_bad, segmentation):
    """Leave out (or refuse) the items whose labels are out of range."""
    if segmentation:
        top = np.inf if num_labels is None else num_labels
        bad = np.array([bool(np.any((t != IGNORE_INDEX) & ((t < 0) | (t >= top)))) for t in targets], dtype=bool)
    else:
        bad = (targets < 0) | ((targets >= num_labels) if num_labels is not None else False)
    skipped = []
    for i in np.flatnonzero(bad):
        reason = (f"mask values outside 0..{num_labels - 1} and {IGNORE_INDEX}" if segmentation else
                  f"label {targets[i]} out of range, expected 0..{(num_labels or 1) - 1}")
        if not skip_bad:
            raise DataError(f"{names[i]}: {reason}")
        skipped.append((names[i], reason))
    keep = ~bad
    return images[keep], targets[keep], [n for n, k in zip(names, keep) if k], skipped


def npz_dataset(path, processor, *, num_labels: int | None = None, skip_bad: bool = False) -> Dataset:
    """x: (N, H, W[, C]) uint8 or float in [0, 1]; y: (N,) class ids or (N, H, W) masks; optional classes."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable .npz file ({str(e).splitlines()[0][:120]})") from None
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise DataError(f"{path}: no array {missing[0]!r} (expected x: images, y: labels; found {sorted(arrays)})")
    images, y = _uint8_images(arrays["x"], str(path)), arrays["y"]
    if y.dtype.kind not in "iu" or y.ndim not in (1, 3) or len(y) != len(images):
        raise DataError(f"{path}: y must be {len(images)} integer class ids (N,) or masks (N, H, W), got "
                        f"{y.dtype} {y.shape}")
    segmentation = y.ndim == 3
    if segmentation and y.shape[1:] != images.shape[2:]:
        raise DataError(f"{path}: masks y are {y.shape[1:]}, images x are {images.shape[2:]}; expected the same size")
    names = [f"{path}[{i}]" for i in range(len(images))]
    images, y, names, skipped = _screen(images, y.astype(np.int64), names, num_labels, str(path), skip_bad,
                                        segmentation)
    if segmentation:
        images, y = _segmentation_to_training_size(images, y, processor, str(path))
    else:
        images = stack_to_training_size(images, processor, str(path))
    if "classes" in arrays:
        classes = [str(c) for c in arrays["classes"]]
    else:
        if num_labels is not None:
            top = num_labels
        else:
            top = int((y[y != IGNORE_INDEX] if segmentation else y).max() + 1)
        classes = [str(i) for i in range(top)]
    return Dataset(images, y, classes, names, str(path), skipped)


def _idx_file(prefix: Path, kind: str) -> Path:
    for name in (f"{prefix.name}-{kind}", f"{prefix.name}-{kind}.gz"):
        if (prefix.parent / name).is_file():
            return prefix.parent / name
    raise DataError(f"{prefix}: no {prefix.name}-{kind}[.gz] in {prefix.parent}")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format: magic 0x0000 08 D, D big-endian int32 sizes, then uint8 data), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot be read ({e})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path}: not an IDX file of uint8 (magic {data[:4].hex()}, expected 000008xx)")
    ndim = data[3]
    shape = tuple(int(v) for v in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    size = int(np.prod(shape))
    if len(data) != 4 + 4 * ndim + size:
        raise DataError(f"{path}: {len(data) - 4 - 4 * ndim} bytes of data for shape {shape}, expected {size}")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def idx_dataset(prefix, processor, *, num_labels: int | None = None, skip_bad: bool = False) -> Dataset:
    """PREFIX-images-idx3-ubyte[.gz] (N, H, W) and PREFIX-labels-idx1-ubyte[.gz] (N,): (Fashion-)MNIST.
    Class names: IDX_CLASSES by the name of the folder, else "0", "1", ..."""
    prefix = Path(prefix)
    images_path, labels_path = _idx_file(prefix, "images-idx3-ubyte"), _idx_file(prefix, "labels-idx1-ubyte")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{prefix}: images {images.shape} and labels {labels.shape} do not pair up "
                        f"(expected (N, H, W) and (N,))")
    names = [f"{images_path}[{i}]" for i in range(len(images))]
    images, labels, names, skipped = _screen(images[:, None], labels.astype(np.int64), names, num_labels,
                                             str(prefix), skip_bad, False)
    classes = IDX_CLASSES.get(prefix.parent.name, [str(i) for i in range(int(labels.max()) + 1)])
    return Dataset(stack_to_training_size(images, processor, str(prefix)), labels, classes, names, str(prefix),
                   skipped)


def _read_mask(path: Path) -> np.ndarray:
    """A mask image of class ids -> (H, W) uint8 (palette images give their indices, not colours)."""
    image = open_image(path)
    if image.mode not in ("L", "P", "I", "I;16"):
        raise DataError(f"{path}: mask of mode {image.mode}, expected one channel of class ids (mode L or P)")
    mask = np.array(image)
    if mask.max(initial=0) > 255:
        raise DataError(f"{path}: mask values up to {mask.max()}, expected class ids < 256")
    return mask.astype(np.uint8)


def _segmentation_to_training_size(images, masks, processor, where):
    """Images with the processor's filter, masks with nearest neighbour (class ids stay ids), same crop."""
    sized_images, sized_masks = [], []
    for image, mask in zip(images, masks):
        sized_images.append(to_training_size(image, processor, name=where))
        sized_masks.append(to_training_size(mask[None].astype(np.uint8), processor, resample=0, name=where)[0])
    return np.stack(sized_images), np.stack(sized_masks).astype(np.int64)


def segmentation_folder(root, processor, *, num_labels: int | None = None, skip_bad: bool = False,
                        classes: list[str] | None = None) -> Dataset:
    """root/images/<name>.<ext> with root/masks/<name>.png: class ids per pixel, IGNORE_INDEX not counted.

    A mask must have its image's size; both go through the processor's resize (the mask with nearest
    neighbour) and centre crop."""
    root = Path(root)
    image_paths = sorted(p for p in (root / "images").iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    images, masks, names, skipped = [], [], [], []
    for path in image_paths:
        mask_path = root / "masks" / f"{path.stem}.png"
        try:
            if not mask_path.is_file():
                raise DataError(f"{path}: no mask {mask_path}")
            rgb = np.moveaxis(np.array(load_image(path)), -1, 0)         # (3, H, W)
            mask = _read_mask(mask_path)
            if mask.shape != rgb.shape[1:]:
                raise DataError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]}, its image {path.name} is "
                                f"{rgb.shape[2]}x{rgb.shape[1]}; expected the same size")
            if num_labels is not None:
                wrong = np.unique(mask[(mask != IGNORE_INDEX) & (mask >= num_labels)])
                if wrong.size:
                    raise DataError(f"{mask_path}: class ids {wrong[:5].tolist()} out of range, expected "
                                    f"0..{num_labels - 1} or {IGNORE_INDEX}")
            (image,), (mask,) = _segmentation_to_training_size(rgb[None], mask[None], processor, str(path))
        except (ImageError, DataError) as e:
            if not skip_bad:
                raise DataError(str(e)) from None
            skipped.append((str(path), str(e)))
            continue
        images.append(image)
        masks.append(mask)
        names.append(str(path))
    if classes is None:
        top = num_labels if num_labels is not None else max(
            (int(m[m != IGNORE_INDEX].max(initial=0)) + 1 for m in masks), default=1)
        classes = [str(i) for i in range(top)]
    return _finish(images, masks, classes, names, str(root), skipped, num_labels)


def load_dataset(source, processor, *, num_labels: int | None = None, skip_bad: bool = False,
                 classes: list[str] | None = None) -> Dataset:
    """The dataset at `source` (see the module docstring for the kinds), at the processor's output size."""
    path = Path(source)
    if path.is_dir() and (path / "images").is_dir() and (path / "masks").is_dir():
        return segmentation_folder(path, processor, num_labels=num_labels, skip_bad=skip_bad, classes=classes)
    if path.is_dir():
        return image_folder(path, processor, num_labels=num_labels, skip_bad=skip_bad)
    if path.suffix.lower() == ".csv" and path.is_file():
        return csv_dataset(path, processor, classes=classes, num_labels=num_labels, skip_bad=skip_bad)
    if path.suffix.lower() == ".npz" and path.is_file():
        return npz_dataset(path, processor, num_labels=num_labels, skip_bad=skip_bad)
    if any(path.parent.glob(f"{path.name}-images-idx3-ubyte*")) if path.parent.is_dir() else False:
        return idx_dataset(path, processor, num_labels=num_labels, skip_bad=skip_bad)
    raise DataError(f"{source}: not a dataset: expected a folder of class folders, a folder with images/ and "
                    f"masks/, a .csv, a .npz, or an IDX prefix (PREFIX-images-idx3-ubyte[.gz])")


def split(dataset: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """(rest, held out): a seeded random `fraction` of the items held out (at least one on each side)."""
    if not 0 < fraction < 1:
        raise DataError(f"split: fraction must be in (0, 1), got {fraction}")
    order = np.random.default_rng([seed, 0xDA7A]).permutation(len(dataset))
    held = min(max(1, int(round(fraction * len(dataset)))), len(dataset) - 1)
    if held < 1:
        raise DataError(f"{dataset.source}: {len(dataset)} item(s), too few to hold some out")
    return dataset.subset(np.sort(order[held:])), dataset.subset(np.sort(order[:held]))


# --------------------------------------------------------------------------------------------------
# order, augmentation, pixel values
# --------------------------------------------------------------------------------------------------

def epoch_order(n: int, epoch: int, seed: int, shuffle: bool = True) -> np.ndarray:
    """The item order of epoch `epoch`: a permutation drawn from default_rng([seed, epoch]) (or 0..n-1)."""
    return np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)


def batch_indices(n: int, batch_size: int, epoch: int, seed: int, shuffle: bool = True) -> list[np.ndarray]:
    """The batches of one epoch: full batches of the epoch's order; the last partial one is dropped
    (train-mode BatchNorm needs more than one value per channel, and equal batches weigh steps alike)."""
    if batch_size > n:
        raise DataError(f"batch size {batch_size} is larger than the {n} training items")
    order = epoch_order(n, epoch, seed, shuffle)
    return [order[i:i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """crop_padding: pad every side by this many pixels (images with 0, masks with IGNORE_INDEX) and cut
    a random window of the original size; flip: mirror left-right with probability 1/2."""

    crop_padding: int = 0
    flip: bool = False

    def __post_init__(self):
        if self.crop_padding < 0:
            raise DataError(f"crop padding must be >= 0, got {self.crop_padding}")


def _draws(rng: np.random.Generator, n: int, augmentation: Augmentation):
    """Per item: crop offsets (top, left) in [0, 2p] and whether to flip, in one fixed order of draws."""
    p = augmentation.crop_padding
    offsets = rng.integers(0, 2 * p + 1, size=(n, 2)) if p else np.full((n, 2), 0)
    flips = rng.random(n) < 0.5 if augmentation.flip else np.zeros(n, dtype=bool)
    return offsets, flips


def augment(images: np.ndarray, targets: np.ndarray, augmentation: Augmentation, rng: np.random.Generator):
    """(B, C, H, W) images and their targets, randomly cropped (with padding) and flipped.

    Crop: pad by p on every side and take the H x W window at (top, left) = drawn offsets; a mask
    (B, H, W) is cut the same way, its padding IGNORE_INDEX. Flip: x[..., ::-1] on the chosen items."""
    offsets, flips = _draws(rng, len(images), augmentation)
    p = augmentation.crop_padding
    h, w = images.shape[-2:]
    segmentation = targets.ndim == 3
    if p:
        padded = np.pad(images, ((0, 0), (0, 0), (p, p), (p, p)))              # (B, C, H + 2p, W + 2p)
        rows = offsets[:, 0, None] + np.arange(h)                               # (B, H)
        cols = offsets[:, 1, None] + np.arange(w)                               # (B, W)
        b = np.arange(len(images))[:, None, None]
        images = padded[b, :, rows[:, :, None], cols[:, None, :]].transpose(0, 3, 1, 2)   # (B, C, H, W)
        if segmentation:
            padded = np.pad(targets, ((0, 0), (p, p), (p, p)), constant_values=IGNORE_INDEX)
            targets = padded[b, rows[:, :, None], cols[:, None, :]]
    if augmentation.flip and flips.any():
        images = images.copy()
        images[flips] = images[flips][..., ::-1]
        if segmentation:
            targets = targets.copy()
            targets[flips] = targets[flips][..., ::-1]
    return np.ascontiguousarray(images), np.ascontiguousarray(targets)


def augment_naive(images, targets, augmentation: Augmentation, rng: np.random.Generator):
    """Loop twin of `augment`: the same draws, every output pixel copied one by one."""
    offsets, flips = _draws(rng, len(images), augmentation)
    p = augmentation.crop_padding
    n, c, h, w = images.shape
    segmentation = targets.ndim == 3
    out = np.zeros_like(images)
    out_targets = targets.copy()
    for i in range(n):
        for y in range(h):
            for x in range(w):
                sx = w - 1 - x if flips[i] else x                  # flip after the crop: read mirrored columns
                src_y, src_x = y + offsets[i, 0] - p, sx + offsets[i, 1] - p
                inside = 0 <= src_y < h and 0 <= src_x < w
                for ch in range(c):
                    out[i, ch, y, x] = images[i, ch, src_y, src_x] if inside else 0
                if segmentation:
                    out_targets[i, y, x] = targets[i, src_y, src_x] if inside else IGNORE_INDEX
    return out, out_targets


def pixel_values(images: np.ndarray, processor, num_channels: int, dtype=np.float32) -> np.ndarray:
    """(B, C, H, W) uint8 -> (B, num_channels, H, W) pixel values by the processor's float steps:
    x * rescale_factor (float64, stored as float32), then (x - mean[c]) / std[c] in float32, as
    `processor(image)` computes them; grey (C = 1) images are repeated to 3 channels first."""
    if images.shape[1] == 1 and num_channels == 3:
        images = np.repeat(images, 3, axis=1)
    if images.shape[1] != num_channels:
        raise DataError(f"images have {images.shape[1]} channels, the model takes num_channels={num_channels}")
    x = images
    if processor.do_rescale:
        x = (x.astype(np.float64) * processor.rescale_factor).astype(np.float32)
    else:
        x = x.astype(np.float32)
    if processor.do_normalize:
        mean = np.asarray(processor.image_mean, dtype=np.float32)[:num_channels, None, None]
        std = np.asarray(processor.image_std, dtype=np.float32)[:num_channels, None, None]
        x = (x - mean) / std
    return x.astype(dtype, copy=False)
