"""``python -m app``: the ``execd`` command line."""

from app.cli import main

raise SystemExit(main())
