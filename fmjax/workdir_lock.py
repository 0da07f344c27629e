"""One training per workdir: an exclusive lock on WORKDIR/train.lock.

The lock is an fcntl.flock, which the operating system drops when the
process that holds it ends, however it ends: a run killed with SIGKILL never
leaves its workdir locked. The file itself stays and says who held it last.
"""

import contextlib
import fcntl
import os
import socket
from typing import Iterator, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

from fmjax.errors import UserError

LOCK_FILE = "train.lock"


@contextlib.contextmanager
def hold_workdir(workdir: str) -> Iterator[None]:
    """Holds `workdir`'s lock while the block runs.

    In a multi-process run, process 0 takes the lock for all of them (they
    share the workdir) and tells the others whether it got it.

    Raises:
      UserError: another training holds the lock.
    """
    with contextlib.ExitStack() as stack:
        other_holder = stack.enter_context(_try_lock(workdir)) if jax.process_index() == 0 else None
        refused = other_holder is not None
        if jax.process_count() > 1:
            refused = bool(multihost_utils.broadcast_one_to_all(np.int32(refused)))
        if refused:
            raise UserError(
                f"another training ({other_holder or 'seen by process 0'}) is running in {workdir}; "
                "wait for it to finish, or pass another --workdir"
            )
        yield


@contextlib.contextmanager
def _try_lock(workdir: str) -> Iterator[Optional[str]]:
    """Tries the lock once; yields None when taken, else who holds it."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, LOCK_FILE), "a+") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.seek(0)
            yield lock_file.read().strip() or "unknown process"
            return
        lock_file.truncate(0)
        lock_file.write(f"pid {os.getpid()} on {socket.gethostname()}")
        lock_file.flush()
        try:
            yield None
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
