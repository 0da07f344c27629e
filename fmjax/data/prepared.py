"""Data prepared once and kept between runs on disk: a cache that never costs a run.

What a source computes before training (the digits' train/test split; an
image folder's decoded, resized pixels) is kept in config.data.prepared_dir,
one file per entry, named by a hash of its key: everything the arrays depend
on. A later run with the same key reads the arrays instead of computing them.

Every failure is a miss. A file that is absent, not a regular file (a
symbolic link, a folder, a FIFO), unreadable, cut short, of another format or
key, or whose checksums fail is ignored, and written again. A folder that
cannot be written (no permission, no space left) costs one warning line, once
per store, and the run goes on. Files are written whole to a temporary file
in the folder and renamed over the entry's name: a reader sees the old entry
or the new one, two runs writing one entry both succeed, and a symbolic link
at the name is replaced, never written through.

A file holds MAGIC, the header's length (8 bytes, little-endian) and SHA-256,
the header (JSON: the format, the key, the source's facts, and each array's
dtype, shape, offset and SHA-256), then the arrays' bytes. An array is read,
and checked, only when asked for.
"""

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import stat
import struct
import tempfile
from typing import Any, BinaryIO, Callable, Iterator, Optional

import numpy as np

FORMAT_VERSION = 1
MAGIC = b"FMJAXPRE"
SUFFIX = ".prepared"
_LENGTH = struct.Struct("<Q")
_PREAMBLE_BYTES = len(MAGIC) + _LENGTH.size + hashlib.sha256().digest_size
_DTYPES = ("uint8", "int32", "float32")
_HASH_CHUNK_BYTES = 2**24  # hashed in slices, so a large array needs no second copy


def key_digest(key: dict) -> str:
    """A short, stable name for `key` (a JSON-ready dict): 32 hex digits of its SHA-256."""
    return hashlib.sha256(_canonical(key).encode()).hexdigest()[:32]


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _bytes_of(array: np.ndarray) -> memoryview:
    """The array's bytes in C order, without a copy where it is contiguous already."""
    return memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))


def _sha256(array: np.ndarray) -> str:
    digest = hashlib.sha256()
    flat = _bytes_of(array)
    for start in range(0, len(flat), _HASH_CHUNK_BYTES):
        digest.update(flat[start : start + _HASH_CHUNK_BYTES])
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class ArraySpec:
    """Where one array lies in an entry's file, and what it must be."""

    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int  # from the end of the header
    sha256: str

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize  # Python's ints: a forged shape cannot overflow


@dataclasses.dataclass(frozen=True)
class Entry:
    """An entry whose header read and matched its key; its arrays are read when asked for.

    Attributes:
      path: the entry's file.
      facts: what the source kept beside the arrays (JSON values).
      arrays: each array's ArraySpec, by name.
    """

    path: str
    facts: dict
    arrays: dict[str, ArraySpec]
    _payload_start: int

    def array(self, name: str) -> Optional[np.ndarray]:
        """The array `name`, or None when it is missing, unreadable or fails its checksum."""
        spec = self.arrays.get(name)
        if spec is None:
            return None
        buffer = bytearray(spec.nbytes)
        with _opened_regular_file(self.path) as f:
            try:
                if f is None or not _read_into(f, memoryview(buffer), self._payload_start + spec.offset):
                    return None
            except OSError:
                return None
        array = np.frombuffer(buffer, spec.dtype).reshape(spec.shape)
        return array if _sha256(array) == spec.sha256 else None


class PreparedStore:
    """The folder of prepared entries, and the one warning a run gets when it cannot write there."""

    def __init__(self, folder: str, report: Callable[[str], None]):
        """`folder` may start with ~; `report` prints the warning line."""
        self.folder = os.path.expanduser(folder)
        self._report = report
        self._warned = False

    def path(self, kind: str, key: dict) -> str:
        """The file of the entry of `kind` (letters, digits and '-') with `key`."""
        # The format is in the name too: two fmjax versions never take turns rewriting one file.
        return os.path.join(self.folder, f"{kind}-{key_digest({'format': FORMAT_VERSION, 'key': key})}{SUFFIX}")

    def read(self, kind: str, key: dict) -> Optional[Entry]:
        """The entry of `kind` with `key`, or None when there is no readable, matching one."""
        path = self.path(kind, key)
        with _opened_regular_file(path) as f:
            if f is None:
                return None
            try:
                return _entry_from_header(path, f, key)
            except (OSError, ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError):
                return None  # a header that is not one

    def write(
        self, kind: str, key: dict, facts: dict, arrays: dict[str, np.ndarray], keep_only_this: bool = False
    ) -> None:
        """Keeps `arrays` (of the dtypes in _DTYPES) and `facts` as the entry of `kind` with `key`.

        With keep_only_this, the other entries of `kind` are deleted: a kind
        that names one image folder's split keeps only its newest listing.
        A failure warns once and returns.
        """
        path = self.path(kind, key)
        try:
            # The user's own: decoded images may be private.
            os.makedirs(self.folder, mode=0o700, exist_ok=True)
            _write_whole(path, _encoded(key, facts, arrays))
            if keep_only_this:
                _delete_other_entries(self.folder, kind, os.path.basename(path))
        except OSError as error:
            self._warn_once(error)

    def _warn_once(self, error: OSError) -> None:
        if self._warned:
            return
        self._warned = True
        cause = error.strerror or str(error)
        self._report(
            f"warning: cannot keep prepared data in {self.folder} ({cause}); the run goes on "
            'without it (config.data.prepared_dir="" turns it off)'
        )


