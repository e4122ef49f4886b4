"""`python -m benchmarks [--json FILE] [--quick] [--only NAME,...]`: see benchmarks/__init__.py."""

import sys

from benchmarks.suite import main

# The trainables live in the figure modules, which Ray pickles by reference (it would pickle what `__main__`
# defines by value); the guard keeps the GPU measurement's spawned processes, which import `__main__`, idle.
if __name__ == "__main__":
    sys.exit(main())
