"""`python -m madda_rs ...` runs the command line (and lets torchrun launch it)."""

import sys

from .cli import main

sys.exit(main())
