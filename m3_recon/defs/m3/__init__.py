"""Infor M3: the MI REST client, its resource, the open customer invoices and the customer master staged in DuckDB."""
