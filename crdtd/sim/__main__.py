"""``python -m crdtd.sim``: see `crdtd.sim.cli`."""

import os
import sys

from crdtd.sim.cli import main

try:
    code = main()
    sys.stdout.flush()
except BrokenPipeError:  # the reader left (``| head``): not an error of ours
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    code = 0
raise SystemExit(code)
