"""The control plane (SPEC §11.2): ``http_api.py`` serves signals in, status, account
operations and metrics out. Unlike intake it may use the exchange's typed models."""
