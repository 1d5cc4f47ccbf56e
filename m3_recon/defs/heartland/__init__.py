"""Heartland via Global Payments' GP API: settlement transactions, deposits and disputes into DuckDB staging."""
