"""Writing files so that a failure never leaves half a file behind or damages an existing one."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from pathlib import Path
from typing import Iterator

from .errors import MobileNetError, OutputExistsError


@contextlib.contextmanager
def atomic_output(path, overwrite: bool = False, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path` in one step.

    The temporary file lives in the same folder (so the rename is atomic) and is removed if the
    body raises or is interrupted. An existing `path` is only replaced with overwrite=True. The file
    gets the permissions any new file gets (0o666 minus the umask: typically rw-r--r--).
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise MobileNetError(f"{path}: cannot write, folder {folder} does not exist")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: exists already (pass --force / overwrite=True to replace it)")
    if path.is_dir():
        raise MobileNetError(f"{path}: is a folder, expected a file path")
    tmp = temporary_sibling(path, suffix=f".tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def temporary_sibling(path: Path, suffix: str = ".tmp", folder: bool = False) -> Path:
    """Create an empty file (or folder) named `.NAME.<random>SUFFIX` beside `path`; return its path.

    Created with mode 0o666 (folders 0o777) so that the umask decides the permissions, as for any new
    file (tempfile.mkstemp / mkdtemp would give 0o600 / 0o700 whatever the umask says). O_EXCL (or
    mkdir) fails rather than reuse a name that exists, so two writers never share a temporary.
    """
    parent = path.parent if str(path.parent) else Path(".")
    for _ in range(100):
        candidate = parent / f".{path.name}.{secrets.token_hex(4)}{suffix}"
        try:
            if folder:
                os.mkdir(candidate, 0o777)
            else:
                os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return candidate
        except FileExistsError:
            continue
        except OSError as e:
            raise MobileNetError(f"{path}: cannot write in {parent} ({e.strerror})") from None
    raise MobileNetError(f"{path}: cannot create a temporary {'folder' if folder else 'file'} in {parent}")


def file_sha256(path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (provenance of weights, images, checkpoints)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def open_hdf5(path, error: type[MobileNetError], what: str):
    """An h5py.File open for reading, or `error` with one line: no such file / not a readable HDF5 file."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such {what}" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise error(f"{path}: not a readable HDF5 file ({str(e).splitlines()[0][:120]})") from None
