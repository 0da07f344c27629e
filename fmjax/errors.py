"""The one exception type for mistakes a user can make and fix.

The command line prints a UserError as one line and exits with status 2, and
a WriteFailure (the disk, not the user's input) as one line with status 4;
anything else is a bug in fmjax and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from a user: the message names the thing and what to do."""


class WriteFailure(Exception):
    """A file of the run could not be written (no space left, no permission); the command line
    prints it as one line and exits with status 4. The message names the cause, the file and
    what is intact."""
