# xvm-cni — install, package, test. Needs only make, python3 and pip.
#
#   sudo make install     venv in /opt/xvm-cni, plugin in /opt/cni/bin/xvm-cni,
#                         example config in /etc/cni/net.d/10-xvm.conf (kept if present),
#                         /usr/local/bin/xvmctl, the agent's unit
#                         /etc/systemd/system/xvm-cnid.service (enabled and started
#                         where systemd runs)
#   sudo make uninstall   the reverse (an edited 10-xvm.conf is kept)
#
# Every path is a variable, e.g. a trial install that touches nothing of the system's:
#   sudo make install VENV=/tmp/x/venv CNI_BIN_DIR=/tmp/x/bin CNI_CONF_DIR=/tmp/x/net.d \
#        BIN_DIR=/tmp/x/usr-bin SYSTEMD_DIR=/tmp/x/systemd SYSTEMD_RUNNING=no
#   make dist             dist/xvm-cni.pyz: one architecture-free file (xvmcni + pyroute2)
#   sudo make test        ./test.sh
#   make lint             ruff + mypy
#   sudo make fuzz        the property-based fuzz of the plugin, FUZZ_EXAMPLES (default
#                         5000) random cases instead of CI's fixed 400

PYTHON      ?= python3
VENV        ?= /opt/xvm-cni
CNI_BIN_DIR ?= /opt/cni/bin
CNI_CONF_DIR?= /etc/cni/net.d
BIN_DIR     ?= /usr/local/bin
SYSTEMD_DIR ?= /etc/systemd/system
# systemctl is used only where systemd runs (not in most containers and chroots), or
# never with SYSTEMD_RUNNING=no.
SYSTEMD_RUNNING ?= $(shell test -d /run/systemd/system && echo yes || echo no)
AGENT_SOCKET := /run/xvm-cni/xvm-cnid.sock

PLUGIN      := $(CNI_BIN_DIR)/xvm-cni
CONF        := $(CNI_CONF_DIR)/10-xvm.conf
UNIT        := $(SYSTEMD_DIR)/xvm-cnid.service
PYZ         := dist/xvm-cni.pyz
PYZ_BUILD   := build/pyz

# pip as root is what this Makefile is for (install) or harmless (--target); older pips
# ignore the variable.
export PIP_ROOT_USER_ACTION := ignore

.PHONY: all install uninstall dist test lint fuzz clean

all: dist

install:
	@test "$$(id -u)" -eq 0 || { echo "make install needs root: sudo make install" >&2; exit 1; }
	@test -x $(VENV)/bin/python3 || { echo "creating venv $(VENV)"; $(PYTHON) -m venv $(VENV); }
	$(VENV)/bin/python3 -m pip install -q --disable-pip-version-check .
	@# Same version number after a code change: make sure the new code replaces the old.
	$(VENV)/bin/python3 -m pip install -q --disable-pip-version-check --no-deps --force-reinstall .
	mkdir -p $(CNI_BIN_DIR) $(CNI_CONF_DIR) $(BIN_DIR)
	@# The plugin: a plain Python file started as `python3 -IS` (fastest start; -I ignores
	@# PYTHON* variables and the user site, -S skips site), so it puts the venv's
	@# site-packages on sys.path itself, computed now; it runs the stdlib-only thin plugin
	@# (xvmcni.cmd.shim: hands the call to xvm-cnid, else works in-process).
	$(VENV)/bin/python3 -m xvmcni.plugin_file $(PLUGIN) >/dev/null
	@if [ -e $(CONF) ]; then \
	  echo "keeping existing $(CONF)"; \
	else \
	  install -m 0644 deploy/10-xvm.conf $(CONF) && echo "installed $(CONF) (edit hostInterface/subnet)"; \
	fi
	ln -sfn $(VENV)/bin/xvmctl $(BIN_DIR)/xvmctl
	@printf '{"cniVersion":"1.0.0"}' | CNI_COMMAND=VERSION $(PLUGIN) >/dev/null \
	  && echo "installed $(PLUGIN) (answers VERSION)"
	@# The node agent's unit, pointing at this VENV's xvm-cnid.
	mkdir -p $(SYSTEMD_DIR)
	sed 's|/opt/xvm-cni/bin/|$(VENV)/bin/|g' deploy/xvm-cnid.service > $(UNIT).tmp
	chmod 0644 $(UNIT).tmp && mv -f $(UNIT).tmp $(UNIT)
	@echo "installed $(UNIT)"
	@if [ "$(SYSTEMD_RUNNING)" = yes ]; then \
	  systemctl daemon-reload && \
	  if systemctl is-active --quiet xvm-cnid.service; then \
	    systemctl enable xvm-cnid.service && systemctl restart xvm-cnid.service \
	      && echo "xvm-cnid restarted with the new code (pods keep their traffic)"; \
	  else \
	    systemctl enable --now xvm-cnid.service && echo "xvm-cnid enabled and started"; \
	  fi; \
	else \
	  echo "systemd is not running here, so xvm-cnid was not started. Start it by hand,"; \
	  echo "as root, in the host's network namespace (without it the plugin works"; \
	  echo "in-process, slower):"; \
	  echo "  setsid $(VENV)/bin/xvm-cnid </dev/null >>/var/log/xvm-cnid.log 2>&1 &"; \
	  echo "  $(BIN_DIR)/xvmctl status      # answers once it is up"; \
	fi

