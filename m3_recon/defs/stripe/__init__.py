"""Stripe: balance transactions, payouts and payout itemisation into DuckDB staging."""
