"""User-facing errors: the CLI prints their message (no traceback) and exits with status 2.

Raise `ViewFusionError` for bad input (a file, key or sample that is wrong); the message names
the file/key/sample and says what to do. Bugs stay ordinary exceptions with tracebacks.
"""


class ViewFusionError(Exception):
    """A problem with the user's input or environment, explained in the message."""
