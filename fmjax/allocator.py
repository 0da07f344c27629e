"""Keeping freed memory for reuse, which a training step on the CPU needs to be fast.

glibc's malloc serves each large buffer (fc1's gradient: 18 MB at 16x16,
100 MB at 32x32) with a fresh mmap and returns it to the system when freed,
so every step pays page faults to zero tens of megabytes again. With mmap
off and the heap never trimmed, the buffers of one step are reused by the
next. The settings are the MALLOC_MMAP_MAX_ and MALLOC_TRIM_THRESHOLD_
environment variables, set from inside the process through mallopt.
"""

import ctypes
import ctypes.util
import functools

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NEVER_TRIM = 2**31 - 1  # bytes; mallopt takes an int


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
