# The two commands of the README: `make demo` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo up test lint typecheck bench openapi setup runner bioimageio-oracle gcapi-clients \
	bioimageio-image

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(BIN)/.installed

# bioimageio.core, the bioimage.io runtime's test oracle and benchmark baseline, in its own
# environment: core 0.11 pins bioimageio.spec 0.5.12, which needs pydantic<2.14.
ORACLE ?= .venv-bioimageio
$(ORACLE)/.installed:
	$(PYTHON) -m venv $(ORACLE)
	$(ORACLE)/bin/pip install -q "bioimageio.core==0.11.0" "pydantic>=2.11,<2.14" "onnxruntime>=1.20"
	touch $@

bioimageio-oracle: $(ORACLE)/.installed

# The bioimage.io runtime image (gantry/bioimageio_image.py) as an OCI archive, from Debian
# packages (mmdebstrap) and the wheels pinned in packaging/bioimageio/; downloads are cached in
# build/bioimageio/cache. The tests that run it skip while it is absent.
BIOIMAGEIO_IMAGE := build/bioimageio/bioimageio-runtime.tar
$(BIOIMAGEIO_IMAGE): $(BIN)/.installed packaging/bioimageio/requirements.txt \
		gantry/bioimageio_image.py $(wildcard batch_runner/bioimageio/*.py)
	@command -v mmdebstrap >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -q --no-install-recommends mmdebstrap; }
	$(BIN)/gantry bioimageio build-image $@

bioimageio-image: $(BIOIMAGEIO_IMAGE)

# Older gcapi releases, each in its own environment (they pin older httpx), for the e2e tests
# that run the tutorial with them: 0.5.4 (run_external_job through upload sessions), 0.12.0
# (the last one before pydantic models; uploads file inputs as user uploads) and 0.13.4 (the
# first with models and a version check). tqdm, SimpleITK and numpy are what the tutorial's
# code imports.
GCAPI_OLD ?= 0.5.4 0.12.0 0.13.4
.venv-gcapi-%/.installed:
	$(PYTHON) -m venv .venv-gcapi-$*
	.venv-gcapi-$*/bin/pip install -q "gcapi==$*" tqdm "SimpleITK>=2.4" "numpy>=1.26"
	touch $@

gcapi-clients: $(foreach v,$(GCAPI_OLD),.venv-gcapi-$(v)/.installed)

demo: $(BIN)/.installed
	$(BIN)/gantry demo

up: $(BIN)/.installed
	$(BIN)/gantry local up

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy's files and settings: [tool.mypy] in pyproject.toml.
typecheck: $(BIN)/.installed
	$(BIN)/mypy

# The suite but its tests marked long (the crash kills, the deploy rehearsal, the tutorial with
# each gcapi release); `make test-long` runs those. CI (.ci/run) runs both.
test: $(BIN)/.installed lint typecheck
	$(BIN)/pytest -n auto -q -m "not long"

.PHONY: test-long
test-long: $(BIN)/.installed gcapi-clients
	$(BIN)/pytest -n auto -q -m long

bench: $(BIN)/.installed
	$(BIN)/python -m benchmarks

openapi: $(BIN)/.installed
	$(BIN)/python -m lambdas.api.openapi > docs/openapi.json

# The static runner and its image layer (dist/runner/, see packaging/runner/build.py). Built
# with Debian's own Python: its libpython is shared and carries no RUNPATH.
RUNNER_VENV := build/runner/venv
RUNNER_TOOLS := gcc readelf dpkg-source apt-get

$(RUNNER_VENV)/.installed: packaging/runner/requirements.txt
	@test -e /usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0 \
		&& /usr/bin/python3 -c 'import ensurepip' 2>/dev/null \
		|| { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
			--no-install-recommends python3-venv libpython3.11; }
	/usr/bin/python3 -m venv $(RUNNER_VENV)
	$(RUNNER_VENV)/bin/pip install -q --no-deps -r packaging/runner/requirements.txt
	touch $@

runner: $(RUNNER_VENV)/.installed
	@test -e /usr/include/x86_64-linux-gnu/sys/capability.h -o -e /usr/include/sys/capability.h \
		&& command -v dpkg-source >/dev/null \
		|| { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
			--no-install-recommends gcc libc6-dev libcap-dev dpkg-dev binutils xz-utils; }
	$(RUNNER_VENV)/bin/python packaging/runner/build.py
