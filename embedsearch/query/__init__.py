"""Stage 4 — nearest-neighbour queries on an opened index: search by image, id, text or vector with `--where`
filters, and the approximate-index choice and tuning (`--index auto`)."""
