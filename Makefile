# The set-up commands of the README, and the steps they share.
#   make demo   installs coun_fast and its runtime dependencies (PyTorch first when none is installed), runs the demo
#   make test   installs coun_fast with the test extras and NVIDIA DALI (whose CPU mode the tests use), runs the tests
#   make bench  installs coun_fast with pytorch-metric-learning (a benchmark peer), runs the loss benchmark
#
# PyTorch: when `import torch` fails, $(TORCH) is installed from $(TORCH_INDEX) if set, else from the
# default index. On PyPI, torch==2.13.0 for Linux x86_64 is the CUDA 13 build (it pulls NVIDIA's CUDA
# libraries and Triton); for the CPU-only wheel run e.g.
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
PYTHON ?= python3
PIP := $(PYTHON) -m pip
TORCH ?= torch==2.13.0
TORCH_INDEX ?=

.PHONY: torch install install-test demo test bench

torch:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))

install: torch
	$(PIP) install -e .

install-test: torch
	$(PIP) install -e ".[test]"
	@$(PYTHON) -c "import nvidia.dali" 2>/dev/null || $(PIP) install -q "nvidia-dali-cuda130>=1.50" \
		|| echo "NVIDIA DALI could not be installed: its tests will be skipped"

demo: install
	coun-fast demo

test: install-test
	$(PYTHON) -m pytest -q

bench: torch
	$(PIP) install -e ".[bench]"
	$(PYTHON) benchmarks/bench_losses.py
