"""The one exception type for user mistakes: the CLI prints it as one line, no traceback."""


class UserError(Exception):
    """Something the user asked for is wrong; the message says what and how to fix it."""


def error_line(error: BaseException, limit: int = 300) -> str:
    """`Type: first line of the message`, for one-line reasons (a library's errors span many lines)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0][:limit]}" if lines else type(error).__name__
