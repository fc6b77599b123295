"""Observability: the audit event catalog, structured logging with redaction, later metrics.

``audit.py`` names every event; ``logging.py`` configures structlog and owns the log files
through the writer thread in ``writer.py``; ``redact.py`` keeps secrets out of every output.
"""