def _encoded(key: dict, facts: dict, arrays: dict[str, np.ndarray]) -> Iterator[Any]:
    """The file of an entry, in pieces: the preamble and header, then each array's bytes."""
    specs, offset = {}, 0
    for name, array in arrays.items():
        dtype = np.dtype(array.dtype)
        if dtype.name not in _DTYPES:
            raise ValueError(f"prepared array {name} is {dtype}; keep one of {', '.join(_DTYPES)}")
        specs[name] = {"dtype": dtype.name, "shape": list(array.shape), "offset": offset, "sha256": _sha256(array)}
        offset += array.nbytes
    header = _canonical({"format": FORMAT_VERSION, "key": key, "facts": facts, "arrays": specs}).encode()
    yield MAGIC + _LENGTH.pack(len(header)) + hashlib.sha256(header).digest() + header
    for array in arrays.values():
        yield _bytes_of(array)


def _entry_from_header(path: str, f: BinaryIO, key: dict) -> Optional[Entry]:
    """The entry whose file `f` is open, if its preamble, header and key are right; else None."""
    preamble = f.read(_PREAMBLE_BYTES)
    if len(preamble) != _PREAMBLE_BYTES or not preamble.startswith(MAGIC):
        return None
    (length,) = _LENGTH.unpack_from(preamble, len(MAGIC))
    file_size = os.fstat(f.fileno()).st_size
    if _PREAMBLE_BYTES + length > file_size:
        return None
    header = f.read(length)
    if hashlib.sha256(header).digest() != preamble[len(MAGIC) + _LENGTH.size :]:
        return None
    content = json.loads(header)
    if content["format"] != FORMAT_VERSION or _canonical(content["key"]) != _canonical(key):
        return None
    if not isinstance(content["facts"], dict):
        return None
    payload_start = _PREAMBLE_BYTES + length
    arrays = {name: _array_spec(spec) for name, spec in content["arrays"].items()}
    if any(spec.offset + spec.nbytes > file_size - payload_start for spec in arrays.values()):
        return None
    return Entry(path, content["facts"], arrays, payload_start)


def _array_spec(spec: dict) -> ArraySpec:
    """An ArraySpec from the header's JSON; ValueError when it is not one."""
    dtype, shape, offset, sha256 = spec["dtype"], spec["shape"], spec["offset"], spec["sha256"]
    if dtype not in _DTYPES or not isinstance(shape, list) or not isinstance(sha256, str):
        raise ValueError(f"not an array's description: {spec!r}")
    numbers = [offset, *shape]
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers):
        raise ValueError(f"not an array's description: {spec!r}")
    return ArraySpec(np.dtype(dtype), tuple(shape), offset, sha256)


@contextlib.contextmanager
def _opened_regular_file(path: str) -> Iterator[Optional[BinaryIO]]:
    """`path` open for reading, or None when it is absent, unreadable, a link or not a regular file."""
    try:
        # O_NOFOLLOW: a link at the name is no entry; O_NONBLOCK: a FIFO there cannot block the open.
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        yield None
        return
    with os.fdopen(descriptor, "rb") as f:
        yield f if stat.S_ISREG(os.fstat(descriptor).st_mode) else None


def _read_into(f: BinaryIO, buffer: memoryview, offset: int) -> bool:
    """Fills `buffer` from `f` at `offset`; False when the file ends first."""
    f.seek(offset)
    while buffer:
        count = f.readinto(buffer)
        if not count:
            return False
        buffer = buffer[count:]
    return True


def _write_whole(path: str, pieces: Iterator[Any]) -> None:
    """Writes `pieces` as the whole of `path`: a new temporary file in its folder, renamed over it.

    Not synced: a file torn by a crash fails its checksums and is written again.
    """
    folder, name = os.path.split(path)
    # mkstemp opens with O_CREAT | O_EXCL, which never follows a link.
    descriptor, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(descriptor, "wb") as f:
            for piece in pieces:
                f.write(piece)
            os.fchmod(f.fileno(), 0o600)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _delete_other_entries(folder: str, kind: str, kept: str) -> None:
    prefix = f"{kind}-"
    for entry in os.scandir(folder):
        if entry.name.startswith(prefix) and entry.name.endswith(SUFFIX) and entry.name != kept:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)  # a link is removed itself, never what it points to
