"""Tensor files written one tensor at a time and read one tensor at a time: HDF5, npz, safetensors, flat binary.

A golden file of DeepLabV3 at 513 x 513 in float64 holds 3 GB of tensors; a writer that collected them
first, or a reader that loaded them all, would need that much memory. Here a writer appends each tensor
to the file as it comes, and a reader opens the file and reads the one tensor asked for, so memory is
bounded by the largest tensor. Every writer works on a temporary file beside the target and renames it
when complete (mobilenet_np.fileio.atomic_output): a failed or interrupted run leaves no half file.

    format        on disk                                                            order of the tensors
    h5            HDF5: root attributes, one dataset /tensors/<name> per tensor        attribute `index`
    npz           zip of <name>.npy members (NumPy), plus __metadata__.npy (a JSON     member order
                  string); np.load reads it
    safetensors   u64 header length, JSON header {name: {dtype, shape, data_offsets},  data_offsets
                  "__metadata__": {str: str}}, then the tensors' bytes back to back
    bin           flat little-endian binary for C without libraries: magic, version,   the index's list
                  JSON index {"metadata", "tensors": [{name, dtype, shape, offset,
                  nbytes}]}, data aligned to 64 bytes (layout in docs/golden_format.md)

safetensors and bin are written by hand (a few lines of struct and JSON, no safetensors package): the
header comes before the data but is known only at the end, so the data is spooled to a second
temporary file and copied behind the header when the writer closes (disk, not memory).

    writer = open_writer(path, "bin", metadata)      # a context manager
    with writer: writer.write(name, array) ...       # each array goes to disk at once
    with open_reader(path) as reader:                # the format is recognised from the first bytes
        reader.metadata, reader.names, reader.shape(name), reader.read(name)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import sys
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import MobileNetError
from ..fileio import atomic_output, open_hdf5, temporary_sibling

FORMATS = ("h5", "npz", "safetensors", "bin")
SUFFIXES = {".h5": "h5", ".hdf5": "h5", ".npz": "npz", ".safetensors": "safetensors", ".bin": "bin"}
COMPRESSIONS = ("gzip", "lzf")          # HDF5 filters h5py always has

TENSORS_GROUP = "tensors"               # HDF5: /tensors/<name>
INDEX_ATTRIBUTE = "index"               # HDF5: a dataset's position in the file's order
NPZ_METADATA = "__metadata__"           # npz: the member holding the metadata (a 0-d str array of JSON)

FLAT_MAGIC = b"MNPFLAT\x00"              # bin: the first 8 bytes
FLAT_VERSION = 1
FLAT_ALIGNMENT = 64                      # bin: every tensor starts at a multiple of 64 bytes
FLAT_PREAMBLE = struct.Struct("<8sIIQ")  # magic, version, alignment, index length in bytes: 24 bytes

# NumPy dtype -> name in safetensors headers; the bin index uses NumPy's names ("float32", ...).
SAFETENSORS_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "int64": "I64", "int32": "I32",
                      "int16": "I16", "int8": "I8", "uint64": "U64", "uint32": "U32", "uint16": "U16",
                      "uint8": "U8", "bool": "BOOL"}
FLAT_DTYPES = tuple(SAFETENSORS_DTYPES)
COPY_BLOCK = 1 << 20                     # bytes copied at a time when the spooled data goes behind the header


class TensorFileError(MobileNetError, ValueError):
    """A tensor file is unreadable, malformed, or a tensor cannot be stored in the chosen format."""


class GoldenError(TensorFileError):
    """A golden file is unreadable or malformed, or two golden files cannot be compared tensor by tensor."""


def format_of(path, default: str = "h5") -> str:
    """The format a file name asks for by its ending (.h5 .hdf5 .npz .safetensors .bin), else `default`."""
    return SUFFIXES.get(Path(path).suffix.lower(), default)


def _little_endian(name: str, array: np.ndarray, path) -> np.ndarray:
    """`array` as C-ordered little-endian bytes of a dtype every format here can store."""
    array = np.asarray(array)
    if array.dtype.name not in SAFETENSORS_DTYPES:
        raise TensorFileError(f"{path}: tensor {name!r} has dtype {array.dtype}, expected one of "
                              f"{', '.join(FLAT_DTYPES)}")
    return np.require(array, dtype=array.dtype.newbyteorder("<"), requirements="C")   # keeps 0-d arrays 0-d


def _check_name(name: str, path) -> None:
    if not isinstance(name, str) or not name or "/" in name or name in (".", "..") or name == NPZ_METADATA:
        raise TensorFileError(f"{path}: tensor name {name!r} cannot be stored (not empty, no '/', "
                              f"not {NPZ_METADATA!r})")


# --------------------------------------------------------------------------------------------------
# writers: write(name, array) puts the array on disk at once; leaving the `with` block finishes the file
# --------------------------------------------------------------------------------------------------

class TensorWriter:
    """Base of the writers: the atomic temporary file, the names written, finishing or cleaning up."""

    def __init__(self, path, metadata: dict[str, Any], overwrite: bool = False) -> None:
        self.path = Path(path)
        self.metadata = dict(metadata)
        self.names: list[str] = []
        self._atomic = atomic_output(self.path, overwrite=overwrite)
        self.tmp = self._atomic.__enter__()          # the temporary file beside `path`
        try:
            self._open()
        except BaseException:
            self._atomic.__exit__(*sys.exc_info())
            raise

    def write(self, name: str, array) -> None:
        """Append one tensor (names must be unique)."""
        _check_name(name, self.path)
        if name in self.names:
            raise TensorFileError(f"{self.path}: tensor {name!r} written twice (names must be unique)")
        self._write(name, _little_endian(name, array, self.path))
        self.names.append(name)

    def __enter__(self) -> "TensorWriter":
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        try:
            if kind is None:
                if not self.names:
                    raise TensorFileError(f"{self.path}: no tensors to write")
                self._finish()
            else:
                self._abort()
        except BaseException:
            self._abort()
            self._atomic.__exit__(*sys.exc_info())
            raise
        self._atomic.__exit__(kind, error, traceback)   # rename on success, remove the temporary otherwise
        return False

    # the format's part
    def _open(self) -> None: ...
    def _write(self, name: str, array: np.ndarray) -> None: ...
    def _finish(self) -> None: ...
    def _abort(self) -> None: ...


class H5Writer(TensorWriter):
    """HDF5: root attributes (dicts and lists as JSON strings), /tensors/<name> datasets with `index`."""

    def __init__(self, path, metadata, overwrite=False, compression: str | None = None) -> None:
        if compression not in (None, *COMPRESSIONS):
            raise TensorFileError(f"{path}: compression {compression!r}, expected one of {', '.join(COMPRESSIONS)}")
        self.compression = compression
        super().__init__(path, metadata, overwrite)

    def _open(self) -> None:
        import h5py
        self.file = h5py.File(self.tmp, "w")
        for key, value in self.metadata.items():
            self.file.attrs[key] = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value
        # track_order: h5py and H5Literate(H5_INDEX_CRT_ORDER) list the datasets in the order written;
        # the `index` attribute says the same for readers that cannot ask for creation order.
        self.group = self.file.create_group(TENSORS_GROUP, track_order=True)

    def _write(self, name, array) -> None:
        compress = self.compression if array.ndim else None     # HDF5 cannot compress a scalar
        dataset = self.group.create_dataset(name, data=array, compression=compress)
        dataset.attrs[INDEX_ATTRIBUTE] = np.int64(len(self.names))

    def _finish(self) -> None:
        self.file.close()

    def _abort(self) -> None:
        with contextlib.suppress(Exception):
            self.file.close()


class NpzWriter(TensorWriter):
    """npz: one stored (uncompressed) zip member <name>.npy per tensor, then __metadata__.npy."""

    def _open(self) -> None:
        self.zip = zipfile.ZipFile(self.tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True)

    def _write(self, name, array) -> None:
        with self.zip.open(name + ".npy", "w", force_zip64=True) as member:
            np.lib.format.write_array(member, array, allow_pickle=False)

    def _finish(self) -> None:
        with self.zip.open(NPZ_METADATA + ".npy", "w") as member:
            np.lib.format.write_array(member, np.array(json.dumps(self.metadata)), allow_pickle=False)
        self.zip.close()

    def _abort(self) -> None:
        with contextlib.suppress(Exception):
            self.zip.close()


class SpooledWriter(TensorWriter):
    """safetensors and bin: the data goes to a spool file at once; header + data are joined at the end."""

    alignment = 1

    def _open(self) -> None:
        self.spool_path = temporary_sibling(self.path, suffix=".spool.tmp")
        self.spool = open(self.spool_path, "wb")
        self.entries: list[dict[str, Any]] = []

    def _write(self, name, array) -> None:
        offset = -self.spool.tell() % self.alignment + self.spool.tell()
        self.spool.write(b"\0" * (offset - self.spool.tell()))
        self.spool.write(memoryview(array.reshape(-1)).cast("B") if array.size else b"")
        self.entries.append({"name": name, "dtype": array.dtype.name, "shape": list(array.shape),
                             "offset": offset, "nbytes": int(array.nbytes)})

    def _finish(self) -> None:
        self.spool.close()
        with open(self.tmp, "wb") as out, open(self.spool_path, "rb") as data:
            out.write(self.header())
            shutil.copyfileobj(data, out, COPY_BLOCK)
        self.spool_path.unlink()

    def _abort(self) -> None:
        with contextlib.suppress(Exception):
            self.spool.close()
        with contextlib.suppress(FileNotFoundError):
            self.spool_path.unlink()

    def header(self) -> bytes: ...


class SafetensorsWriter(SpooledWriter):
    """safetensors: 8-byte little-endian header length N, N bytes of JSON (padded with spaces to a multiple
    of 8), then the tensors back to back; metadata values are strings (others are stored as JSON)."""

    def header(self) -> bytes:
        header: dict[str, Any] = {"__metadata__": {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True)
                                                   for k, v in self.metadata.items()}}
        for e in self.entries:
            header[e["name"]] = {"dtype": SAFETENSORS_DTYPES[e["dtype"]], "shape": e["shape"],
                                 "data_offsets": [e["offset"], e["offset"] + e["nbytes"]]}
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        return struct.pack("<Q", len(text)) + text


class FlatWriter(SpooledWriter):
    """bin: preamble (magic, version, alignment, index length), JSON index, zero padding to a multiple of 64,
    then each tensor at a multiple of 64 bytes from the data start."""

    alignment = FLAT_ALIGNMENT

    def header(self) -> bytes:
        index = json.dumps({"metadata": self.metadata, "tensors": self.entries}, separators=(",", ":")).encode()
        preamble = FLAT_PREAMBLE.pack(FLAT_MAGIC, FLAT_VERSION, FLAT_ALIGNMENT, len(index))
        head = preamble + index
        return head + b"\0" * (-len(head) % FLAT_ALIGNMENT)


WRITERS = {"h5": H5Writer, "npz": NpzWriter, "safetensors": SafetensorsWriter, "bin": FlatWriter}


def open_writer(path, file_format: str, metadata: dict[str, Any], overwrite: bool = False,
                compression: str | None = None) -> TensorWriter:
    """A writer of `file_format` (h5, npz, safetensors, bin) for `path`; use it as a context manager."""
    if file_format not in WRITERS:
        raise TensorFileError(f"{path}: format {file_format!r}, expected one of {', '.join(FORMATS)}")
    if compression is not None and file_format != "h5":
        raise TensorFileError(f"{path}: compression {compression!r} is for the h5 format only (got {file_format})")
    if file_format == "h5":
        return H5Writer(path, metadata, overwrite, compression)
    return WRITERS[file_format](path, metadata, overwrite)


# --------------------------------------------------------------------------------------------------
# readers: the metadata and the names at once, each tensor when asked
# --------------------------------------------------------------------------------------------------

class TensorReader:
    """An open tensor file: `metadata` (dict), `names` (in the file's order), `shape(name)`, `read(name)`."""

    file_format = ""

    def __init__(self, path, check: Callable[[dict], Any] | None = None) -> None:
        self.path = Path(path)
        self.metadata: dict[str, Any] = {}
        self.names: list[str] = []
        self.check = check or (lambda metadata: None)    # called on the metadata before the tensors are listed

    def shape(self, name: str) -> tuple[int, ...]: ...
    def read(self, name: str) -> np.ndarray: ...
    def close(self) -> None: ...

    def __enter__(self) -> "TensorReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _damaged(path, error: Exception) -> TensorFileError:
    text = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
    return TensorFileError(f"{path}: damaged file ({text})")


class H5Reader(TensorReader):
    """HDF5 with /tensors/<name> datasets ordered by their `index` attribute."""

    file_format = "h5"

    def __init__(self, path, check=None) -> None:
        import h5py
        super().__init__(path, check)
        self.file = open_hdf5(path, TensorFileError, "file")
        try:
            self.metadata = {key: _decode(value) for key, value in self.file.attrs.items()}
            self.check(self.metadata)
            group = self.file.get(TENSORS_GROUP)
            self.group = group if isinstance(group, h5py.Group) else None
            indexed = [] if self.group is None else [self._index(name, item) for name, item in self.group.items()]
        except (TensorFileError, GoldenError):
            self.close()
            raise
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:   # truncated or damaged HDF5
            self.close()
            raise _damaged(path, e) from None
        indices = sorted(index for index, _ in indexed)
        if indices != list(range(len(indexed))):
            self.close()
            raise TensorFileError(f"{path}: the '{INDEX_ATTRIBUTE}' attributes of /{TENSORS_GROUP}/* must be 0 .. "
                                  f"{len(indexed) - 1}, each once; got {listing(indices)}")
        self.names = [name for _, name in sorted(indexed)]

    def _index(self, name, item) -> tuple[int, str]:
        import h5py
        where = f"{self.path}: /{TENSORS_GROUP}/{name}"
        if not isinstance(item, h5py.Dataset):
            raise TensorFileError(f"{where} is not a dataset")
        index = _decode(item.attrs.get(INDEX_ATTRIBUTE))
        if not isinstance(index, int):
            raise TensorFileError(f"{where} has no integer attribute '{INDEX_ATTRIBUTE}' (its position in network order)")
        return index, name

    def shape(self, name):
        return tuple(self.group[name].shape)

    def read(self, name):
        try:
            return np.asarray(self.group[name][()])
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:
            raise _damaged(self.path, e) from None

    def close(self):
        with contextlib.suppress(Exception):
            self.file.close()


class NpzReader(TensorReader):
    """npz: the .npy members in member order; __metadata__.npy, when present, is the metadata."""

    file_format = "npz"

    def __init__(self, path, check=None) -> None:
        super().__init__(path, check)
        try:
            self.zip = zipfile.ZipFile(path)
            members = [m for m in self.zip.namelist() if m.endswith(".npy")]
            if NPZ_METADATA + ".npy" in members:
                self.metadata = json.loads(str(self._array(NPZ_METADATA + ".npy")[()]))
        except (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError) as e:
            raise _damaged(path, e) from None
        try:
            self.check(self.metadata)
        except BaseException:
            self.close()
            raise
        self.names = [m[:-4] for m in members if m != NPZ_METADATA + ".npy"]

    def _array(self, member: str) -> np.ndarray:
        with self.zip.open(member) as f:
            return np.lib.format.read_array(f, allow_pickle=False)

    def shape(self, name):
        with self.zip.open(name + ".npy") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, _, _ = read_header(f)
        return tuple(shape)

    def read(self, name):
        try:
            return self._array(name + ".npy")
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            raise _damaged(self.path, e) from None

    def close(self):
        self.zip.close()


class OffsetReader(TensorReader):
    """safetensors and bin: an index of (dtype, shape, byte offset) per tensor; each read is one seek."""

    def __init__(self, path, check=None) -> None:
        super().__init__(path, check)
        self.file = open(path, "rb")
        self.entries: dict[str, dict[str, Any]] = {}
        self.size = os.fstat(self.file.fileno()).st_size

    def _add(self, name: str, dtype: str, shape, start: int, nbytes: int) -> None:
        where = f"{self.path}: tensor {name!r}"
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise TensorFileError(f"{where} has shape {shape!r}, expected a list of sizes")
        expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if nbytes != expected or start < 0 or start + nbytes > self.size:
            raise TensorFileError(f"{where}: {nbytes} bytes at {start} do not hold {dtype} {shape} inside the "
                                  f"{self.size}-byte file")
        self.entries[name] = {"dtype": np.dtype(dtype).newbyteorder("<"), "shape": tuple(shape), "start": start}
        self.names.append(name)

    def shape(self, name):
        return self.entries[name]["shape"]

    def read(self, name):
        entry = self.entries[name]
        self.file.seek(entry["start"])
        count = int(np.prod(entry["shape"], dtype=np.int64))
        array = np.fromfile(self.file, dtype=entry["dtype"], count=count)
        if array.size != count:
            raise TensorFileError(f"{self.path}: tensor {name!r} is cut short")
        return array.reshape(entry["shape"])

    def close(self):
        self.file.close()

    def _json(self, raw: bytes, what: str):
        try:
            value = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise TensorFileError(f"{self.path}: the {what} is not valid JSON ({e})") from None
        if not isinstance(value, dict):
            raise TensorFileError(f"{self.path}: the {what} is not a JSON object")
        return value


class SafetensorsReader(OffsetReader):
    file_format = "safetensors"

    def __init__(self, path, check=None) -> None:
        super().__init__(path, check)
        try:
            (length,) = struct.unpack("<Q", self.file.read(8))
            if length > self.size - 8:
                raise TensorFileError(f"{path}: header of {length} bytes does not fit in the {self.size}-byte file")
            header = self._json(self.file.read(length), "safetensors header")
            self.metadata = dict(header.pop("__metadata__", None) or {})
            self.check(self.metadata)
            by_dtype = {code: name for name, code in SAFETENSORS_DTYPES.items()}
            order = sorted(header.items(), key=lambda item: tuple(item[1].get("data_offsets", (0, 0))))
            for name, info in order:
                begin, end = info["data_offsets"]
                if info["dtype"] not in by_dtype:
                    raise TensorFileError(f"{path}: tensor {name!r} has dtype {info['dtype']}, which NumPy cannot "
                                          f"read as it is (expected one of {', '.join(by_dtype)})")
                self._add(name, by_dtype[info["dtype"]], info["shape"], 8 + length + begin, end - begin)
        except (TensorFileError, GoldenError):
            self.close()
            raise
        except (struct.error, KeyError, TypeError, ValueError, AttributeError) as e:
            self.close()
            raise _damaged(path, e) from None


class FlatReader(OffsetReader):
    file_format = "bin"

    def __init__(self, path, check=None) -> None:
        super().__init__(path, check)
        try:
            magic, version, alignment, length = FLAT_PREAMBLE.unpack(self.file.read(FLAT_PREAMBLE.size))
            if version != FLAT_VERSION:
                raise TensorFileError(f"{path}: flat binary version {version} is not supported (this mobilenet_np "
                                      f"reads version {FLAT_VERSION})")
            index = self._json(self.file.read(length), "index")
            self.metadata = dict(index.get("metadata") or {})
            self.check(self.metadata)
            data_start = -(FLAT_PREAMBLE.size + length) // alignment * -alignment
            for entry in index["tensors"]:
                if entry["dtype"] not in FLAT_DTYPES:
                    raise TensorFileError(f"{path}: tensor {entry['name']!r} has dtype {entry['dtype']!r}, "
                                          f"expected one of {', '.join(FLAT_DTYPES)}")
                self._add(entry["name"], entry["dtype"], entry["shape"], data_start + entry["offset"],
                          entry["nbytes"])
        except (TensorFileError, GoldenError):
            self.close()
            raise
        except (struct.error, KeyError, TypeError, ValueError, ZeroDivisionError) as e:
            self.close()
            raise _damaged(path, e) from None


def sniff(path) -> str:
    """The format of an existing file from its first bytes: h5, npz, bin or safetensors."""
    path = Path(path)
    if not path.is_file():
        raise TensorFileError(f"{path}: no such file" + (" (it is a folder)" if path.is_dir() else ""))
    with open(path, "rb") as f:
        start = f.read(9)
    if start.startswith(b"\x89HDF\r\n\x1a\n"):
        return "h5"
    if start.startswith(b"PK"):
        return "npz"
    if start.startswith(FLAT_MAGIC):
        return "bin"
    if len(start) == 9 and start[8:9] == b"{":
        return "safetensors"
    raise TensorFileError(f"{path}: not a tensor file this reader knows (expected HDF5, npz, safetensors or the "
                          "flat binary)")


READERS = {"h5": H5Reader, "npz": NpzReader, "safetensors": SafetensorsReader, "bin": FlatReader}


def open_reader(path, check: Callable[[dict], Any] | None = None) -> TensorReader:
    """An open reader of the tensor file at `path`, whatever its format (recognised from its first bytes;
    a file that is none of them is read as its name's ending says, so that the error names what is wrong).
    `check(metadata)` runs before the tensors are listed: a file of the wrong kind fails on what it is."""
    try:
        file_format = sniff(path)
    except TensorFileError:
        if Path(path).suffix.lower() not in SUFFIXES or not Path(path).is_file():
            raise
        file_format = format_of(path)
    return READERS[file_format](path, check)


def _decode(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def listing(items: list, limit: int = 6) -> str:
    """'a, b, c, ... (9 in all)': the first `limit` items of a list for a message."""
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")
