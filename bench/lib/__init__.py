"""Helpers shared by the bench scripts; none of them is a benchmark (the Makefile runs only the
top-level ``bench/*.py``).

A script imports them as ``lib.<module>``: ``python bench/X.py`` puts ``bench/`` first on
``sys.path``. Importing this package puts the checkout that ``bench/`` belongs to on
``sys.path`` too, right after it, so ``app`` is this checkout's: the venv's editable install of
the project may be another checkout (git worktrees sharing one venv), and a bench would then
measure that checkout's code while its results name this one's revision.
"""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(1, _ROOT)
