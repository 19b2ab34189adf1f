"""Stage 6 — what people read: the Markdown summary of an eval run, the aggregate and comparison tables, and the
self-contained HTML reports and contact sheets."""
