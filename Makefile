# Chairside — the README's two commands are `sh tools/run demo` and `sh tools/run test`;
# `make demo` / `make test` do the same where make is installed.
PY := .venv/bin/python
.PHONY: setup demo test test-fast lint firmware dashboards bench report-sample clean

setup:
	@bash tools/setup.sh

demo:
	sh tools/run demo

test:
	sh tools/run test

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint: setup
	.venv/bin/ruff check gateway tests dashboards benchmarks tools firmware/host
	.venv/bin/mypy

firmware: setup
	$(PY) tools/build_firmware.py

dashboards: setup
	$(PY) dashboards/build.py

bench: setup
	$(PY) benchmarks/ingest.py
	$(PY) benchmarks/throughput.py --readings 100000

# a sample session record (PDF, PNG, FHIR) from the simulated chain, into build/report-sample/ (docs/nurse.md)
report-sample: setup
	$(PY) tools/report_sample.py

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
