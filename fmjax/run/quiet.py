"""Keeping a failed checkpoint read to one line.

When one read of a damaged step fails, Orbax's event loop closes while
TensorStore still completes the reads in flight; their reports (unraisable
exceptions, thread excepthooks, asyncio's "never retrieved" logs) would print
a screenful that adds nothing to fmjax's one-line message.
"""

import inspect
import logging
import sys

_CAUSE_CHARS = 120  # of a read error, quoted in a one-line message


def one_line(error: Exception) -> str:
    text = " ".join(str(error).split())
    if len(text) > _CAUSE_CHARS:
        text = text[: _CAUSE_CHARS - 3] + "..."
    return f"{type(error).__name__}: {text}"


def quiet_reads_outliving_a_failed_restore() -> None:
    """Installs the hooks that drop those reports, once; call it before the first read that may fail."""
    previous_hook = sys.unraisablehook
    if getattr(previous_hook, "quiets_closed_event_loops", False):
        return

    def hook(unraisable):
        if isinstance(unraisable.exc_value, RuntimeError) and str(
            unraisable.exc_value
        ) == "Event loop is closed":
            return
        # Coroutines of the failed read, collected unfinished ("Exception ignored in coroutine").
        if inspect.iscoroutine(unraisable.object) or inspect.iscoroutine(getattr(unraisable.object, "__self__", None)):
            return
        previous_hook(unraisable)

    hook.quiets_closed_event_loops = True
    sys.unraisablehook = hook
    # TensorStore's threads report the same error through PyErr_Print, that
    # is, sys.excepthook, some of the time.
    previous_excepthook = sys.excepthook

    def excepthook(kind, value, traceback):
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
            return
        previous_excepthook(kind, value, traceback)

    sys.excepthook = excepthook
    # The other reads' futures and tasks, failed too and never awaited, are
    # reported by asyncio's logger when collected ("Future exception was never
    # retrieved", "Task exception was never retrieved").
    logging.getLogger("asyncio").addFilter(_UnretrievedReadErrors())


class _UnretrievedReadErrors(logging.Filter):
    """Drops asyncio's reports of failed futures nobody awaited: the failed restore's other reads."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(
            ("Future exception was never retrieved", "Task exception was never retrieved")
        )
