"""The exception types whose message is all a user needs to read.

Library code raises UserError for a user's mistake, with a message that names
the file, the field and the fix: the command line prints that one line and
exits with code 2 (docs/design.md §7). Failure is a failure the message fully
explains (no network, a corrupt download): one line, exit 1. Anything else is
an unexpected failure: one line with its type, exit 1, `--debug` for the
traceback.
"""


class UserError(Exception):
    """Bad input or bad usage: the message says what is wrong and how to fix it."""


class Failure(Exception):
    """Not the input's fault, and the message says what happened and what to do."""
