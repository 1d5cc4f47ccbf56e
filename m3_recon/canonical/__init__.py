"""The canonical settlement model: every processor's money movements in one table, one meaning per column.

Pure functions over tables (SQL for DuckDB, pandas + pandera for validation); the Dagster assets in
``m3_recon.defs.core`` are thin wrappers around them.
"""
