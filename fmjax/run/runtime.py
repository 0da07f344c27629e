"""Process-wide settings a training run makes for speed: memory reuse and a compilation cache.

Keeping freed memory for reuse. glibc's malloc serves each large buffer (fc1's gradient: 18 MB at 16x16,
100 MB at 32x32) with a fresh mmap and returns it to the system when freed,
so every step pays page faults to zero tens of megabytes again. With mmap
off and the heap never trimmed, the buffers of one step are reused by the
next. The settings are the MALLOC_MMAP_MAX_ and MALLOC_TRIM_THRESHOLD_
environment variables, set from inside the process through mallopt.
"""

import ctypes
import ctypes.util
import functools
import os

import jax

from fmjax.errors import UserError

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NEVER_TRIM = 2**31 - 1  # bytes; mallopt takes an int
# Compilations shorter than this are not worth a file.
_MIN_CACHED_COMPILE_SECONDS = 0.1


@functools.cache
def use_freed_memory_again() -> bool:
    """Sets glibc's malloc to reuse freed memory; True when it did (False off glibc).

    Safe to call more than once; only the first call acts. Memory the
    process freed stays its own until it exits, which for a training
    process is what it would ask for again at the next step anyway.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc: musl, macOS
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))


def use_compilation_cache(directory: str) -> None:
    """Keeps compiled programs in `directory` (JAX's persistent cache), so a second run skips compiling.

    A run of the seed's model at 16x16 spends about 2 s of its start-up
    compiling its train and eval loops; the next run with the same config
    on the same machine reads them back. "" leaves the cache off. The cache
    is keyed by the program, the devices and the compiler's flags, so a
    changed config compiles anew.

    Raises:
      UserError: the folder cannot be created.
    """
    if not directory:
        return
    path = os.path.expanduser(directory)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise UserError(
            f"config.compilation_cache_dir {directory} cannot be created ({error.strerror}); "
            'set it to a writable folder, or to "" to turn the cache off'
        ) from None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", _MIN_CACHED_COMPILE_SECONDS)
