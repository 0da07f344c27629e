"""Files written so that none is ever half-written or followed elsewhere.

Every file fmjax writes into a workdir is first written whole to a new
temporary file in the same folder, opened with O_EXCL and O_NOFOLLOW, and then
renamed over its name. A rename replaces a symbolic link instead of writing
through it, and a crash leaves either the old file or the new one, never a
part of either.
"""

import contextlib
import errno
import os
import stat
import tempfile
from typing import Callable, Iterator, Optional

from fmjax.errors import UserError, WriteFailure


class WriteError(WriteFailure):
    """A file of the run could not be written (no space left, no permission); nothing was half-written.

    Attributes:
      path: the file.
      cause: e.g. "no space left on the device".
    """

    def __init__(self, path: str, cause: str):
        super().__init__(f"cannot write {path}: {cause}")
        self.path = path
        self.cause = cause


# errno -> the cause as a user reads it, and what to do.
_WRITE_CAUSES = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "the file system is read-only",
    errno.EIO: "an input/output error",
}


def describe_write_failure(error: BaseException) -> Optional[str]:
    """The cause of a failed write, e.g. "no space left on the device", or None if `error` is no such failure.

    Looks through the exception's chain, and at the message of errors that
    wrap an OS error as text (TensorStore's, in Orbax).
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _WRITE_CAUSES:
            return _WRITE_CAUSES[error.errno]
        text = str(error)
        for code, cause in _WRITE_CAUSES.items():
            if os.strerror(code) in text or f"os_error_code='{code}'" in text:
                return cause
        error = error.__cause__ or error.__context__
    return None


def prepare_workdir(workdir: str) -> None:
    """Creates `workdir` (and its parents) if needed.

    Raises:
      UserError: it names an existing file, or cannot be created.
    """
    kind = not_a_folder(workdir)
    if kind:
        raise UserError(f"--workdir {workdir} is {kind}, not a folder; pass a folder (new or a run's)")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as error:
        raise UserError(
            f"cannot create --workdir {workdir} ({error.strerror}); pass a folder you can write to"
        ) from None


def not_a_folder(path: str) -> Optional[str]:
    """What lies at `path` instead of a folder ("a file", "a broken symbolic link"); None: a folder or nothing."""
    if not os.path.lexists(path) or os.path.isdir(path):
        return None
    return "a broken symbolic link" if os.path.islink(path) else "a file"


def refuse_link(path: str) -> None:
    """Raises a UserError when `path` is a symbolic link: fmjax never writes through one."""
    if os.path.islink(path):
        raise UserError(
            f"{path} is a symbolic link (to {os.readlink(path)}); fmjax does not write through "
            "links in a run directory: remove the link"
        )


@contextlib.contextmanager
def _new_temporary_file(path: str) -> Iterator[tuple[int, str]]:
    """A new file beside `path`, (descriptor, name); removed unless renamed away."""
    folder, name = os.path.split(os.path.abspath(path))
    # mkstemp opens with O_CREAT | O_EXCL, which never follows a link.
    # The extension stays last: libraries pick a format by it.
    suffix = f".tmp{os.path.splitext(name)[1]}"
    descriptor, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=suffix, dir=folder)
    try:
        yield descriptor, temporary
    finally:
        with contextlib.suppress(OSError):
            os.close(descriptor)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def _not_a_file(path: str) -> UserError:
    return UserError(f"{path} is a folder (or under a file); move it away, fmjax writes a file there")


def write_file_atomically(path: str, data: bytes, mode: int = 0o644) -> None:
    """Writes `data` as the whole of `path`: a temporary file in its folder, synced, then renamed.

    A symbolic link at `path` is replaced, never followed.

    Raises:
      WriteError: the folder is full or not writable; `path` is as it was.
    """
    with named_write_errors(path), _new_temporary_file(path) as (descriptor, temporary):
        write_all(descriptor, data)
        os.fchmod(descriptor, mode)
        os.fsync(descriptor)
        os.replace(temporary, path)


def write_all(descriptor: int, data: bytes) -> None:
    """Writes all of `data` to the open file `descriptor`; os.write may take only part of it."""
    view = memoryview(data)
    while view:
        view = view[os.write(descriptor, view) :]


def write_file_with(path: str, write: Callable[[str], None]) -> None:
    """Runs `write(temporary_path)` (a library that writes a file by name), then renames it to `path`.

    Raises:
      WriteError: as write_file_atomically.
    """
    with named_write_errors(path), _new_temporary_file(path) as (descriptor, temporary):
        os.close(descriptor)
        write(temporary)
        os.replace(temporary, path)


@contextlib.contextmanager
def named_write_errors(path: str) -> Iterator[None]:
    """Turns a failed write of `path` into the one-line error that names it and its cause."""
    try:
        yield
    except (IsADirectoryError, NotADirectoryError):
        raise _not_a_file(path) from None
    except OSError as error:
        cause = describe_write_failure(error)
        if cause is None:
            raise
        raise WriteError(path, cause) from error


def read_regular_file(path: str) -> Optional[bytes]:
    """The bytes of `path`; None when absent. A link or a non-regular file is refused."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as error:
        if error.errno == errno.ELOOP:
            refuse_link(path)
        raise UserError(f"cannot read {path} ({error.strerror}); fix its permissions") from None
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise UserError(f"{path} is not a regular file; move it away (fmjax writes a file there)")
    with os.fdopen(descriptor, "rb") as f:
        return f.read()
