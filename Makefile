# Two set-up commands (README): `make quickstart` and `make test`. Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
export HF_HUB_OFFLINE ?= 1

.PHONY: install quickstart test

$(STAMP): pyproject.toml
	@echo "==> installing hdmap-sweeps into $(VENV) (first time: ~7 GB incl. the torch 2.14.1 CUDA build, about 3-4 min)"
	python3 -m venv $(VENV)
	@echo "==> upgrading pip"
	$(PY) -m pip install --quiet --upgrade pip
	@echo "==> pip install -e '.[test]' (torch, lightning, anomalib, ray[tune], wandb, ...): the long step"
	@start=$$(date +%s); $(PY) -m pip install --quiet -e '.[test]' && echo "==> installed in $$(( $$(date +%s) - start )) s"
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

quickstart: install
	$(VENV)/bin/hdmap sweep run sweeps/examples/quickstart.yaml

test: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
	WANDB_MODE=offline $(PY) -m pytest -m "slow or not slow"
