# flportal: `make demo` runs a real federated job on this machine; `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint install serve clean bench

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements.txt > $(VENV)/pip.log 2>&1 \
	  || { grep -v "is ignored: it is neither" $(VENV)/pip.log; exit 1; }
	$(PY) -c "import django, torch, celery, channels"  # fail here, not later, if the install broke
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) manage.py demo $(if $(EXIT_WHEN_DONE),--exit-when-done)

test: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

# Benchmarks: ours on the product's .venv, Flower's baselines in bench/.venv (not part of CI).
BENCH_VENV := bench/.venv
$(BENCH_VENV)/.installed: bench/requirements.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q --disable-pip-version-check -r bench/requirements.txt > $(BENCH_VENV)/pip.log 2>&1 \
	  || { grep -v "is ignored: it is neither" $(BENCH_VENV)/pip.log; exit 1; }
	touch $@

bench: $(VENV)/.installed $(BENCH_VENV)/.installed
	$(PY) bench/run_all.py

serve: $(VENV)/.installed
	$(PY) manage.py migrate --noinput && $(PY) manage.py serve

clean:
	rm -rf var
