"""Placeholder: replaced by the paytrace mapping (in progress)."""

MAPPING = None
