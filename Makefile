# The two commands of README.md: `make quickstart` (set up, then the main job) and
# `make test` (set up, then the test suite). `.ci/run` calls `make test`.
PYTHON ?= python3
STAMP := build/.setup-stamp

.PHONY: setup quickstart test bench
setup: $(STAMP)

# Re-run the set-up whenever the declared dependencies change.
$(STAMP): setup.cfg pyproject.toml .ci/setup
	bash .ci/setup
	@mkdir -p build && touch $(STAMP)

quickstart: setup
	condense datasets
	condense run

test: setup
	$(PYTHON) -m pytest -q -m "not slow" --nbmake tests notebooks

bench: setup
	$(PYTHON) benchmarks/bench_foundation.py
