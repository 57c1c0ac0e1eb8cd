"""`python -m madda_rs ...` runs the command line (and lets torchrun launch it)."""

import sys

from .cli import command

if __name__ == "__main__":  # a loader worker started from a fork server imports this module too
    sys.exit(command())
