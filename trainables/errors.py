"""The one exception type for user mistakes: the CLI prints it as one line, no traceback."""


class UserError(Exception):
    """Something the user asked for is wrong; the message says what and how to fix it."""


def error_line(error: BaseException, limit: int = 300) -> str:
    """`Type: first line of the message`, for one-line reasons (a library's errors span many lines)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    first = lines[0] if len(lines[0]) <= limit else lines[0][:limit].rstrip() + "..."
    return f"{type(error).__name__}: {first}"
