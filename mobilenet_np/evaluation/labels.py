"""Which images to evaluate, and the true class of each, read from the data itself.

A data folder is scanned recursively for image files (the endings Pillow knows; names starting
with "." are skipped). Each image becomes a `Sample`: its key (the path relative to the data folder,
with "/"), its path, and its label (a class id of the model, or None). The label sources:

  synset    ImageNet file names that start with a WordNet synset id, `n01440764_tench.JPEG`. The
            sorted 1000 ILSVRC-2012 synsets (imagenet_synsets.txt, beside this file) are the class
            order of every ImageNet classifier: synset line i is class i of a 1000-class model and
            class i + 1 of a 1001-class model (class 0 = "background", the TF-slim checkpoints).
  folders   the ImageFolder layout, DATA/<class>/<image>: the folder name is a class of the model.
  FILE      a CSV (or .tsv: tab-separated) table `file,label`; `file` relative to the data folder;
            only the files it lists are evaluated. An optional header row starts with file/image/path.
  none      no labels (agreement or segmentation runs).
  auto      synset when every file name starts with a known synset id and the model has 1000 or
            1001 classes; else folders when every image is inside a class folder; else none.

A class name (folder or table) is resolved against the model's id2label, in this order: an
integer id; the whole label ("tench, Tinca tinca"); one of its comma-separated names ("tench");
an ImageNet synset id. Names are compared case-insensitively with "_" read as " ". A name that fits
several classes (ImageNet has two "crane"s) or none is a ConfigError naming it.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath

from PIL import Image

from ..errors import ConfigError

SYNSETS_FILE = "imagenet_synsets.txt"
SYNSET_PATTERN = re.compile(r"n\d{8}")
LABEL_SOURCES = ("auto", "synset", "folders", "none")
HEADER_NAMES = ("file", "filename", "image", "path")


@dataclass(frozen=True)
class Sample:
    """One image to evaluate: key (relative path with "/", the image's name in reports), path, label."""

    key: str
    path: str
    label: int | None = None


def imagenet_synsets() -> list[str]:
    """The 1000 ILSVRC-2012 synset ids in class order (sorted), from the package data file."""
    text = resources.files(__package__).joinpath(SYNSETS_FILE).read_text(encoding="ascii")
    synsets = text.split()
    if len(synsets) != 1000 or synsets != sorted(synsets) or not all(SYNSET_PATTERN.fullmatch(s) for s in synsets):
        raise ConfigError(f"{SYNSETS_FILE}: expected 1000 sorted synset ids (n########), got {len(synsets)} lines")
    return synsets


def synset_offset(num_labels: int) -> int:
    """0 for a 1000-class model, 1 for a 1001-class model (class 0 is "background"); else a ConfigError."""
    if num_labels not in (1000, 1001):
        raise ConfigError(f"synset labels need an ImageNet model with 1000 or 1001 classes, got num_labels "
                          f"{num_labels}")
    return num_labels - 1000


def synset_of(name: str) -> str | None:
    """The synset id a file name starts with (`n01440764_tench.JPEG` -> "n01440764"), or None."""
    match = SYNSET_PATTERN.match(name)
    return match.group(0) if match else None


# --------------------------------------------------------------------------------------------------
# class names -> ids
# --------------------------------------------------------------------------------------------------

def _normal(name: str) -> str:
    return " ".join(name.replace("_", " ").casefold().split())


class LabelResolver:
    """Class names (or ids, or synsets) -> class ids of a model with labels `id2label`."""

    def __init__(self, id2label: dict[int, str]):
        self.num_labels = len(id2label)
        self.whole: dict[str, set[int]] = {}
        self.parts: dict[str, set[int]] = {}
        for i, label in id2label.items():
            self.whole.setdefault(_normal(label), set()).add(i)
            for part in label.split(","):
                if part.strip():
                    self.parts.setdefault(_normal(part), set()).add(i)
        self.synsets = {s: i for i, s in enumerate(imagenet_synsets())} if self.num_labels in (1000, 1001) else {}

    def __call__(self, name: str, where: str) -> int:
        """The class id of `name`; `where` (e.g. the CSV line) goes into the error message."""
        text = name.strip()
        if re.fullmatch(r"[0-9]+", text):
            if int(text) >= self.num_labels:
                raise ConfigError(f"{where}: class id {text} is out of range, the model has {self.num_labels} classes")
            return int(text)
        for table in (self.whole, self.parts):
            ids = table.get(_normal(text))
            if ids and len(ids) > 1:
                raise ConfigError(f"{where}: class name {name!r} fits several classes {sorted(ids)}; use the class "
                                  "id or the synset id")
            if ids:
                return next(iter(ids))
        if text in self.synsets:
            return self.synsets[text] + synset_offset(self.num_labels)
        raise ConfigError(f"{where}: class {name!r} is not a label of the model (expected a class id, one of the "
                          "model's labels or an ImageNet synset id)")


# --------------------------------------------------------------------------------------------------
# finding images and their labels
# --------------------------------------------------------------------------------------------------

def image_extensions() -> set[str]:
    """File name endings Pillow can open (lower case, with the dot)."""
    return {ext.lower() for ext in Image.registered_extensions()}


def find_images(root) -> list[tuple[str, Path]]:
    """(key, path) of every image file under `root` (recursively), sorted by key; hidden names skipped."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root}: no such data folder")
    extensions = image_extensions()
    found = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.suffix.lower() in extensions and path.is_file():
            found.append((relative.as_posix(), path))
    return sorted(found)


def choose_source(keys: list[str], source: str, num_labels: int) -> str:
    """The label source to use: `source`, or for "auto" the one the file names and folders fit."""
    if source != "auto":
        return source
    synsets = set(imagenet_synsets())
    if keys and num_labels in (1000, 1001) and all(synset_of(PurePosixPath(k).name) in synsets for k in keys):
        return "synset"
    if keys and all("/" in k for k in keys):
        return "folders"
    return "none"


def samples_from_folder(root, source: str, id2label: dict[int, str]) -> tuple[list[Sample], str]:
    """The samples of a data folder with the labels of `source` (see the module docstring), and the source used.

    `source` is "auto", "synset", "folders", "none" or the path of a CSV / TSV table.
    """
    if source not in LABEL_SOURCES:
        return samples_from_table(root, source, id2label), "table"
    images = find_images(root)
    if not images:
        raise ConfigError(f"{root}: data folder holds no image files (expected e.g. .png, .jpg, .JPEG)")
    source = choose_source([k for k, _ in images], source, len(id2label))
    if source == "none":
        return [Sample(k, str(p)) for k, p in images], source
    if source == "synset":
        offset = synset_offset(len(id2label))
        index = {s: i for i, s in enumerate(imagenet_synsets())}
        samples = []
        for key, path in images:
            synset = synset_of(path.name)
            if synset not in index:
                raise ConfigError(f"{path}: file name does not start with an ImageNet synset id (e.g. "
                                  "n01440764_tench.JPEG)")
            samples.append(Sample(key, str(path), index[synset] + offset))
        return samples, source
    resolve = LabelResolver(id2label)
    samples, classes = [], {}
    for key, path in images:
        if "/" not in key:
            raise ConfigError(f"{path}: not inside a class folder (expected DATA/<class>/<image>)")
        folder = key.split("/")[0]
        if folder not in classes:
            classes[folder] = resolve(folder, f"{Path(root) / folder}")
        samples.append(Sample(key, str(path), classes[folder]))
    return samples, source


def samples_from_table(root, table, id2label: dict[int, str]) -> list[Sample]:
    """Samples from a `file,label` CSV (tab-separated for .tsv); files relative to `root`, sorted by key."""
    table = Path(table)
    if not table.is_file():
        raise ConfigError(f"{table}: no such label table (expected a CSV file or one of {', '.join(LABEL_SOURCES)})")
    delimiter = "\t" if table.suffix.lower() == ".tsv" else ","
    resolve = LabelResolver(id2label)
    samples: dict[str, Sample] = {}
    with open(table, newline="", encoding="utf-8-sig") as f:
        for line, row in enumerate(csv.reader(f, delimiter=delimiter), start=1):
            if not row or not "".join(row).strip():
                continue
            if line == 1 and row[0].strip().casefold() in HEADER_NAMES:
                continue
            if len(row) != 2:
                raise ConfigError(f"{table}:{line}: expected 2 columns file{delimiter}label, got {len(row)}")
            key = PurePosixPath(row[0].strip().replace("\\", "/")).as_posix()
            if key in samples:
                raise ConfigError(f"{table}:{line}: {key} is listed twice")
            samples[key] = Sample(key, str(Path(root) / key), resolve(row[1], f"{table}:{line}"))
    if not samples:
        raise ConfigError(f"{table}: label table lists no images")
    return [samples[k] for k in sorted(samples)]


def shard(samples: list[Sample], index: int, count: int) -> list[Sample]:
    """The deterministic slice K of N: the samples at positions i (sorted by key) with i % N == K."""
    if not (isinstance(count, int) and isinstance(index, int) and count >= 1 and 0 <= index < count):
        raise ConfigError(f"shard must be K/N with 0 <= K < N, got {index}/{count}")
    ordered = sorted(samples, key=lambda s: s.key)
    return [s for i, s in enumerate(ordered) if i % count == index]
