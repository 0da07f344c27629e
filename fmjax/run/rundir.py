"""The files of a run directory, written so that none is ever half-written or followed elsewhere.

Every file fmjax writes into a workdir (config.json, metrics.jsonl,
config_changes.jsonl, eval_<step>.json, figures) is first written whole to a
new temporary file in the same folder, opened with O_EXCL and O_NOFOLLOW, and
then renamed over its name. A rename replaces a symbolic link instead of
writing through it, and a crash leaves either the old file or the new one,
never a part of either.

metrics.jsonl, one JSON record per finished epoch, is read back leniently at
its end only: a last line cut short (by a crash inside a write, from an older
fmjax or another tool) is dropped with a warning, while damage anywhere
before it is an error that names the line and touches nothing.
"""

import contextlib
import errno
import json
import os
import stat
import tempfile
from typing import Callable, Iterator, Optional

from fmjax.errors import UserError, WriteFailure

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
# What --allow_config_change let differ from the checkpoint, one line per resume.
CONFIG_CHANGES_FILE = "config_changes.jsonl"


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
    if os.path.lexists(workdir) and not os.path.isdir(workdir):
        kind = "a broken symbolic link" if os.path.islink(workdir) else "a file"
        raise UserError(f"--workdir {workdir} is {kind}, not a folder; pass a folder (new or a run's)")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as error:
        raise UserError(
            f"cannot create --workdir {workdir} ({error.strerror}); pass a folder you can write to"
        ) from None


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
    with _named_write_errors(path), _new_temporary_file(path) as (descriptor, temporary):
        view = memoryview(data)
        while view:
            view = view[os.write(descriptor, view) :]
        os.fchmod(descriptor, mode)
        os.fsync(descriptor)
        os.replace(temporary, path)


def write_file_with(path: str, write: Callable[[str], None]) -> None:
    """Runs `write(temporary_path)` (a library that writes a file by name), then renames it to `path`.

    Raises:
      WriteError: as write_file_atomically.
    """
    with _named_write_errors(path), _new_temporary_file(path) as (descriptor, temporary):
        os.close(descriptor)
        write(temporary)
        os.replace(temporary, path)


@contextlib.contextmanager
def _named_write_errors(path: str) -> Iterator[None]:
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


def write_text(workdir: str, name: str, text: str) -> str:
    """Writes `text` as workdir/name atomically; returns the path."""
    path = os.path.join(workdir, name)
    write_file_atomically(path, text.encode())
    return path


def write_json(workdir: str, name: str, value, indent: int = 2) -> str:
    """Writes `value` as JSON to workdir/name atomically; returns the path."""
    return write_text(workdir, name, json.dumps(value, indent=indent) + "\n")


def _read_regular_file(path: str) -> Optional[bytes]:
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


def parse_metrics(text: str, path: str, warn: Callable[[str], None]) -> list[dict]:
    """The records of a metrics.jsonl's text, in order.

    A last line that is not a JSON record (a write cut short) is dropped,
    through `warn`; a bad line before it raises a UserError naming it.
    """
    lines = text.splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
                raise ValueError("not an epoch's record")
        except ValueError:
            if number == len(lines):
                warn(
                    f"warning: the last line of {path} is cut short (a write interrupted); "
                    "dropped, its epoch is trained again"
                )
                continue
            raise UserError(
                f"line {number} of {path} is not an epoch's JSON record; fix or delete that line"
            ) from None
        records.append(record)
    return records


def read_metrics(workdir: str, warn: Callable[[str], None] = print) -> list[dict]:
    """The epoch records of workdir/metrics.jsonl ([] if there is none); see parse_metrics."""
    path = os.path.join(workdir, METRICS_FILE)
    data = _read_regular_file(path)
    if data is None:
        return []
    return parse_metrics(data.decode(errors="replace"), path, warn)


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def keep_metrics_through(workdir: str, last_epoch: int, warn: Callable[[str], None] = print) -> None:
    """Rewrites metrics.jsonl without the records of epochs after `last_epoch` (and a cut-short last line).

    A run that stopped before its checkpoint of those epochs was complete
    wrote them; the resumed run writes them again.
    """
    path = os.path.join(workdir, METRICS_FILE)
    data = _read_regular_file(path)
    if data is None:
        return
    records = parse_metrics(data.decode(errors="replace"), path, warn)
    kept = [record for record in records if record["epoch"] <= last_epoch]
    text = _jsonl(kept)
    if text.encode() != data:
        write_text(workdir, METRICS_FILE, text)


def append_metrics(workdir: str, record: dict) -> None:
    """Adds one epoch's record to metrics.jsonl by rewriting it whole (it is small), atomically."""
    records = read_metrics(workdir, warn=lambda line: None)
    write_text(workdir, METRICS_FILE, _jsonl([*records, record]))


def append_config_change(workdir: str, record: dict) -> None:
    """Adds one line to config_changes.jsonl, atomically."""
    path = os.path.join(workdir, CONFIG_CHANGES_FILE)
    data = _read_regular_file(path) or b""
    if data and not data.endswith(b"\n"):
        data += b"\n"
    write_file_atomically(path, data + (json.dumps(record) + "\n").encode())
