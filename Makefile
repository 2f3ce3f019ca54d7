# The two commands of this project:
#   make up    install the Salt virtualenv, start salt-master + salt-minion, converge this host
#   make test  install what the tests need and run the whole suite against this host
#   make bench releases under load on the host `make up` set up, then on the fleet; figures in bench/results/
#   make fleet container hosts (pillar/fleet.sls), minions of this machine's master, converged
#   make fleet-down  removes them
SHELL       := /bin/bash
REPO        := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
# The Salt virtualenv lives outside the checkout: the repository root is a Salt file
# root, and the fileserver would walk every file of a virtualenv inside it.
VENV        ?= /opt/cabify-salt/venv
BENCH_VENV  ?= /opt/cabify-salt/bench-venv
PYTHON      ?= python3
PYTEST_ARGS ?=

.PHONY: up test bench bench-fleet lint venv bench-venv salt-daemons converge lock clean-daemons fleet fleet-down

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

# The benchmarks drive the host `make up` converges (its salt-minion), then the fleet of
# `make fleet` (the release controller), with their own virtualenv for the plots.
bench: up bench-venv
	PATH=$(VENV)/bin:$$PATH $(BENCH_VENV)/bin/python bench/rolling.py
	PATH=$(VENV)/bin:$$PATH $(BENCH_VENV)/bin/python bench/canary.py
	$(MAKE) bench-fleet

bench-fleet: fleet bench-venv
	PATH=$(VENV)/bin:$$PATH $(BENCH_VENV)/bin/python bench/fleet.py

bench-venv: $(BENCH_VENV)/.installed

$(BENCH_VENV)/.installed: bench/requirements.lock
	[ -x $(BENCH_VENV)/bin/python ] || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q --disable-pip-version-check -r bench/requirements.lock
	touch $@

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	find salt pillar -name '*.sls' -print0 | xargs -0 $(VENV)/bin/salt-lint

# The daemons of `make up` are paused while the suite runs: their beacons and reactor
# would act on the pool the tests change (heal it, release it), beside the suite's own.
test: venv lint
	@if VENV=$(VENV) scripts/salt-daemons.sh running; then \
	  echo "make test: pausing the salt daemons of make up until the suite ends"; \
	  VENV=$(VENV) scripts/salt-daemons.sh stop; paused=1; fi; \
	$(VENV)/bin/pytest $(PYTEST_ARGS); rc=$$?; \
	if [ -n "$$paused" ]; then VENV=$(VENV) scripts/salt-daemons.sh; fi; \
	exit $$rc

lock:
	rm -rf $(REPO)/.lockvenv && $(PYTHON) -m venv $(REPO)/.lockvenv
	$(REPO)/.lockvenv/bin/pip install -q -r requirements.in
	$(REPO)/.lockvenv/bin/pip freeze --all | grep -vE '^(pip|setuptools)==' > requirements.lock
	rm -rf $(REPO)/.lockvenv

# The fleet's hosts start as bare minions of this machine's master (Debian 12 + Salt),
# then orch.fleet converges them (again: no change).
fleet: up
	VENV=$(VENV) scripts/fleet.sh up
	VENV=$(VENV) scripts/salt-daemons.sh
	VENV=$(VENV) scripts/fleet.sh answering
	$(VENV)/bin/salt-run --state-output=changes --state-verbose=False state.orchestrate orch.fleet

fleet-down:
	VENV=$(VENV) scripts/fleet.sh down
	VENV=$(VENV) scripts/salt-daemons.sh

clean-daemons:
	VENV=$(VENV) scripts/salt-daemons.sh stop
