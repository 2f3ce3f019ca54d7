# The two commands of this project:
#   make up    install the Salt virtualenv, start salt-master + salt-minion, converge this host
#   make test  install what the tests need and run the whole suite against this host
SHELL       := /bin/bash
REPO        := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
# The Salt virtualenv lives outside the checkout: the repository root is a Salt file
# root, and the fileserver would walk every file of a virtualenv inside it.
VENV        ?= /opt/cabify-salt/venv
PYTHON      ?= python3
PYTEST_ARGS ?=

.PHONY: up test lint venv salt-daemons converge lock clean-daemons

up: venv salt-daemons converge

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.lock scripts/venv.sh
	VENV=$(VENV) PYTHON=$(PYTHON) scripts/venv.sh requirements.lock
	touch $@

salt-daemons: venv
	VENV=$(VENV) scripts/salt-daemons.sh

converge: salt-daemons
	$(VENV)/bin/salt-call --state-output=changes --state-verbose=False saltutil.sync_all >/dev/null
	$(VENV)/bin/salt-call --state-output=changes --state-verbose=False --retcode-passthrough state.apply

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	find salt pillar -name '*.sls' -print0 | xargs -0 $(VENV)/bin/salt-lint

test: venv lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lock:
	rm -rf $(REPO)/.lockvenv && $(PYTHON) -m venv $(REPO)/.lockvenv
	$(REPO)/.lockvenv/bin/pip install -q -r requirements.in
	$(REPO)/.lockvenv/bin/pip freeze --all | grep -vE '^(pip|setuptools)==' > requirements.lock
	rm -rf $(REPO)/.lockvenv

clean-daemons:
	VENV=$(VENV) scripts/salt-daemons.sh stop
