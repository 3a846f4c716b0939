# Two commands for a newcomer: `make run` (a local cluster) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: run run-proxies test check install bench bench-proxies clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# A regular (not editable) install: twistd finds twisted/plugins/ only then.
install: $(PY)
	$(PIP) install -q ".[test]"
	cd / && $(abspath $(PY)) -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"

run: install
	$(PY) examples/local_cluster.py --var var --http 7080 --s3 7090

# Two proxies on one private PostgreSQL catalog, three servers joined to both.
run-proxies: install
	$(PY) examples/several_proxies.py --var var/proxies --http 7080

# The types first (mypy with the zope plugin, see mypy.ini), then every test,
# on one worker per core and one more: the end-to-end tests mostly wait on
# their processes (with one per core, the CPU was busy less than half the time).
WORKERS ?= $(shell $(PYTHON) -c "import os; print((os.cpu_count() or 1) + 1)")
test: check
	$(PY) -m pytest -q -n $(WORKERS)

check: install
	$(VENV)/bin/mypy

bench: install
	$(PIP) install -q -r bench/requirements.txt
	$(PY) bench/run.py

# One proxy on PostgreSQL against one on SQLite, two proxies against one (bench/PROXIES.md).
bench-proxies: install
	$(PY) bench/proxies.py

clean:
	rm -rf $(VENV) build *.egg-info var
