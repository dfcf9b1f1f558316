# Two set-up commands (README): `make quickstart` and `make test`. Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
export HF_HUB_OFFLINE ?= 1

.PHONY: install quickstart test

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

quickstart: install
	$(VENV)/bin/hdmap sweep run sweeps/examples/quickstart.yaml

test: install
	WANDB_MODE=offline $(PY) -m pytest
