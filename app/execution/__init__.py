"""Signals to orders, exactly once (SPEC §5): executor, protective orders, reconciliation."""
