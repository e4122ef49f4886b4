"""What every command shares: a user's mistake (UserError) is one `error:` line and exit 2, nothing more.

    @command
    def main(argv=None) -> int: ...

Everything else keeps its traceback: a bug should be seen, a mistake should be explained.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable

from rich.console import Console

from trainables.errors import UserError

EXIT_OK = 0
EXIT_FAILED = 1  # the command ran, and what it was for did not happen (e.g. no trial finished)
EXIT_USER_ERROR = 2  # as argparse exits on a malformed flag


def console() -> Console:
    """The terminal every command prints to: no syntax highlighting of numbers and paths in our lines."""
    return Console(highlight=False)


def print_error(message: str, out: Console | None = None) -> None:
    (out or console()).print(f"[bold red]error:[/bold red] {message}", soft_wrap=True, markup=True)


def command(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a command's main(): UserError -> one `error:` line on stdout and EXIT_USER_ERROR."""

    @functools.wraps(main)
    def run(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except UserError as exc:
            print_error(_escape(str(exc)))
            return EXIT_USER_ERROR

    return run


def _escape(text: str) -> str:
    """A message as literal text for rich (a user's path may hold [brackets])."""
    from rich.markup import escape

    return escape(text)


def exit_with(main: Callable[[], int]) -> None:
    """`if __name__ == "__main__": exit_with(main)`."""
    sys.exit(main())
