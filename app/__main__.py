"""``python -m app``: the ``execd`` command line."""

from app.cli.main import main

raise SystemExit(main())
