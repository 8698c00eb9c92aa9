"""The one exception type for a user's mistake.

Library code raises UserError with a message that names the file, the field
and the fix; the command line prints that one line and exits with code 2
(docs/design.md §7). Anything else is a failure (exit 1).
"""


class UserError(Exception):
    """Bad input or bad usage: the message says what is wrong and how to fix it."""
