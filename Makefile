# ucgate developer entry points (GNU make). Works on a fresh Debian machine, as root or not.
#
#   make run            serve config/ucgate.toml on 127.0.0.1 (SIP 5060, HTTP 8080)
#   make test           system packages, lint, type check, whole test suite (what CI runs)
#   make test-unit      fast tests only          make test-interop   real peers only
#   make lint | typecheck | bench-register | bench-media | clean | distclean
#   make web-vendor     re-vendor JsSIP for the pages (needs node + npm; output is committed)

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

# pjsua2-python publishes wheels for CPython <= 3.12 only, and ucgate needs 3.11+:
# python3 when it is one of those, else python3.12 or python3.11 if installed.
PYTHON_OK := import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 12))
ifndef PYTHON
PYTHON := $(or $(shell for p in python3 python3.12 python3.11; do             $$p -c '$(PYTHON_OK)' 2>/dev/null && { echo $$p; break; }; done),python3)
endif
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp
CONFIG ?= config/ucgate.toml

# Debian package that provides each command the tests drive.
SYSTEM_COMMANDS := redis-server:redis-server sipp:sip-tester kamailio:kamailio \
                   rtpengine:rtpengine-daemon chromium:chromium
# Packages without a command of their own (checked with dpkg): Kamailio's presence modules
# for the reference presence server of the rig's tests and bench/presence.
SYSTEM_PACKAGES := kamailio-presence-modules

.PHONY: help venv run deps-system test lint typecheck test-unit test-interop \
        bench-register bench-media clean distclean web-vendor

help:
	@sed -n 's/^#   //p' $(firstword $(MAKEFILE_LIST))

# The venv is (re)installed only when pyproject.toml is newer than the stamp.
venv: $(STAMP)

$(STAMP): pyproject.toml
	@if [ ! -x $(BIN)/python ]; then \
	  if ! command -v $(PYTHON) >/dev/null; then \
	    echo "error: $(PYTHON) not found; install Python 3.11 or 3.12 (Debian: apt-get install python3 python3-venv)" >&2; \
	    exit 1; \
	  fi; \
	  if ! $(PYTHON) -c '$(PYTHON_OK)'; then \
	    echo "error: $(PYTHON) is Python $$($(PYTHON) -c 'import platform; print(platform.python_version())' 2>/dev/null || echo '(unusable)');" \
	         "ucgate needs CPython 3.11 or 3.12 (pjsua2-python has no wheels for newer)." \
	         "Run e.g. 'make PYTHON=python3.11 $(MAKECMDGOALS)'." >&2; \
	    exit 1; \
	  fi; \
	  if ! $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null; then \
	    pkg="python3-venv"; \
	    if [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then \
	      DEBIAN_FRONTEND=noninteractive apt-get update -q; \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$pkg; \
	    else \
	      echo "error: $(PYTHON) cannot create virtual environments; install $$pkg (apt-get install $$pkg)" >&2; \
	      exit 1; \
	    fi; \
	  fi; \
	  rm -rf $(VENV); \
	  $(PYTHON) -m venv $(VENV); \
	elif ! $(BIN)/python -c '$(PYTHON_OK)'; then \
	  echo "error: $(VENV) uses an unsupported Python; remove it ('make distclean') and retry" >&2; \
	  exit 1; \
	fi
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

run: venv
	exec $(BIN)/ucgate serve --config $(CONFIG)

# Installs, as root, the Debian packages whose commands the interop tests drive.
deps-system:
	@missing=""; \
	for pair in $(SYSTEM_COMMANDS); do \
	  command -v "$${pair%%:*}" >/dev/null || missing="$$missing $${pair##*:}"; \
	done; \
	for pkg in $(SYSTEM_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' "$$pkg" 2>/dev/null | grep -q "ok installed" || missing="$$missing $$pkg"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" -ne 0 ]; then \
	  echo "error: missing Debian packages:$$missing" >&2; \
	  echo "       install them with: sudo apt-get install -y --no-install-recommends$$missing" >&2; \
	  exit 1; \
	fi; \
	echo "installing Debian packages:$$missing"; \
	DEBIAN_FRONTEND=noninteractive apt-get update -q; \
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing

lint: venv
	$(BIN)/ruff check src tests sip_test_rig bench

typecheck: venv
	$(BIN)/mypy

# Steps run in order, so the cheap checks fail first.
test: venv deps-system
	$(BIN)/ruff check src tests sip_test_rig bench
	$(BIN)/mypy
	$(BIN)/pytest -q

test-unit: venv
	$(BIN)/pytest -q tests/unit

test-interop: venv deps-system
	$(BIN)/pytest -q tests/interop

bench-register: venv deps-system
	bash bench/register/run.sh

# WebRTC<->SIP bridged calls per media backend next to Janus (needs janus; ~30 min).
bench-media: venv deps-system
	@command -v janus >/dev/null || { [ "$$(id -u)" -eq 0 ] && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends janus; } || \
	  echo "janus missing (apt-get install janus): the reference column will be empty" >&2
	bash bench/media/run.sh

# The pages load JsSIP as one classic script. npm ci installs the versions pinned in
# web/package-lock.json, esbuild bundles JsSIP's CommonJS build into an IIFE (global JsSIP),
# and the result is committed with its licenses, so `make run` and `make test` need no node.
WEB_VENDOR := src/ucgate/web/static/vendor
web-vendor:
	cd web && npm ci --ignore-scripts --no-audit --no-fund && npm run --silent vendor
	mkdir -p $(WEB_VENDOR)
	cp web/build/jssip.min.js $(WEB_VENDOR)/jssip.min.js
	{ for pkg in jssip debug ms sdp-transform events; do \
	    dir=web/node_modules/$$pkg; \
	    echo "== $$pkg $$(node -p "require('./$$dir/package.json').version") =="; \
	    cat $$dir/LICENSE* 2>/dev/null || cat $$dir/license* ; echo; \
	  done; } > $(WEB_VENDOR)/jssip.LICENSES.txt

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist test-artifacts
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

# Also drops the virtual environment and the local state of `make run`.
distclean: clean
	rm -rf $(VENV) var
