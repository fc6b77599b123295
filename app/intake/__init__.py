"""Intake: every source's signals go through one accept path into the bus (SPEC §4)."""
