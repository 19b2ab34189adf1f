"""Benchmarks of embedsearch, one module each, run by `python -m benchmarks NAME [--quick] [args…]`.

A benchmark module (benchmarks/<name>.py) opens with a docstring whose first line says what it measures, and has:

- `add_arguments(parser)`: its options (sizes, seeds, …), each with a default that reproduces its reading;
- `QUICK`: option defaults that shrink it to a smoke test for `--quick` (absent where nothing shrinks easily);
- `run(args) -> dict`: measures, in one process, side by side, and returns the result (JSON-able);
- `render(result) -> str` (optional): the Markdown reading of a result, docs/benchmarks/<name>.md with `--doc`.

The runner saves each result as benchmarks/results/<name>/<machine>-<yyyymmdd>.json (`_harness.save`, which
records this machine beside it) and prints the reading. Shared helpers (synthetic data, timers, the machine's
description) are in `benchmarks._harness`. Benchmarks use embedsearch as a user would: its public API or its
modules' public names, never `sys.path` tricks. The package is not installed; run it from the repository root.
"""
