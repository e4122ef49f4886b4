"""What every command shares: a user's mistake (UserError) is one `error:` line and exit 2, nothing more.

    @command
    def main(argv=None) -> int: ...

Everything else keeps its traceback: a bug should be seen, a mistake should be explained.
"""

from __future__ import annotations

import errno
import functools
import sys
from typing import Callable

from rich.console import Console

from trainables.errors import UserError

EXIT_OK = 0
EXIT_FAILED = 1  # the command ran, and what it was for did not happen (e.g. no trial finished)
EXIT_USER_ERROR = 2  # as argparse exits on a malformed flag


_RESUME = {"command": ""}  # how to continue the sweep at hand, once there is one (set by tuner.sweep)


def note_resume_command(command: str) -> None:
    _RESUME["command"] = command


def resume_command() -> str:
    return _RESUME["command"]


class Interrupted(BaseException):
    """A stop signal (Ctrl-C, SIGTERM) ended the command: exit 128 + its number, as shells report it.
    A BaseException, so no `except Exception` on the way swallows it."""

    def __init__(self, signum: int, reported: bool = False) -> None:
        import signal

        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.reported = reported  # the one line saying what happened was printed already

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def console() -> Console:
    """The terminal every command prints to: no syntax highlighting of numbers and paths in our lines."""
    return Console(highlight=False)


def print_error(message: str, out: Console | None = None) -> None:
    (out or console()).print(f"[bold red]error:[/bold red] {message}", soft_wrap=True, markup=True)


def command(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a command's main(): UserError -> one `error:` line on stdout and EXIT_USER_ERROR; a stop signal ->
    its exit code (128 + the signal's number); Ctrl-C outside a sweep -> one line, 130, no traceback."""

    @functools.wraps(main)
    def run(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except UserError as exc:
            print_error(_escape(str(exc)))
            return EXIT_USER_ERROR
        except Interrupted as exc:
            if not exc.reported:
                console().print(f"interrupted by {exc}")
            return exc.exit_code
        except KeyboardInterrupt:
            console().print("interrupted by SIGINT")
            return 130
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            where = f" ({exc.filename})" if exc.filename else ""
            then = f"; then continue with: {resume_command()}" if resume_command() else ""
            print_error(_escape(f"the disk is full{where}: free some space{then}"))
            return EXIT_FAILED

    return run


def _escape(text: str) -> str:
    """A message as literal text for rich (a user's path may hold [brackets])."""
    from rich.markup import escape

    return escape(text)


def exit_with(main: Callable[[], int]) -> None:
    """`if __name__ == "__main__": exit_with(main)`."""
    sys.exit(main())
