# The two set-up commands of the README, and the steps they share.
#   make demo   install (CPU PyTorch first when none is installed), then run the demo
#   make test   install with the test extras (and NVIDIA DALI, whose CPU mode the tests use), then run the tests
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: install demo test bench

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "torch==2.13.0"
	$(PIP) install -e ".[test]"
	@$(PYTHON) -c "import nvidia.dali" 2>/dev/null || $(PIP) install -q "nvidia-dali-cuda130>=1.50" \
		|| echo "NVIDIA DALI could not be installed: its tests will be skipped"

demo: install
	coun-fast demo

test: install
	$(PYTHON) -m pytest -q

bench: install
	$(PYTHON) benchmarks/bench_losses.py
