# jobgrid: `make demo` and `make test` are all the set-up there is.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PYTHON  ?= python3
STAMP   := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo test test-fast bench scale clean images soak

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

# a local 5-node grid, a workload of all three job kinds, a kill and a partition, and the verdict
demo: $(STAMP)
	$(VENV)/bin/harness run --nodes 5 --jobs 600 --kill 2 --partition halves --duration 20

# the whole suite, Docker and browser tests included (installs and starts what they need)
test: $(STAMP)
	bash scripts/ensure-docker.sh
	bash scripts/ensure-chromium.sh
	PY=$(PY) bash scripts/ensure-toxiproxy.sh
	$(PY) -m pytest $(PYTEST_ARGS)

# everything that needs neither Docker nor Chromium
test-fast: $(STAMP)
	PY=$(PY) bash scripts/ensure-toxiproxy.sh
	$(PY) -m pytest -m "not docker and not browser" $(PYTEST_ARGS)

# the random-fault soak: every fault kind that kills, pauses, cuts or restarts, for DURATION seconds
# (default 15 minutes), a random seed printed in the verdict (SEED=... to replay one)
DURATION ?= 900
SOAK_FAULTS ?= kill,kill2,pause,partition,restart,restart-all
soak: $(STAMP)
	PY=$(PY) bash scripts/ensure-toxiproxy.sh
	$(VENV)/bin/harness run --backend local --nodes 5 --replicas 3 --runners 1 --faults $(SOAK_FAULTS) \
		--duration $(DURATION) --drain 300 $(if $(SEED),--seed $(SEED),)

bench: $(STAMP)
	$(PY) bench/run.py $(if $(PEERS),--peers,)

# membership at 8, 16 and 32 local nodes (formation, heartbeat CPU, detection, false removals): ~15 min
scale: $(STAMP)
	$(PY) bench/scale.py --plot bench/results/scale.png $(SCALE_ARGS)

images: $(STAMP)
	bash scripts/ensure-docker.sh
	$(VENV)/bin/harness image --base debian

clean:
	rm -rf $(VENV) build dist *.egg-info runs .harness
