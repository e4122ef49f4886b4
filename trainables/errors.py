"""The one exception type for user mistakes: the CLI prints it as one line, no traceback."""


class UserError(Exception):
    """Something the user asked for is wrong; the message says what and how to fix it."""
