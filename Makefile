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
# An index for torch alone, passed to pip as --index-url: on PyPI, Linux x86-64 torch is the
# multi-GB CUDA build; `make run TORCH_INDEX=https://download.pytorch.org/whl/cpu` installs
# the CPU-only one. Empty (the default): torch comes from pip's configured sources.
TORCH_INDEX ?=

.PHONY: run test install model lint clean llama-cpp

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# llama-cpp-python (the llama.cpp engine) builds from source: about 4 minutes on 2 cores,
# 7 on CPUs with AMX. --no-cache-dir: never reuse a wheel built with other flags.
# On CPUs with AMX it is built for this CPU with -fno-tree-dse -fno-dse: GCC 12 drops, as
# dead stores, the writes that fill llama.cpp's AMX tile configuration, and the first tile
# instruction faults (the crash docs/models.md describes); the flags keep them (docs/engines.md,
# "llama.cpp's AMX path"). `make llama-cpp LLAMA_AMX=0` builds without the AMX kernels
# instead (every AMX CPU has the AVX-512 set named here).
# Without OpenMP (llama.cpp's own thread pool): PyTorch's libgomp, shared with an OpenMP
# build, makes llama.cpp decode about 25% slower once PyTorch has computed in another
# thread (docs/benchmarks.md). An installed OpenMP build is rebuilt, and so is one without
# AMX on an AMX CPU; `make llama-cpp` rebuilds whatever is installed.
# It is built from its source release with chatforge's patches (patches/, applied by
# scripts/build-llama-cpp.sh): decode steps of 2-4 sequences multiply Q8_0 weights with
# AVX512-VNNI, each weight block loaded once for every row, instead of AMX tiles padded to
# 16 rows (a step of four sequences 12% faster, of two 21%); and the AMX tile configuration is loaded
# on every call, so that PyTorch's bf16 kernels in the same thread cannot leave it wrong.
# An AMX build without the patches is rebuilt.
LLAMA_CPP_VERSION := 0.3.36
LLAMA_PATCH_MARK := chatforge-llama-patch: amx-small-batches-1
LLAMA_AMX ?= 1
AMX_CPU := $(shell grep -qs amx_int8 /proc/cpuinfo && echo 1)
NO_AMX_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
AMX_ARGS := -DCMAKE_CXX_FLAGS=-fno-tree-dse\ -fno-dse
LLAMA_CMAKE_ARGS = -DGGML_OPENMP=OFF $(if $(AMX_CPU),$(if $(filter 1,$(LLAMA_AMX)),$(AMX_ARGS),$(NO_AMX_ARGS)))
WANT_AMX = $(if $(AMX_CPU),$(if $(filter 1,$(LLAMA_AMX)),True,False),False)
LLAMA_CPP_OK = import llama_cpp, pathlib, sys; \
	info = llama_cpp.llama_print_system_info(); \
	libs = list((pathlib.Path(llama_cpp.__file__).parent / "lib").glob("libggml-cpu.so*")); \
	patched = bool(libs) and all(b"$(LLAMA_PATCH_MARK)" in lib.read_bytes() for lib in libs); \
	sys.exit(llama_cpp.__version__ != "$(LLAMA_CPP_VERSION)" or b"OPENMP = 1" in info or ($(WANT_AMX) and (b"AMX_INT8 = 1" not in info or not patched)))
LLAMA_CPP_INSTALL = CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" bash scripts/build-llama-cpp.sh $(PY) $(LLAMA_CPP_VERSION)
LLAMA_CPP_BUILD = $(PY) -c '$(LLAMA_CPP_OK)' 2>/dev/null || $(LLAMA_CPP_INSTALL)

# torch first and pinned, so that nothing pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml Makefile $(wildcard patches/*/*.patch) | $(PY)
	$(PIP) install --quiet "torch==2.13.0" $(if $(strip $(TORCH_INDEX)),--index-url "$(strip $(TORCH_INDEX))")
	$(LLAMA_CPP_BUILD)
	$(PIP) install --quiet -e ".[default-model,llama]"
	touch $@

# bfcl-eval (benchmarks/agent_quality.py: BFCL's data and checker) without its dependencies,
# which are every model provider's SDK; its checker needs only filelock besides (shims for
# the rest: benchmarks/bfcl_support.py). Not in pyproject's extras: pip would bring them all.
BFCL_EVAL_VERSION := 2026.3.23

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install --quiet -e ".[default-model,llama,test]"
	$(PIP) install --quiet --no-deps "bfcl-eval==$(BFCL_EVAL_VERSION)"
	$(PIP) install --quiet "filelock>=3.12"
	touch $@

install: $(VENV)/.installed

# llama-cpp-python rebuilt with the flags above, whatever is installed (say, a build from
# elsewhere whose AMX path crashed in chatforge's probe).
llama-cpp: | $(PY)
	$(LLAMA_CPP_INSTALL)
	$(MAKE) install

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
