# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# A virtual environment is created in $(VENV) when there is none.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned so pip takes one known build: the CPU wheel where a local
# wheel directory provides it, the default (CUDA-enabled) wheel from PyPI on
# a machine with a GPU. Override with `make TORCH_SPEC=... test`.
TORCH_SPEC ?= torch==2.13.0
# DEMO_ARGS are extra Hydra overrides for both stages of the demo.
DEMO_ARGS ?=

.PHONY: install install-dev demo test test-fast bench-tokenizer bench-prior bench-data pretrained clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# One stamp per install flavour; re-run when pyproject.toml changes.
$(VENV)/.stamp-install: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.stamp-dev: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev,bench]"
	touch $@ $(VENV)/.stamp-install

install: $(VENV)/.stamp-install
install-dev: $(VENV)/.stamp-dev

# Generates the built-in turbulence data if missing, trains the default
# tokenizer (stage 1), a short prior over its tokens (stage 2, one epoch),
# samples fields from it and prints where the results are.
DEMO_DIR ?= outputs/demo
demo: install
	$(PY) -m dynfield.train dataset=turbulence hydra.run.dir=$(DEMO_DIR)/tokenizer $(DEMO_ARGS)
	$(PY) -m dynfield.train dataset=turbulence stage=prior tokenizer=$(DEMO_DIR)/tokenizer/tokenizer.pt \
		prior.train.epochs=1 hydra.run.dir=$(DEMO_DIR)/prior $(DEMO_ARGS)
	$(PY) -m dynfield.sample $(DEMO_DIR)/prior/prior.pt --n 16 --out $(DEMO_DIR)/samples.nc
	@echo "tokenizer: $(DEMO_DIR)/tokenizer/tokenizer.pt, prior: $(DEMO_DIR)/prior/prior.pt"
	@echo "samples: $(DEMO_DIR)/samples.nc, beside real fields in $(DEMO_DIR)/samples.png"

# The whole suite, slow tests included.
test: install-dev
	$(PY) -m pytest -m "slow or not slow" -q

# Fast tests only (the default pytest selection).
test-fast: install-dev
	$(PY) -m pytest -q

# Tokenizer benchmark: one dynamic-grain rate-ladder checkpoint (residual
# stages, random depths and fine ratios in training) beside fixed-grain
# ladders trained with the same compute (BENCH_MINUTES of training steps each,
# at 8x8 by default: FIXED_FACTORS="4 8" adds 4x4), then evaluated on
# held-out fields at every rate with every router.
BENCH_DIR ?= benchmarks/results
BENCH_MINUTES ?= 40
FIXED_FACTORS ?= 8
LADDER = experiment=ladder trainer.minutes=$(BENCH_MINUTES)
$(BENCH_DIR)/runs/dq/tokenizer.pt: | install-dev
	$(PY) -m dynfield.train $(LADDER) hydra.run.dir=$(BENCH_DIR)/runs/dq
$(BENCH_DIR)/runs/vq%/tokenizer.pt: | install-dev
	$(PY) -m dynfield.train model=vqvae model.factor=$* $(LADDER) hydra.run.dir=$(BENCH_DIR)/runs/vq$*

FIXED_RUNS = $(foreach f,$(FIXED_FACTORS),$(BENCH_DIR)/runs/vq$(f)/tokenizer.pt)
bench-tokenizer: $(BENCH_DIR)/runs/dq/tokenizer.pt $(FIXED_RUNS)
	$(PY) benchmarks/tokenizer.py --dq $(BENCH_DIR)/runs/dq/tokenizer.pt --fixed $(FIXED_RUNS) --out $(BENCH_DIR)

# The channel-agnostic tokenizer shipped in the package (dynfield/pretrained/):
# generates 256x256 built-in turbulence (train seed 0, validation seed 1),
# trains conf/experiment/pretrained.yaml and copies the checkpoint and its
# training metrics into the package, the tokenizer it replaces kept in
# dynfield/pretrained/retired/ (files made with it still decode). About 30
# minutes on 2 CPU cores.
PRETRAINED_RUN ?= outputs/pretrained
pretrained: install
	$(PY) -m dynfield.train experiment=pretrained hydra.run.dir=$(PRETRAINED_RUN)
	$(PY) -c "from dynfield.checkpoint import bundle; bundle('$(PRETRAINED_RUN)', 'python -m dynfield.train experiment=pretrained')"

# Prior benchmark: the three token orders, each trained once on the
# benchmark's dynamic-grain tokenizer, compared on held-out fields.
PRIOR_ORDERS := coarse_to_fine raster bidirectional
$(BENCH_DIR)/runs/prior_%/prior.pt: $(BENCH_DIR)/runs/dq/tokenizer.pt | install-dev
	$(PY) -m dynfield.train stage=prior prior=$* tokenizer=$< hydra.run.dir=$(BENCH_DIR)/runs/prior_$*

bench-prior: $(foreach o,$(PRIOR_ORDERS),$(BENCH_DIR)/runs/prior_$(o)/prior.pt)
	$(PY) benchmarks/prior.py --tokenizer $(BENCH_DIR)/runs/dq/tokenizer.pt \
		--priors $(foreach o,$(PRIOR_ORDERS),$(BENCH_DIR)/runs/prior_$(o)/prior.pt) --n 64 --out $(BENCH_DIR)

clean:
	rm -rf outputs multirun .pytest_cache

# Data from another solver for the benchmarks: jax-cfd's Kolmogorov flow at
# 256x256, made in an environment of its own (jax is no dependency of dynfield).
JAXCFD_VENV ?= .venv-jaxcfd
bench-data: datasets/jax_cfd/kolmogorov_256.nc
datasets/jax_cfd/kolmogorov_256.nc:
	python3 -m venv $(JAXCFD_VENV)
	$(JAXCFD_VENV)/bin/pip install "jax[cpu]" jax-cfd netCDF4 xarray
	$(JAXCFD_VENV)/bin/python benchmarks/jax_cfd_flow.py --out $@
