"""The one exception type for mistakes a user can make and fix.

The command line prints a UserError as one line and exits with status 2;
anything else is a bug in fmjax and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from a user: the message names the thing and what to do."""
