.PHONY: install test test-all lint bench
install:
	python3 -m pip install -e ".[test]"
test:
	python3 -m pytest -q
test-all:
	python3 -m pytest -q -m "not gpu"
lint:
	ruff check embedsearch tests benchmarks experiments && lint-imports && python3 .ci/check_private_imports.py
# make bench                 lists the benchmarks; make bench NAME=eval ARGS=--quick runs one (python -m benchmarks)
bench:
	python3 -m benchmarks $(NAME) $(ARGS)
