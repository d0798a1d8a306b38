"""Label files for the importers: one class name per line, turned into a config's `id2label`.

The TensorFlow releases disagree about class 0. TF-slim ImageNet classifiers (the TFLite files) have
1001 outputs, output 0 being "background"; Keras applications have 1000 outputs and no background.
Label files come both ways too, so `id2label_from_file` accepts a file with one line more than the
model has classes when that first line is "background", and drops it: labels then stay right
(output 281 of a Keras model is "tabby, tabby cat", not the class before it). Any other count
mismatch is an error, since shifted labels would be silently wrong.

File format: UTF-8 text, one label per line, in class order. The labels end at the first empty
line; what follows it is a note for humans (the Pascal VOC labels file ends with one).
"""

from __future__ import annotations

from pathlib import Path

from mobilenet_np.errors import ConversionError

BACKGROUND = "background"


def read_labels(path) -> list[str]:
    """The labels in a text file: the non-empty lines before the first empty line, stripped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a UTF-8 byte order mark is not part of label 0
    except FileNotFoundError:
        raise ConversionError(f"{path}: no such labels file") from None
    except IsADirectoryError:
        raise ConversionError(f"{path}: is a folder, expected a labels file (one label per line)") from None
    except UnicodeDecodeError as e:
        raise ConversionError(f"{path}: not a UTF-8 text labels file ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ConversionError(f"{path}: cannot read labels file ({e.strerror})") from None
    labels = []
    for line in text.splitlines():
        if not line.strip():
            break
        labels.append(line.strip())
    if not labels:
        raise ConversionError(f"{path}: no labels found (expected one label per line)")
    return labels


def fit_labels(labels: list[str], num_classes: int, source: str = "labels") -> dict[int, str]:
    """id2label for a model with `num_classes` outputs; drops a leading "background" label if it is one too many."""
    if len(labels) == num_classes + 1 and labels[0].lower() == BACKGROUND:
        labels = labels[1:]  # e.g. the 1001 TF-slim ImageNet labels for a 1000-class Keras model
    if len(labels) != num_classes:
        hint = ""
        if len(labels) + 1 == num_classes:
            hint = f" (a {num_classes}-class TF-slim model has a background class 0: use a labels file that starts with it)"
        elif len(labels) == num_classes + 1:
            hint = f" (one too many, and the first label is {labels[0]!r}, not {BACKGROUND!r})"
        raise ConversionError(f"{source}: has {len(labels)} labels but the model has {num_classes} classes{hint}")
    return dict(enumerate(labels))


def id2label_from_file(path, num_classes: int) -> dict[int, str]:
    """Read a labels file and fit it to a model with `num_classes` outputs (see `fit_labels`)."""
    return fit_labels(read_labels(path), num_classes, source=str(path))
