"""Matching payments to M3 invoices, payout tie-out and the exception register, as Dagster assets."""
