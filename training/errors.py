"""The one exception type for user mistakes."""


class UserError(Exception):
    """A mistake in the user's input (a flag, a data file, a checkpoint): train.py prints
    `error: <message>` as one line on stderr and exits with status 2, no traceback.
    The message says what is wrong and, where it can, what to do instead."""