uninstall:
	@test "$$(id -u)" -eq 0 || { echo "make uninstall needs root: sudo make uninstall" >&2; exit 1; }
	@if [ -e $(UNIT) ]; then \
	  if [ "$(SYSTEMD_RUNNING)" = yes ]; then \
	    systemctl disable --now xvm-cnid.service && echo "xvm-cnid stopped and disabled"; \
	  fi; \
	  rm -f $(UNIT) && echo "removed $(UNIT)"; \
	  if [ "$(SYSTEMD_RUNNING)" = yes ]; then systemctl daemon-reload; fi; \
	fi
	@if [ -x $(VENV)/bin/xvmctl ] && out=$$($(VENV)/bin/xvmctl status --socket $(AGENT_SOCKET) 2>/dev/null); then \
	  echo "warning: $${out%%,*} still answers on $(AGENT_SOCKET) (started by hand?):" \
	       "stop it (kill <pid>); its code is being removed" >&2; \
	fi
	rm -f $(PLUGIN)
	@if [ -L $(BIN_DIR)/xvmctl ] && [ "$$(readlink $(BIN_DIR)/xvmctl)" = "$(VENV)/bin/xvmctl" ]; then \
	  rm -f $(BIN_DIR)/xvmctl; echo "removed $(BIN_DIR)/xvmctl"; fi
	@if [ -e $(CONF) ]; then \
	  if cmp -s $(CONF) deploy/10-xvm.conf; then rm -f $(CONF); echo "removed $(CONF)"; \
	  else echo "keeping $(CONF): it differs from deploy/10-xvm.conf (yours?)"; fi; \
	fi
	rm -rf $(VENV)
	@echo "state in /var/lib/cni/xvm-cni (dataDir) is left in place"

# The pinned pyroute2 version, read from pyproject.toml.
PYROUTE2_VERSION = $(shell $(PYTHON) -c 'import re; print(re.search(r"\"pyroute2==([^\"]+)\"", open("pyproject.toml").read()).group(1))')

dist:
	@rm -rf $(PYZ_BUILD) && mkdir -p $(PYZ_BUILD) dist
	$(PYTHON) -m pip install -q --disable-pip-version-check --no-compile --no-deps \
	  --target $(PYZ_BUILD) pyroute2==$(PYROUTE2_VERSION)
	@# Only packages go into the archive: no console scripts, no compiled caches.
	rm -rf $(PYZ_BUILD)/bin
	$(PYTHON) -c 'import shutil; shutil.copytree("src/xvmcni", "$(PYZ_BUILD)/xvmcni", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))'
	@$(PYTHON) -c 'import pathlib, sys; n = [str(p) for p in pathlib.Path("$(PYZ_BUILD)").rglob("*") if p.suffix in (".so", ".pyd")]; sys.exit("native code in the archive: " + " ".join(n) if n else 0)'
	$(PYTHON) -m zipapp $(PYZ_BUILD) -o $(PYZ).tmp -m xvmcni.cmd.plugin:main -p '/usr/bin/env python3' -c
	chmod 0755 $(PYZ).tmp
	mv -f $(PYZ).tmp $(PYZ)
	@printf '{"cniVersion":"1.0.0"}' | CNI_COMMAND=VERSION ./$(PYZ) \
	  | $(PYTHON) -c 'import json, sys; r = json.load(sys.stdin); assert "supportedVersions" in r, r; print("$(PYZ) answers VERSION:", r["supportedVersions"])'
	@$(PYTHON) -c 'import sys; sys.path.insert(0, "$(PYZ)"); import pyroute2; assert ".pyz" in pyroute2.__file__'
	@echo "built $(PYZ) ($$(wc -c < $(PYZ)) bytes, pyroute2 $(PYROUTE2_VERSION))"

test:
	./test.sh

FUZZ_EXAMPLES ?= 5000

fuzz: .venv/bin/ruff
	@test "$$(id -u)" -eq 0 || { echo "make fuzz needs root (network namespaces)" >&2; exit 1; }
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) .venv/bin/pytest -q -s -p no:cacheprovider \
	  tests/integration/test_fuzz.py

lint: .venv/bin/ruff
	.venv/bin/ruff check src tests
	.venv/bin/mypy

.venv/bin/ruff:
	./scripts/bootstrap.sh

clean:
	rm -rf build dist
