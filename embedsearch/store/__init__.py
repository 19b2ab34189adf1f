"""Stage 3 — what an index is on disk: Parquet parts (the source of truth), the FAISS file, the DuckDB catalog and the
manifest that ties them together (layout, writer lock, consistency checks)."""
