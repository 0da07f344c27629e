"""One training per workdir: an exclusive lock on WORKDIR/train.lock.

The lock is an fcntl.flock, which the operating system drops when the
process that holds it ends, however it ends: a run killed with SIGKILL never
leaves its workdir locked. The file itself stays and says who held it last.

The lock file is opened without following a symbolic link (O_NOFOLLOW) and
must be a regular file with one name: a link or hard link planted there
would otherwise have fmjax overwrite the file it points to.

The checkpoint folder is locked as well (a flock on the folder itself): a
link may make it another workdir's, and this run's checkpoint manager would
delete the other run's save in flight and prune its steps. That lock holds
among the processes of one machine; a network file system may not lock a
folder, and then only the workdir's lock file stands.
"""

import contextlib
import errno
import fcntl
import os
import socket
import stat
from typing import Iterator, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

from fmjax.errors import UserError
from fmjax.run import files, rundir


@contextlib.contextmanager
def hold_workdir(workdir: str) -> Iterator[None]:
    """Holds `workdir`'s lock, and its checkpoint folder's, while the block runs.

    In a multi-process run, process 0 takes the locks for all of them (they
    share the workdir) and tells the others whether it got each. The
    checkpoint folder, which its lock creates, appears only once every process
    has passed the first of those calls: a process still reading the workdir
    for a checkpoint would otherwise meet a folder the others did not.

    Raises:
      UserError: another training holds either lock.
    """
    seen_by_process_0 = {
        _try_lock: _workdir_busy(workdir, " (seen by process 0)"),
        _try_lock_checkpoint_folder: _checkpoints_busy(
            os.path.join(workdir, rundir.CHECKPOINT_SUBDIR), " (seen by process 0)"
        ),
    }
    with contextlib.ExitStack() as stack:
        for try_lock, refusal_elsewhere in seen_by_process_0.items():
            refusal = stack.enter_context(try_lock(workdir)) if jax.process_index() == 0 else None
            refused = refusal is not None
            if jax.process_count() > 1:
                refused = bool(multihost_utils.broadcast_one_to_all(np.int32(refused)))
            if refused:
                raise UserError(refusal or refusal_elsewhere)
        yield


def _open_lock_file(path: str) -> int:
    """A descriptor of the lock file at `path`, created if absent, never through a link."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        descriptor = os.open(path, flags, 0o644)
    except OSError as error:
        if error.errno == errno.ELOOP:
            files.refuse_link(path)
        raise UserError(f"cannot open {path} ({error.strerror}); fix the workdir's permissions") from None
    info = os.fstat(descriptor)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(descriptor)
        what = "has another name (a hard link)" if stat.S_ISREG(info.st_mode) else "is not a regular file"
        raise UserError(f"{path} {what}; remove it, fmjax creates its own")
    return descriptor


@contextlib.contextmanager
def _try_lock(workdir: str) -> Iterator[Optional[str]]:
    """Tries the workdir's lock once; yields None when taken, else why the run is refused."""
    files.prepare_workdir(workdir)
    descriptor = _open_lock_file(os.path.join(workdir, rundir.LOCK_FILE))
    with os.fdopen(descriptor, "r+") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.seek(0)
            yield _workdir_busy(workdir, f" ({lock_file.read().strip() or 'unknown process'})")
            return
        lock_file.truncate(0)
        lock_file.write(f"pid {os.getpid()} on {socket.gethostname()}")
        lock_file.flush()
        try:
            yield None
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


@contextlib.contextmanager
def _try_lock_checkpoint_folder(workdir: str) -> Iterator[Optional[str]]:
    """Tries a flock on WORKDIR/checkpoints, created if absent; yields None unless another run holds it.

    Where the folder cannot be opened or locked (a file there, no permission, a
    file system without flock), nothing is locked: the checkpoint manager names
    the first two in one line, and the workdir's lock still holds.
    """
    path = os.path.join(workdir, rundir.CHECKPOINT_SUBDIR)
    descriptor, held_elsewhere = None, False
    try:
        if not os.path.lexists(path):
            os.mkdir(path)
        descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        held_elsewhere = isinstance(error, BlockingIOError)
        if descriptor is not None:
            os.close(descriptor)
            descriptor = None
    if held_elsewhere:
        real = os.path.realpath(path)
        yield _checkpoints_busy(path if real == os.path.abspath(path) else f"{path} (linked to {real})")
        return
    try:
        yield None
    finally:
        if descriptor is not None:
            os.close(descriptor)  # and with it the lock


def _workdir_busy(workdir: str, holder: str) -> str:
    return f"another training{holder} is running in {workdir}; wait for it to finish, or pass another --workdir"


def _checkpoints_busy(where: str, holder: str = "") -> str:
    return (
        f"another training{holder} is writing checkpoints in {where}; "
        "wait for it to finish, or give this run a checkpoint folder of its own"
    )
