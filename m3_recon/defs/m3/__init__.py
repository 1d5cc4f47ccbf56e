"""Infor M3: the MI REST client, its resource, and the open customer invoices staged in DuckDB."""
