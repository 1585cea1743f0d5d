# ems-platform — the two front-door commands are `make demo` and `make test`.
# `make test` runs `make lint` first (scripts/lint.sh), so CI (.ci/run → make test) runs it too.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup system-packages demo lint test bench images deb edge-systemd fresh-machine clean

setup: $(STAMP) system-packages

# On a new Debian machine python3 has no venv module until the system packages (python3.11-venv) are in.
# A venv without pip is one that failed half-way (no ensurepip): make it again.
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/pip || $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || ./scripts/install-system-packages.sh
	test -x $(BIN)/pip || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

system-packages:
	./scripts/install-system-packages.sh

demo: setup
	./scripts/demo.sh

lint: $(STAMP)
	./scripts/lint.sh

test: setup lint
	$(BIN)/pytest

# Node-RED for the edge rig's comparison: Node.js and npm from Debian where missing, then the versions pinned in
# bench/nodered/package-lock.json (npm ci, no install scripts) unless installed already.
bench: setup
	./scripts/install-system-packages.sh --bench
	$(BIN)/python -m bench.nodered
	$(BIN)/python -m bench

# Builds the container images here (base from Debian packages, see README "Container images") and runs
# them: tests/test_images.py -m images (the agent image against the test broker). A few minutes.
images: setup
	./scripts/install-system-packages.sh --images
	./scripts/build-images.sh --local-base
	$(BIN)/pytest -q -p no:cacheprovider -n 0 -m images tests/test_images.py

# The edge box's Debian package (out/deb/ems-edge_<version>_<arch>.deb); see docs/edge-install.md.
deb: setup
	$(BIN)/python scripts/build_deb.py --out out/deb

# The .deb under systemd: a Debian box with systemd as PID 1 in a container (scripts/edge-box-image.sh,
# built once), the package installed, the unit started, reloaded, its log rotated. About 2 minutes.
edge-systemd: setup
	./scripts/install-system-packages.sh --images
	$(BIN)/pytest -q -p no:cacheprovider -n 0 -m systemd tests/test_edge_systemd.py

# CI's .ci/run on a machine that has never seen the project: a clone of HEAD's commits in a new Debian 12
# root (mmdebstrap) in a podman container (scripts/fresh-machine-check.sh). Not part of `make test`; the
# set-up takes about 2 minutes, then the whole suite runs; log in out/fresh-machine/run.log.
fresh-machine:
	./scripts/install-system-packages.sh --images
	./scripts/fresh-machine-check.sh

clean:
	rm -rf $(VENV) out .demo .bench bench/nodered/node_modules
