# Every target creates .venv when missing and installs the project before it acts.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint install bytecode clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The example plugin (a UV-Vis spectrometer added from outside labctl, through entry points
# only) is installed with the project: its tests run its recipe on the simulated bench.
PLUGINS := examples/plugins/labctl-uvvis

$(STAMP): $(BIN)/python pyproject.toml $(PLUGINS:%=%/pyproject.toml)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet $(PLUGINS:%=-e %)
	# the FINALES2 server and schemas the finales tests run against (peers, not labctl code)
	if [ -d ../shared/peers ]; then $(BIN)/python -m pip install --quiet \
		../shared/peers/FINALES2 ../shared/peers/FINALES2_schemas 'bcrypt<4.1'; fi
	touch $(STAMP)

install: $(STAMP)

# Byte-compile labctl's own sources. pip compiles what it installs, but not an editable
# install, and an interpreter run with PYTHONDONTWRITEBYTECODE (set on some CI machines)
# then compiles ~100 labctl modules from source at every start: 0.3 s per `labctl` process.
# compileall rewrites only what changed since the last time.
bytecode: $(STAMP)
	$(BIN)/python -m compileall -q labctl drivers simulators $(PLUGINS) > /dev/null

# The main job: formulate an electrolyte and measure its conductivity on the simulated bench,
# then show the recorded run.
demo: bytecode
	$(BIN)/labctl run recipes/electrolyte_conductivity.json --config config/sim.toml --data-dir runs
	$(BIN)/labctl runs list --data-dir runs --limit 5

# Two workers (pytest-xdist): most tests wait on simulated instruments, subprocesses and the
# broker rather than compute, so two at once take ~9 min on a 2-core machine instead of ~16.
# Each worker has its own tmp dirs and starts its own brokers on free ports.
test: bytecode
	$(BIN)/python -m pytest -q -n 2

bench: bytecode
	@for script in bench/*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check labctl drivers simulators tests bench examples
	$(BIN)/mypy labctl

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
