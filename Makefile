# The two commands of the README:
#   make book   set-up, then the main job: run every notebook (profile cpu) and build the book
#   make test   the whole test suite (unit tests, benchmarks' smoke checks, nbval on every notebook)
PYTHON ?= python3
PROFILE ?= cpu

.PHONY: setup book test lint clean

setup:
	bash .ci/setup

book: setup
	$(PYTHON) -m repairlib book --profile $(PROFILE)

test:
	$(PYTHON) -m pytest -q -n 2 --durations=15 tests

lint:
	$(PYTHON) -m ruff check repairlib tests benchmarks notebooks

clean:
	rm -rf _build
