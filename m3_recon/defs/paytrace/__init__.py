"""PayTrace: settlement batches and the transactions they settled, into DuckDB staging."""
