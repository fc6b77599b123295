"""Observability (SPEC §8, §9): what execd tells its operator.

``audit.py`` names every event; ``logging.py`` configures structlog and owns the log files
through the writer thread in ``writer.py``; ``redact.py`` keeps secrets out of every output;
``metrics.py`` holds the Prometheus series and the loop-lag probe; ``alerts.py`` watches error
rates and raises alert events (and the webhook). It never imports the CLI: ``execd monitor``
and ``execd logs`` live in ``app/cli`` and read what this package writes.
"""
