"""`python -m tuner.bench [--json FILE] [--quick] [--only NAME,...]`: the benchmarks' former entry, kept. They live
in the top-level package benchmarks/ (`python -m benchmarks`, the same flags)."""

import sys

from benchmarks.suite import main

# Nothing is defined here: Ray pickles what `__main__` defines by value, so the trainables stay in benchmarks'
# modules (pickled by reference); the guard keeps the GPU measurement's spawned processes from running main.
if __name__ == "__main__":
    sys.exit(main(prog="python -m tuner.bench"))
