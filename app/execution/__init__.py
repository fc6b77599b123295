"""Signals to orders, exactly once (SPEC §5): the executor, the exactly-once sender, protective
orders, restart recovery, client ids."""
