.PHONY: install test test-all lint bench
install:
	python3 -m pip install -e ".[test]"
test:
	python3 -m pytest -q
test-all:
	python3 -m pytest -q -m "not gpu"
lint:
	ruff check embedsearch tests scripts && lint-imports
bench:
	python3 scripts/bench_index.py
