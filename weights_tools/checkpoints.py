"""transformers checkpoints for `python -m weights_tools convert`: where the checkpoint is, and writing folders.

The reading itself (config.json, model.safetensors / pytorch_model.bin with weights_only=True,
preprocessor_config.json, the Hub cache) is mobilenet_np/formats/transformers_checkpoint.py, which the
library's `from_pretrained` uses too; this module adds convert's rule for the source (a folder or a
Hub id, never a single file) and the atomic writing of a checkpoint folder for export.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

from mobilenet_np.errors import ConversionError, MobileNetError, OutputExistsError
from mobilenet_np.fileio import temporary_sibling
from mobilenet_np.formats.transformers_checkpoint import (  # noqa: F401  (convert and export import them from here)
    CONFIG_NAME, HUB_ID, PREPROCESSOR_NAME, PYTORCH_NAME, SAFETENSORS_NAME, Checkpoint, download_from_hub,
    hub_provenance, read_checkpoint, tqdm_disable)

CONVERT_HINT = (f"to convert a checkpoint you already have, pass its folder (with {CONFIG_NAME} and {SAFETENSORS_NAME} "
                f"or {PYTORCH_NAME}): python -m weights_tools convert path/to/folder OUT.h5")


def resolve_source(source: str | os.PathLike, revision: str | None = None) -> tuple[Path, dict]:
    """The local folder of `source` and a provenance dict describing where it came from.

    `source` is a local checkpoint folder, or a Hub model id ("google/mobilenet_v2_1.0_224") that is
    downloaded (or found in the Hub cache) with huggingface_hub.snapshot_download.
    """
    path = Path(source)
    if path.exists():
        if not path.is_dir():
            raise ConversionError(f"{path}: expected a transformers checkpoint folder (config.json + "
                                  f"{SAFETENSORS_NAME} or {PYTORCH_NAME}), got a file")
        return path.resolve(), {"source": str(path.resolve()), "source_type": "local_folder"}
    if not HUB_ID.fullmatch(str(source)):
        raise ConversionError(f"{source}: no such folder (and not a Hugging Face Hub model id)")
    folder = download_from_hub(str(source), revision, CONVERT_HINT)
    return folder, hub_provenance(str(source), folder)


# --------------------------------------------------------------------------------------------------
# writing a folder atomically
# --------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def atomic_output_folder(path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it is renamed to `path` (the folder version
    of mobilenet_np.fileio.atomic_output).

    Readers never see a half-written folder: the files are written into `.NAME.*.tmp`, which only
    takes the final name once complete. With overwrite=True an existing `path` is first renamed
    aside, then deleted once the new folder is in place (and put back if that rename fails).
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise MobileNetError(f"{path}: cannot write, folder {parent} does not exist")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise OutputExistsError(f"{path}: exists already (pass --force / overwrite=True to replace it)")
    tmp = temporary_sibling(path, suffix=".tmp", folder=True)   # permissions from the umask, not 0o700
    try:
        yield tmp
        old = None
        if path.exists() or path.is_symlink():
            old = parent / f".{path.name}.{uuid.uuid4().hex}.old"
            os.rename(path, old)
        try:
            os.rename(tmp, path)
        except BaseException:
            if old is not None:
                os.rename(old, path)
            raise
        if old is not None:
            shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
