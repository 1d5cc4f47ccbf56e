"""Stripe: balance transactions, payouts, payout itemisation and customers into DuckDB staging; the events sensor."""
