"""Dagster definitions, one folder per source system (assets, resources, schedules together)."""
