# vpnaaa developer entry points. Run as root on Debian: missing packages are installed.
# Debian's python3 (its standard library is readable by the unprivileged daemon user)
PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo python3)
VENV ?= .venv
STATE ?=
BIN := $(VENV)/bin

.PHONY: run test test-kernel lint bench venv clean

$(BIN)/.installed: setup.cfg pyproject.toml
	./scripts/deps run
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]' --config-settings editable_mode=compat
	touch $@

venv: $(BIN)/.installed

## run: the daemon in the foreground on its embedded defaults, demo state in ./var; it
## binds its ports as root, then runs as the system user vpnaaa (created if missing);
## a checkout that user cannot read runs from /opt/vpnaaa (scripts/run-demo)
run: venv
	./scripts/run-demo $(VENV) $(STATE)

## test: every test, including those that drive real third-party peers, and the ESP
## datapath in Debian's kernel under QEMU (test-kernel)
test: venv
	./scripts/deps test
	$(BIN)/trial tests
	./scripts/kernel-vm

## test-kernel: the ESP datapath on Debian's kernel in a VM (charon vs twistd vpnaaa, ~3 min)
test-kernel: venv
	./scripts/kernel-vm

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## bench: vpnaaa against FreeRADIUS and hostapd on the same load, as ratios
bench: venv
	./scripts/deps bench
	./scripts/system-user vpnaaa
	$(BIN)/python bench/radius_pap.py
	$(BIN)/python bench/radius_eap.py
	$(BIN)/python bench/ike.py
	$(BIN)/python bench/kernel.py

clean:
	rm -rf $(VENV) _trial_temp *.egg-info
