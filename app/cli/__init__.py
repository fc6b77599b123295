"""The ``execd`` command (SPEC §11.1): `main` parses and dispatches, `client` talks to the control
API, `control` holds the commands that act on a running daemon, `logs` reads the audit files and
`monitor` draws the dashboard.

It reaches a running daemon only over the control API; it imports the daemon itself only to serve
``execd run``, and the simulator only to serve ``execd sim``. The console script is
``app.cli.main:main``; `main` is not re-exported here, so ``app.cli.main`` stays the module.
"""
