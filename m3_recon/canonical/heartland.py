"""Placeholder: replaced by the heartland mapping (in progress)."""

MAPPING = None
