# Two commands for a fresh machine: `make demo` runs the whole pipeline, `make test` the tests.
# Each installs what is missing on first use (.venv, pip packages, Kafka jars, MeiliSearch, versitygw).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help venv debian-packages up status down test demo bench clean dashboard

# Debian packages the tests need, one per line so additions merge cleanly; installed when missing.
DEBIAN_PACKAGES += cloud-init  # `cloud-init schema` checks deploy/imgpipe.yaml's user data
DEBIAN_PACKAGES += systemd     # `systemd-analyze verify` checks deploy/systemd/
DEBIAN_PACKAGES += chromium chromium-driver  # the dashboard's browser tests drive Chromium
DEBIAN_PACKAGES += fonts-dejavu-core         # ... which needs a font to render its pages

help:
	@echo "make demo    run the whole pipeline on the local stack (installs on first run)"
	@echo "make test    run the unit and integration tests (starts the stack it needs)"
	@echo "make up | status | down   start, check, stop the local stack"
	@echo "make bench   measure throughput, latency and memory against their floors"
	@echo "make dashboard   the web dashboard on http://127.0.0.1:8888 (search, charts, dead letters, status)"

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	@# This tree as an editable package (pyproject.toml): scripts, tests and the console scripts
	@# (imgpipe-producer, ...) import its packages. --no-deps: requirements.txt pinned them above.
	@# A venv made before the package existed may hold the old .pth hack: it goes.
	@rm -f $$($(PY) -c 'import site; print(site.getsitepackages()[0])')/imgpipe-repo.pth
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)

debian-packages:
	@bash tools/ensure-debian-packages.sh $(DEBIAN_PACKAGES)

up: $(STAMP)
	$(PY) -m stack up

status: $(STAMP)
	$(PY) -m stack status

down: $(STAMP)
	$(PY) -m stack down

test: $(STAMP) debian-packages
	$(PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) -m demo

bench: $(STAMP)
	$(PY) -m bench

dashboard: $(STAMP)
	$(PY) visualize/dashboard.py $(DASHBOARD_ARGS)

clean: down
	rm -rf .local out
